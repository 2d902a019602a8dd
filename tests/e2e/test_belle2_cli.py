"""The Belle II road through the CLI, as a user types it: produce -> preprocess -> memmap -> train (built-ins and
a plug-in file) -> apply (threshold and weighted sampling) -> evaluate; then bad input, one clean line each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.test_bad_input import assert_clean_error

KEYS = ("decay", "particle", "pdg", "mother_pdg", "mother_index", "y")
PLUGIN = '''
import torch
from torch import nn
from mlfastsim.belle2.models.base import NNBaseClass


class Linear(NNBaseClass):
    inputs = ("particle",)

    def __init__(self, params, **sizes):
        super().__init__(params, **sizes)
        self.lin = nn.Linear(self.n_features, 1)

    def forward(self, particle):
        return self.lin(particle.mean(1)).squeeze(1)
'''


def _train_args(mm: Path, out: Path, model: str, *extra: str) -> list[str]:
    args = ["belle2", "train", "-m", model, "-o", str(out), "-l", str(out / "logs"), "--max-steps", "6",
            "--batch-size", "16", "--set", "trainer.eval_every=3", "--set", "model.params={}"]
    for k in KEYS:
        flag = "--y-output" if k == "y" else f"--{k.replace('_', '-')}-input"
        args += [flag, str(mm / f"{k}.memmap")]
    return args + list(extra)


@pytest.fixture(scope="module")
def road(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("belle2_road")


def test_full_road(cli, road: Path) -> None:
    for name, n, seed in (("a", 120, 1), ("b", 80, 2), ("test", 150, 3)):
        res = cli("belle2", "produce", "-n", n, "--chunk-size", 60, "--seed", seed, "-o", road / f"{name}.h5")
        assert res.code == 0, res.err
        assert "dropped quark/string" in res.out
    for name in ("a", "b"):
        res = cli("belle2", "preprocess", "-i", road / f"{name}.h5", "-o", road / "pre" / name)
        assert res.code == 0, res.err
    mm = road / "mm"
    for k in KEYS:
        res = cli("belle2", "memmap", "-i", str(road / "pre" / "*" / f"{k}.npy"), "-o", mm / f"{k}.memmap")
        assert res.code == 0, res.err
    assert open(mm / "particle.memmap.shape").read().strip() == "200,100,12"
    concat = np.concatenate([np.load(road / "pre" / n / "pdg.npy") for n in ("a", "b")])
    assert np.array_equal(np.fromfile(mm / "pdg.memmap", dtype="<i4").reshape(concat.shape), concat)

    plugin = road / "linear.py"
    plugin.write_text(PLUGIN)
    for model, out in (("resnet", "m_resnet"), ("gnn", "m_gnn"), (str(plugin), "m_plugin")):
        res = cli(*_train_args(mm, road / out, model))
        assert res.code == 0, res.err
        summary = json.loads((road / out / "summary.json").read_text())
        assert summary["steps"] == 6
        assert (road / out / "checkpoints" / "step_00000006.pt").is_file()

    ckpt = road / "m_resnet" / "checkpoints" / "step_00000006.pt"
    res = cli("belle2", "apply", "-i", road / "test.h5", "--checkpoint", ckpt, "-o", road / "thr.h5",
              "--threshold", "0.3")
    assert res.code == 0, res.err
    res = cli("belle2", "apply", "-i", road / "test.h5", "--checkpoint", ckpt, "-o", road / "smp.h5",
              "--mode", "sample", "--seed", "4", "--sample-scale", "3")
    assert res.code == 0, res.err
    scores = pd.read_hdf(road / "smp.h5", "scores")
    kept = pd.read_hdf(road / "smp.h5", "kept")
    assert len(scores) == 150 and np.all(kept["weight"] >= 1.0)
    assert np.allclose(scores["p_keep"], np.clip(np.maximum(3 * scores["score"], 0.01), 0, 1))
    assert np.array_equal(kept["event"], scores.loc[scores["keep"], "event"])
    thr = pd.read_hdf(road / "thr.h5", "scores")
    assert np.array_equal(thr["keep"], thr["score"] >= 0.3) and np.allclose(thr["score"], scores["score"])
    res = cli("belle2", "apply", "-i", road / "test.h5", "--checkpoint",
              road / "m_plugin" / "checkpoints" / "step_00000006.pt", "-o", road / "plug.h5")
    assert res.code == 0, res.err

    # fine-tuning starts from another run's weights; a different model is one clear line
    res = cli(*_train_args(mm, road / "m_ft", "resnet", "--init-checkpoint", ckpt))
    assert res.code == 0, res.err
    assert_clean_error(cli(*_train_args(mm, road / "m_ft2", "gnn", "--init-checkpoint", ckpt)), str(ckpt),
                       "init_checkpoint", "-m")

    res = cli("belle2", "evaluate", "--events", road / "test.h5", "--scores", road / "thr.h5", "-o", road / "ev",
              "--projected-sim-reco-s", "2.5")
    assert res.code == 0, res.err
    assert "projected onto 2.5 s/event" in res.out
    assert any(w in res.out for w in ("saves time", "LOSES time", "breaks even"))
    metrics = json.loads((road / "ev" / "metrics.json").read_text())
    assert metrics["projected"]["sim_reco_s_per_event"] == 2.5
    assert "projected onto 2.5 s/event" in (road / "ev" / "report.md").read_text()
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["retention_achieved"] >= 0.95
    assert metrics["speedup_at_retention"] > 0 and metrics["times_s_per_event"]["expensive_stage"] > 0
    assert set(metrics["bias"]) >= {"mbc_mev", "n_tracks"}
    for fig in ("roc.png", "scores.png", "speedup.png", "bias.png", "report.md"):
        assert (road / "ev" / fig).stat().st_size > 0


def test_bad_inputs(cli, road: Path, tmp_path: Path) -> None:
    mm = road / "mm"
    # table without a required column
    parts = pd.read_hdf(road / "b.h5", "particles")
    bad = tmp_path / "nopdg.h5"
    parts.drop(columns=["pdg"]).to_hdf(bad, key="particles", format="table")
    pd.read_hdf(road / "b.h5", "events").to_hdf(bad, key="events", format="table")
    assert_clean_error(cli("belle2", "preprocess", "-i", bad, "-o", tmp_path / "p"), str(bad), "pdg")
    # memmap with a missing sidecar
    broken = tmp_path / "mm"
    broken.mkdir()
    for k in KEYS:
        for suffix in ("", ".shape", ".dtype"):
            (broken / f"{k}.memmap{suffix}").write_bytes((mm / f"{k}.memmap{suffix}").read_bytes())
    (broken / "pdg.memmap.shape").unlink()
    assert_clean_error(cli(*_train_args(broken, tmp_path / "t", "resnet")), "pdg.memmap.shape", "missing .shape")
    # inputs of different event counts
    (broken / "pdg.memmap.shape").write_text("200,100\n")
    y_short = tmp_path / "y_short.npy"
    np.save(y_short, np.load(road / "pre" / "a" / "y.npy"))
    args = _train_args(broken, tmp_path / "t", "resnet")
    args[args.index("--y-output") + 1] = str(y_short)
    assert_clean_error(cli(*args), str(y_short), "120 events", "200")
    # a model file without an NNBaseClass subclass, an unknown model name, a bad config key
    plain = tmp_path / "plain.py"
    plain.write_text("import torch\n\nclass Net(torch.nn.Module):\n    pass\n")
    assert_clean_error(cli(*_train_args(mm, tmp_path / "t", str(plain))), str(plain), "NNBaseClass")
    assert_clean_error(cli(*_train_args(mm, tmp_path / "t", "transformer")), "unknown model", "resnet")
    assert_clean_error(cli(*_train_args(mm, tmp_path / "t", "resnet", "--set", "trainer.max_step=3")),
                       "trainer.max_step", "max_steps")
    # apply with something that is not a checkpoint; evaluate with scores of other events
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert_clean_error(cli("belle2", "apply", "-i", road / "test.h5", "--checkpoint", junk, "-o", tmp_path / "x.h5"),
                       str(junk), "checkpoint")
    assert not (tmp_path / "x.h5").exists()
    assert_clean_error(cli("belle2", "evaluate", "--events", road / "a.h5", "--scores", road / "thr.h5",
                           "-o", tmp_path / "ev"), "in common")
    # a plug-in checkpoint applied with an edited model file
    edited = tmp_path / "linear.py"
    edited.write_text(PLUGIN + "\n# edited\n")
    res = cli("belle2", "apply", "-i", road / "test.h5", "--checkpoint",
              road / "m_plugin" / "checkpoints" / "step_00000006.pt", "--model-file", edited, "-o", tmp_path / "p.h5")
    assert_clean_error(res, str(edited), "differs")
    # decay files: missing, and one without Upsilon(4S) -> B Bbar
    assert_clean_error(cli("belle2", "produce", "-n", 5, "--dec-file", tmp_path / "none.dec", "-o", tmp_path / "e.h5"),
                       "none.dec", "does not exist")
    dec = tmp_path / "tiny.dec"
    dec.write_text("Decay D0\n1.0 K- pi+ PHSP;\nEnddecay\nEnd\n")
    assert_clean_error(cli("belle2", "produce", "-n", 5, "--dec-file", dec, "-o", tmp_path / "e.h5"),
                       str(dec), "Upsilon(4S)")
    assert not (tmp_path / "e.h5").exists()
    # only some input types
    res = cli("belle2", "preprocess", "-i", road / "b.h5", "-o", tmp_path / "only", "-k", "pdg,y")
    assert res.code == 0, res.err
    assert sorted(p.name for p in (tmp_path / "only").glob("*.npy")) == ["pdg.npy", "y.npy"]
    assert_clean_error(cli("belle2", "preprocess", "-i", road / "b.h5", "-o", tmp_path / "only", "-k", "jets"),
                       "jets", "decay")


def test_shipped_filter_applies_with_no_training(cli, road: Path, tmp_path: Path) -> None:
    """`--checkpoint pretrained:belle2_filter` scores events with the shipped weights (sha256 checked)."""
    from mlfastsim.belle2.pretrained import INDEX

    if not INDEX.exists():
        pytest.skip("no Belle II filter shipped")
    res = cli("belle2", "apply", "-i", road / "test.h5", "--checkpoint", "pretrained:belle2_filter",
              "-o", tmp_path / "s.h5", "--threshold", "0.2")
    assert res.code == 0, res.err
    scores = pd.read_hdf(tmp_path / "s.h5", "scores")
    assert len(scores) == 150 and scores["score"].between(0, 1).all() and scores["score"].std() > 0
    assert_clean_error(cli("belle2", "apply", "-i", road / "test.h5", "--checkpoint", "pretrained:nope",
                           "-o", tmp_path / "x.h5"), "nope", "pretrained:belle2_filter")

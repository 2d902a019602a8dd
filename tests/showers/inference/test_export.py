"""ONNX export of the shower generator: parity with torch, Par04 layout, sidecar, refusal, lookup."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import mlfastsim
from mlfastsim.core.checkpoint import save_checkpoint
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.export import OnnxRunner, ParityError, make_session, max_abs_diff, session_signature
from mlfastsim.core.export import export_onnx as export_module
from mlfastsim.showers.conditioning.em import EMNormalisation, make_conditions
from mlfastsim.showers.config import ConditioningConfig, ExportConfig, VAEConfig
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.inference.export import (
    build_generator,
    export_onnx,
    load_generator_model,
    random_generator_inputs,
    resolve_checkpoint,
    sidecar_path,
    voxel_permutation,
)
from mlfastsim.showers.models import MODELS, checkpoint_meta

# Distinct axis lengths, so that any mix-up of the r, phi and z axes changes the numbers.
MESH = CylindricalMesh(n_r=4, n_phi=3, n_z=5, size_r=2.0, size_z=3.0, name="tiny")
COND = ConditioningConfig(max_energy_gev=500.0, max_angle_deg=90.0, n_geometry_slots=3)
VAE = VAEConfig(encoder_sizes=[16, 8], latent_dim=3)
META = checkpoint_meta(MODELS["vae"], VAE, EMNormalisation(MESH, COND))


def make_checkpoint(path: Path, *, seed: int = 0, step: int = 50) -> Path:
    """A VAE checkpoint with random weights and non-trivial batch-norm statistics (so folding is tested)."""
    torch.manual_seed(seed)
    model = MODELS["vae"].build_modules(VAE, EMNormalisation(MESH, COND))["model"]
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(path, {"modules": {"model": model.state_dict()}, "step": step,
                                  **META})


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/adapt/{old,new}/checkpoints/step_*.pt with 'new' the most recently modified run."""
    root = tmp_path_factory.mktemp("runs")
    for run, seed in (("old", 1), ("new", 2)):
        for step in (0, 50, 100):
            make_checkpoint(root / "adapt" / run / "checkpoints" / f"step_{step:08d}.pt", seed=seed + step, step=step)
    (root / "adapt" / "empty").mkdir()
    past = 1_000_000_000
    for p in (root / "adapt" / "old").rglob("*"):
        os.utime(p, (past, past))
    os.utime(root / "adapt" / "old", (past, past))
    return root


@pytest.fixture(scope="module")
def exported(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "Generator.onnx"
    return export_onnx(ExportConfig(study_name="adapt", output_dir=study, onnx_file_name=out))


# ------------------------------------------------------------------------------------------ parity
def test_onnx_matches_the_torch_decoder_in_par04_order(study: Path, exported: Path) -> None:
    loaded = load_generator_model(study / "adapt" / "new" / "checkpoints" / "step_00000100.pt")
    model = loaded.model.eval()
    runner = OnnxRunner(make_session(exported, num_threads=2))
    x = random_generator_inputs(300, 3, COND, seed=7)
    with torch.inference_mode():
        xt = torch.from_numpy(x)
        native = model.decode(xt[:, :3], xt[:, 3:]).numpy()  # the VAE's own decode: [z, c] layout checked
    got = runner(x)
    # Par04 order: (N, R, PHI, Z) flattened with z fastest, i.e. our (N, Z, PHI, R) grid transposed.
    expected = np.ascontiguousarray(MESH.to_grid(native).transpose(0, 3, 2, 1)).reshape(len(x), -1)
    assert max_abs_diff(got, expected) < 1e-5
    assert got.min() >= 0.0 and got.max() <= 1.0
    # one shower at a time, as Geant4 runs it (dynamic batch axis)
    assert max_abs_diff(runner(x[:1]), expected[:1]) < 1e-5


def test_native_voxel_order_is_available_and_permutation_is_the_par04_transpose() -> None:
    p = voxel_permutation(MESH, "par04")
    assert p is not None and sorted(p.tolist()) == list(range(MESH.n_voxels))
    assert voxel_permutation(MESH, "native") is None
    flat = np.arange(MESH.n_voxels)[None].astype(np.float32)
    # the Par04 writer's transpose in formats.write_par04 is (N, Z, PHI, R) -> (N, R, PHI, Z)
    assert np.array_equal(flat[:, p], MESH.to_grid(flat).transpose(0, 3, 2, 1).reshape(1, -1))
    with pytest.raises(ConfigError, match="voxel order"):
        voxel_permutation(MESH, "zyx")


def test_sidecar_matches_checkpoint_and_session(study: Path, exported: Path) -> None:
    side = json.loads(sidecar_path(exported).read_text())
    session = make_session(exported)
    sig = session_signature(session)
    ckpt = study / "adapt" / "new" / "checkpoints" / "step_00000100.pt"
    assert side["source_checkpoint"] == str(ckpt.resolve())
    assert side["source_step"] == 100
    assert side["model_type"] == "vae" and side["mlfastsim_version"] == mlfastsim.__version__
    assert side["latent_dim"] == 3 and side["n_geometry_slots"] == 3
    assert side["max_energy_mev"] == 500_000.0 and side["max_energy_gev"] == 500.0 and side["max_angle_deg"] == 90.0
    assert side["mesh"] == MESH.to_dict()
    assert side["input"]["name"] == sig.input_name and side["input"]["width"] == sig.input_width == 3 + 2 + 3
    assert side["output"]["name"] == sig.output_name and side["output"]["width"] == sig.output_width == 60
    assert side["output"]["voxel_order"] == "par04"
    assert [(f["name"], f["offset"], f["size"]) for f in side["input"]["layout"]] == [
        ("latent", 0, 3), ("energy", 3, 1), ("angle", 4, 1), ("geometry", 5, 3)]
    assert 0.0 <= side["parity"]["max_abs_diff"] <= side["parity"]["tolerance"]
    assert side["parity"]["samples"] == 256
    assert "/Par04/inference/setSizeConditionVector 5" in side["geant4_par04"]["macro"]


def test_conditioning_columns_follow_par04() -> None:
    c = make_conditions(np.array([250_000.0]), np.array([45.0]), 2, COND)
    assert c.tolist() == [[0.5, 0.5, 0.0, 0.0, 1.0]]


# ------------------------------------------------------------------------------------------ refusal
def test_broken_export_is_refused_and_leaves_no_file(study: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = ort.InferenceSession.run

    def broken(self: ort.InferenceSession, *args: object, **kwargs: object) -> list[np.ndarray]:
        return [o + 0.01 for o in real_run(self, *args, **kwargs)]

    monkeypatch.setattr(ort.InferenceSession, "run", broken)
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous good model")
    cfg = ExportConfig(study_name="adapt", output_dir=study, onnx_file_name=target, parity_tolerance=1e-4)
    with pytest.raises(ParityError, match=r"max \|difference\| 0.01"):
        export_onnx(cfg)
    assert target.read_bytes() == b"previous good model"
    assert not sidecar_path(target).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left behind


def test_torchscript_fallback_when_dynamo_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = torch.onnx.export

    def no_dynamo(*args: object, **kwargs: object) -> object:
        if kwargs.get("dynamo"):
            raise RuntimeError("simulated torch.export failure")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    ckpt = make_checkpoint(tmp_path / "c.pt")
    target = export_onnx(ExportConfig(checkpoint=ckpt, onnx_file_name=tmp_path / "ts.onnx"))
    side = json.loads(sidecar_path(target).read_text())
    assert side["export"]["exporter"] == "torchscript"
    assert side["parity"]["max_abs_diff"] < 1e-5
    assert session_signature(make_session(target)).input_width == 8


def test_generic_export_checks_width_and_parity(tmp_path: Path) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh())
    result = export_module(module, tmp_path / "m.onnx", input_width=4, parity_samples=16, tolerance=1e-5)
    assert result.exporter == "dynamo" and result.max_abs_diff < 1e-6
    assert result.signature.input_width == 4 and result.signature.output_width == 6
    with pytest.raises(ValueError, match="parity inputs"):
        export_module(module, tmp_path / "w.onnx", input_width=4, parity_inputs=np.zeros((3, 5), np.float32))
    assert not (tmp_path / "w.onnx").exists()


def test_max_abs_diff_never_passes_nan() -> None:
    a = np.zeros((2, 3), np.float32)
    assert max_abs_diff(a, a) == 0.0
    assert max_abs_diff(a, np.full_like(a, np.nan)) == float("inf")
    assert max_abs_diff(a, np.zeros((3, 2), np.float32)) == float("inf")


def test_bad_onnx_file_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(InputFileError, match="onnxruntime cannot load"):
        make_session(bad)
    with pytest.raises(InputFileError, match="does not exist"):
        make_session(tmp_path / "missing.onnx")


def test_export_refuses_other_model_types(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "w.pt", {"modules": {"model": {}}, **META,
                                               "model_type": "diffusion"})
    with pytest.raises(InputFileError, match="model type"):
        export_onnx(ExportConfig(checkpoint=ckpt, onnx_file_name=tmp_path / "w.onnx"))
    assert not (tmp_path / "w.onnx").exists()
    # a hadron model type without the hadron normalisation block is no hadron checkpoint either
    fake = save_checkpoint(tmp_path / "g.pt", {"modules": {"model": {}}, **META,
                                               "model_type": "wgan"})
    with pytest.raises(InputFileError, match=r"invalid model config|normalisation"):
        export_onnx(ExportConfig(checkpoint=fake, onnx_file_name=tmp_path / "g.onnx"))
    assert not (tmp_path / "g.onnx").exists()


def test_generator_module_native_order_equals_decode(study: Path) -> None:
    loaded = load_generator_model(study / "adapt" / "old" / "checkpoints" / "step_00000000.pt")
    gen = build_generator(loaded, "native")
    x = random_generator_inputs(20, 3, COND, seed=3)
    out = torch.empty(20, MESH.n_voxels)
    with torch.inference_mode():
        xt = torch.from_numpy(x)
        ref = loaded.model.decode(xt[:, :3], xt[:, 3:])
        gen.generate_into(xt, out)
        assert torch.equal(gen(xt), ref)
        one = torch.empty(1, MESH.n_voxels)
        gen.generate_into(xt[:1], one)  # a single shower takes the GEMV path
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(one, ref[:1], atol=1e-6)


# ----------------------------------------------------------------------------------- finding a model
def test_resolve_checkpoint_defaults_to_latest_run_and_step(study: Path) -> None:
    got = resolve_checkpoint(ExportConfig(study_name="adapt", output_dir=study))
    assert got == study / "adapt" / "new" / "checkpoints" / "step_00000100.pt"


def test_resolve_checkpoint_by_run_and_step(study: Path) -> None:
    cfg = ExportConfig(study_name="adapt", run_name="old", adaptation_step=50, output_dir=study)
    assert resolve_checkpoint(cfg) == study / "adapt" / "old" / "checkpoints" / "step_00000050.pt"
    direct = study / "adapt" / "old" / "checkpoints" / "step_00000000.pt"
    assert resolve_checkpoint(ExportConfig(checkpoint=direct)) == direct


def test_resolve_checkpoint_latest_and_best(study: Path, tmp_path: Path) -> None:
    new = study / "adapt" / "new" / "checkpoints"
    assert resolve_checkpoint(ExportConfig(study_name="adapt", adaptation_step="latest", output_dir=study)) == (
        new / "step_00000100.pt")
    assert resolve_checkpoint(ExportConfig(checkpoint=study / "adapt" / "old" / "latest")) == (
        study / "adapt" / "old" / "checkpoints" / "step_00000100.pt")
    # best: the kept step with the lowest validation loss in the trainer's history (the latest holds it all)
    run = tmp_path / "adapt" / "r"
    for step in (50, 100):
        make_checkpoint(run / "checkpoints" / f"step_{step:08d}.pt", seed=step, step=step)
    latest = run / "checkpoints" / "step_00000100.pt"
    state = torch.load(latest, weights_only=True)
    state["history"] = [{"step": 50.0, "val/loss": 1.0}, {"step": 100.0, "val/loss": 2.0}]
    torch.save(state, latest)
    cfg = ExportConfig(study_name="adapt", run_name="r", adaptation_step="best", output_dir=tmp_path)
    assert resolve_checkpoint(cfg) == run / "checkpoints" / "step_00000050.pt"


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"study_name": "nope"}, ConfigError, r"no study 'nope' \(studies: adapt\)"),
        ({"study_name": "adapt", "run_name": "x"}, ConfigError, r"no run 'x' .*runs: empty, new, old"),
        ({"study_name": "adapt", "run_name": "new", "adaptation_step": 7}, ConfigError, r"steps: 0, 50, 100"),
        ({"study_name": "adapt", "run_name": "empty"}, InputFileError, "no checkpoints"),
        ({}, ConfigError, r"no checkpoint and no study name .*studies in .*: adapt"),
        ({"checkpoint": "x.pt", "study_name": "adapt"}, ConfigError, "both a checkpoint and study_name"),
        ({"checkpoint": "missing.pt"}, InputFileError, "does not exist"),
    ],
)
def test_resolve_checkpoint_errors_list_what_exists(study: Path, kwargs: dict[str, object],
                                                    error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        resolve_checkpoint(ExportConfig(output_dir=study, **kwargs))


def test_study_without_checkpoints_and_missing_output_dir(tmp_path: Path) -> None:
    (tmp_path / "s" / "r1").mkdir(parents=True)
    with pytest.raises(InputFileError, match=r"no run with checkpoints \(runs: r1\)"):
        resolve_checkpoint(ExportConfig(study_name="s", output_dir=tmp_path))
    with pytest.raises(ConfigError, match="output directory does not exist"):
        resolve_checkpoint(ExportConfig(study_name="s", output_dir=tmp_path / "nowhere"))

"""Meta-learning (Reptile / first-order MAML), adaptation to a new geometry, and the shipped model.

Everything runs on a small mesh (360 voxels) with a small VAE, so the statistical adaptation test
trains for real and still takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.showers.config import AdaptConfig, DataConfig, MetaConfig, VAEConfig
from mlfastsim.showers.geometry import DETECTOR_PRESETS, MESH_PRESETS, CylindricalMesh
from mlfastsim.showers.io.formats import ShowerData, write_native
from mlfastsim.showers.models import load_model
from mlfastsim.showers.models.vae import vae_loss
from mlfastsim.showers.pretrained import list_pretrained, pretrained_path, sha256_file
from mlfastsim.showers.sim.em import make_kinematics, simulate
from mlfastsim.showers.training.meta import (
    MAIN_OBSERVABLES,
    GeometryTask,
    MetaTask,
    adapt,
    mean_main_separation_power,
    meta_train,
    reptile_update,
    sample_like,
    separation_powers,
)

SMALL = CylindricalMesh(n_r=6, n_phi=4, n_z=15, size_r=7.0, size_z=10.0, name="small")
SMALL_VAE = VAEConfig(encoder_sizes=[64, 32, 16], latent_dim=6)


def _simulate(detector: str, n: int, seed: int, path: Path, mesh: CylindricalMesh = SMALL) -> Path:
    energies, angles = make_kinematics(energy_range_gev=(2.0, 200.0), angle_range_deg=(70.0, 90.0),
                                       n_per_point=n, seed=seed)
    data = simulate(DETECTOR_PRESETS[detector], mesh, energies, angles, seed=seed)
    write_native(data, path)
    return path


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["modules"]["model"]


# ------------------------------------------------------------------------------------ the update
class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))


def test_reptile_update_interpolates_weights_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    meta = _Tiny()
    adapted = []
    for k in range(3):
        m = _Tiny()
        m.load_state_dict(meta.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * (k + 1))
            m.bn.running_mean.add_(float(k + 1))
        adapted.append(m)
    before = {k: v.clone() for k, v in meta.state_dict().items()}
    reptile_update(meta, adapted, meta_lr=0.25)
    for name, value in meta.state_dict().items():
        if not value.is_floating_point():
            continue
        mean = torch.stack([m.state_dict()[name] for m in adapted]).mean(dim=0)
        torch.testing.assert_close(value, before[name] + 0.25 * (mean - before[name]))
        # a quarter of the way: the distance to the adapted mean shrinks by exactly 3/4
        torch.testing.assert_close((mean - value).norm(), 0.75 * (mean - before[name]).norm())


def _toy_task(slot: int, seed: int) -> GeometryTask:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 20, generator=g) * 0.1
    c = torch.zeros(64, 5)
    c[:, 0] = torch.rand(64, generator=g)
    c[:, 2 + slot] = 1.0
    return GeometryTask(name=f"toy{slot}", file=Path(f"toy{slot}.h5"), slot=slot, train=(x, c), val=(x[:8], c[:8]))


@pytest.mark.parametrize("meta_lr", [1.0, 0.3])
def test_meta_step_moves_the_meta_weights_towards_the_adapted_ones(meta_lr: float) -> None:
    from mlfastsim.showers.models.vae import ShowerVAE

    torch.manual_seed(0)
    model = ShowerVAE(20, 5, VAEConfig(encoder_sizes=[8, 4], latent_dim=2))
    cfg = MetaConfig(meta_lr=meta_lr, tasks_per_step=1, inner_steps=4, inner_lr=1e-2, batch_size=16)
    task = MetaTask(model, [_toy_task(0, 1)], cfg, vae_loss)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logs = task.train_step(None, 0)
    assert np.isfinite(logs["loss"]) and np.isfinite(logs["adapted_loss"])
    adapted = task.fast.state_dict()  # the scratch model holds the last task's adapted weights
    moved = 0.0
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            expected = before[name] + meta_lr * (adapted[name] - before[name])
            torch.testing.assert_close(value, expected)
            moved += float((value - before[name]).norm())
    assert moved > 0


# ------------------------------------------------------------------------------------ meta-training
@pytest.fixture(scope="module")
def geometry_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("geometries")
    return {
        "SiW": _simulate("SiW", 500, 1, d / "siw.h5"),
        "SciPb": _simulate("SciPb", 500, 2, d / "scipb.h5"),
        "PbWO4": _simulate("PbWO4", 300, 3, d / "pbwo4_few.h5"),
        "PbWO4_ref": _simulate("PbWO4", 2000, 4, d / "pbwo4_ref.h5"),
    }


def _meta_cfg(files: dict[str, Path], out: Path, **kw: object) -> MetaConfig:
    base: dict[str, object] = dict(
        data=DataConfig(files=[files["SiW"], files["SciPb"]], val_fraction=0.1),
        model=SMALL_VAE, meta_steps=8, inner_steps=3, inner_lr=2e-3, tasks_per_step=2, batch_size=32,
        eval_every=2, checkpoint_every=4, seed=5, output_dir=out, tracking={"dir": str(out / "tracking")},
    )
    base.update(kw)
    return MetaConfig.model_validate(base)


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_meta_training_resume_is_exact(geometry_files: dict[str, Path], tmp_path: Path, algorithm: str) -> None:
    whole = meta_train(_meta_cfg(geometry_files, tmp_path / "whole", algorithm=algorithm), progress=False)
    first = meta_train(_meta_cfg(geometry_files, tmp_path / "split", algorithm=algorithm, meta_steps=4),
                       progress=False)
    assert first.step == 4
    resumed = meta_train(_meta_cfg(geometry_files, tmp_path / "split", algorithm=algorithm), resume=True,
                         progress=False)
    assert whole.step == resumed.step == 8
    a, b = _state(whole.last_checkpoint), _state(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [h["val/loss"] for h in whole.history] == [h["val/loss"] for h in resumed.history]
    # a meta checkpoint is an ordinary shower-model checkpoint
    loaded = load_model(whole.last_checkpoint, expect_mesh=SMALL)
    assert loaded.state["meta_training"]["algorithm"] == algorithm
    assert [t["slot"] for t in loaded.state["meta_training"]["tasks"]] == [0, 1]


@pytest.fixture(scope="module")
def meta_checkpoint(geometry_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("meta")
    cfg = _meta_cfg(geometry_files, out, meta_steps=150, inner_steps=5, inner_lr=2e-3, batch_size=64,
                    eval_every=50, checkpoint_every=150)
    result = meta_train(cfg, progress=False)
    assert result.last_checkpoint is not None
    return result.last_checkpoint


def test_adaptation_improves_every_main_observable(
    geometry_files: dict[str, Path], meta_checkpoint: Path, tmp_path: Path
) -> None:
    """PbWO4 (X0 8.9 mm, homogeneous) adapted at slot 0, where the meta-model put SiW (X0 ~4 mm, sampling)."""
    cfg = AdaptConfig(
        data=DataConfig(files=[geometry_files["PbWO4"]]), checkpoint=meta_checkpoint, adaptation_steps=200,
        checkpoint_step=50, plot_freq=0, learning_rate=2e-3, batch_size=64, seed=3, output_dir=tmp_path / "runs",
        study_name="pbwo4", tracking={"dir": str(tmp_path / "tracking")},
    )
    result = adapt(cfg, progress=False)
    # every checkpoint is kept, where the user expects it, and summarised
    assert result.run_dir == tmp_path / "runs" / "pbwo4" / result.run_name
    assert result.run_name.startswith("run-")
    assert [s for s, _ in result.checkpoints] == [50, 100, 150, 200]
    assert all(p.parent == result.run_dir / "checkpoints" for _, p in result.checkpoints)
    summary = json.loads(result.summary_path.read_text())
    assert [s["step"] for s in summary["steps"]] == [50, 100, 150, 200]
    assert all(s["checkpoint"] and s["val_loss"] > 0 for s in summary["steps"])
    assert summary["best_val_loss"] < summary["unadapted_val_loss"]

    reference = _read(geometry_files["PbWO4_ref"])
    before = load_model(meta_checkpoint)
    after = load_model(result.last_checkpoint, expect_mesh=SMALL)
    sp_before = separation_powers(
        reference, sample_like(before, reference, geometry_index=0, seed=1))
    sp_after = separation_powers(
        reference, sample_like(after, reference, geometry_index=0, seed=1))
    # 2000 vs 2000 showers: per-shower separation powers carry noise of ~0.01 and mean profiles far less, while
    # the un-adapted model (SiW at slot 0) is off by 0.2-1 on the per-shower observables; at least halving
    # every one is a gain no fluctuation fakes
    for name in MAIN_OBSERVABLES:
        assert sp_after[name] < 0.5 * sp_before[name], (name, sp_before, sp_after)
    assert mean_main_separation_power(sp_after) < 0.4 * mean_main_separation_power(sp_before)


def _read(path: Path) -> ShowerData:
    from mlfastsim.showers.io.formats import read_native

    return read_native(path)


def test_adapting_a_chosen_subset_leaves_every_other_weight_as_pretrained(
    geometry_files: dict[str, Path], meta_checkpoint: Path, tmp_path: Path
) -> None:
    """``trainable: [decoder]`` fine-tunes the decoder only; a prefix naming nothing is one clear error."""
    names = sorted({k.split(".")[0] for k in _state(meta_checkpoint)})
    assert "decoder" in names, names
    cfg = AdaptConfig(
        data=DataConfig(files=[geometry_files["PbWO4"]]), checkpoint=meta_checkpoint, adaptation_steps=20,
        checkpoint_step=20, plot_freq=0, learning_rate=2e-3, batch_size=64, seed=3, output_dir=tmp_path / "runs",
        trainable=["decoder"], tracking={"dir": str(tmp_path / "tracking")},
    )
    result = adapt(cfg, progress=False)
    before, after = _state(meta_checkpoint), _state(result.last_checkpoint)
    weights = {n for n, _ in load_model(meta_checkpoint).model.named_parameters()}  # not batch-norm statistics
    moved = {k for k in weights if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("decoder.") for k in moved), sorted(moved)
    assert load_checkpoint(result.last_checkpoint)["adaptation"]["trainable"] == ["decoder"]
    with pytest.raises(ConfigError, match="name no parameter") as info:
        adapt(cfg.model_copy(update={"trainable": ["decoderr"]}), progress=False)
    assert "decoder" in (info.value.fix or "")


def test_adaptation_data_on_another_mesh_is_refused(meta_checkpoint: Path, tmp_path: Path) -> None:
    other = _simulate("FCCeeSiW", 40, 9, tmp_path / "ds2.h5", mesh=MESH_PRESETS["ds2"])
    cfg = AdaptConfig(data=DataConfig(files=[other]), checkpoint=meta_checkpoint, adaptation_steps=5,
                      output_dir=tmp_path / "runs", tracking={"dir": str(tmp_path / "tracking")})
    with pytest.raises(InputFileError, match="mesh") as info:
        adapt(cfg, progress=False)
    assert info.value.file == str(meta_checkpoint) and info.value.fix
    assert not list((tmp_path / "runs").glob("**/*.pt"))


# ------------------------------------------------------------------------------------ shipped model
def test_pretrained_path_verifies_sha256(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights" * 100)
    index = {"models": [{"name": "m", "file": "m.pt", "mesh": "ds2", "model_type": "vae", "description": "",
                         "sha256": sha256_file(model)}]}
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert pretrained_path("m", directory=tmp_path) == model
    assert [e["name"] for e in list_pretrained(directory=tmp_path)] == ["m"]
    with pytest.raises(ConfigError, match="no shipped model named"):
        pretrained_path("other", directory=tmp_path)
    model.write_bytes(b"weights" * 99 + b"WEIGHTS")
    with pytest.raises(InputFileError, match="corrupt"):
        pretrained_path("m", directory=tmp_path)
    model.unlink()
    with pytest.raises(InputFileError, match="missing"):
        pretrained_path("m", directory=tmp_path)


def test_shipped_model_loads_on_the_ds2_mesh() -> None:
    entries = {e["name"]: e for e in list_pretrained()}
    assert "vae_ds2_meta" in entries and entries["vae_ds2_meta"]["mesh"] == "ds2"
    path = pretrained_path()
    loaded = load_model(path, expect_type="vae", expect_mesh=MESH_PRESETS["ds2"])
    assert loaded.mesh.shape == MESH_PRESETS["ds2"].shape
    assert loaded.conditioning.n_geometry_slots == 3
    assert "optimizers" not in loaded.state  # stripped: weights and metadata only
    assert all(v.dtype == torch.float32 for v in loaded.state["modules"]["model"].values() if v.is_floating_point())
    assert path.stat().st_size < 8 * 2**20
    with torch.no_grad():
        c = torch.tensor([[0.1, 1.0, 1.0, 0.0, 0.0]])
        out = loaded.model.sample(c, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, MESH_PRESETS["ds2"].n_voxels) and torch.isfinite(out).all()

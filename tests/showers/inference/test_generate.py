"""Shower generation from a checkpoint and from its ONNX export into the native format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlfastsim.core.checkpoint import save_checkpoint
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.export import make_session
from mlfastsim.core.tracking import TrackingConfig
from mlfastsim.core.trainer import TrainerConfig
from mlfastsim.showers.conditioning.em import EMNormalisation
from mlfastsim.showers.config import (
    ConditioningConfig,
    DataConfig,
    ExportConfig,
    GenerateConfig,
    TrainConfig,
    VAEConfig,
)
from mlfastsim.showers.geometry import DETECTOR_PRESETS, CylindricalMesh
from mlfastsim.showers.inference.export import build_generator, export_onnx, load_generator_model, sidecar_path
from mlfastsim.showers.inference.generate import generate, generate_to_file, load_onnx_generator
from mlfastsim.showers.io.formats import read_native, write_native
from mlfastsim.showers.models import MODELS, checkpoint_meta
from mlfastsim.showers.sim.em import make_kinematics, simulate
from mlfastsim.showers.training.train import train_from_config

MESH = CylindricalMesh(n_r=6, n_phi=4, n_z=12, size_r=4.65, size_z=6.8, name="small")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A VAE trained for a few steps on simulated SiW showers, and its ONNX export: (checkpoint, onnx)."""
    root = tmp_path_factory.mktemp("gen")
    e, a = make_kinematics(energy_range_gev=(1.0, 100.0), angle_range_deg=(60.0, 90.0), n_per_point=96, seed=3)
    data = simulate(DETECTOR_PRESETS["SiW"], MESH, e, a, seed=3, chunk_size=96)
    write_native(data, root / "siw.h5")
    cfg = TrainConfig(
        data=DataConfig(files=[root / "siw.h5"], val_fraction=0.25),
        model=VAEConfig(encoder_sizes=[32, 16, 8], latent_dim=4),
        trainer=TrainerConfig(max_steps=8, batch_size=24, eval_every=4, checkpoint_every=8),
        tracking=TrackingConfig(dir=root / "tracking"),
        output_dir=root / "train",
    )
    train_from_config(cfg, progress=False)
    ckpt = root / "train" / "checkpoints" / "step_00000008.pt"
    onnx = export_onnx(ExportConfig(checkpoint=ckpt, onnx_file_name=root / "model.onnx"))
    return ckpt, onnx


def _cfg(tmp_path: Path, name: str, **kw: object) -> GenerateConfig:
    base: dict[str, object] = {"energies_gev": [5.0, 50.0], "angles_deg": [70.0, 90.0], "n_per_point": 20,
                               "seed": 11, "output": tmp_path / name}
    base.update(kw)
    return GenerateConfig(**base)


def test_checkpoint_and_onnx_give_the_same_showers(trained: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, onnx = trained
    a = generate_to_file(_cfg(tmp_path, "a.h5", checkpoint=ckpt, batch_size=13), progress=False).load()
    b = generate_to_file(_cfg(tmp_path, "b.h5", onnx=onnx, batch_size=1000), progress=False).load()
    assert a.showers.shape == (80, MESH.n_voxels)
    scale = a.energies[:, None]  # compare normalised showers: E * 1e-5 in MeV
    np.testing.assert_allclose(a.showers / scale, b.showers / scale, rtol=0, atol=1e-5)
    c = generate_to_file(_cfg(tmp_path, "c.h5", checkpoint=ckpt, seed=12), progress=False).load()
    assert np.abs(a.showers - c.showers).max() > 1e-3 * a.showers.max()  # another seed, other showers


def test_output_is_a_valid_native_file(trained: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = trained
    cfg = _cfg(tmp_path, "out/gen.h5", checkpoint=ckpt, geometry_index=1)
    generated = generate_to_file(cfg, progress=False).load()
    back = read_native(cfg.output)
    e, a = make_kinematics(energies_gev=[5.0, 50.0], angles_deg=[70.0, 90.0], n_per_point=20, seed=11)
    assert np.array_equal(back.energies, e) and np.array_equal(back.angles, a)
    assert back.mesh == MESH and np.array_equal(back.showers, generated.showers)
    assert back.meta["source_model"] == str(ckpt) and back.meta["seed"] == 11
    assert back.meta["source_format"] == "checkpoint" and back.meta["geometry_index"] == 1
    assert (back.showers >= 0).all()
    # normalised output is a sigmoid: no voxel can exceed the incident energy
    assert (back.showers <= back.energies[:, None] * (1 + 1e-6)).all()


def test_deterministic_and_independent_of_batch_size(trained: tuple[Path, Path]) -> None:
    ckpt, onnx = trained
    loaded = load_generator_model(ckpt)
    gen = build_generator(loaded)
    e = np.linspace(2e3, 2e5, 50, dtype=np.float32)
    a = np.full(50, 80.0, dtype=np.float32)
    one = generate(gen, e, a, 0, loaded.conditioning, seed=5, batch_size=50)
    assert np.array_equal(one, generate(gen, e, a, 0, loaded.conditioning, seed=5, batch_size=50))
    np.testing.assert_allclose(generate(gen, e, a, 0, loaded.conditioning, seed=5, batch_size=7), one,
                               rtol=1e-5, atol=1e-5 * e.max())
    # a bare onnxruntime session reads the Par04 order when given the mesh
    session = make_session(onnx)
    bare = generate(session, e, a, 0, loaded.conditioning, seed=5, batch_size=16, mesh=MESH)
    np.testing.assert_allclose(bare, one, rtol=0, atol=1e-5 * e.max())
    with pytest.raises(ConfigError, match="needs the mesh"):
        generate(session, e, a, 0, loaded.conditioning, seed=5, batch_size=16)


def test_onnx_without_sidecar_is_refused(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, onnx = trained
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(onnx.read_bytes())
    with pytest.raises(InputFileError, match="no sidecar") as info:
        generate_to_file(_cfg(tmp_path, "x.h5", onnx=lonely), progress=False)
    assert info.value.file == str(tmp_path / "lonely.json")
    assert not (tmp_path / "x.h5").exists()


def test_onnx_width_differing_from_sidecar_names_both_numbers(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, onnx = trained
    copy = tmp_path / "m.onnx"
    copy.write_bytes(onnx.read_bytes())
    side = json.loads(sidecar_path(onnx).read_text())
    side["latent_dim"] += 2
    side["input"]["width"] += 2
    sidecar_path(copy).write_text(json.dumps(side))
    with pytest.raises(InputFileError, match=r"ONNX input width 9 differs from the sidecar's 11"):
        load_onnx_generator(copy)
    side["input"]["width"] -= 1  # and a sidecar that contradicts itself
    sidecar_path(copy).write_text(json.dumps(side))
    with pytest.raises(InputFileError, match=r"sidecar input width 10 differs from latent_dim 6 .* = 11"):
        load_onnx_generator(copy)


def test_other_model_type_and_truncated_checkpoint(trained: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = trained
    meta = checkpoint_meta(MODELS["vae"], VAEConfig(), EMNormalisation(MESH, ConditioningConfig()))
    other = save_checkpoint(tmp_path / "gan.pt", {**meta, "model_type": "diffusion", "modules": {"model": {}}})
    with pytest.raises(InputFileError, match="model type"):
        generate_to_file(_cfg(tmp_path, "x.h5", checkpoint=other), progress=False)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(InputFileError, match="cannot be read"):
        generate_to_file(_cfg(tmp_path, "x.h5", checkpoint=truncated), progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_geometry_slot_outside_the_model(trained: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, onnx = trained
    for source in ({"checkpoint": ckpt}, {"onnx": onnx}):
        with pytest.raises(ConfigError, match="geometry index 3 outside the model's 3"):
            generate_to_file(_cfg(tmp_path, "x.h5", geometry_index=3, **source), progress=False)


def test_generated_showers_follow_the_incident_energy(trained: tuple[Path, Path]) -> None:
    """Even a briefly trained model must scale with E: the output is normalised and multiplied back."""
    _, onnx = trained
    gen = load_onnx_generator(onnx)
    lo = generate(gen, np.full(200, 5e3), np.full(200, 90.0), 0, gen.conditioning, seed=1, batch_size=64)
    hi = generate(gen, np.full(200, 5e4), np.full(200, 90.0), 0, gen.conditioning, seed=1, batch_size=64)
    ratio = hi.sum(axis=1).mean() / lo.sum(axis=1).mean()
    assert 5.0 < ratio < 20.0

"""The shared suite every registered model type passes, by being registered in ``MODELS``.

For each entry: build on a tiny geometry of its kind, train a few steps (first stages trained first),
reload the checkpoint alone, resume exactly (same weights as an uninterrupted run), and, where the model
type generates: export ONNX with a parity check, generate from the checkpoint and from the ONNX file,
and validate the generated file against the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.trainer import TrainerConfig
from mlfastsim.showers.config import ExportConfig, GenerateConfig, TrainConfig
from mlfastsim.showers.geometry import DETECTOR_PRESETS, CartesianGrid, CylindricalMesh
from mlfastsim.showers.inference.export import export_onnx
from mlfastsim.showers.inference.generate import generate_to_file
from mlfastsim.showers.io.native import ShowerData, read_native, write_native
from mlfastsim.showers.models import MODELS, load_model, model_types_for, require_command
from mlfastsim.showers.models.contract import COMMANDS, ModelType
from mlfastsim.showers.sim.em import make_kinematics, simulate
from mlfastsim.showers.sim.hadronic import HADRON_CALORIMETERS, simulate_pions_data
from mlfastsim.showers.training.train import train_from_config
from mlfastsim.showers.validation.validate import run_validation

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MESH = CylindricalMesh(n_r=4, n_phi=3, n_z=5, size_r=6.0, size_z=4.0, name="tiny")
TINY_GRID = CartesianGrid(n_x=9, n_y=9, n_z=12, cell_x=30.0, cell_y=30.0, cell_z=106.0, name="tiny")
STEPS = 4


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small training file per geometry kind."""
    d = tmp_path_factory.mktemp("registry-data")
    e, a = make_kinematics(energies_gev=[10.0, 50.0], angles_deg=[70.0, 90.0], n_per_point=40, seed=1)
    mesh_file = write_native(simulate(DETECTOR_PRESETS["SiW"], TINY_MESH, e, a, seed=1), d / "mesh.h5")
    e = np.repeat(np.array([20e3, 50e3], dtype=np.float32), 60)
    grid_file = write_native(simulate_pions_data(e, TINY_GRID, HADRON_CALORIMETERS["steel_scint"], 3), d / "grid.h5")
    return {"mesh": mesh_file, "grid": grid_file}


def _train(spec: ModelType, files: dict[str, Path], out: Path, *, steps: int = STEPS, resume: bool = False,
           stages: dict[str, Path] | None = None) -> Path:
    """Train ``spec``'s tiny config; first stages are trained (once) and their checkpoints filled in."""
    model_cfg = spec.tiny_config()
    for stage in spec.stages(model_cfg):
        done = (stages or {}).get(stage.model_type)
        if done is None:
            done = _train(MODELS[stage.model_type], files, out.parent / f"stage-{stage.model_type}")
        model_cfg = model_cfg.model_copy(update={stage.field: done})
    cfg = TrainConfig(
        model=model_cfg, data=spec.tiny_data([files[spec.geometry_kind]]),
        trainer=TrainerConfig(max_steps=steps, batch_size=16, eval_every=2, checkpoint_every=2, seed=3),
        output_dir=out,
    )
    cfg.tracking.dir = out / "tracking"
    result = train_from_config(cfg, resume=resume, progress=False)
    assert result.last_checkpoint is not None and result.step == steps
    return result.last_checkpoint


@pytest.fixture(scope="module")
def trained(data_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every registered model type trained for STEPS steps (first stages shared)."""
    root = tmp_path_factory.mktemp("registry-runs")
    out: dict[str, Path] = {}
    for name in sorted(MODELS, key=lambda n: len(MODELS[n].stages(MODELS[n].tiny_config()))):
        out[name] = _train(MODELS[name], data_files, root / name, stages=out)
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_rebuilds_the_model_alone(name: str, trained: dict[str, Path]) -> None:
    loaded = load_model(trained[name])
    spec = MODELS[name]
    assert loaded.model_type == name and loaded.spec is spec
    state = load_checkpoint(trained[name])
    for module_name, module in loaded.modules.items():
        saved = state["modules"][module_name]
        assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())
    assert loaded.norm.geometry.n_voxels == (TINY_MESH.n_voxels if spec.geometry_kind == "mesh" else 12 * 7 * 7)
    assert loaded.norm.meta() == spec.normalisation_from(state).meta()


@pytest.mark.parametrize("name", list(MODELS))
def test_resume_ends_with_the_same_weights(name: str, data_files: dict[str, Path], trained: dict[str, Path],
                                           tmp_path: Path) -> None:
    spec = MODELS[name]
    stages = {s.model_type: trained[s.model_type] for s in spec.stages(spec.tiny_config())}
    _train(spec, data_files, tmp_path / "r", steps=STEPS // 2, stages=stages)
    resumed = _train(spec, data_files, tmp_path / "r", steps=STEPS, resume=True, stages=stages)
    a, b = load_checkpoint(trained[name])["modules"], load_checkpoint(resumed)["modules"]
    assert a.keys() == b.keys()
    for module_name in a:
        for key, value in a[module_name].items():
            assert torch.equal(value, b[module_name][key]), (module_name, key)


@pytest.mark.parametrize("name", model_types_for("generate"))
def test_export_generate_validate(name: str, trained: dict[str, Path], data_files: dict[str, Path],
                                  tmp_path: Path) -> None:
    spec = MODELS[name]
    onnx = export_onnx(ExportConfig(checkpoint=trained[name], onnx_file_name=tmp_path / f"{name}.onnx",
                                    parity_samples=32))
    assert onnx.is_file() and onnx.with_suffix(".json").is_file()
    kin = {"energies_gev": [20.0, 50.0], "n_per_point": 30, "seed": 4}
    if spec.geometry_kind == "mesh":
        kin["angles_deg"] = [80.0]
    from_ckpt = generate_to_file(GenerateConfig(checkpoint=trained[name], output=tmp_path / "a.h5", **kin),
                                 progress=False).load()
    from_onnx = generate_to_file(GenerateConfig(onnx=onnx, output=tmp_path / "b.h5", **kin), progress=False).load()
    assert from_ckpt.showers.shape == from_onnx.showers.shape == (60, from_ckpt.mesh.n_voxels)
    assert np.isfinite(from_ckpt.showers).all() and (from_ckpt.showers >= 0).all()
    scale = max(1.0, float(from_ckpt.showers.max()))
    np.testing.assert_allclose(from_onnx.showers, from_ckpt.showers, rtol=0, atol=1e-3 * scale)
    reference = read_native(data_files[spec.geometry_kind])
    candidate = read_native(tmp_path / "a.h5")
    if spec.geometry_kind == "grid":
        reference = ShowerData(reference.energies, TINY_GRID.crop(reference.showers, 7, 7), candidate.mesh,
                               reference.angles)
    metrics = run_validation(reference, candidate, tmp_path / "validation", classifier=False, exclude_empty=True)
    assert metrics["observables"] and (tmp_path / "validation" / "metrics.json").is_file()


@pytest.mark.parametrize("name", list(MODELS))
def test_unsupported_commands_are_refused_clearly(name: str, trained: dict[str, Path], tmp_path: Path) -> None:
    spec = MODELS[name]
    for command in COMMANDS:
        if not spec.supports(command):
            with pytest.raises(ConfigError, match=f"does not support `showers {command}`"):
                require_command(spec, command)
    if not spec.supports("export"):
        with pytest.raises(InputFileError, match="cannot be used for `showers export`"):
            export_onnx(ExportConfig(checkpoint=trained[name], onnx_file_name=tmp_path / "x.onnx"))


def test_every_entry_is_complete() -> None:
    for name, spec in MODELS.items():
        assert spec.name == name and spec.description and spec.commands <= set(COMMANDS)
        assert spec.tiny_config().type == name
        if spec.supports("meta-train") or spec.supports("adapt"):
            assert spec.loss is not None, f"{name}: meta-learning needs a supervised loss"


def test_shipped_models_load_by_name() -> None:
    """``pretrained:NAME`` works wherever a checkpoint is taken; every shipped shower model rebuilds from it."""
    from mlfastsim.showers.pretrained import list_pretrained

    for entry in list_pretrained():
        loaded = load_model(f"pretrained:{entry['name']}")
        assert loaded.model_type == entry["model_type"]
    with pytest.raises(ConfigError, match="no shipped model named 'nope'"):
        load_model("pretrained:nope")


def test_a_new_cfm_energy_network_trains_on_a_transferred_frozen_shape_network(
        trained: dict[str, Path], data_files: dict[str, Path], tmp_path: Path) -> None:
    """``transfer_from`` + ``trainable: [energy]``: how the shipped cfm got its total-first energy network on the
    GPU-trained shape transformer (scripts/make_cfm_pretrained.py).  Shapes stay bit-identical, energies move;
    a per_layer source gives a total_first target (the first energy layer does not match and starts fresh)."""
    spec = MODELS["cfm"]
    source = load_model(trained["cfm"])
    per_layer = source.config.model_copy(update={"energy_param": "per_layer"})
    src_cfg = TrainConfig(model=per_layer, data=spec.tiny_data([data_files["mesh"]]),
                          trainer=TrainerConfig(max_steps=2, batch_size=16, eval_every=2, checkpoint_every=2, seed=3),
                          output_dir=tmp_path / "src")
    src_cfg.tracking.dir = tmp_path / "tracking"
    first = train_from_config(src_cfg, progress=False).last_checkpoint
    cfg = src_cfg.model_copy(update={"model": source.config, "transfer_from": first, "trainable": ["energy"],
                                     "output_dir": tmp_path / "dst"})
    result = train_from_config(cfg, progress=False)
    before = load_model(first).model.state_dict()
    after = load_model(result.last_checkpoint).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("shape."))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("energy.")
               and before[k].shape == after[k].shape)
    assert after["energy.net.0.weight"].shape != before["energy.net.0.weight"].shape
    with pytest.raises(ConfigError, match="name no parameter"):
        train_from_config(cfg.model_copy(update={"trainable": ["energi"], "output_dir": tmp_path / "bad"}),
                          progress=False)

"""``showers export``: the generator of any registered model type as ONNX, with a JSON sidecar and a parity check.

Every model type exports the same way: its registry entry's sampler (one float32 input row
``[z, conditions]`` -> one output row in network units) goes through :func:`mlfastsim.core.export.export_onnx`
with a parity check against torch, and the sidecar records the model type, its config and its
normalisation, so ``showers generate --onnx`` rebuilds everything from the two files.  The Par04 VAE's
file is what Geant4's Par04 example reads:

What Geant4's Par04 example (``Par04InferenceSetup::GetEnergies`` and ``Par04OnnxInference::RunInference``)
does with a model, and therefore what the exported file provides:

* **one float32 input** of shape (batch, latent_dim + 2 + n_geometry_slots), laid out
  ``[z_0 .. z_{L-1}, E / MAX_ENERGY, angle_deg / MAX_ANGLE, geometry one-hot]`` with z ~ N(0, 1).  Par04
  reads the input name from the session (we call it ``input``), builds a (1, width) tensor and runs it;
  E and MAX_ENERGY are in the same unit (Geant4 uses MeV internally), the angle is in degrees.
* **one float32 output** (batch, n_voxels) in [0, 1] (a sigmoid): energies divided by the incident
  energy.  Par04 reads the first output and multiplies every value by the particle energy.
* **voxel order r, phi, z with z fastest**: ``Par04InferenceSetup::GetPositions`` places the deposits in
  loops r (outer), phi, z (inner), and Par04's training files are (N, R, PHI, Z) arrays.  mlfastsim
  stores z, phi, r with r fastest (CaloChallenge), so the export permutes the rows of the last layer's
  weights: the file speaks Par04's order at zero run-time cost.  ``voxel_order="native"`` keeps ours.

Everything the C++ side must be told (latent size, condition size, mesh, MAX_ENERGY, MAX_ANGLE, the
geometry slot) goes into a JSON sidecar ``<name>.json`` next to ``<name>.onnx``; ``showers generate``
reads it back to run the ONNX file without the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlfastsim import __version__
from mlfastsim.core.checkpoint import checkpoint_path, list_checkpoints, resolve_checkpoint_ref
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.export import ExportResult
from mlfastsim.core.export import export_onnx as export_module
from mlfastsim.core.io import atomic_write_json, require_file
from mlfastsim.core.pretrained import is_pretrained
from mlfastsim.showers.conditioning.em import ConditioningConfig, EMNormalisation
from mlfastsim.showers.config import ExportConfig
from mlfastsim.showers.models import LoadedModel, Normalisation, load_model
from mlfastsim.showers.models.layout import VOXEL_ORDERS, inverse_permutation, voxel_permutation
from mlfastsim.showers.models.vae import GeneratorModule
from mlfastsim.showers.pretrained import pretrained_path

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "SIDECAR_FORMAT", "VOXEL_ORDERS", "GeneratorModule", "build_generator",
           "export_onnx", "generator_inputs",
           "inverse_permutation", "load_generator_model", "make_sidecar", "random_generator_inputs",
           "resolve_checkpoint", "sidecar_path", "voxel_permutation"]

SIDECAR_FORMAT = "mlfastsim-onnx-generator"
SIDECAR_VERSION = 2
#: sidecar formats written by earlier versions that :func:`mlfastsim.showers.inference.generate.read_sidecar` reads
LEGACY_SIDECAR_FORMATS = ("mlfastsim-hadron-onnx",)
INPUT_NAME = "input"
OUTPUT_NAME = "output"
PARITY_SEED = 0


# -------------------------------------------------------------------------------------- generator
def load_generator_model(path: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint whose model can generate; anything else is an :class:`InputFileError`."""
    return load_model(path, command="generate", map_location=map_location)


def build_generator(loaded: LoadedModel, voxel_order: str = "native") -> torch.nn.Module:
    """The sampler of a loaded model, its output in ``voxel_order`` (the ONNX graph ``export_onnx`` writes)."""
    return loaded.sampler(voxel_order).eval()


def generator_inputs(z: np.ndarray, conditions: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """The input rows ``[z, conditions]`` as float32 (N, latent + cond_width)."""
    z = np.asarray(z, dtype=np.float32)
    n, latent = z.shape
    c = np.asarray(conditions, dtype=np.float32).reshape(n, -1)
    if out is None:
        out = np.empty((n, latent + c.shape[1]), dtype=np.float32)
    out[:, :latent] = z
    out[:, latent:] = c
    return out


def random_generator_inputs(n: int, latent_dim: int, norm: Normalisation | ConditioningConfig, *,
                            seed: int = PARITY_SEED) -> np.ndarray:
    """Inputs drawn like real ones (the normalisation's :meth:`random_conditions`): parity where it matters.

    A :class:`ConditioningConfig` stands for the VAE's normalisation.
    """
    if isinstance(norm, ConditioningConfig):
        norm = EMNormalisation(None, norm)
    rng = np.random.default_rng(seed)
    conditions = norm.random_conditions(n, rng)
    z = rng.standard_normal((n, latent_dim), dtype=np.float32)
    return generator_inputs(z, conditions)


# ------------------------------------------------------------------------------- finding the model
def _subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def _listing(names: list[str] | list[int]) -> str:
    return ", ".join(map(str, names)) if names else "none"


def _run_mtime(run_dir: Path) -> float:
    """When a run last changed: new checkpoints touch ``checkpoints/``, not the run directory itself."""
    times = [run_dir.stat().st_mtime]
    ckpt_dir = run_dir / "checkpoints"
    if ckpt_dir.is_dir():
        times.append(ckpt_dir.stat().st_mtime)
        times.extend(p.stat().st_mtime for _, p in list_checkpoints(ckpt_dir))
    return max(times)


def resolve_checkpoint(cfg: ExportConfig) -> Path:
    """The checkpoint to export: ``cfg.checkpoint``, or ``output_dir/study/run/checkpoints/step_N.pt``.

    ``run_name`` defaults to the most recently modified run of the study that has checkpoints (the one
    just adapted), ``adaptation_step`` to the run's last checkpoint (``latest``; ``best`` is the one with
    the lowest validation loss, see :func:`~mlfastsim.core.checkpoint.resolve_checkpoint_ref`).  Every miss
    lists what exists, so the user can pick from the message.
    """
    by_name = {"study_name": cfg.study_name, "run_name": cfg.run_name, "adaptation_step": cfg.adaptation_step}
    if cfg.checkpoint is not None:
        given = [k for k, v in by_name.items() if v is not None]
        if given:
            raise ConfigError(
                f"both a checkpoint and {', '.join(given)} were given", field="checkpoint",
                fix="pass either --checkpoint or --study-name/--run-name/--adaptation-step",
            )
        if is_pretrained(cfg.checkpoint):
            return pretrained_path(str(cfg.checkpoint))
        return require_file(resolve_checkpoint_ref(cfg.checkpoint, field="checkpoint"), what="checkpoint")
    root = Path(cfg.output_dir)
    if cfg.study_name is None:
        raise ConfigError(
            f"no checkpoint and no study name given (studies in {root}: {_listing(_subdirs(root))})",
            field="study_name", fix="pass --checkpoint FILE or --study-name NAME",
        )
    if not root.is_dir():
        raise ConfigError("output directory does not exist", file=root, field="output_dir",
                          fix="pass the --output-dir the study was written to")
    study = root / cfg.study_name
    if not study.is_dir():
        raise ConfigError(
            f"no study {cfg.study_name!r} (studies: {_listing(_subdirs(root))})", file=root, field="study_name",
            fix="pass one of the listed studies",
        )
    runs = _subdirs(study)
    if cfg.run_name is not None:
        run = study / cfg.run_name
        if not run.is_dir():
            raise ConfigError(f"no run {cfg.run_name!r} in study {cfg.study_name!r} (runs: {_listing(runs)})",
                              file=study, field="run_name", fix="pass one of the listed runs")
    else:
        with_checkpoints = [study / r for r in runs if list_checkpoints(study / r / "checkpoints")]
        if not with_checkpoints:
            raise InputFileError(f"study {cfg.study_name!r} has no run with checkpoints (runs: {_listing(runs)})",
                                 file=study, field="run_name", fix="run showers adapt first, or pass --checkpoint")
        run = max(with_checkpoints, key=lambda d: (_run_mtime(d), d.name))
    found = list_checkpoints(run / "checkpoints")
    if not found:
        raise InputFileError("run has no checkpoints", file=run / "checkpoints", field="run_name",
                             fix="pick a run that finished at least one checkpoint")
    if cfg.adaptation_step is None or cfg.adaptation_step == "latest":
        return found[-1][1]
    if cfg.adaptation_step == "best":
        return resolve_checkpoint_ref(run / "best", field="adaptation_step")
    steps = [s for s, _ in found]
    if cfg.adaptation_step not in steps:
        raise ConfigError(
            f"no checkpoint at step {cfg.adaptation_step} in run {run.name!r} (steps: {_listing(steps)})",
            file=run / "checkpoints", field="adaptation_step", fix="pass one of the listed steps",
        )
    return checkpoint_path(run / "checkpoints", cfg.adaptation_step)


# ------------------------------------------------------------------------------------------ sidecar
def sidecar_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.json``: the sidecar that travels with every exported model."""
    return Path(onnx_path).with_suffix(".json")


def make_sidecar(loaded: LoadedModel, checkpoint: Path, result: ExportResult, voxel_order: str,
                 input_width: int) -> dict[str, Any]:
    """Everything needed to run the ONNX file without the checkpoint (here, or in C++ such as Geant4 Par04)."""
    spec, norm, latent = loaded.spec, loaded.norm, loaded.latent_dim
    n_voxels = norm.geometry.n_voxels
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "onnx_file": result.path.name,
        "model_type": spec.name,
        "model_config": loaded.config.model_dump(mode="json"),
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "source_step": loaded.state.get("step"),
        "mlfastsim_version": __version__,
        "latent_dim": latent,
        **norm.meta(),
        "input": {"name": result.signature.input_name, "dtype": "float32", "shape": ["batch", input_width],
                  "width": input_width, "layout": norm.input_layout(latent)},
        "output": {"name": result.signature.output_name, "dtype": "float32", "shape": ["batch", n_voxels],
                   "width": n_voxels, "normalisation": spec.output_description(norm),
                   "voxel_order": voxel_order, "voxel_order_description": VOXEL_ORDERS.get(voxel_order, voxel_order)},
        "export": {"exporter": result.exporter, "opset": result.opset},
        "parity": {"max_abs_diff": result.max_abs_diff, "tolerance": result.tolerance,
                   "samples": result.parity_samples, "inputs": "drawn like real conditions (seed 0)"},
        **spec.sidecar_fields(loaded.config, norm, latent, voxel_order, result.path.name),
    }


# ------------------------------------------------------------------------------------------- export
def export_onnx(cfg: ExportConfig, *, voxel_order: str | None = None, num_threads: int | None = None) -> Path:
    """Export the generator of the configured checkpoint to ``cfg.onnx_file_name`` plus its sidecar.

    ``voxel_order`` defaults to the model type's first (Par04's for the VAE); a model type that cannot
    write the asked order is refused.  Parity is checked on ``cfg.parity_samples`` inputs drawn like real
    conditions; a difference above ``cfg.parity_tolerance`` times the largest output (at least 1) raises a
    :class:`~mlfastsim.core.export.ParityError` and neither file is written.
    """
    target = Path(cfg.onnx_file_name)
    if target.suffix.lower() == ".json":
        raise ConfigError("the ONNX file cannot end in .json (that name is its sidecar's)", field="onnx_file_name",
                          fix="name it e.g. model.onnx")
    checkpoint = resolve_checkpoint(cfg)
    loaded = load_model(checkpoint, command="export").with_steps(cfg.steps)
    order = voxel_order or loaded.spec.voxel_orders[0]
    if order not in loaded.spec.voxel_orders:
        raise ConfigError(f"a {loaded.model_type!r} model exports in voxel order {', '.join(loaded.spec.voxel_orders)},"
                          f" not {order!r}", field="voxel_order",
                          fix=f"use one of {', '.join(loaded.spec.voxel_orders)}")
    sampler = loaded.sampler(order).eval()
    width = loaded.latent_dim + loaded.norm.cond_width
    inputs = random_generator_inputs(min(cfg.parity_samples, loaded.spec.max_parity_samples), loaded.latent_dim,
                                     loaded.norm)

    # the tolerance is relative to the largest output (at least 1): the VAE writes [0, 1], the hadron models
    # cell energies in MIPs (up to ~100), where float32 rounding alone exceeds an absolute 1e-4
    with torch.no_grad():
        scale = max(1.0, float(sampler(torch.from_numpy(inputs)).abs().max()))

    def write_sidecar(result: ExportResult) -> None:
        atomic_write_json(sidecar_path(target), make_sidecar(loaded, checkpoint, result, order, width))

    export_module(
        sampler, target, input_width=width, parity_inputs=inputs, tolerance=cfg.parity_tolerance * scale,
        opset=cfg.opset,
        input_name=INPUT_NAME, output_name=OUTPUT_NAME, num_threads=num_threads, before_commit=write_sidecar,
    )
    return target

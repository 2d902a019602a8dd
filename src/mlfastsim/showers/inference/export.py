"""``showers export``: the generator of a trained or adapted model as ONNX, in Geant4 Par04's layout.

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

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from mlfastsim import __version__
from mlfastsim.core.checkpoint import checkpoint_path, list_checkpoints
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.export import ExportResult
from mlfastsim.core.export import export_onnx as export_module
from mlfastsim.core.io import atomic_write_json, require_file
from mlfastsim.showers.conditioning.em import make_conditions, n_conditions
from mlfastsim.showers.config import ConditioningConfig, ExportConfig
from mlfastsim.showers.geometry import CylindricalMesh
from mlfastsim.showers.models import LoadedModel, load_model
from mlfastsim.showers.models.vae import ShowerVAE

SIDECAR_FORMAT = "mlfastsim-onnx-generator"
SIDECAR_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "output"
# How the voxels of one shower follow each other in a flat output row.
VOXEL_ORDERS: dict[str, str] = {
    "par04": "r,phi,z (z fastest; Geant4 Par04)",
    "native": "z,phi,r (r fastest; CaloChallenge, mlfastsim native)",
}
PARITY_SEED = 0
# Below this many output values, GeneratorModule.generate_into finishes on the calling thread (see there).
_SERIAL_ELEMENTS = 1 << 18


# ----------------------------------------------------------------------------------- voxel orders
def voxel_permutation(mesh: CylindricalMesh, voxel_order: str) -> np.ndarray | None:
    """Index p with ``ordered[:, j] = native[:, p[j]]`` (None for the native order itself)."""
    if voxel_order not in VOXEL_ORDERS:
        raise ConfigError(
            f"unknown voxel order {voxel_order!r}", field="voxel_order", fix=f"use one of {', '.join(VOXEL_ORDERS)}"
        )
    if voxel_order == "native":
        return None
    native = mesh.to_grid(np.arange(mesh.n_voxels, dtype=np.int64))  # (z, phi, r): entry = native flat index
    return np.ascontiguousarray(native.transpose(2, 1, 0)).reshape(-1)  # (r, phi, z), z fastest


def inverse_permutation(mesh: CylindricalMesh, voxel_order: str) -> np.ndarray | None:
    """Index q with ``native[:, i] = ordered[:, q[i]]`` (None for the native order)."""
    p = voxel_permutation(mesh, voxel_order)
    if p is None:
        return None
    q = np.empty_like(p)
    q[p] = np.arange(p.size, dtype=p.dtype)
    return q


# -------------------------------------------------------------------------------------- generator
class GeneratorModule(nn.Module):
    """A model's generator as one function of one input: [z, E/MAX_E, angle/MAX_A, one-hot] -> [0, 1].

    The single concatenated input is Par04's contract; the last layer is kept apart from the hidden
    stack so :meth:`generate_into` can write its matrix product straight into the caller's buffer.
    """

    def __init__(self, hidden: nn.Module, output: nn.Linear, *, latent_dim: int, n_conditions: int) -> None:
        super().__init__()
        if output.bias is None:
            raise ValueError("the generator's output layer needs a bias (Par04 decoders have one)")
        self.hidden = hidden
        self.output = output
        self.latent_dim = latent_dim
        self.n_conditions = n_conditions
        self.n_voxels = output.out_features

    @property
    def input_width(self) -> int:
        return self.latent_dim + self.n_conditions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.output(self.hidden(x)))

    def generate_into(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` written into ``out`` (no output allocation; call under ``torch.inference_mode``).

        Same operations as :meth:`forward` (the addmm that ``nn.Linear`` runs, then the sigmoid), done
        in place: a fresh 160 kB-per-shower output costs as much in page faults as the product itself.

        Small outputs (a few showers; Geant4 asks for one at a time) take another route: the product via
        GEMV for one row, then bias and sigmoid in one numpy/scipy pass on the calling thread.  torch's
        OpenMP-parallel elementwise ops (and MKL's GEMM with one row) wait for a descheduled worker
        thread whenever the machine is busy, which turned 0.5 ms showers into 10 ms ones.
        """
        h = self.hidden(x)
        weight, bias = self.output.weight, self.output.bias
        if out.device.type == "cpu" and out.numel() <= _SERIAL_ELEMENTS:
            if h.shape[0] == 1:
                torch.mv(weight, h[0], out=out[0])
            else:
                torch.mm(h, weight.t(), out=out)
            values = out.numpy()
            np.add(values, bias.detach().numpy(), out=values)
            expit(values, out=values)
            return out
        torch.addmm(bias, h, weight.t(), out=out)
        return torch.sigmoid_(out)


def _permuted_linear(layer: nn.Linear, permutation: np.ndarray | None) -> nn.Linear:
    if permutation is None:
        return layer
    index = torch.from_numpy(permutation).to(layer.weight.device)
    new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[index])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[index])
    return new


def vae_generator(model: nn.Module, permutation: np.ndarray | None) -> GeneratorModule:
    """The Par04 VAE's decoder (hidden stack + voxel layer + sigmoid) as a :class:`GeneratorModule`."""
    if not isinstance(model, ShowerVAE):
        raise TypeError(f"expected a ShowerVAE, got {type(model).__name__}")
    return GeneratorModule(model.decoder, _permuted_linear(model.to_voxels, permutation),
                           latent_dim=model.latent_dim, n_conditions=model.n_conditions).eval()


#: Model types that can generate (and be exported), by checkpoint ``model_type``.
GENERATORS: dict[str, Callable[[nn.Module, np.ndarray | None], GeneratorModule]] = {
    "vae": vae_generator,
}


def load_generator_model(path: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint whose model can generate; anything else is an :class:`InputFileError`.

    ``load_model`` reports a model type it does not know as a config problem (``--model-type``); here the
    type comes from the file, so it is the file that is wrong.
    """
    try:
        loaded = load_model(path, map_location=map_location)
    except ConfigError as exc:
        raise InputFileError(
            f"checkpoint holds a model type mlfastsim does not know ({exc.message})", file=path, field="model_type",
            fix=f"pass a checkpoint of a generative model ({', '.join(GENERATORS)})",
        ) from exc
    if loaded.model_type not in GENERATORS:
        raise InputFileError(
            f"checkpoint holds a {loaded.model_type!r} model, which cannot generate showers", file=path,
            field="model_type", fix=f"pass a checkpoint of one of: {', '.join(GENERATORS)}",
        )
    loaded.model.eval()
    return loaded


def build_generator(loaded: LoadedModel, voxel_order: str = "native") -> GeneratorModule:
    """The generator of a loaded model, its output in ``voxel_order``."""
    return GENERATORS[loaded.model_type](loaded.model, voxel_permutation(loaded.mesh, voxel_order))


def generator_inputs(
    z: np.ndarray,
    energies_mev: np.ndarray,
    angles_deg: np.ndarray | None,
    geometry_index: int | np.ndarray,
    cond: ConditioningConfig,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The Par04 input rows [z, E/MAX_ENERGY, angle/MAX_ANGLE, one-hot] as float32 (N, L + 2 + slots)."""
    z = np.asarray(z, dtype=np.float32)
    n, latent = z.shape
    width = latent + n_conditions(cond)
    if out is None:
        out = np.empty((n, width), dtype=np.float32)
    out[:, :latent] = z
    out[:, latent:] = make_conditions(energies_mev, angles_deg, geometry_index, cond)
    return out


def random_generator_inputs(
    n: int, latent_dim: int, cond: ConditioningConfig, *, seed: int = PARITY_SEED
) -> np.ndarray:
    """Inputs drawn like real ones, so parity is tested where the model is used.

    z ~ N(0, 1), energies log-uniform over the three decades below MAX_ENERGY, angles uniform in
    (0, MAX_ANGLE], every geometry slot.
    """
    rng = np.random.default_rng(seed)
    e_max = cond.max_energy_gev * 1000.0
    energies = np.exp(rng.uniform(math.log(e_max / 1000.0), math.log(e_max), n))
    angles = rng.uniform(0.0, cond.max_angle_deg, n)
    angles = np.where(angles > 0, angles, cond.max_angle_deg)
    slots = rng.integers(0, cond.n_geometry_slots, n)
    z = rng.standard_normal((n, latent_dim), dtype=np.float32)
    return generator_inputs(z, energies, angles, slots, cond)


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
    just adapted), ``adaptation_step`` to the run's last checkpoint.  Every miss lists what exists, so
    the user can pick from the message.
    """
    by_name = {"study_name": cfg.study_name, "run_name": cfg.run_name, "adaptation_step": cfg.adaptation_step}
    if cfg.checkpoint is not None:
        given = [k for k, v in by_name.items() if v is not None]
        if given:
            raise ConfigError(
                f"both a checkpoint and {', '.join(given)} were given", field="checkpoint",
                fix="pass either --checkpoint or --study-name/--run-name/--adaptation-step",
            )
        return require_file(cfg.checkpoint, what="checkpoint")
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
    if cfg.adaptation_step is None:
        return found[-1][1]
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


def make_sidecar(
    loaded: LoadedModel,
    generator: GeneratorModule,
    checkpoint: Path,
    result: ExportResult,
    voxel_order: str,
) -> dict[str, Any]:
    """Everything needed to run the ONNX file without the checkpoint (here or in Geant4 Par04)."""
    cond, mesh, latent = loaded.conditioning, loaded.mesh, generator.latent_dim
    slots = cond.n_geometry_slots
    layout = [
        {"name": "latent", "offset": 0, "size": latent, "meaning": "z ~ N(0, 1)"},
        {"name": "energy", "offset": latent, "size": 1,
         "meaning": "incident energy / MAX_ENERGY (same unit: MeV / max_energy_mev)"},
        {"name": "angle", "offset": latent + 1, "size": 1,
         "meaning": "incidence angle in degrees / MAX_ANGLE (angle to the front face, 90 = normal incidence)"},
        {"name": "geometry", "offset": latent + 2, "size": slots,
         "meaning": "one-hot geometry slot (a newly adapted geometry uses slot 0)"},
    ]
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "onnx_file": result.path.name,
        "model_type": loaded.model_type,
        "model_config": loaded.model_config.model_dump(mode="json"),
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "source_step": loaded.state.get("step"),
        "mlfastsim_version": __version__,
        "latent_dim": latent,
        "n_geometry_slots": slots,
        "max_energy_mev": cond.max_energy_gev * 1000.0,
        "max_energy_gev": cond.max_energy_gev,
        "max_angle_deg": cond.max_angle_deg,
        "conditioning": cond.model_dump(mode="json"),
        "input": {"name": result.signature.input_name, "dtype": "float32", "shape": ["batch", generator.input_width],
                  "width": generator.input_width, "layout": layout},
        "output": {"name": result.signature.output_name, "dtype": "float32", "shape": ["batch", mesh.n_voxels],
                   "width": mesh.n_voxels, "range": [0.0, 1.0],
                   "normalisation": "multiply by the incident energy (MeV) to get the energy per voxel in MeV",
                   "voxel_order": voxel_order, "voxel_order_description": VOXEL_ORDERS[voxel_order]},
        "mesh": mesh.to_dict(),
        "export": {"exporter": result.exporter, "opset": result.opset},
        "parity": {"max_abs_diff": result.max_abs_diff, "tolerance": result.tolerance,
                   "samples": result.parity_samples, "inputs": "drawn like real conditions (seed 0)"},
        "geant4_par04": {
            "macro": [
                f"/Par04/inference/setSizeLatentVector {latent}",
                f"/Par04/inference/setSizeConditionVector {2 + slots}",
                f"/Par04/inference/setModelPathName {result.path.name}",
                "/Par04/inference/setInferenceLibrary ONNX",
                f"/Par04/inference/setSizeOfRhoCells {mesh.size_r} mm",
                f"/Par04/inference/setSizeOfZCells {mesh.size_z} mm",
                f"/Par04/inference/setNbOfRhoCells {mesh.n_r}",
                f"/Par04/inference/setNbOfPhiCells {mesh.n_phi}",
                f"/Par04/inference/setNbOfZCells {mesh.n_z}",
            ],
            "notes": "Par04InferenceSetup hard-codes fMaxEnergy (1024000 MeV), fMaxAngle (90 deg) and a 2-slot "
                     "one-hot; set them to max_energy_mev, max_angle_deg and the geometry slot above. "
                     + ("The output is in Par04's voxel order." if voxel_order == "par04"
                        else "The output is in mlfastsim's native voxel order, not Par04's."),
        },
    }


# ------------------------------------------------------------------------------------------- export
def export_onnx(cfg: ExportConfig, *, voxel_order: str = "par04", num_threads: int | None = None) -> Path:
    """Export the generator of the configured checkpoint to ``cfg.onnx_file_name`` plus its sidecar.

    The file name is taken as given (relative to the working directory).  Parity is checked on
    ``cfg.parity_samples`` inputs drawn like real conditions; above ``cfg.parity_tolerance`` a
    :class:`~mlfastsim.core.export.ParityError` is raised and neither file is written.
    """
    target = Path(cfg.onnx_file_name)
    if target.suffix.lower() == ".json":
        raise ConfigError("the ONNX file cannot end in .json (that name is its sidecar's)", field="onnx_file_name",
                          fix="name it e.g. model.onnx")
    checkpoint = resolve_checkpoint(cfg)
    from mlfastsim.showers.hadron_generate import checkpoint_model_type, export_hadron_onnx
    from mlfastsim.showers.hadron_training import is_hadron_model

    if is_hadron_model(checkpoint_model_type(checkpoint)):
        return export_hadron_onnx(checkpoint, target, opset=cfg.opset, tolerance=cfg.parity_tolerance,
                                  parity_samples=min(cfg.parity_samples, 64), num_threads=num_threads)
    loaded = load_generator_model(checkpoint)
    generator = build_generator(loaded, voxel_order)
    inputs = random_generator_inputs(cfg.parity_samples, generator.latent_dim, loaded.conditioning)

    def write_sidecar(result: ExportResult) -> None:
        atomic_write_json(sidecar_path(target), make_sidecar(loaded, generator, checkpoint, result, voxel_order))

    export_module(
        generator, target, input_width=generator.input_width, parity_inputs=inputs,
        tolerance=cfg.parity_tolerance, opset=cfg.opset, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        num_threads=num_threads, before_commit=write_sidecar,
    )
    return target

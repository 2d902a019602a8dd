"""Generation and ONNX export for the hadron models, behind ``showers generate`` and ``showers export``.

The contract mirrors the EM one: one float input row per shower, ``[z (latent_dim), E_inc / energy_norm]``,
one output row of ``n_voxels`` cells in network units (MeV / ``energy_scale_mev``), x fastest.  Latent
codes come from ``numpy.random.default_rng(seed)``, batch after batch from one stream, so a checkpoint and
its ONNX export give the same showers for the same seed whatever the batch size.  The readout threshold
of the training data is applied to the output, as the detector would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlfastsim import __version__
from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.export import OnnxRunner, make_session
from mlfastsim.core.export import export_onnx as export_module
from mlfastsim.core.io import atomic_write_json, ensure_writable_dir, require_file
from mlfastsim.core.progress import progress_bar
from mlfastsim.showers.conditioning.grid import HadronNormalisation, warn_outside_range
from mlfastsim.showers.io.formats import ShowerData, write_native

logger = logging.getLogger(__name__)

HADRON_SIDECAR_FORMAT = "mlfastsim-hadron-onnx"
INPUT_NAME, OUTPUT_NAME = "input", "output"
GENERATIVE = ("wgan", "bibae", "postprocess")  # the regressor only serves the WGAN's training


def checkpoint_model_type(path: str | Path) -> str | None:
    """The ``model_type`` stored in a checkpoint (None when absent); errors for unreadable files.

    Memory-mapped, so dispatching on it does not read the weights a second time.
    """
    return load_checkpoint(path, mmap=True).get("model_type")


def sidecar_model_kind(onnx_path: str | Path) -> str | None:
    """``hadron`` for a hadron-model sidecar, None otherwise (the EM reader then reports problems)."""
    side = Path(onnx_path).with_suffix(".json")
    try:
        return "hadron" if json.loads(side.read_text()).get("format") == HADRON_SIDECAR_FORMAT else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def _latents(rng: np.random.Generator, n: int, latent_dim: int) -> np.ndarray:
    return rng.standard_normal((n, latent_dim), dtype=np.float32)


def generate_hadrons(run: Any, latent_dim: int, norm: HadronNormalisation, energies_mev: np.ndarray, *,
                     seed: int, batch_size: int = 100, progress: bool = False) -> np.ndarray:
    """Showers in MeV (N, n_voxels); ``run`` maps an input (B, latent + 1) float32 array to network units."""
    rng = np.random.default_rng(seed)
    e = norm.conditions(energies_mev)
    n = e.shape[0]
    out = np.empty((n, norm.grid.n_voxels), dtype=np.float32)
    with progress_bar(n, "generating hadron showers", enabled=progress) as bar:
        for lo in range(0, n, batch_size):
            eb = e[lo : lo + batch_size]
            inp = np.concatenate([_latents(rng, eb.shape[0], latent_dim), eb[:, None]], axis=1)
            out[lo : lo + eb.shape[0]] = norm.to_mev(run(inp))
            bar.advance(eb.shape[0])
    return out


def torch_runner(sampler: nn.Module, device: torch.device | None = None) -> Any:
    dev = device or torch.device("cpu")
    sampler = sampler.to(dev).eval()

    @torch.no_grad()
    def run(inp: np.ndarray) -> np.ndarray:
        return sampler(torch.from_numpy(inp).to(dev)).cpu().numpy()

    return run


def read_hadron_sidecar(onnx_path: str | Path) -> tuple[dict[str, Any], HadronNormalisation]:
    side = Path(onnx_path).with_suffix(".json")
    try:
        sidecar = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError("hadron ONNX sidecar cannot be read", file=side, fix="re-export the model") from exc
    norm = HadronNormalisation.from_dict(sidecar.get("normalisation", {}), source=side)
    return sidecar, norm


def generate_hadrons_to_file(cfg: Any, energies_mev: np.ndarray, *, progress: bool = True) -> ShowerData:
    """``showers generate`` for a hadron checkpoint or ONNX export (``cfg`` is a GenerateConfig)."""
    from mlfastsim.core.devices import select_device
    from mlfastsim.showers.hadron_training import load_hadron_model

    ensure_writable_dir(Path(cfg.output).parent if str(Path(cfg.output).parent) else Path("."))
    if cfg.checkpoint is not None:
        device = select_device(cfg.device)
        loaded = load_hadron_model(cfg.checkpoint, map_location=device, expect_type=GENERATIVE)
        norm, latent, model_type = loaded.norm, loaded.latent_dim, loaded.model_type
        run = torch_runner(loaded.sampler(), device)
        origin: dict[str, Any] = {"source_model": str(cfg.checkpoint), "source_format": "checkpoint",
                                  "source_step": loaded.state.get("step")}
    else:
        onnx_path = require_file(cfg.onnx, what="ONNX model")
        sidecar, norm = read_hadron_sidecar(onnx_path)
        latent, model_type = int(sidecar["latent_dim"]), str(sidecar["model_type"])
        runner = OnnxRunner(make_session(onnx_path, num_threads=cfg.device.num_threads), source=onnx_path)
        sig = runner.signature
        if sig.input_width is not None and sig.input_width != latent + 1:
            raise InputFileError(f"ONNX input width {sig.input_width} differs from the sidecar's latent_dim "
                                 f"{latent} + 1", file=onnx_path, field="input",
                                 fix=f"pair {onnx_path.name} with the sidecar exported with it")
        if sig.output_width is not None and sig.output_width != norm.grid.n_voxels:
            raise InputFileError(f"ONNX output width {sig.output_width} differs from the grid's "
                                 f"{norm.grid.n_voxels} cells", file=onnx_path, field="output",
                                 fix=f"pair {onnx_path.name} with the sidecar exported with it")
        run = runner
        origin = {"source_model": str(onnx_path), "source_format": "onnx",
                  "source_checkpoint": sidecar.get("source_checkpoint")}
    warn_outside_range(energies_mev, norm)
    showers = generate_hadrons(run, latent, norm, energies_mev, seed=cfg.seed, batch_size=min(cfg.batch_size, 1000),
                               progress=progress)
    meta = {**origin, "model_type": model_type, "seed": int(cfg.seed), "particle": "pion",
            "calorimeter": {"threshold_mev": norm.threshold_mev, "mip_mev": norm.energy_scale_mev},
            "generator": f"mlfastsim {__version__}"}
    data = ShowerData(energies_mev, showers, norm.grid, np.full(len(energies_mev), 90.0, np.float32), meta)
    write_native(data, cfg.output)
    return data


def export_hadron_onnx(checkpoint: Path, target: Path, *, opset: int = 18, tolerance: float = 1e-4,
                       parity_samples: int = 64, num_threads: int | None = None) -> Path:
    """Export a hadron model's sampler with a parity check, plus its JSON sidecar (written only on success)."""
    from mlfastsim.showers.hadron_training import load_hadron_model

    if target.suffix.lower() == ".json":
        raise ConfigError("the ONNX file cannot end in .json (that name is its sidecar's)", field="onnx_file_name",
                          fix="name it e.g. model.onnx")
    loaded = load_hadron_model(checkpoint, expect_type=GENERATIVE)
    sampler = loaded.sampler()
    latent = loaded.latent_dim
    norm = loaded.norm
    rng = np.random.default_rng(12345)
    lo, hi = norm.energy_range_gev
    e = rng.uniform(lo, hi, parity_samples) / norm.energy_norm_gev
    inputs = np.concatenate([_latents(rng, parity_samples, latent), e[:, None].astype(np.float32)], axis=1)

    def write_sidecar(result: Any) -> None:
        atomic_write_json(target.with_suffix(".json"), {
            "format": HADRON_SIDECAR_FORMAT, "format_version": 1, "onnx_file": target.name,
            "model_type": loaded.model_type, "model_config": loaded.config.model_dump(mode="json"),
            "source_checkpoint": str(checkpoint), "source_step": loaded.state.get("step"),
            "mlfastsim_version": __version__, "latent_dim": latent, "normalisation": norm.to_dict(),
            "mesh": norm.grid.to_dict(),
            "input": {"name": INPUT_NAME, "width": latent + 1, "layout": [
                {"name": "latent", "offset": 0, "size": latent, "meaning": "z ~ N(0, 1)"},
                {"name": "energy", "offset": latent, "size": 1,
                 "meaning": f"incident energy / {norm.energy_norm_gev:g} GeV"}]},
            "output": {"name": OUTPUT_NAME, "width": norm.grid.n_voxels, "voxel_order": "z,y,x (x fastest)",
                       "meaning": f"cell energy / {norm.energy_scale_mev:g} MeV; zero cells below "
                                  f"{norm.threshold_mev:g} MeV after scaling"},
            "parity": {"max_abs_diff": result.max_abs_diff, "samples": result.parity_samples,
                       "tolerance": result.tolerance, "exporter": result.exporter},
        })

    export_module(sampler, target, input_width=latent + 1, parity_inputs=inputs, tolerance=tolerance, opset=opset,
                  input_name=INPUT_NAME, output_name=OUTPUT_NAME, num_threads=num_threads,
                  before_commit=write_sidecar)
    return target

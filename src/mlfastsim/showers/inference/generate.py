"""``showers generate``: sample showers from a checkpoint or an exported ONNX file into the native format.

Every model type and both sources run the same generator contract (:mod:`mlfastsim.showers.inference.export`):
one input row ``[z, conditions]`` per shower (conditions from the model's normalisation: for the VAE
``[E/MAX_ENERGY, angle/MAX_ANGLE, geometry one-hot]``), one output row in network units that is multiplied
by the normalisation's ``row_scale`` (the incident energy for the VAE) and finished by its readout
threshold.  The latent codes are drawn with **numpy** from the
seed (``default_rng(seed)``, batch after batch from one stream), so a checkpoint and its ONNX export
give the same showers for the same seed, and the result does not depend on ``batch_size``.

The output is a native HDF5 file (``formats.write_native``) with the mesh and provenance (source
model, seed) in its metadata, so ``showers validate`` reads it like any simulated sample.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from mlfastsim import __version__
from mlfastsim.core.devices import select_device
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.export import OnnxRunner, make_session
from mlfastsim.core.io import check_allocation, check_free_space, check_output_file, require_file
from mlfastsim.core.progress import progress_bar
from mlfastsim.showers.conditioning.em import ConditioningConfig, EMNormalisation
from mlfastsim.showers.config import GenerateConfig
from mlfastsim.showers.geometry import CylindricalMesh, Mesh
from mlfastsim.showers.inference.export import (
    LEGACY_SIDECAR_FORMATS,
    SIDECAR_FORMAT,
    generator_inputs,
    load_generator_model,
    sidecar_path,
)
from mlfastsim.showers.io.native import StoredShowers, native_writer
from mlfastsim.showers.models import MODELS, LoadedModel, ModelType, Normalisation
from mlfastsim.showers.models.contract import conditioning_of
from mlfastsim.showers.models.layout import VOXEL_ORDERS
from mlfastsim.showers.sim.em import make_kinematics

logger = logging.getLogger(__name__)

# Rows per onnxruntime call when the output must be reordered: a tile of scratch (10 MB at the Par04 mesh)
# stays in the last-level cache between the product that writes it and the reorder that reads it, while
# calls stay large enough for the matrix product to run at full speed.  Denormalising and reordering use
# numpy (one thread): the pass is memory-bound, and torch's OpenMP regions stall badly on a busy machine.
_REORDER_ROWS = 64


# ------------------------------------------------------------------------------------- ONNX models
@dataclass
class OnnxGenerator:
    """An exported generator ready to run: session, IO-bound runner and what its sidecar says."""

    path: Path
    session: ort.InferenceSession
    runner: OnnxRunner
    sidecar: dict[str, Any]
    spec: ModelType
    norm: Normalisation
    latent_dim: int
    voxel_order: str

    @property
    def model_type(self) -> str:
        return self.spec.name

    @property
    def mesh(self) -> Mesh:
        return self.norm.geometry

    @property
    def conditioning(self) -> ConditioningConfig:
        return conditioning_of(self.norm, self.model_type)

    @property
    def input_width(self) -> int:
        return self.latent_dim + self.norm.cond_width


def _sidecar_field(sidecar: dict[str, Any], key: str, path: Path) -> Any:
    if key not in sidecar:
        raise InputFileError(f"sidecar has no {key!r}", file=path, field=key,
                             fix="re-export the model with showers export")
    return sidecar[key]


def read_sidecar(onnx_path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of an exported model; missing or unreadable is an :class:`InputFileError`."""
    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise InputFileError(
            f"ONNX model {Path(onnx_path).name} has no sidecar (mesh and conditioning are unknown without it)",
            file=path, fix=f"keep {path.name} (written by showers export) next to {Path(onnx_path).name}",
        )
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError("sidecar is not valid JSON", file=path, fix="re-export the model") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") not in (SIDECAR_FORMAT, *LEGACY_SIDECAR_FORMATS):
        raise InputFileError(f"not an mlfastsim ONNX sidecar (format is not {SIDECAR_FORMAT!r})", file=path,
                             field="format", fix="re-export the model with showers export")
    return sidecar


def load_onnx_generator(path: str | Path, *, num_threads: int | None = None) -> OnnxGenerator:
    """Open an exported model and cross-check it with its sidecar before anything is generated.

    The input width is checked three ways (the ONNX graph, the sidecar's ``input.width`` and latent_dim +
    the normalisation's condition width): a file paired with the wrong sidecar would otherwise generate
    plausible-looking nonsense.
    """
    onnx_path = require_file(path, what="ONNX model")
    sidecar = read_sidecar(onnx_path)
    side = sidecar_path(onnx_path)
    model_type = str(sidecar.get("model_type", "vae"))  # version-1 VAE sidecars may lack it
    if model_type not in MODELS:
        raise InputFileError(f"sidecar names a model type this mlfastsim does not know ({model_type!r})", file=side,
                             field="model_type", fix=f"re-export with this version ({', '.join(MODELS)})")
    spec = MODELS[model_type]
    norm = spec.normalisation_from(sidecar, source=side)
    latent = int(_sidecar_field(sidecar, "latent_dim", side))
    inp, out = _sidecar_field(sidecar, "input", side), _sidecar_field(sidecar, "output", side)
    voxel_order = str(out.get("voxel_order", ""))
    if sidecar.get("format") in LEGACY_SIDECAR_FORMATS:
        voxel_order = "native"  # the version-1 hadron exports wrote the grid's own order
    if voxel_order not in VOXEL_ORDERS:
        raise InputFileError(f"unknown voxel order {voxel_order!r}", file=side, field="output.voxel_order",
                             fix=f"use one of {', '.join(VOXEL_ORDERS)}")
    expected = latent + norm.cond_width
    if int(inp.get("width", -1)) != expected:
        raise InputFileError(
            f"sidecar input width {inp.get('width')} differs from latent_dim {latent} + {norm.cond_width} "
            f"condition columns = {expected}",
            file=side, field="input.width", fix="re-export the model",
        )
    session = make_session(onnx_path, num_threads=num_threads)
    runner = OnnxRunner(session, source=onnx_path)
    sig = runner.signature
    if sig.input_width is not None and sig.input_width != expected:
        raise InputFileError(
            f"ONNX input width {sig.input_width} differs from the sidecar's {expected} "
            f"(latent_dim {latent} + {norm.cond_width} condition columns)",
            file=onnx_path, field="input", fix=f"pair {onnx_path.name} with the sidecar exported with it",
        )
    n_voxels = norm.geometry.n_voxels
    if sig.output_width is not None and sig.output_width != n_voxels:
        raise InputFileError(
            f"ONNX output width {sig.output_width} differs from the sidecar mesh's {n_voxels} voxels "
            f"({norm.geometry.describe()})",
            file=onnx_path, field="output", fix=f"pair {onnx_path.name} with the sidecar exported with it",
        )
    return OnnxGenerator(onnx_path, session, runner, sidecar, spec, norm, latent, voxel_order)


# ---------------------------------------------------------------------------------------- backends
class _TorchBackend:
    """Runs a sampler module into the final output (CPU) or through a device buffer (GPU).

    A sampler with ``generate_into(x, out)`` (the VAE's :class:`~mlfastsim.showers.models.vae.GeneratorModule`)
    writes straight into the output; any other returns a tensor that is copied.
    """

    def __init__(self, generator: nn.Module, n_voxels: int, input_width: int) -> None:
        self.generator = generator.eval()
        self.device = next(generator.parameters()).device
        self.n_voxels = n_voxels
        self.input_width = input_width
        self._buffer: torch.Tensor | None = None

    def _run_into(self, xt: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        generate_into = getattr(self.generator, "generate_into", None)
        if generate_into is not None:
            return generate_into(xt, out)
        out.copy_(self.generator(xt).reshape(out.shape))
        return out

    def __call__(self, x: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
        b = x.shape[0]
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(self.device, non_blocking=True)
            if self.device.type == "cpu":
                self._run_into(xt, torch.from_numpy(out))
                np.multiply(out, scale[:, None], out=out)
                return
            if self._buffer is None or self._buffer.shape[0] < b:
                self._buffer = torch.empty((b, self.n_voxels), device=self.device, dtype=torch.float32)
            buf = self._buffer[:b]
            self._run_into(xt, buf).mul_(torch.from_numpy(scale).to(self.device).view(b, 1))
            torch.from_numpy(out).copy_(buf)


class _OnnxBackend:
    """Runs an onnxruntime session; a Par04-ordered output is reordered while it is scaled to MeV."""

    def __init__(self, runner: OnnxRunner, mesh: Mesh | None, voxel_order: str) -> None:
        if voxel_order not in VOXEL_ORDERS:
            raise ConfigError(f"unknown voxel order {voxel_order!r}", field="voxel_order",
                              fix=f"use one of {', '.join(VOXEL_ORDERS)}")
        if voxel_order != "native" and not isinstance(mesh, CylindricalMesh):
            raise ConfigError("reading a Par04-ordered output needs the mesh (a cylindrical one)", field="mesh",
                              fix="pass mesh=, or load the model with load_onnx_generator")
        self.runner = runner
        self.mesh = mesh if voxel_order != "native" else None
        self._scratch: np.ndarray | None = None

    def __call__(self, x: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
        m = self.mesh
        if m is None:
            self.runner(x, out)
            np.multiply(out, scale[:, None], out=out)
            return
        rows = min(x.shape[0], _REORDER_ROWS)
        if self._scratch is None or self._scratch.shape[0] < rows:
            self._scratch = np.empty((rows, m.n_voxels), dtype=np.float32)
        for start in range(0, x.shape[0], rows):
            b = min(rows, x.shape[0] - start)
            scratch = self._scratch[:b]
            self.runner(x[start:start + b], scratch)
            # (b, r, phi, z) -> (b, z, phi, r) and times the scale in one pass, while the tile is still in cache;
            # iterating in the scratch's order (contiguous reads, strided writes) is the faster direction.
            dst = m.to_grid(out[start:start + b]).transpose(0, 3, 2, 1)  # a (b, r, phi, z) view of the output
            np.multiply(scratch.reshape(dst.shape), scale[start:start + b, None, None, None], out=dst)


GeneratorSource = nn.Module | LoadedModel | OnnxGenerator | ort.InferenceSession


def _backend(source: GeneratorSource, norm: Normalisation | None, voxel_order: str
             ) -> tuple[Any, int, int, Normalisation]:
    """(backend, input width, n_voxels, normalisation) for any supported source."""
    if isinstance(source, LoadedModel):
        sampler = source.sampler("native")
        width = source.latent_dim + source.norm.cond_width
        return _TorchBackend(sampler, source.norm.geometry.n_voxels, width), width, source.norm.geometry.n_voxels, \
            source.norm
    if isinstance(source, OnnxGenerator):
        return (_OnnxBackend(source.runner, source.mesh, source.voxel_order), source.input_width,
                source.mesh.n_voxels, source.norm)
    if norm is None:
        raise ConfigError(f"generating from a bare {type(source).__name__} needs its normalisation",
                          field="normalisation", fix="pass the ConditioningConfig or normalisation it was trained with")
    if isinstance(source, nn.Module):
        width = int(getattr(source, "input_width", 0))
        n_voxels = int(getattr(source, "n_voxels", 0))
        if not width or not n_voxels:
            raise ConfigError(f"a bare {type(source).__name__} must say its input_width and n_voxels",
                              field="model", fix="pass a LoadedModel (load_model) instead")
        return _TorchBackend(source, n_voxels, width), width, n_voxels, norm
    if isinstance(source, ort.InferenceSession):
        runner = OnnxRunner(source)
        width, n_vox = runner.signature.input_width, runner.signature.output_width
        if width is None or n_vox is None:
            raise InputFileError("the ONNX model has a symbolic input or output width",
                                 fix="export the model with showers export (fixed widths)")
        mesh = getattr(norm, "mesh", None)
        return _OnnxBackend(runner, mesh, voxel_order), width, n_vox, norm
    raise TypeError(f"cannot generate from {type(source).__name__}")


# ---------------------------------------------------------------------------------------- generate
def generate(
    model_or_session: GeneratorSource,
    energies_mev: np.ndarray,
    angles_deg: np.ndarray | None,
    geometry_index: int,
    normalisation: Normalisation | ConditioningConfig | None = None,
    *,
    seed: int,
    batch_size: int,
    progress: bool = False,
    mesh: CylindricalMesh | None = None,
    voxel_order: str = "par04",
) -> np.ndarray:
    """Showers in MeV, (N, n_voxels) float32 in the native voxel order, for the given kinematics.

    ``model_or_session``: a :class:`LoadedModel` (checkpoint) or an :class:`OnnxGenerator` (ONNX + sidecar),
    which carry their normalisation; or a bare sampler module (with ``input_width`` and ``n_voxels``, as the
    VAE's ``GeneratorModule``) / ``onnxruntime.InferenceSession``,
    for which ``normalisation`` (a ConditioningConfig means the VAE's) and, for a session, ``mesh`` and
    ``voxel_order`` say how to read the output (the default is what ``showers export`` writes for the VAE).
    z is drawn batch after batch from ``numpy.random.default_rng(seed)``: the same seed gives the same
    showers from a checkpoint and from its export, whatever the batch size.
    """
    plan = _plan(model_or_session, energies_mev, angles_deg, geometry_index, normalisation, batch_size, mesh,
                 voxel_order)
    out = np.empty((plan.n, plan.n_voxels), dtype=np.float32)
    for _ in _fill(plan, int(geometry_index), seed, progress, lambda sl: out[sl]):
        pass
    return out


def iter_generate(
    model_or_session: GeneratorSource,
    energies_mev: np.ndarray,
    angles_deg: np.ndarray | None,
    geometry_index: int,
    normalisation: Normalisation | ConditioningConfig | None = None,
    *,
    seed: int,
    batch_size: int,
    progress: bool = False,
    mesh: CylindricalMesh | None = None,
    voxel_order: str = "par04",
) -> Iterator[np.ndarray]:
    """:func:`generate` batch by batch: the same showers (same seed stream), one batch in memory at a time.

    Each yielded block is a view of one reused buffer, valid until the next one is asked for (write or
    copy it first): generating N showers into a file needs memory for ``batch_size`` rows, whatever N.
    """
    plan = _plan(model_or_session, energies_mev, angles_deg, geometry_index, normalisation, batch_size, mesh,
                 voxel_order)
    buf = np.empty((plan.rows, plan.n_voxels), dtype=np.float32)
    # not a generator itself: a bad request fails here, at the call, before the caller opens its output
    return _fill(plan, int(geometry_index), seed, progress, lambda sl: buf[: sl.stop - sl.start])


@dataclass
class _Plan:
    backend: Any
    width: int
    n_voxels: int
    norm: Normalisation
    e: np.ndarray
    a: np.ndarray | None
    latent: int
    rows: int

    @property
    def n(self) -> int:
        return int(self.e.shape[0])


def _plan(model_or_session: GeneratorSource, energies_mev: np.ndarray, angles_deg: np.ndarray | None,
          geometry_index: int, normalisation: Normalisation | ConditioningConfig | None, batch_size: int,
          mesh: CylindricalMesh | None, voxel_order: str) -> _Plan:
    """Check a generation request (before anything large is allocated) and pick its backend."""
    if isinstance(normalisation, ConditioningConfig):
        normalisation = EMNormalisation(mesh, normalisation)
    backend, width, n_voxels, norm = _backend(model_or_session, normalisation, voxel_order)
    e = np.ascontiguousarray(energies_mev, dtype=np.float32).reshape(-1)
    n = e.shape[0]
    a = None if angles_deg is None else np.asarray(angles_deg, dtype=np.float32).reshape(-1)
    if a is not None and a.shape[0] != n:
        raise ConfigError(f"{a.shape[0]} angles for {n} energies", field="angles_deg", fix="give one angle per shower")
    latent = width - norm.cond_width
    if latent < 1:
        raise InputFileError(
            f"model input width {width} leaves no latent dimensions for {norm.cond_width} condition columns",
            field="input", fix="use the conditioning the model was trained with",
        )
    norm.check_request(e, a, int(geometry_index))
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}", field="batch_size", fix="use e.g. 10000")
    return _Plan(backend, width, n_voxels, norm, e, a, latent, min(batch_size, max(n, 1)))


def _fill(plan: _Plan, geometry_index: int, seed: int, progress: bool,
          target: Callable[[slice], np.ndarray]) -> Iterator[np.ndarray]:
    """Run the batches in order, each into ``target(rows)``, and yield it (z from one numpy stream)."""
    rng = np.random.default_rng(seed)
    rows, n, norm, e, a = plan.rows, plan.n, plan.norm, plan.e, plan.a
    x = np.empty((rows, plan.width), dtype=np.float32)
    z = np.empty((rows, plan.latent), dtype=np.float32)
    with progress_bar(n, "generating showers", enabled=progress) as bar:
        for start in range(0, n, rows):
            b = min(rows, n - start)
            sl = slice(start, start + b)
            rng.standard_normal((b, plan.latent), dtype=np.float32, out=z[:b])
            conditions = norm.conditions(e[sl], None if a is None else a[sl], geometry_index)
            xb = generator_inputs(z[:b], conditions, out=x[:b])
            block = target(sl)
            plan.backend(xb, norm.row_scale(e[sl]), block)
            norm.finish_(block)
            bar.advance(b)
            yield block


def warn_empty(showers: np.ndarray) -> int:
    """Say so when generated showers hold no energy (an untrained or collapsed model, or a threshold above
    every cell): they would otherwise go unnoticed until validate refuses them.  Returns how many."""
    empty = int(np.count_nonzero(np.asarray(showers).sum(axis=1) <= 0))
    if empty == len(showers) and empty:
        logger.warning("every generated shower is empty (no cell above the readout threshold): the model is "
                       "untrained or has collapsed; check its training loss, or generate from another checkpoint")
    elif empty:
        logger.warning("%d of %d generated showers are empty (no cell above the readout threshold)", empty,
                       len(showers))
    return empty


def _expected_showers(cfg: GenerateConfig) -> int:
    """How many showers ``cfg`` asks for, from the options alone (make_kinematics' rules: lists multiply,
    ranges do not), so sizes are checked before anything is allocated."""
    n_e = len(cfg.energies_gev) if cfg.energies_gev is not None else 1
    n_a = (len(cfg.angles_deg) if cfg.angles_deg else 1) if cfg.angle_range_deg is None else 1
    return int(cfg.n_per_point) * n_e * n_a


def generate_to_file(cfg: GenerateConfig, progress: bool = True) -> StoredShowers:
    """Generate the configured kinematics from ``cfg.checkpoint`` or ``cfg.onnx`` and write ``cfg.output``.

    Kinematics come from :func:`mlfastsim.showers.sim.em.make_kinematics` with the same options as
    ``showers simulate`` (and its seed stream), so a generated file lines up with a simulated one made
    with the same energies, angles and seed.

    ``-o`` is checked before any work (a directory, a device, /proc or a read-only disk is one line), and
    the showers are streamed to the file batch by batch (:func:`iter_generate`), so memory does not grow
    with N; the result describes the file, showers left on disk (``.load()`` reads them).
    """
    check_output_file(cfg.output)
    n = _expected_showers(cfg)
    check_allocation(n * 32, what=f"the kinematics of {n} showers", field="--n-per-point",
                     fix="ask for fewer showers, or split the run over several outputs")
    source: GeneratorSource
    if cfg.checkpoint is not None:
        device = select_device(cfg.device)
        loaded = load_generator_model(cfg.checkpoint, map_location=device).with_steps(cfg.steps)
        source, spec, norm = loaded, loaded.spec, loaded.norm
        origin: dict[str, Any] = {"source_model": str(cfg.checkpoint), "source_format": "checkpoint",
                                  "source_step": loaded.state.get("step")}
    else:
        assert cfg.onnx is not None  # GenerateConfig guarantees exactly one source
        if cfg.device.gpu_ids:
            logger.warning("--gpu-ids is ignored for ONNX generation: onnxruntime runs on the CPU here")
        onnx = load_onnx_generator(cfg.onnx, num_threads=cfg.device.num_threads)
        graph_steps = onnx.sidecar.get("solver", {}).get("steps")
        if cfg.steps is not None and cfg.steps != graph_steps:
            raise ConfigError(
                f"the ONNX graph's solver runs {graph_steps} steps (fixed at export), not {cfg.steps}" if graph_steps
                else "this ONNX model has no solver steps to set", field="steps",
                fix="re-export with showers export --steps N, or generate from the checkpoint with --steps N")
        source, spec, norm = onnx, onnx.spec, onnx.norm
        origin = {"source_model": str(cfg.onnx), "source_format": "onnx",
                  "source_checkpoint": onnx.sidecar.get("source_checkpoint")}
    batch_size = min(cfg.batch_size, spec.max_batch_size or cfg.batch_size)
    check_free_space(cfg.output, n * norm.geometry.n_voxels * 4,
                     what=f"{n} showers of {norm.geometry.n_voxels} cells (uncompressed)")
    energies, angles = make_kinematics(
        energies_gev=cfg.energies_gev, energy_range_gev=cfg.energy_range_gev, angles_deg=cfg.angles_deg,
        angle_range_deg=cfg.angle_range_deg, n_per_point=cfg.n_per_point, seed=cfg.seed,
    )
    meta = {
        **origin,
        "model_type": spec.name,
        "seed": int(cfg.seed),
        **({"solver_steps": int(getattr(source.config, spec.solver_steps_field))}
           if isinstance(source, LoadedModel) and spec.solver_steps_field else
           {"solver_steps": int(source.sidecar["solver"]["steps"])}
           if isinstance(source, OnnxGenerator) and "solver" in source.sidecar else {}),
        "geometry_index": int(cfg.geometry_index),
        **norm.output_meta(),
        "generator": f"mlfastsim {__version__}",
    }
    blocks = iter_generate(source, energies, angles, cfg.geometry_index, seed=cfg.seed, batch_size=batch_size,
                           progress=progress)
    with native_writer(cfg.output, mesh=norm.geometry, energies=energies, angles=angles, meta=meta) as writer:
        for block in blocks:
            writer.append(block)
    warn_empty(writer.totals[:, None])  # the per-shower totals, as one column
    return StoredShowers(path=Path(cfg.output), energies=energies, mesh=norm.geometry, angles=angles, meta=meta,
                         totals=writer.totals)

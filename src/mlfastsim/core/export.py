"""ONNX export, onnxruntime sessions and the torch-vs-onnxruntime parity check.

Generic on purpose (no physics here): a workflow hands over an ``nn.Module`` that maps one float32
input of fixed width to one output, and gets back an ONNX file that

* has a dynamic batch axis, so one file serves batch 1 (Geant4 calls it once per particle) and large
  batches (offline generation);
* has been run in onnxruntime and compared with torch on the same inputs.  A model that disagrees by
  more than the tolerance is refused: :class:`ParityError` names the maximum difference and **no file is
  written**, because an ONNX model that silently differs from the validated torch model is worse than none.

The export goes to a temporary name in the destination directory (:func:`mlfastsim.core.io.atomic_path`)
and is renamed into place only after the parity check (and the caller's ``before_commit`` hook, e.g.
writing a sidecar) succeeded.

The torch.export-based exporter (``dynamo=True``, the default since torch 2.9, needs onnxscript) is tried
first: it folds batch norm into the Gemm weights and emits a clean graph.  Should it fail on some module,
the TorchScript exporter (``dynamo=False``) is used instead and the result says which one wrote the file.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from mlfastsim.core.errors import InputFileError, OutputError
from mlfastsim.core.io import atomic_path, require_file

logger = logging.getLogger(__name__)

DEFAULT_INPUT_NAME = "input"
DEFAULT_OUTPUT_NAME = "output"
BATCH_AXIS = "batch"


class ExportError(OutputError):
    """An ONNX file cannot be produced (the exporter failed, or the result is wrong)."""


class ParityError(ExportError):
    """The exported model disagrees with torch by more than the tolerance; nothing was written."""


@dataclass(frozen=True)
class OnnxSignature:
    """Names and widths of a one-input, one-output model (``None`` where the width is symbolic)."""

    input_name: str
    input_width: int | None
    output_name: str
    output_width: int | None


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how well it agrees with torch."""

    path: Path
    exporter: str  # "dynamo" (torch.export) or "torchscript"
    opset: int
    signature: OnnxSignature
    max_abs_diff: float
    parity_samples: int
    tolerance: float


# ------------------------------------------------------------------------------------------ sessions
def make_session(
    path: str | Path,
    *,
    num_threads: int | None = None,
    optimize: bool = True,
    providers: list[str] | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session tuned for throughput on the CPU.

    ``num_threads`` sets the intra-op pool (None: onnxruntime's default, one per core); inter-op
    parallelism is off because these graphs are a chain of layers with nothing to run side by side.
    ``optimize`` applies every graph optimisation (Gemm+activation fusion, constant folding), as Geant4
    Par04 does with its optimisation flag on.  A missing or corrupt file is an :class:`InputFileError`.
    """
    p = require_file(path, what="ONNX model")
    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = int(num_threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3  # errors only: warnings about hardware-specific fusions are noise here
    try:
        return ort.InferenceSession(str(p), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Exception subclasses (InvalidProtobuf, Fail, ...)
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputFileError(
            f"onnxruntime cannot load the model ({first})", file=p, fix="pass an .onnx file written by mlfastsim export"
        ) from exc


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def session_signature(session: ort.InferenceSession, *, source: str | Path | None = None) -> OnnxSignature:
    """Input/output names and widths of a one-input, one-output (batch, width) model."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise InputFileError(
            f"model has {len(inputs)} inputs and {len(outputs)} outputs, expected one input and one output",
            file=source, fix="export the generator with mlfastsim (one input: latent and conditions)",
        )
    i, o = inputs[0], outputs[0]
    if len(i.shape) != 2 or len(o.shape) != 2:
        raise InputFileError(
            f"input shape {i.shape} / output shape {o.shape} are not (batch, width)",
            file=source, fix="export the generator with mlfastsim",
        )
    return OnnxSignature(i.name, _static(i.shape[1]), o.name, _static(o.shape[1]))


class OnnxRunner:
    """Runs a one-input, one-output session writing straight into the caller's array.

    ``session.run`` allocates a fresh output per call; at 40 500 voxels per shower that is 160 kB per
    shower of freshly faulted-in memory, which costs as much as the matrix product.  Binding a reusable
    (or final) output buffer through IO binding removes that cost.
    """

    def __init__(self, session: ort.InferenceSession, *, source: str | Path | None = None) -> None:
        self.session = session
        self.signature = session_signature(session, source=source)
        self._binding = session.io_binding()

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Run on ``x`` (N, input_width) float32; the result lands in ``out`` (N, output_width) if given."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if out is None:
            width = self.signature.output_width
            if width is None:
                return self.session.run([self.signature.output_name], {self.signature.input_name: x})[0]
            out = np.empty((x.shape[0], width), dtype=np.float32)
        if out.dtype != np.float32 or not out.flags.c_contiguous or out.shape[0] != x.shape[0]:
            raise ValueError("out must be a C-contiguous float32 array with one row per input row")
        self._binding.bind_cpu_input(self.signature.input_name, x)
        self._binding.bind_output(self.signature.output_name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self.session.run_with_iobinding(self._binding)
        return out


# ------------------------------------------------------------------------------------------- parity
def torch_forward(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """``module(x)`` in eval/inference mode on the module's device, as float32 numpy."""
    module.eval()
    try:
        device = next(module.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    with torch.inference_mode():
        y = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
    return y.detach().float().cpu().numpy()


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference; inf for a shape mismatch or any NaN/inf (a NaN must never pass)."""
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def check_parity(module: nn.Module, session: ort.InferenceSession, inputs: np.ndarray) -> float:
    """Max |torch - onnxruntime| over ``inputs``, run through the plain ``session.run`` API (what C++ uses)."""
    sig = session_signature(session)
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    expected = torch_forward(module, x)
    got = np.asarray(session.run([sig.output_name], {sig.input_name: x})[0])
    return max_abs_diff(expected, got)


# ------------------------------------------------------------------------------------------- export
@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints, deprecation warnings and optional-dependency notices."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript")
    saved = {name: logging.getLogger(name).level for name in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _run_exporter(
    module: nn.Module, example: torch.Tensor, target: Path, *, input_name: str, output_name: str, opset: int
) -> str:
    """Export with torch.export (``dynamo=True``), falling back to TorchScript; return which one wrote."""
    try:
        with _quiet_exporter():
            torch.onnx.export(
                module, (example,), str(target),
                input_names=[input_name], output_names=[output_name], opset_version=opset,
                dynamo=True, external_data=False, verbose=False,
                dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},),
            )
        return "dynamo"
    except Exception as exc:  # torch.export/onnxscript raise many unrelated types; the fallback handles all
        logger.warning("torch.export-based ONNX export failed (%s); using the TorchScript exporter",
                       str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__)
    try:
        with _quiet_exporter():
            torch.onnx.export(
                module, (example,), str(target),
                input_names=[input_name], output_names=[output_name], opset_version=opset,
                dynamo=False, do_constant_folding=True,
                dynamic_axes={input_name: {0: BATCH_AXIS}, output_name: {0: BATCH_AXIS}},
            )
    except Exception as exc:
        raise ExportError(
            f"ONNX export failed ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})",
            file=target, fix="check the opset (--opset) or report the model that fails to export",
        ) from exc
    return "torchscript"


def export_onnx(
    module: nn.Module,
    path: str | Path,
    *,
    input_width: int,
    parity_inputs: np.ndarray | None = None,
    parity_samples: int = 256,
    tolerance: float = 1e-4,
    opset: int = 18,
    input_name: str = DEFAULT_INPUT_NAME,
    output_name: str = DEFAULT_OUTPUT_NAME,
    seed: int = 0,
    num_threads: int | None = None,
    before_commit: Callable[[ExportResult], None] | None = None,
) -> ExportResult:
    """Export ``module`` (float32 (N, input_width) -> (N, ...)) to ``path`` and prove it matches torch.

    Parity runs on ``parity_inputs`` when given (callers should build them like real inputs: the
    model's behaviour on N(0, 1) noise says little about conditions in [0, 1] or one-hot slots), else on
    ``parity_samples`` standard-normal rows.  Above ``tolerance`` a :class:`ParityError` is raised and
    ``path`` is left as it was.  ``before_commit`` runs after a passed check and before the rename, so a
    caller can write companion files (a sidecar) that only ever exist next to a model that passed.
    """
    dest = Path(path)
    if parity_inputs is None:
        rng = np.random.default_rng(seed)
        parity_inputs = rng.standard_normal((parity_samples, input_width), dtype=np.float32)
    x = np.ascontiguousarray(parity_inputs, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != input_width or x.shape[0] < 1:
        raise ValueError(f"parity inputs must be (N >= 1, {input_width}), got {x.shape}")
    module = module.eval()
    try:
        device = next(module.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    # torch.export specialises sizes 0 and 1, so the example batch must be >= 2 for a dynamic batch axis.
    example = torch.from_numpy(np.resize(x, (max(2, min(4, x.shape[0])), input_width))).to(device)
    with atomic_path(dest, what="ONNX output") as tmp:
        exporter = _run_exporter(module, example, tmp, input_name=input_name, output_name=output_name, opset=opset)
        session = make_session(tmp, num_threads=num_threads)
        signature = session_signature(session, source=dest)
        if signature.input_width not in (None, input_width):
            raise ExportError(
                f"exported input width {signature.input_width} differs from the requested {input_width}",
                file=dest, fix="report this as a bug",
            )
        diff = check_parity(module, session, x)
        if not diff <= tolerance:
            raise ParityError(
                f"ONNX model disagrees with torch: max |difference| {diff:.3g} > tolerance {tolerance:.3g} "
                f"on {x.shape[0]} inputs; nothing was written",
                file=dest, field="parity_tolerance",
                fix="check the exported graph (opset, unsupported ops) or raise the tolerance if justified",
            )
        result = ExportResult(dest, exporter, opset, signature, diff, int(x.shape[0]), tolerance)
        if before_commit is not None:
            before_commit(result)
    return result

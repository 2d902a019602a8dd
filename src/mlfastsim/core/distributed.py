"""Data-parallel training under ``torchrun``: process group set-up, rank-0 I/O, gradient averaging.

mlfastsim never launches processes itself: ``torchrun --nproc_per_node N -m mlfastsim ...`` sets the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...), and :func:`init_distributed` joins the group
with gloo on CPU or nccl on CUDA.  Only rank 0 writes checkpoints, metrics and plots.

Beyond process-group plumbing this module holds what makes N processes train like one on the same global
batch: batch norm over the global batch (:func:`convert_batch_norm`, CPU-capable), per-sample noise that
does not depend on the split (:func:`batch_randn_like`), and gradient averaging for the tasks that cannot
use the DDP wrapper (:func:`all_reduce_grads`, the GANs' double backward).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group if there is one; return True when running distributed."""
    if not launched_by_torchrun():
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that does I/O (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of scalars over ranks (so every rank logs and early-stops on the same numbers)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    # nccl reduces CUDA tensors only; gloo reduces CPU tensors.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def cleanup() -> None:
    """Leave the process group together: a rank that tears gloo down while a peer is still writing its
    checkpoint can abort in gloo's destructor ("terminate called without an active exception")."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


# ------------------------------------------------------------------ data parallel without the DDP wrapper
def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the ``.grad`` of ``params`` over ranks, in place; a no-op outside torchrun.

    Why it exists: the WGAN-GP and BIB-AE critics need the double backward of the gradient penalty, which
    DistributedDataParallel does not support, so those tasks train data-parallel by calling this between
    ``backward()`` and ``optimizer.step()``.  With a loss that is a mean over each rank's equal share of the
    global batch, the average is the gradient of the global-batch mean, as with DDP.  Parameters without a
    gradient on this rank contribute zeros (every rank must call this with the same list, in the same order).
    """
    if not is_distributed():
        return
    plist = [p for p in params if p.requires_grad]
    if not plist:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in plist]
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective per call, not one per tensor
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(plist, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


_sharded_batch = False


@contextlib.contextmanager
def sharded_batch() -> Iterator[None]:
    """Mark a training step whose batch is this rank's slice ``[rank::world]`` of the global batch.

    The trainer enters it around every data-parallel ``train_step``; :func:`batch_randn_like` then draws the
    noise of the whole global batch and keeps this rank's rows, so a VAE's reparameterisation noise (or a
    GAN's latent) per sample is what one process would draw for it: same results on any process count.
    """
    global _sharded_batch
    previous, _sharded_batch = _sharded_batch, True
    try:
        yield
    finally:
        _sharded_batch = previous


def batch_randn_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.randn_like(t)`` for a batch-first tensor, invariant to how the batch is split over ranks.

    Inside :func:`sharded_batch` under torchrun every rank draws ``(world * n, ...)`` from the (identically
    seeded) global generator and keeps rows ``rank::world``; elsewhere it is plain ``randn_like``.
    """
    return _batch_draw(torch.randn, t)


def batch_rand_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.rand_like(t)`` (uniform) with the same split invariance as :func:`batch_randn_like`."""
    return _batch_draw(torch.rand, t)


def batch_randn(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """:func:`batch_randn_like` by shape (batch first), on ``like``'s device and dtype."""
    return batch_randn_like(torch.empty(tuple(shape), dtype=like.dtype, device=like.device))


def _batch_draw(draw: Any, t: torch.Tensor) -> torch.Tensor:
    if not (_sharded_batch and is_distributed()):
        return draw(t.shape, dtype=t.dtype, device=t.device)
    full = draw((t.shape[0] * world_size(), *t.shape[1:]), dtype=t.dtype, device=t.device)
    return full[rank() :: world_size()]


# ------------------------------------------------------------------ batch norm over the global batch
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the incoming gradients.

    Why not ``torch.distributed.nn.functional.all_reduce``: it is deprecated, and with it one rank in a few
    aborted at exit ("terminate called without an active exception", gloo, CPU; 1 of 3 runs of the DDP
    batch-norm test on a quiet machine), after training had finished and written its checkpoint.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


class _GlobalBatchNormMixin:
    """Batch norm whose training statistics are those of the global batch (all ranks), on CPU too.

    ``torch.nn.SyncBatchNorm`` runs on GPUs only; this computes per-channel sums, sums of squares and
    counts in float64, all-reduces them with an autograd-aware collective (so gradients flow through the
    statistics as in one process) and normalises with them.  Outside a distributed training step it is the
    ordinary batch norm it replaced; parameters, buffers and state-dict keys are unchanged.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)  # type: ignore[misc]
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x64 = input.double()
        count = x64.new_tensor([input.numel() / c])
        stats = _AllReduceSum.apply(torch.cat([x64.sum(dims), (x64 * x64).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        shape = [1, c] + [1] * (input.dim() - 2)
        out = ((x64 - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)).to(input.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        return out


_GLOBAL_BN_CLASSES: dict[type, type] = {}


def convert_batch_norm(module: torch.nn.Module) -> int:
    """Make every ``BatchNorm{1,2,3}d`` in ``module`` normalise over the global batch; returns how many.

    Done in place by switching each instance's class to a subclass, so optimisers keep their parameter
    objects and checkpoints keep their keys; harmless outside torchrun.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    n = 0
    for m in module.modules():
        cls = type(m)
        if isinstance(m, _BatchNorm) and not isinstance(m, (_GlobalBatchNormMixin, torch.nn.SyncBatchNorm)):
            if cls not in _GLOBAL_BN_CLASSES:
                _GLOBAL_BN_CLASSES[cls] = type(f"Global{cls.__name__}", (_GlobalBatchNormMixin, cls), {})
            m.__class__ = _GLOBAL_BN_CLASSES[cls]
            n += 1
    return n


def all_reduce_sum(value: float) -> float:
    """Sum a scalar over ranks (e.g. a voxel count); the value itself outside torchrun."""
    if not is_distributed():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())

"""Data-parallel training under ``torchrun``: process group set-up, rank-0 I/O, gradient averaging.

mlfastsim never launches processes itself: ``torchrun --nproc_per_node N -m mlfastsim ...`` sets the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...), and :func:`init_distributed` joins the group
with gloo on CPU or nccl on CUDA.  Only rank 0 writes checkpoints, metrics and plots.
"""

from __future__ import annotations

import os

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
    if is_distributed():
        dist.destroy_process_group()

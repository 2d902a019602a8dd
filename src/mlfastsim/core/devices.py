"""Device choice: ``--gpu-ids``, ``--max-gpu-memory-allocation MB`` and CPU thread count.

The memory cap is real: it goes to ``torch.cuda.set_per_process_memory_fraction``, which makes the
CUDA caching allocator raise an out-of-memory error beyond the cap instead of growing.
"""

from __future__ import annotations

import logging
import os

import torch
from pydantic import Field

from mlfastsim.core.config import StrictModel
from mlfastsim.core.errors import ConfigError

logger = logging.getLogger(__name__)


class DeviceConfig(StrictModel):
    """Where to run: GPUs (``--gpu-ids``), a cap on CUDA memory, CPU threads."""

    gpu_ids: list[int] | None = None
    max_gpu_memory_mb: int | None = Field(None, ge=1)
    num_threads: int | None = Field(None, ge=1)


def parse_gpu_ids(text: str | None) -> list[int] | None:
    """'0,1' -> [0, 1]; '' or None -> None (CPU unless CUDA is the only sensible choice)."""
    if text is None or not text.strip():
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a list of GPU indices", field="--gpu-ids", fix="write e.g. --gpu-ids 0,1"
        ) from None


def select_device(cfg: DeviceConfig, *, local_rank: int | None = None) -> torch.device:
    """Apply thread count and memory cap, and return the device this process should use.

    Under torchrun each process takes ``gpu_ids[LOCAL_RANK]``.  Without ``gpu_ids`` the CPU is used, so
    a run never lands on a GPU the user did not ask for.
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not cfg.gpu_ids:
        if cfg.max_gpu_memory_mb:
            logger.warning("--max-gpu-memory-allocation is ignored: running on the CPU (no --gpu-ids given)")
        return torch.device("cpu")
    n_visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_visible == 0:
        if cfg.max_gpu_memory_mb:
            logger.warning("--max-gpu-memory-allocation is ignored: no CUDA device on this machine")
        raise ConfigError(
            f"GPU(s) {cfg.gpu_ids} requested but this machine has no CUDA device",
            field="--gpu-ids",
            fix="drop --gpu-ids to run on the CPU",
        )
    missing = [g for g in cfg.gpu_ids if g < 0 or g >= n_visible]
    if missing:
        raise ConfigError(
            f"GPU(s) {missing} do not exist (this machine has {n_visible}: 0..{n_visible - 1})",
            field="--gpu-ids",
            fix="name GPUs that exist (see nvidia-smi)",
        )
    if len(set(cfg.gpu_ids)) != len(cfg.gpu_ids):
        raise ConfigError(f"GPU list {cfg.gpu_ids} names a GPU twice", field="--gpu-ids", fix="name each GPU once")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world > len(cfg.gpu_ids):
        # nccl cannot put two ranks on one GPU; say so here instead of failing deep inside the process group
        raise ConfigError(
            f"{local_world} processes per node but only {len(cfg.gpu_ids)} GPU(s) given ({cfg.gpu_ids})",
            field="--gpu-ids",
            fix="give one GPU per process: torchrun --nproc_per_node must not exceed the number of --gpu-ids",
        )
    gpu = cfg.gpu_ids[local_rank % len(cfg.gpu_ids)]
    device = torch.device("cuda", gpu)
    torch.cuda.set_device(device)
    if cfg.max_gpu_memory_mb:
        total_mb = torch.cuda.get_device_properties(device).total_memory / 2**20
        fraction = min(1.0, cfg.max_gpu_memory_mb / total_mb)
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return device


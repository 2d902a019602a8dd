"""Device choice: CPU unless GPUs are asked for, clear errors for GPUs that are not there."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

from mlfastsim.core.devices import DeviceConfig, parse_gpu_ids, select_device
from mlfastsim.core.errors import ConfigError


@pytest.fixture(autouse=True)
def keep_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behave like this CPU-only machine even where a GPU happens to exist."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two visible GPUs, for the checks that come before any CUDA call."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_no_gpu_ids_means_cpu(no_cuda: None) -> None:
    assert select_device(DeviceConfig()) == torch.device("cpu")


def test_gpu_ids_without_cuda_is_a_config_error(no_cuda: None) -> None:
    with pytest.raises(ConfigError, match="no CUDA device") as info:
        select_device(DeviceConfig(gpu_ids=[0]))
    assert info.value.field == "--gpu-ids"
    assert "--gpu-ids" in info.value.one_line() and info.value.fix


def test_memory_cap_without_gpus_warns_and_runs_on_cpu(no_cuda: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mlfastsim.core.devices"):
        device = select_device(DeviceConfig(max_gpu_memory_mb=1024))
    assert device == torch.device("cpu")
    assert "--max-gpu-memory-allocation is ignored" in caplog.text


def test_num_threads_is_applied(no_cuda: None) -> None:
    select_device(DeviceConfig(num_threads=1))
    assert torch.get_num_threads() == 1


def test_parse_gpu_ids() -> None:
    assert parse_gpu_ids("0,1") == [0, 1]
    assert parse_gpu_ids(" 2 , 3 ,") == [2, 3]
    assert parse_gpu_ids("") is None and parse_gpu_ids(None) is None
    for bad in ("a", "0;1", "1.5"):
        with pytest.raises(ConfigError, match="not a list of GPU indices") as info:
            parse_gpu_ids(bad)
        assert info.value.field == "--gpu-ids"


def test_missing_and_repeated_gpus_are_named(two_fake_gpus: None) -> None:
    with pytest.raises(ConfigError, match=r"GPU\(s\) \[5\] do not exist"):
        select_device(DeviceConfig(gpu_ids=[0, 5]))
    with pytest.raises(ConfigError, match="names a GPU twice"):
        select_device(DeviceConfig(gpu_ids=[1, 1]))


def test_more_processes_than_gpus_is_a_config_error(two_fake_gpus: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="2 processes per node but only 1 GPU") as info:
        select_device(DeviceConfig(gpu_ids=[0]), local_rank=1)
    assert "nproc_per_node" in (info.value.fix or "")


def test_device_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        DeviceConfig(max_gpu_memory_mb=0)
    with pytest.raises(ValueError):
        DeviceConfig(num_threads=0)

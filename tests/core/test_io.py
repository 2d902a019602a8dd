from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from mlfastsim.core.errors import InputFileError, OutputError
from mlfastsim.core.io import atomic_path, atomic_write_json, open_h5


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_existing(tmp_path: Path) -> None:
    dest = tmp_path / "m.json"
    dest.write_text("old")
    atomic_write_json(dest, {"x": np.float32(1.5), "a": np.arange(3)})
    assert json.loads(dest.read_text()) == {"x": 1.5, "a": [0, 1, 2]}


def test_open_h5_distinguishes_missing_not_hdf5_truncated(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        open_h5(tmp_path / "nope.h5")
    txt = tmp_path / "text.h5"
    txt.write_text("hello")
    with pytest.raises(InputFileError, match="not an HDF5"):
        open_h5(txt)
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as f:
        f.create_dataset("x", data=np.arange(100000.0))
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(InputFileError, match="truncated"):
        open_h5(trunc)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(OutputError), atomic_path(ro / "x"):
        pass


def test_output_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create"), atomic_path(blocker / "sub" / "out.h5"):
        pass


def test_atomic_outputs_get_ordinary_permissions(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; outputs must be as readable as any file the user creates (0666 & ~umask)."""
    import os

    from mlfastsim.core.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        from mlfastsim.core import io as io_mod

        io_mod._umask.cache_clear()
        out = atomic_write_text(tmp_path / "a.txt", "x")
        assert os.stat(out).st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
        io_mod._umask.cache_clear()


# ------------------------------------------------------------------ reliability (issue 15)
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    import errno

    dest = tmp_path / "out.h5"
    with pytest.raises(OutputError) as err, atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    line = err.value.one_line()
    assert str(dest) in line and "no space left" in line and "fix:" in line and "\n" not in line
    assert list(tmp_path.iterdir()) == []


def test_hdf5_style_write_error_is_translated(tmp_path: Path) -> None:
    dest = tmp_path / "out.h5"
    with pytest.raises(OutputError, match="read-only"), atomic_path(dest):
        raise OSError("Can't write data (file write failed: errno = 30, error message = 'Read-only file system')")
    assert list(tmp_path.iterdir()) == []


def test_outputs_only_go_to_regular_files(tmp_path: Path) -> None:
    from mlfastsim.core.io import check_output_file

    with pytest.raises(OutputError, match="existing directory"):
        check_output_file(tmp_path)
    with pytest.raises(OutputError, match="existing directory"), atomic_path(tmp_path):
        pass
    if Path("/dev/null").exists():
        with pytest.raises(OutputError, match="not a regular file"), atomic_path("/dev/null"):
            pass
        assert Path("/dev/null").is_char_device()
    if Path("/proc/self").exists():
        with pytest.raises(OutputError):
            check_output_file("/proc/x.h5")
    assert check_output_file(tmp_path / "sub" / "ok.h5") == tmp_path / "sub" / "ok.h5"
    assert [p.name for p in tmp_path.iterdir()] == ["sub"] and not list((tmp_path / "sub").iterdir())


def test_stale_tmp_of_a_dead_writer_is_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    from mlfastsim.core.io import _host_tag, remove_stale_tmp

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.h5.abc12345.{_host_tag()}-{dead.pid}.tmp"
    live = tmp_path / f".out.h5.def45678.{_host_tag()}-{os.getppid()}.tmp"
    foreign = tmp_path / f".out.h5.ghi78901.otherhost-{dead.pid}.tmp"
    legacy = tmp_path / ".out.h5.k2j3h4g5.tmp"
    for p in (stale, live, foreign, legacy):
        p.write_bytes(b"x")
    assert remove_stale_tmp(tmp_path) == [stale]
    assert live.exists() and foreign.exists() and legacy.exists()
    # the holder of the output's job lock removes every temporary of that output
    assert sorted(remove_stale_tmp(tmp_path, name="out.h5")) == sorted([live, foreign, legacy])


def test_swallowed_ctrl_c_does_not_publish_the_output(tmp_path: Path) -> None:
    import signal

    # start from Python's own handler whatever an earlier test (a CLI run, Dask, torchrun) left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        dest = tmp_path / "out.h5"
        with pytest.raises(KeyboardInterrupt), atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                pass  # what a library callback does to an interrupt landing in C code
        assert not dest.exists() and list(tmp_path.iterdir()) == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_free_space_and_memory_are_checked_before_work(tmp_path: Path) -> None:
    from mlfastsim.core.errors import DataError
    from mlfastsim.core.io import check_allocation, check_free_space

    check_free_space(tmp_path / "o.h5", 1024)
    with pytest.raises(OutputError, match=r"only .* is free"):
        check_free_space(tmp_path / "o.h5", 1 << 62)
    with pytest.raises(DataError, match="of memory"):
        check_allocation(1 << 62, what="reading showers", file="x.h5")


def test_declared_hdf5_shape_must_fit_the_file(tmp_path: Path) -> None:
    from mlfastsim.core.io import check_h5_dataset

    path = tmp_path / "forged.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("showers", shape=(200_000_000, 6480), dtype="f4")
        f.create_dataset("real", data=np.zeros((100, 50), "f4"), compression="gzip")
    with h5py.File(path) as f:
        with pytest.raises(InputFileError, match=r"declares shape \(200000000, 6480\)"):
            check_h5_dataset(f["showers"], file=path)
        assert check_h5_dataset(f["real"], file=path) == 100 * 50 * 4


def test_messages_are_cut_at_words() -> None:
    from mlfastsim.core.errors import clip_words

    text = "invalid load key, 'x'. " + "unexpected pickle opcode " * 10
    short = clip_words(text, 60)
    assert len(short) <= 60 and short.endswith("…") and not short[:-1].endswith("opc")
    assert short[:-1].split()[-1] in text.split()
    assert clip_words("short text", 60) == "short text"


@pytest.mark.parametrize("name", ["../../escaped", "/abs", "a/b", "..", ".hidden", ""])
def test_run_names_cannot_leave_their_folder(name: str) -> None:
    from mlfastsim.core.config import load_config
    from mlfastsim.core.errors import ConfigError
    from mlfastsim.core.tracking import TrackingConfig

    with pytest.raises(ConfigError, match="not a plain folder name"):
        load_config(TrackingConfig, cli={"run_name": name})


def test_guarded_hdf5_write_on_a_full_disk_is_one_clean_error(tmp_path: Path) -> None:
    """HDF5 never sees the failure (no error storm, no segfault at exit); Python gets one OutputError."""
    import errno

    from mlfastsim.core.io import guarded_h5

    class FullAfter:
        def __init__(self, fh, limit: int) -> None:
            self.fh, self.limit = fh, limit

        def write(self, data) -> int:
            if self.fh.tell() + memoryview(data).nbytes > self.limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    dest = tmp_path / "big.h5"
    with pytest.raises(OutputError, match="no space left"), atomic_path(dest) as tmp, guarded_h5(tmp) as (f, guard):
        guard._fh = FullAfter(guard._fh, 50_000)
        ds = f.create_dataset("x", shape=(100, 1000), dtype="f4", chunks=(10, 1000))
        for lo in range(0, 100, 10):
            ds[lo : lo + 10] = np.ones((10, 1000), "f4")
            guard.check()
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_an_hdf5_write_is_deferred_to_a_safe_point(tmp_path: Path) -> None:
    """A Ctrl-C landing while HDF5 writes through the guarded file must not raise into HDF5 (its caches
    are left inconsistent and the process segfaulted at exit, issue 15): recorded, then raised by check."""
    import signal

    from mlfastsim.core.io import guarded_h5

    class CtrlCOnWrite:
        def __init__(self, fh) -> None:
            self.fh, self.sent = fh, False

        def write(self, data) -> int:
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)  # handled as soon as this C call returns
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    dest = tmp_path / "x.h5"
    with pytest.raises(KeyboardInterrupt), atomic_path(dest) as tmp, guarded_h5(tmp) as (f, guard):
        guard._fh = CtrlCOnWrite(guard._fh)
        ds = f.create_dataset("x", shape=(100, 1000), dtype="f4", chunks=(10, 1000))
        ds[:] = np.ones((100, 1000), "f4")
        f.flush()  # HDF5 writes through the guard: the Ctrl-C lands in GuardedFile.write and is only recorded
        assert guard._fh.sent
        guard.check()  # the safe point
    assert list(tmp_path.iterdir()) == []


def test_lock_holder_removes_only_its_own_outputs_temporaries(tmp_path: Path) -> None:
    from mlfastsim.core.io import _host_tag, remove_stale_tmp

    mine = tmp_path / f".run.abcd1234.{_host_tag()}-{os.getpid()}.tmp"
    legacy = tmp_path / ".run.k2j3h4g5.tmp"
    other = tmp_path / f".run.h5.abcd1234.{_host_tag()}-{os.getpid()}.tmp"  # output "run.h5", not "run"
    for p in (mine, legacy, other):
        p.write_bytes(b"x")
    assert sorted(remove_stale_tmp(tmp_path, name="run")) == sorted([mine, legacy])
    assert other.exists()

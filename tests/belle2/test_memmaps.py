"""Memmaps: creation from several files equals the concatenation; sidecars validated; prefetching is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlfastsim.belle2.memmaps import PrefetchingReader, create_memmap, open_memmap, sidecars
from mlfastsim.core.errors import DataError, InputFileError


def _files(tmp_path: Path, shapes: list[tuple[int, ...]], dtype: str = "float32") -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = []
    for i, shape in enumerate(shapes):
        d = tmp_path / f"part{i}"
        d.mkdir()
        a = rng.normal(size=shape).astype(dtype)
        np.save(d / "x.npy", a)
        arrays.append(a)
    return arrays


def test_memmap_equals_concatenation(tmp_path: Path) -> None:
    arrays = _files(tmp_path, [(7, 3, 2), (5, 3, 2), (11, 3, 2)])
    out = tmp_path / "x.memmap"
    info = create_memmap(str(tmp_path / "part*" / "x.npy"), out, block_rows=4, progress=False)
    assert info["shape"] == [23, 3, 2]
    shape_file, dtype_file = sidecars(out)
    assert shape_file.read_text().strip() == "23,3,2" and dtype_file.read_text().strip() == "<f4"
    mm = open_memmap(out)
    assert np.array_equal(np.asarray(mm), np.concatenate(arrays))


def test_bad_sidecars_and_inputs(tmp_path: Path) -> None:
    _files(tmp_path, [(6, 4), (3, 4)])
    out = tmp_path / "x.memmap"
    create_memmap(str(tmp_path / "part*" / "x.npy"), out, progress=False)
    shape_file, dtype_file = sidecars(out)
    assert open_memmap(out).shape == (9, 4)
    shape_file.write_text("8,4\n")
    with pytest.raises(DataError, match="bytes"):
        open_memmap(out)
    shape_file.write_text("nine,4\n")
    with pytest.raises(InputFileError, match=r"malformed \.shape"):
        open_memmap(out)
    shape_file.write_text("9,4\n")
    dtype_file.write_text("float128x\n")
    with pytest.raises(InputFileError, match=r"malformed \.dtype"):
        open_memmap(out)
    dtype_file.unlink()
    with pytest.raises(InputFileError, match=r"missing \.dtype"):
        open_memmap(out)
    with pytest.raises(InputFileError, match="no file matches"):
        create_memmap(str(tmp_path / "nothing*.npy"), tmp_path / "y.memmap", progress=False)
    np.save(tmp_path / "part1" / "x.npy", np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(DataError, match="does not match"):
        create_memmap(str(tmp_path / "part*" / "x.npy"), tmp_path / "z.memmap", progress=False)
    assert not (tmp_path / "z.memmap").exists()


class _FakeTrainer:
    """What the reader asks of a trainer: the current step and the batch order."""

    def __init__(self, n: int, bs: int) -> None:
        self.step, self.n, self.bs, self.total_steps = 0, n, bs, 50

    def batch_indices(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step)
        return torch.randperm(self.n, generator=g)[: self.bs]


def test_prefetching_reader_serves_exact_batches(tmp_path: Path) -> None:
    a = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    b = np.arange(200, dtype=np.int32)
    rows = np.arange(0, 200, 2)  # a subset (e.g. the training split)
    reader = PrefetchingReader([a, b], rows, [torch.float32, torch.long], prefetch=3)
    trainer = _FakeTrainer(rows.size, 16)
    reader.bind(trainer)
    cols = reader.columns()
    assert cols[0].shape == (100, 3)
    try:
        for step in range(10):
            trainer.step = step
            idx = trainer.batch_indices(step)
            xa, xb = cols[0][idx], cols[1][idx]
            assert torch.equal(xa, torch.from_numpy(a[rows[idx.numpy()]]))
            assert torch.equal(xb, torch.from_numpy(b[rows[idx.numpy()]]).long())
        trainer.step = 3  # a jump (resume): served correctly, not from a stale prefetch
        idx = trainer.batch_indices(3)
        assert torch.equal(cols[1][idx], torch.from_numpy(b[rows[idx.numpy()]]).long())
        assert torch.equal(cols[0][2:5], torch.from_numpy(a[rows[2:5]]))
    finally:
        reader.close()

"""Streaming ``showers convert``: every direction in blocks of rows, so memory does not grow with N.

Two passes over the inputs.

1. **Plan** (:func:`plan_conversion`): read what is small (per shower its energy and angle, per file its
   layout, mesh and ``meta``) and check it, before a single shower is read.  This fixes the *data
   order*, the order :func:`~mlfastsim.showers.io.formats.convert` returns showers in: files one after
   the other, except that Par04 inputs come out stably sorted by (angle, energy).  The showers are
   described as *segments* (rows ``[0, n)`` of one dataset of one file; a Par04 file has one per energy
   dataset) listed in data order, so sorting Par04 input never needs a per-row index.
2. **Stream** (:func:`run_conversion`): blocks of rows in data order are read as tasks (serially or on
   Dask, stored in the job's resume cache as data) and appended to the output as they arrive.  A Par04
   output groups rows by (angle, energy); when the data order is already grouped (Par04 to Par04, or a
   native file simulated point by point) blocks go straight to the files, otherwise each block is first
   written at its final rows into an uncompressed scratch file in the resume cache (``pwrite``: the
   page cache holds it, not this process) and read back in output order.

The outputs hold the same arrays and attributes as converting in memory (tested against
:func:`~mlfastsim.showers.io.formats.convert` + the in-memory writers) and are stamped with the job's
fingerprint (:func:`mlfastsim.core.resume.stamp_h5`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlfastsim.core.errors import ConfigError, DataError
from mlfastsim.core.io import check_free_space, open_h5, translate_fs_errors
from mlfastsim.showers.geometry import Mesh
from mlfastsim.showers.io.native import (
    angle_energy_order,
    check_joinable,
    check_layout,
    check_values,
    expand_inputs,
    native_writer,
    read_native_header,
    read_rows,
)

#: Bump when the task list or the records change: the resume cache of an older layout is not reused.
STREAM_VERSION = "convert-stream-1"
BLOCK_BYTES = 32 << 20  # float32 bytes of one block of rows (one task)


def block_rows(n_voxels: int) -> int:
    """Rows per block: about :data:`BLOCK_BYTES`, a multiple of the 256-row HDF5 chunks when possible."""
    rows = BLOCK_BYTES // (4 * max(n_voxels, 1))
    return max(256, rows // 256 * 256)


@dataclass
class Segment:
    """Rows ``[0, n)`` of dataset ``key`` of one input file (``key`` is "" for a hits file's events)."""

    path: str
    key: str
    n: int
    offsets: np.ndarray | None = None  # hits: the events' (n+1) hit offsets in the file
    normal: np.ndarray | None = None  # hits: the front face's unit normal


@dataclass
class ConversionPlan:
    """What pass 1 learned: the mesh, the segments in data order, per-shower energies and angles (in
    data order), the joined ``meta``, and for hits what the voxeliser needs per file."""

    source_format: str
    mesh: Mesh
    segments: list[Segment]
    energies: np.ndarray
    angles: np.ndarray | None
    meta: dict[str, Any]
    sources: list[Path]
    chunk_hits: int | None = None
    hits_counts: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.energies.size)

    def require_showers(self) -> None:
        """Refuse inputs without a single shower (nothing to write: a CaloChallenge reader would choke)."""
        if len(self) == 0:
            raise DataError("the input file(s) hold no showers",
                            file=self.sources[0] if len(self.sources) == 1 else None, field="showers",
                            fix="convert files with at least one shower")

    def tasks(self, rows: int) -> list[tuple[Any, ...]]:
        """One task per block of ``rows`` rows in data order (hits: also at most ``chunk_hits`` hits)."""
        tasks: list[tuple[Any, ...]] = []
        reads: list[tuple[str, str, int, int]] = []
        room = rows
        for seg in self.segments:
            lo = 0
            while lo < seg.n:
                if self.source_format == "hits":
                    assert seg.offsets is not None and self.chunk_hits is not None
                    cap = int(np.searchsorted(seg.offsets, seg.offsets[lo] + self.chunk_hits, side="right")) - 1
                    hi = min(max(cap, lo + 1), seg.n, lo + room)
                else:
                    hi = min(seg.n, lo + room)
                reads.append((seg.path, seg.key, lo, hi))
                room -= hi - lo
                lo = hi
                if room == 0 or self.source_format == "hits":
                    tasks.append(self._task(reads))
                    reads, room = [], rows
        if reads:
            tasks.append(self._task(reads))
        return tasks

    def _task(self, reads: list[tuple[str, str, int, int]]) -> tuple[Any, ...]:
        extra: dict[str, Any] = {}
        if self.source_format == "hits":
            (path, _, lo, hi), = reads
            seg = next(s for s in self.segments if s.path == path)
            assert seg.offsets is not None
            extra = {"offsets": seg.offsets[lo : hi + 1], "chunk_hits": self.chunk_hits, "normal": seg.normal}
        return (self.source_format, self.mesh, list(reads), extra)


def convert_block(source_format: str, mesh: Mesh, reads: Sequence[tuple[str, str, int, int]],
                  extra: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read one block of rows (a task of a streaming conversion, here or on a Dask worker), checked.

    ``reads`` are (file, dataset, first row, end row) in data order.  Returns ``showers`` (rows, n_voxels)
    float32 in the native layout; for hits also the per-event counts the voxelisation summary adds up.
    """
    from mlfastsim.showers.io.formats import read_par04_rows

    blocks: list[np.ndarray] = []
    out: dict[str, np.ndarray] = {}
    for path_s, key, lo, hi in reads:
        path = Path(path_s)
        if source_format == "hits":
            from mlfastsim.showers.sim.voxelise import voxelise_events

            with open_h5(path, what="hits file") as f:
                entry = np.asarray(f["entry_points"][lo:hi], dtype=np.float64).reshape(-1, 3)
                directions = np.asarray(f["directions"][lo:hi], dtype=np.float64).reshape(-1, 3)
            rows, n_out, e_out = voxelise_events(path, mesh, lo, hi, offsets=extra["offsets"], entry=entry,
                                                 directions=directions, normal=extra["normal"],
                                                 chunk_hits=int(extra["chunk_hits"]))
            check_values(rows, "showers", source=path, first_row=lo)
            out = {"n_outside": n_out, "e_outside": e_out, "row_sums": rows.sum(axis=1, dtype=np.float64)}
        else:
            with open_h5(path, what=f"{source_format} file") as f:
                if source_format == "par04":
                    rows = read_par04_rows(f, path, key, mesh, lo, hi)
                else:
                    rows = read_rows(f[key], path, lo, hi)
                    check_values(rows, key, source=path, first_row=lo)
        blocks.append(rows)
    out["showers"] = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return out


# ------------------------------------------------------------------------------------------- pass 1
def plan_conversion(source_format: str, inputs: Sequence[str | Path], *, mesh: Mesh | None = None,
                    **options: Any) -> ConversionPlan:
    """Pass 1: check every input's layout and per-shower arrays and fix the data order (no shower read).

    ``options`` are the reader's (``binning``/``particle``/``size_z`` for calochallenge, ``angle`` for
    par04, ``chunk_hits`` for hits); ``None`` means not given.  Errors are those of the in-memory
    readers: one line naming the file and field.
    """
    from mlfastsim.showers.io import formats

    given = {k: v for k, v in options.items() if v is not None}
    reader = formats.get_reader(source_format)
    formats._check_options(reader, source_format, given)
    sources = expand_inputs(inputs, what=source_format)
    if source_format == "hits":
        return _plan_hits(sources, mesh, given.get("chunk_hits"))
    if source_format == "calochallenge":
        if mesh is not None and given.get("binning") is not None:
            raise ConfigError("both a mesh and a binning XML were given", field="--binning",
                              fix="pass either --mesh or --binning")
        if given.get("binning") is not None:
            from mlfastsim.showers.geometry import read_binning_xml

            mesh = read_binning_xml(given["binning"], particle=given.get("particle"),
                                    size_z=given.get("size_z", 3.4))
    if source_format == "par04":
        return _plan_par04(sources, mesh, given.get("angle"))
    rows = block_rows(mesh.n_voxels) if mesh is not None else None
    heads = [read_native_header(p, mesh=mesh, rows=rows) for p in sources]
    check_joinable([h.mesh for h in heads], [h.angles is not None for h in heads], sources)
    segments = [Segment(str(p.resolve()), "showers", h.shape[0]) for p, h in zip(sources, heads, strict=True)]
    angles = None if heads[0].angles is None else np.concatenate([np.asarray(h.angles) for h in heads])
    return ConversionPlan(source_format, heads[0].mesh, segments, np.concatenate([h.energies for h in heads]),
                          angles, _joined_meta([h.meta for h in heads], sources), sources)


def _joined_meta(metas: list[dict[str, Any]], sources: list[Path]) -> dict[str, Any]:
    """The first file's ``meta``, plus ``inputs`` when there are several (as ``concat_showers``)."""
    meta = dict(metas[0])
    if len(sources) > 1:
        meta["inputs"] = [str(s) for s in sources]
    return meta


def _plan_par04(sources: list[Path], mesh: Mesh | None, angle: float | None) -> ConversionPlan:
    from mlfastsim.showers.io.formats import read_par04_header

    heads = [read_par04_header(p, mesh, angle, rows=block_rows(mesh.n_voxels) if mesh else None)
             for p in sources]
    check_joinable([h.mesh for h in heads], [True] * len(heads), sources)
    # segments in file order, each file's by energy; then the stable (angle, energy) sort of the rows is
    # the stable sort of the segments (every row of a segment has the same key)
    segs = [(Segment(str(h.path.resolve()), key, n), energy, h.angle)
            for h in heads for key, n, energy in h.datasets]
    order = np.lexsort((np.array([e for _, e, _ in segs], np.float32), np.array([a for *_, a in segs], np.float32)))
    segs = [segs[i] for i in order]
    energies = np.concatenate([np.full(s.n, e, np.float32) for s, e, _ in segs])
    angles = np.concatenate([np.full(s.n, a, np.float32) for s, _, a in segs])
    return ConversionPlan("par04", heads[0].mesh, [s for s, _, _ in segs], energies, angles,
                          _joined_meta([h.meta for h in heads], sources), sources)


def _plan_hits(sources: list[Path], mesh: Mesh | None, chunk_hits: int | None) -> ConversionPlan:
    from mlfastsim.showers.sim.voxelise import DEFAULT_CHUNK_HITS, read_hits_header

    if mesh is None:
        raise ConfigError("voxelising hits needs a mesh", field="--mesh",
                          fix="pass --mesh (par04, ds2, ds3, hcal48, a binning .xml or a mesh .yaml)")
    heads = [read_hits_header(p) for p in sources]
    segments = [Segment(str(h.path.resolve()), "", h.n, h.offsets, h.normal) for h in heads]
    meta = _joined_meta([{} for _ in heads], sources)
    meta["source_format"] = "hits"
    meta["front_face_normal"] = heads[0].normal.tolist()
    plan = ConversionPlan("hits", mesh, segments, np.concatenate([h.energies for h in heads]),
                          np.concatenate([h.angles for h in heads]), meta, sources,
                          chunk_hits=max(int(chunk_hits or DEFAULT_CHUNK_HITS), 1))
    for p, h in zip(sources, heads, strict=True):  # the same checks the in-memory reader makes per file
        check_layout((h.n, mesh.n_voxels), mesh, np.asarray(h.energies, np.float32),
                     np.asarray(h.angles, np.float32), source=p)
    return plan


# ------------------------------------------------------------------------------------------- pass 2
@dataclass
class Converted:
    """What a conversion wrote: for the command's summary line."""

    n: int
    mesh: Mesh
    paths: list[Path]

    def __len__(self) -> int:
        return self.n


def run_conversion(plan: ConversionPlan, target_format: str, output: str | Path, *, job: str | None = None,
                   cache: Any = None, workers: int = 1, scheduler: str | None = None,
                   progress: bool = False) -> Converted:
    """Pass 2: stream the blocks of ``plan`` into ``output`` in ``target_format`` (see the module doc).

    ``cache`` is the job's :class:`~mlfastsim.core.resume.TaskCache` (finished blocks of a killed run are
    reused; the Par04 scratch file lives in it too); ``job`` stamps the output(s) with the fingerprint.
    """
    from mlfastsim.core.parallel import iter_tasks

    plan.require_showers()
    n = len(plan)
    rows = block_rows(plan.mesh.n_voxels)
    raw = n * plan.mesh.n_voxels * 4
    order = None
    if target_format == "par04":
        angles = plan.angles if plan.angles is not None else np.full(n, 90.0, np.float32)
        order = angle_energy_order(plan.energies, angles)
        if plan.source_format != "hits" and bool(np.all(order == np.arange(n))):
            order = None  # already grouped: no reordering pass
        elif plan.source_format == "hits" and bool(np.all(order == np.arange(n))):
            order = np.arange(n)  # the files' meta waits for the voxelisation counts: through the scratch
    # the resume cache holds every block (uncompressed) until the output is complete, a reordering pass
    # as much again, and the output is at most as large (twice for CaloChallenge's float64)
    factor = 2 + (order is not None) + (target_format == "calochallenge")
    check_free_space(output, factor * raw, what=f"converting {n} showers of {plan.mesh.n_voxels} cells")
    tasks = plan.tasks(rows)
    if cache is not None:  # a stored block must be what its task returns: its rows of cells, its counts
        cache.accept = lambda i, v: _block_of(v, sum(hi - lo for *_, lo, hi in tasks[i][2]), plan)
    stream = iter_tasks(convert_block, tasks, workers=workers, scheduler=scheduler,
                        description=f"converting {n} {plan.source_format} showers", progress=progress, cache=cache)
    if target_format in ("native", "calochallenge"):
        cc = target_format == "calochallenge"
        with native_writer(output, mesh=plan.mesh, energies=plan.energies, angles=None if cc else plan.angles,
                           meta=plan.meta, job=job, calochallenge=cc) as writer:
            for part in stream:
                writer.append(part["showers"])
                _absorb(plan, part)
            if plan.source_format == "hits" and not cc:
                writer.set_meta(_final_meta(plan))
        return Converted(n, plan.mesh, [Path(output)])
    if target_format != "par04":
        raise ConfigError(f"unknown output layout {target_format!r}", field="--to",
                          fix="use one of native, calochallenge, par04")
    from mlfastsim.showers.io.formats import par04_writer

    angles = plan.angles if plan.angles is not None else np.full(n, 90.0, np.float32)
    if order is None:
        with par04_writer(output, mesh=plan.mesh, energies=plan.energies, angles=angles, meta=plan.meta,
                          job=job) as writer:
            for part in stream:
                writer.append(part["showers"])
        return Converted(n, plan.mesh, writer.paths)
    assert cache is not None, "reordering needs the job's cache directory for its scratch file"
    scratch = Path(cache.directory) / "reorder.f32"
    row_bytes = plan.mesh.n_voxels * 4
    with translate_fs_errors(scratch, what="reordering scratch file", any_errno=True):
        fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, n * row_bytes)  # a full disk now, not halfway
            _scatter(stream, fd, np.argsort(order, kind="stable"), row_bytes, plan)
            with par04_writer(output, mesh=plan.mesh, energies=plan.energies[order], angles=angles[order],
                              meta=_final_meta(plan), job=job) as writer:
                for block in _gather(fd, n, rows, plan.mesh.n_voxels):
                    writer.append(block)
        finally:
            os.close(fd)
            scratch.unlink(missing_ok=True)
    return Converted(n, plan.mesh, writer.paths)


def _block_of(value: Any, rows: int, plan: ConversionPlan) -> bool:
    """``value`` is a block :func:`convert_block` could return for ``rows`` rows of ``plan``."""
    keys = {"showers", "n_outside", "e_outside", "row_sums"} if plan.source_format == "hits" else {"showers"}
    if not isinstance(value, dict) or set(value) != keys:
        return False
    showers = value["showers"]
    return (isinstance(showers, np.ndarray) and showers.dtype == np.float32
            and showers.shape == (rows, plan.mesh.n_voxels)
            and all(isinstance(value[k], np.ndarray) and value[k].shape == (rows,) for k in keys - {"showers"}))


def _absorb(plan: ConversionPlan, part: dict[str, np.ndarray]) -> None:
    """Keep the per-event voxelisation counts of a hits block (small: three numbers an event)."""
    if plan.source_format == "hits":
        plan.hits_counts.append({k: part[k] for k in ("n_outside", "e_outside", "row_sums")})


def _final_meta(plan: ConversionPlan) -> dict[str, Any]:
    """``meta`` with the voxelisation summary once every hits block is in (as the in-memory reader)."""
    if plan.source_format != "hits":
        return plan.meta
    from mlfastsim.showers.sim.voxelise import outside_counts, outside_summary

    counts, k = [], 0
    for seg in plan.segments:  # per file, then summed over files exactly as combine_hits does
        parts, got = [], 0
        while got < seg.n:
            parts.append(plan.hits_counts[k])
            got += len(plan.hits_counts[k]["n_outside"])
            k += 1
        assert seg.offsets is not None
        counts.append(outside_counts(int(seg.offsets[-1]), *(np.concatenate([p[key] for p in parts])
                                                             for key in ("row_sums", "n_outside", "e_outside"))))
    meta = dict(plan.meta)
    meta["voxelisation"] = outside_summary(counts)
    return meta


def _scatter(stream: Iterator[dict[str, np.ndarray]], fd: int, destination: np.ndarray, row_bytes: int,
             plan: ConversionPlan) -> None:
    """Write each block's rows at their output rows of the scratch file (runs of consecutive rows at once)."""
    row = 0
    for part in stream:
        block = np.ascontiguousarray(part["showers"], dtype=np.float32)
        dest = destination[row : row + len(block)]
        cuts = np.flatnonzero(np.diff(dest) != 1) + 1
        for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(block)]]), strict=True):
            os.pwrite(fd, block[a:b].tobytes(), int(dest[a]) * row_bytes)
        row += len(block)
        _absorb(plan, part)


def _gather(fd: int, n: int, rows: int, n_voxels: int) -> Iterator[np.ndarray]:
    """The scratch file back in output order, ``rows`` at a time."""
    row_bytes = n_voxels * 4
    for lo in range(0, n, rows):
        k = min(rows, n - lo)
        raw = os.pread(fd, k * row_bytes, lo * row_bytes)
        yield np.frombuffer(raw, dtype=np.float32).reshape(k, n_voxels)

"""``belle2 produce``: labelled training data, the way Belle II produces it.

Generation (:mod:`mlfastsim.belle2.generator`) -> expensive stage (:mod:`mlfastsim.belle2.detector`)
-> skim label.  The output is one HDF5 file written through pandas/PyTables with two tables:

``particles``  generator-level MCParticles, one row per particle, sorted by event then tree index:
               event, index, mother_index (-1 for the Upsilon(4S)), pdg, mother_pdg (0 for the root),
               charge, mass_mev, E_mev, px_mev, py_mev, pz_mev, x_mm, y_mm, z_mm, t_ns (production point)
               and is_final (not decayed by the generator);
``events``     one row per event: event, label (1 = passes the skim), first_row and n_particles (where its
               particles are), sim_cpu_s (measured CPU time of the expensive stage for this event),
               gen_cpu_s (generation CPU time per event of its chunk) and the skim variables.

Events are produced in chunks; chunk ``k`` draws from ``SeedSequence([seed, k])``, so the file is the same
whatever the number of Dask workers.  Chunks are appended to the file in task order with a bounded
number in flight (memory stays a few chunks), into a temporary file renamed into place at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from mlfastsim.belle2.config import ProduceConfig
from mlfastsim.belle2.decay_table import load_decay_table
from mlfastsim.belle2.detector import SKIM_VARIABLES, simulate_event
from mlfastsim.belle2.generator import generate
from mlfastsim.core.errors import DataError, InputFileError
from mlfastsim.core.io import atomic_path, check_free_space, check_h5_no_code, check_output_file, require_file
from mlfastsim.core.parallel import (
    TaskCache,
    cache_dir_for,
    clear_done,
    config_fingerprint,
    file_signatures,
    is_done,
    iter_tasks,
)
from mlfastsim.core.resume import stamp_h5

PARTICLE_COLUMNS = ("event", "index", "mother_index", "pdg", "mother_pdg", "charge", "mass_mev", "E_mev", "px_mev",
                    "py_mev", "pz_mev", "x_mm", "y_mm", "z_mm", "t_ns", "is_final")
EVENT_COLUMNS = ("event", "label", "first_row", "n_particles", "sim_cpu_s", "gen_cpu_s", *SKIM_VARIABLES)
#: columns a generator-level file must have for preprocessing and apply (the label is optional there)
REQUIRED_PARTICLE_COLUMNS = ("event", "index", "mother_index", "pdg", "charge", "E_mev", "px_mev", "py_mev",
                             "pz_mev", "x_mm", "y_mm", "z_mm", "t_ns")


def produce_chunk(dec_file: str | None, chunk: int, n_events: int, first_event: int, seed: int
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate, simulate and skim ``n_events`` events of chunk ``chunk`` (a pure function of its arguments)."""
    table = load_decay_table(dec_file)
    gen_rng, sim_rng = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, chunk]).spawn(2))
    t0 = time.process_time()
    parts = generate(table, n_events, gen_rng)
    gen_cpu = (time.process_time() - t0) / n_events
    pdg = table.pdg[parts.species]
    rows: list[dict[str, Any]] = []
    for i in range(n_events):
        a, b = parts.offsets[i], parts.offsets[i + 1]
        final = ~parts.decayed[a:b]
        t1 = time.process_time_ns()
        result = simulate_event(pdg[a:b][final], parts.p4[a:b][final], sim_rng)
        result["sim_cpu_s"] = (time.process_time_ns() - t1) * 1e-9
        rows.append(result)
    events = pd.DataFrame(rows)
    events.insert(0, "event", np.arange(first_event, first_event + n_events, dtype=np.int64))
    events["n_particles"] = np.diff(parts.offsets).astype(np.int64)
    events["first_row"] = parts.offsets[:-1].astype(np.int64)  # made global by the writer
    events["gen_cpu_s"] = gen_cpu
    events["label"] = events["label"].astype(np.int8)
    events = events[list(EVENT_COLUMNS)]
    mother_global = np.where(parts.mother >= 0, parts.offsets[parts.event] + parts.mother, 0)
    mother_pdg = np.where(parts.mother >= 0, pdg[mother_global], 0)
    particles = pd.DataFrame({
        "event": parts.event + first_event,
        "index": parts.index.astype(np.int32),
        "mother_index": parts.mother.astype(np.int32),
        "pdg": pdg.astype(np.int32),
        "mother_pdg": mother_pdg.astype(np.int32),
        "charge": table.charge[parts.species].astype(np.int8),
        "mass_mev": parts.mass,
        "E_mev": parts.p4[:, 0],
        "px_mev": parts.p4[:, 1],
        "py_mev": parts.p4[:, 2],
        "pz_mev": parts.p4[:, 3],
        "x_mm": parts.vertex[:, 0],
        "y_mm": parts.vertex[:, 1],
        "z_mm": parts.vertex[:, 2],
        "t_ns": parts.vertex[:, 3],
        "is_final": ~parts.decayed,
    })
    return particles, events


#: A lower bound of an event's bytes in the events file (a dozen particles of ~15 numbers): used to refuse a
#: run that cannot fit on its disk, never to refuse one that can.
MIN_BYTES_PER_EVENT = 256


def produce(cfg: ProduceConfig, *, progress: bool = True) -> dict[str, Any]:
    """Produce ``cfg.n_events`` labelled events into ``cfg.output``; returns a summary (with the dropped BF).

    Idempotent: an output finished with the same settings is not produced again (its stored summary is
    returned), and a run killed midway resumes from its finished chunks (``.NAME.parts`` beside the
    output, see :mod:`mlfastsim.core.parallel`).
    """
    dec_file = str(cfg.dec_file) if cfg.dec_file else None
    table = load_decay_table(dec_file)  # fail early (bad DEC file) and get the report
    check_output_file(cfg.output)  # a directory, device or read-only disk fails now, not after the work
    # sizes before any work (or the task list of -n 1e12 fills the memory): an event takes well over
    # MIN_BYTES_PER_EVENT in the resume cache and again in the output
    check_free_space(cfg.output, 2 * cfg.n_events * MIN_BYTES_PER_EVENT, what=f"{cfg.n_events} events")
    fingerprint = config_fingerprint(cfg, file_signatures([cfg.dec_file]) if cfg.dec_file else None)
    if is_done(cfg.output, fingerprint):  # its stamp names this job and still matches what the file holds
        check_h5_no_code(cfg.output, what="events file", fix=_TRUSTED_FIX)
        with pd.HDFStore(cfg.output, mode="r") as store:
            stored = getattr(store.get_storer("events").attrs, "summary_json", None)
        if isinstance(stored, str | bytes):
            return dict(json.loads(stored))
    # one writer per output (a second job stops with one line); chunks of a killed run are reused
    n_chunks = -(-cfg.n_events // cfg.chunk_size)
    tasks = [(dec_file, k, min(cfg.chunk_size, cfg.n_events - k * cfg.chunk_size), k * cfg.chunk_size, cfg.seed)
             for k in range(n_chunks)]
    # a stored chunk must be the (particles, events) tables of its task's events, else it is recomputed
    cache = TaskCache(cache_dir_for(cfg.output), fingerprint,
                      accept=lambda i, v: (isinstance(v, tuple | list) and len(v) == 2
                                           and all(isinstance(t, pd.DataFrame) for t in v)
                                           and len(v[1]) == tasks[i][2]))
    summary: dict[str, Any] = {}
    with atomic_path(cfg.output) as tmp:
        _write_events(cfg, tasks, cache, table, tmp, progress=progress, summary=summary)
        clear_done(cfg.output)
        with h5py.File(tmp, "r+") as f:  # "done" is the file: its root carries this job's fingerprint
            stamp_h5(f, fingerprint)
    cache.clear()
    return summary


def _write_events(cfg: ProduceConfig, tasks: list[tuple[Any, ...]], cache: TaskCache, table: Any, tmp: Path, *,
                  progress: bool, summary: dict[str, Any]) -> None:
    """Append every chunk's tables to the events file ``tmp`` in task order and fill ``summary``."""
    t0 = time.perf_counter()
    n_rows = 0
    n_pass = 0
    sim_cpu = 0.0
    gen_cpu = 0.0
    with pd.HDFStore(tmp, mode="w", complevel=1, complib="zlib") as store:
        # chunks in task order with a bounded number in flight: memory stays a few chunks whatever n_events
        for particles, events in iter_tasks(produce_chunk, tasks, workers=cfg.parallel.workers,
                                            scheduler=cfg.parallel.scheduler, description="produce",
                                            progress=progress, cache=cache):
            events = events.copy()
            events["first_row"] += n_rows
            n_rows += len(particles)
            n_pass += int(events["label"].sum())
            sim_cpu += float(events["sim_cpu_s"].sum())
            gen_cpu += float(events["gen_cpu_s"].sum())
            store.append("particles", particles, format="table", index=False)
            store.append("events", events, format="table", index=False, data_columns=["event", "label"])
        summary.update({
            "n_events": cfg.n_events,
            "n_particles": n_rows,
            "pass_fraction": n_pass / cfg.n_events,
            "sim_cpu_s_per_event": sim_cpu / cfg.n_events,
            "gen_cpu_s_per_event": gen_cpu / cfg.n_events,
            "wall_s": time.perf_counter() - t0,
            "seed": cfg.seed,
            "chunk_size": cfg.chunk_size,
            "decay_table": table.report(),
        })
        # JSON text, not a Python object: PyTables pickles object attributes, and reading one back runs code
        store.get_storer("events").attrs.summary_json = json.dumps(summary)


# ---------------------------------------------------------------------------------------------- reading
_TRUSTED_FIX = "read only events files you trust; re-create this one with 'mlfastsim belle2 produce'"


class EventFile:
    """A produce-format file opened for chunked reading, with its layout validated up front."""

    def __init__(self, path: str | Path, *, need_labels: bool = False) -> None:
        self.path = require_file(path, what="events file")
        # PyTables unpickles attributes on read: a file from elsewhere must not run code (checked with h5py)
        check_h5_no_code(self.path, what="events file", fix=_TRUSTED_FIX)
        try:
            self.store = pd.HDFStore(self.path, mode="r")
        except Exception as exc:  # PyTables raises HDF5ExtError, OSError, ValueError... for non-HDF5 input
            raise InputFileError(f"not a readable HDF5 table file ({type(exc).__name__})", file=self.path,
                                 fix="pass a file written by 'mlfastsim belle2 produce'") from exc
        try:
            keys = {k.lstrip("/") for k in self.store.keys()}
            for key in ("particles", "events"):
                if key not in keys:
                    raise InputFileError(f"no '{key}' table (found: {', '.join(sorted(keys)) or 'nothing'})",
                                         file=self.path, field=key,
                                         fix="pass a file written by 'mlfastsim belle2 produce'")
            p_cols = self._columns("particles")
            missing = [c for c in REQUIRED_PARTICLE_COLUMNS if c not in p_cols]
            if missing:
                raise InputFileError(f"particles table lacks required column(s) {', '.join(missing)}",
                                     file=self.path, field="particles",
                                     fix=f"the table needs {', '.join(REQUIRED_PARTICLE_COLUMNS)}")
            e_cols = self._columns("events")
            need = ["event", "first_row", "n_particles"] + (["label"] if need_labels else [])
            missing = [c for c in need if c not in e_cols]
            if missing:
                raise InputFileError(f"events table lacks required column(s) {', '.join(missing)}",
                                     file=self.path, field="events", fix=f"the table needs {', '.join(need)}")
            self.n_events = int(self.store.get_storer("events").nrows)
            self.n_particles = int(self.store.get_storer("particles").nrows)
            self._events: pd.DataFrame | None = None
        except BaseException:
            self.store.close()
            raise

    def _columns(self, key: str) -> list[str]:
        return list(self.store.select(key, stop=1).columns)

    @property
    def events(self) -> pd.DataFrame:
        """The whole events table (one small row per event; analysis-level use such as evaluate)."""
        if self._events is None:
            self._events = self.store.select("events")
        return self._events

    def events_chunk(self, lo: int, hi: int) -> pd.DataFrame:
        """Rows ``lo:hi`` of the events table, read on their own (streaming use)."""
        if self._events is not None:
            return self._events.iloc[lo:hi]
        return self.store.select("events", start=lo, stop=hi)

    def particles(self, lo: int, hi: int) -> tuple[pd.DataFrame, np.ndarray]:
        """Particles of events ``lo:hi`` (row positions in the events table) and per-event offsets."""
        ev = self.events_chunk(lo, hi)
        if len(ev) == 0:
            return pd.DataFrame(columns=list(REQUIRED_PARTICLE_COLUMNS)), np.zeros(1, dtype=np.int64)
        first = ev["first_row"].to_numpy(np.int64)
        counts = ev["n_particles"].to_numpy(np.int64)
        start, stop = int(first[0]), int(first[-1] + counts[-1])
        if np.any(first[1:] != first[:-1] + counts[:-1]) or stop > self.n_particles or start < 0:
            raise DataError("events table rows (first_row, n_particles) do not tile the particles table",
                            file=self.path, field="events.first_row", fix="re-create the file with belle2 produce")
        df = self.store.select("particles", start=start, stop=stop)
        offsets = np.r_[0, np.cumsum(counts)]
        return df, offsets

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> EventFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Standard preprocessing: generator-level particle tables -> fixed-size arrays, one ``.npy`` per input type.

Per event (padded to ``max_particles`` particles and ``max_tokens`` decay-string tokens):

``particle``      (N, P, F) float32: the continuous features in :data:`FEATURES`, normalised by fixed
                  constants (not by statistics of the file, so every file and ``apply`` encode alike),
                  plus the charge one-hot;
``pdg``           (N, P) int32 token of the PDG code, ``mother_pdg`` (N, P) the mother's (NONE for the root);
``mother_index``  (N, P) int32 position of the mother in the event (-1 for the root and padding): the
                  mother-daughter graph for graph networks;
``decay``         (N, T) int32 the decay string built from the tree, tokenised (see :func:`decay_tokens`);
``y``             (N,) float32 the skim label; ``event`` (N,) int64 the event numbers.

Tokens come from a fixed vocabulary: the PDG codes the decay table can produce plus special tokens.
A PDG code outside it becomes UNK and is counted in the summary, never dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfastsim.belle2.config import INPUT_TYPES, PreprocessConfig
from mlfastsim.belle2.decay_table import SQRT_S_MEV, load_decay_table
from mlfastsim.belle2.memmaps import release_pages
from mlfastsim.belle2.produce import EventFile
from mlfastsim.core.errors import ConfigError, DataError, InputFileError
from mlfastsim.core.io import (
    atomic_write_json,
    check_free_space,
    plain_file_mode,
    translate_fs_errors,
)

PAD, UNK, NONE, OPEN, CLOSE = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ("<pad>", "<unk>", "<none>", "(", ")")
E_SCALE_MEV = SQRT_S_MEV / 2.0
FEATURES = ("E", "px", "py", "pz", "mass", "x", "y", "z", "t", "charge-", "charge0", "charge+")
N_FEATURES = len(FEATURES)
#: vertex coordinates are compressed with asinh(v / scale) / 10: 10 um .. 1 m map onto ~0 .. 1.2
VERTEX_SCALE_MM = 0.01
TIME_SCALE_NS = 1e-4
DTYPES = {"particle": np.float32, "pdg": np.int32, "mother_pdg": np.int32, "mother_index": np.int32,
          "decay": np.int32, "y": np.float32, "event": np.int64}


@dataclass(frozen=True)
class Vocabulary:
    """Token ids: the special tokens, then the sorted PDG codes (shared by particles and decay strings)."""

    pdg_codes: tuple[int, ...]

    @classmethod
    def from_decay_table(cls, dec_file: str | None = None) -> Vocabulary:
        table = load_decay_table(dec_file)
        return cls(tuple(sorted({int(p) for p in table.pdg})))

    @property
    def size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.pdg_codes)

    def encode(self, pdg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """PDG codes -> token ids; returns (tokens, mask of unknown codes)."""
        codes = np.asarray(self.pdg_codes, dtype=np.int64)
        pdg = np.asarray(pdg, dtype=np.int64)
        pos = np.clip(np.searchsorted(codes, pdg), 0, len(codes) - 1)
        known = codes[pos] == pdg
        return np.where(known, pos + len(SPECIAL_TOKENS), UNK).astype(np.int32), ~known

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids -> PDG codes (0 for special tokens)."""
        codes = np.r_[np.zeros(len(SPECIAL_TOKENS), dtype=np.int64), np.asarray(self.pdg_codes, dtype=np.int64)]
        return codes[np.asarray(tokens)]

    def to_json(self) -> dict[str, Any]:
        return {"special_tokens": list(SPECIAL_TOKENS), "pdg_codes": list(self.pdg_codes)}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str | Path = "vocabulary") -> Vocabulary:
        try:
            if list(data["special_tokens"]) != list(SPECIAL_TOKENS):
                raise ValueError("special tokens differ")
            return cls(tuple(int(x) for x in data["pdg_codes"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputFileError(f"invalid vocabulary ({exc})", file=source, field="vocab",
                                 fix="use the vocab.json written by belle2 preprocess") from exc


def particle_features(df: pd.DataFrame) -> np.ndarray:
    """(rows, F) normalised features of a particles table."""
    out = np.empty((len(df), N_FEATURES), dtype=np.float32)
    out[:, 0] = df["E_mev"].to_numpy() / E_SCALE_MEV
    out[:, 1] = df["px_mev"].to_numpy() / E_SCALE_MEV
    out[:, 2] = df["py_mev"].to_numpy() / E_SCALE_MEV
    out[:, 3] = df["pz_mev"].to_numpy() / E_SCALE_MEV
    if "mass_mev" in df:
        out[:, 4] = df["mass_mev"].to_numpy() / E_SCALE_MEV
    else:
        e, p = df["E_mev"].to_numpy(), df[["px_mev", "py_mev", "pz_mev"]].to_numpy()
        out[:, 4] = np.sqrt(np.clip(e * e - np.sum(p * p, axis=1), 0, None)) / E_SCALE_MEV
    for k, col in enumerate(("x_mm", "y_mm", "z_mm")):
        out[:, 5 + k] = np.arcsinh(df[col].to_numpy() / VERTEX_SCALE_MM) / 10.0
    out[:, 8] = np.arcsinh(df["t_ns"].to_numpy() / TIME_SCALE_NS) / 10.0
    q = np.sign(df["charge"].to_numpy()).astype(np.int64)
    out[:, 9:12] = np.eye(3, dtype=np.float32)[q + 1]
    return out


def decay_tokens(pdg_tokens: np.ndarray, mother: np.ndarray, max_tokens: int) -> tuple[np.ndarray, bool]:
    """The decay string of one event as tokens: ``X ( d1 d2 ( ... ) ... )`` in depth-first order.

    A particle with daughters is followed by ``(`` its daughters' strings ``)``.  Returns the padded tokens
    and whether the string had to be truncated.
    """
    n = len(pdg_tokens)
    children: list[list[int]] = [[] for _ in range(n)]
    roots = []
    for i in range(n):
        m = int(mother[i])
        if 0 <= m < n:
            children[m].append(i)
        else:
            roots.append(i)
    seq: list[int] = []
    stack: list[int | str] = list(reversed(roots))
    while stack:
        item = stack.pop()
        if item == "close":
            seq.append(CLOSE)
            continue
        i = int(item)
        seq.append(int(pdg_tokens[i]))
        if children[i]:
            seq.append(OPEN)
            stack.append("close")
            stack.extend(reversed(children[i]))
    out = np.zeros(max_tokens, dtype=np.int32)
    k = min(len(seq), max_tokens)
    out[:k] = seq[:k]
    return out, len(seq) > max_tokens


def parse_decay_tokens(tokens: np.ndarray) -> tuple[list[int], list[int]]:
    """Inverse of :func:`decay_tokens`: (token per particle in depth-first order, mother position)."""
    toks: list[int] = []
    mothers: list[int] = []
    stack: list[int] = []
    last = -1
    for t in np.asarray(tokens).tolist():
        if t == PAD:
            break
        if t == OPEN:
            stack.append(last)
        elif t == CLOSE:
            stack.pop()
        else:
            toks.append(int(t))
            mothers.append(stack[-1] if stack else -1)
            last = len(toks) - 1
    return toks, mothers


def decay_string(tokens: np.ndarray, vocab: Vocabulary) -> str:
    """Human-readable decay string, e.g. ``Upsilon(4S) (B+ (anti-D0 (K+ pi-) pi+) B- (...))``."""
    from particle import Particle

    parts = []
    for t in np.asarray(tokens).tolist():
        if t == PAD:
            break
        if t in (OPEN, CLOSE, UNK, NONE):
            parts.append(SPECIAL_TOKENS[t])
            continue
        pid = int(vocab.decode(np.array([t]))[0])
        try:
            parts.append(Particle.from_pdgid(pid).name)
        except Exception:
            parts.append(str(pid))
    return " ".join(parts).replace("( ", "(").replace(" )", ")")


def encode_events(df: pd.DataFrame, offsets: np.ndarray, vocab: Vocabulary, max_particles: int, max_tokens: int,
                  *, source: str | Path = "input") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Encode one chunk of events (particles sorted by event, ``offsets`` per event) into arrays."""
    n_ev = len(offsets) - 1
    n = len(df)
    float_cols = ["E_mev", "px_mev", "py_mev", "pz_mev", "x_mm", "y_mm", "z_mm", "t_ns"]
    values = df[float_cols].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        bad_row, bad_col = np.argwhere(~np.isfinite(values))[0]
        raise DataError(f"NaN/inf in particle row {int(df.index[bad_row])}", file=source,
                        field=f"particles.{float_cols[bad_col]}", fix="re-create or clean the input file")
    ev_local = np.repeat(np.arange(n_ev), np.diff(offsets))
    index = df["index"].to_numpy(np.int64)
    expected = np.arange(n) - offsets[ev_local]
    if not np.array_equal(index, expected):
        row = int(np.flatnonzero(index != expected)[0])
        raise DataError(f"particle 'index' is not 0,1,2... within each event (row {int(df.index[row])})",
                        file=source, field="particles.index", fix="sort particles by event and tree index")
    mother = df["mother_index"].to_numpy(np.int64)
    if np.any(mother >= index):
        row = int(np.flatnonzero(mother >= index)[0])
        raise DataError(f"mother_index must point to an earlier particle (row {int(df.index[row])})",
                        file=source, field="particles.mother_index", fix="write particles in tree (BFS) order")
    pdg_tok, unknown = vocab.encode(df["pdg"].to_numpy())
    if "mother_pdg" in df:
        mpdg = df["mother_pdg"].to_numpy(np.int64)
    else:
        g = np.where(mother >= 0, offsets[ev_local] + mother, 0)
        mpdg = np.where(mother >= 0, df["pdg"].to_numpy(np.int64)[g], 0)
    mtok, m_unknown = vocab.encode(mpdg)
    mtok = np.where(mother < 0, NONE, mtok).astype(np.int32)
    m_unknown &= mother >= 0
    feats = particle_features(df)
    keep = index < max_particles
    out = {
        "particle": np.zeros((n_ev, max_particles, N_FEATURES), dtype=np.float32),
        "pdg": np.zeros((n_ev, max_particles), dtype=np.int32),
        "mother_pdg": np.zeros((n_ev, max_particles), dtype=np.int32),
        "mother_index": np.full((n_ev, max_particles), -1, dtype=np.int32),
        "decay": np.zeros((n_ev, max_tokens), dtype=np.int32),
    }
    e_k, i_k = ev_local[keep], index[keep]
    out["particle"][e_k, i_k] = feats[keep]
    out["pdg"][e_k, i_k] = pdg_tok[keep]
    out["mother_pdg"][e_k, i_k] = mtok[keep]
    out["mother_index"][e_k, i_k] = mother[keep]
    truncated_tokens = 0
    for e in range(n_ev):
        a, b = offsets[e], offsets[e + 1]
        toks, cut = decay_tokens(pdg_tok[a:b], mother[a:b], max_tokens)
        out["decay"][e] = toks
        truncated_tokens += int(cut)
    unk_codes = np.unique(np.r_[df["pdg"].to_numpy()[unknown], mpdg[m_unknown]]).astype(int).tolist()
    stats = {"events": n_ev, "truncated_particles": int(np.sum(np.diff(offsets) > max_particles)),
             "truncated_decay_strings": truncated_tokens, "unknown_pdg_count": int(unknown.sum() + m_unknown.sum()),
             "unknown_pdg_codes": unk_codes}
    return out, stats


def _merge_stats(total: dict[str, Any], part: dict[str, Any]) -> None:
    for k, v in part.items():
        if k == "unknown_pdg_codes":
            total[k] = sorted(set(total.get(k, [])) | set(v))
        else:
            total[k] = total.get(k, 0) + v


def preprocess_file(cfg: PreprocessConfig, *, progress: bool = True) -> dict[str, Any]:
    """Preprocess ``cfg.input`` into ``cfg.output_dir``, one task per ``chunk_events`` event range.

    Tasks run serially or on Dask (``cfg.parallel``; workers need the output directory on a shared disk):
    each encodes its events and writes its rows straight into the partial ``.npy`` files, so memory stays
    one chunk per worker and the files are byte-identical whatever the worker count.  The partial files
    live in ``.preprocess.json.parts`` with the list of finished chunks: a rerun after a killed run does
    only the missing chunks, and a rerun after a finished one (same input and settings) does nothing.
    The ``.npy`` files appear by atomic renames at the end.
    """
    import os

    from mlfastsim.core.parallel import (
        TaskCache,
        cache_dir_for,
        clear_done,
        config_fingerprint,
        file_signatures,
        is_done,
        mark_done,
        run_tasks,
    )
    from mlfastsim.core.resume import job_output_dir

    if cfg.input is None:
        raise ConfigError("no input file", field="--input", fix="pass -i EVENTS.h5")
    bad = [k for k in cfg.keys if k not in INPUT_TYPES]
    if bad or not cfg.keys:
        raise ConfigError(f"unknown input type(s) {', '.join(bad) or '(none given)'}", field="--keys",
                          fix=f"choose from {', '.join(INPUT_TYPES)}")
    with job_output_dir(cfg.output_dir) as made:  # a failed first run leaves no empty folder
        outdir = made.resolve()  # absolute: workers run elsewhere
        summary_path = outdir / "preprocess.json"
        with EventFile(cfg.input, need_labels="y" in cfg.keys) as ef:
            n = ef.n_events
        if n == 0:
            raise DataError("the file holds no events", file=cfg.input, field="events", fix="produce some events")
        fingerprint = config_fingerprint(cfg, file_signatures([cfg.input]))
        finals = [outdir / f"{k}.npy" for k in cfg.keys] + [outdir / "vocab.json"]
        if is_done(summary_path, fingerprint, companions=finals):  # the files hold exactly what this job wrote
            return json.loads(summary_path.read_text())
        vocab = Vocabulary.from_decay_table(str(cfg.dec_file) if cfg.dec_file else None)
        shapes = {"particle": (n, cfg.max_particles, N_FEATURES), "pdg": (n, cfg.max_particles),
                  "mother_pdg": (n, cfg.max_particles), "mother_index": (n, cfg.max_particles),
                  "decay": (n, cfg.max_tokens), "y": (n,), "event": (n,)}
        # one writer per output directory (a second job stops with one line); chunks of a killed run are reused
        cache = TaskCache(cache_dir_for(summary_path), fingerprint)
        partial = {key: cache.directory / f"{key}.npy" for key in cfg.keys}
        if not all(p.is_file() for p in partial.values()):
            cache.reset()  # finished chunks without their rows: start over
            need = sum(int(np.prod(shapes[k])) * np.dtype(DTYPES[k]).itemsize for k in cfg.keys)
            check_free_space(outdir, need, what="preprocessed arrays")
            with translate_fs_errors(outdir, what="preprocessed arrays", any_errno=True):
                for key, path in partial.items():
                    np.lib.format.open_memmap(path, mode="w+", dtype=DTYPES[key], shape=shapes[key]).flush()
                    # reserve the blocks now: a memory-mapped write into a full disk is a SIGBUS crash later
                    fd = os.open(path, os.O_RDWR)
                    try:
                        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
                    finally:
                        os.close(fd)
        task_cfg = cfg.model_copy(update={"input": Path(cfg.input).resolve()})
        tasks = [(task_cfg, lo, min(lo + cfg.chunk_events, n), vocab, partial) for lo in range(0, n, cfg.chunk_events)]
        parts = run_tasks(_preprocess_chunk, tasks, workers=cfg.parallel.workers, scheduler=cfg.parallel.scheduler,
                          description=f"preprocess {n} events", progress=progress, cache=cache)
        stats: dict[str, Any] = {}
        for part in parts:
            _merge_stats(stats, part)
        clear_done(summary_path)
        with translate_fs_errors(outdir, what="preprocessed arrays", any_errno=True):
            for key, path in partial.items():
                os.chmod(path, plain_file_mode())  # np.memmap files are 0644-like already; match atomic outputs
                os.replace(path, outdir / f"{key}.npy")
        atomic_write_json(outdir / "vocab.json", vocab.to_json())
        summary = {"input": str(cfg.input), "keys": list(cfg.keys), "max_particles": cfg.max_particles,
                   "max_tokens": cfg.max_tokens, "features": list(FEATURES), **stats}
        atomic_write_json(summary_path, summary)
        mark_done(summary_path, fingerprint, companions=finals)
        cache.clear()
        return summary


def _preprocess_chunk(cfg: PreprocessConfig, lo: int, hi: int, vocab: Vocabulary,
                      partial: dict[str, Path]) -> dict[str, Any]:
    """Encode events ``[lo, hi)`` and write their rows into the partial ``.npy`` files; return the counts.

    A task of :func:`preprocess_file` (here or on a Dask worker): chunks write disjoint rows, so workers
    never touch the same bytes, and every write is flushed before the task reports success.
    """
    assert cfg.input is not None
    with EventFile(cfg.input, need_labels="y" in cfg.keys) as ef:
        df, offsets = ef.particles(lo, hi)
        arrays, stats = encode_events(df, offsets, vocab, cfg.max_particles, cfg.max_tokens, source=cfg.input)
        ev = ef.events_chunk(lo, hi)
    if "y" in partial:
        labels = ev["label"].to_numpy()
        if not np.all(np.isin(labels, (0, 1))):
            raise DataError("labels must be 0 or 1", file=cfg.input, field="events.label",
                            fix="re-create the file with belle2 produce")
        arrays["y"] = labels.astype(np.float32)
    arrays["event"] = ev["event"].to_numpy(np.int64)
    for key, path in partial.items():
        target = np.load(path, mmap_mode="r+")
        target[lo:hi] = arrays[key]
        target.flush()  # written back, then dropped from RSS: memory stays one chunk
        release_pages(target)
        del target
    return stats


def load_vocabulary(path: str | Path) -> Vocabulary:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(f"cannot read vocabulary ({exc})", file=p, fix="use the vocab.json of preprocess") from exc
    return Vocabulary.from_json(data, source=p)

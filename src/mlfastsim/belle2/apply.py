"""``belle2 apply``: score generator-level events and decide which go through the expensive stage.

Two ways to keep events:

``threshold``  keep events whose score is at least the threshold, weight 1.  Cheapest, but the kept
               sample is biased: events the network wrongly scores low are lost for good, and they are
               not a random subset of the skim-passing events.
``sample``     keep each event with probability ``p = min(1, max(scale * score, min_probability))``, weight
               ``1/p``.  Every event that passes the skim enters the weighted sample with expected
               weight exactly 1, so weighted distributions are unbiased estimates of the full-simulation
               ones whatever the network's mistakes; ``min_probability`` bounds the weights.

Scoring is chunked (memory bounded), and the filter's CPU time per event (preprocessing + inference) is
measured and written with the output, so ``evaluate`` uses measured costs.  Sampling draws from
``SeedSequence([seed, chunk])``: the kept list depends only on the seed and the chunk size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlfastsim.belle2.config import ApplyConfig
from mlfastsim.belle2.models.base import NNBaseClass, build_model, file_sha256, load_model_class
from mlfastsim.belle2.preprocess import Vocabulary, encode_events
from mlfastsim.belle2.produce import EventFile
from mlfastsim.core.checkpoint import load_checkpoint
from mlfastsim.core.errors import ConfigError, InputFileError
from mlfastsim.core.io import atomic_path
from mlfastsim.core.progress import progress_bar


def load_filter(checkpoint: str | Path, model_file: str | Path | None = None
                ) -> tuple[NNBaseClass, list[str], Vocabulary, dict[str, int]]:
    """Rebuild a trained filter from its checkpoint (weights_only load); ``pretrained:NAME`` = a shipped one."""
    from mlfastsim.belle2 import pretrained

    if pretrained.is_pretrained(checkpoint):
        checkpoint = pretrained.resolve(checkpoint)
    state = load_checkpoint(checkpoint)
    try:
        record = state["belle2_model"]
        params, sizes, inputs = state["model_params"], state["sizes"], list(state["inputs"])
        vocab = Vocabulary.from_json(state["vocab"], source=checkpoint)
        weights = state["modules"]["model"]
    except KeyError as exc:
        raise InputFileError(f"not a belle2 filter checkpoint (missing {exc})", file=checkpoint,
                             fix="pass a checkpoint written by 'mlfastsim belle2 train'") from exc
    if record["kind"] == "builtin":
        cls, _ = load_model_class(record["name"])
    else:
        path = Path(model_file) if model_file else Path(record["path"])
        if not path.is_file():
            raise InputFileError("the model file this checkpoint was trained with is missing", file=path,
                                 field="--model-file", fix="pass the user model .py with --model-file")
        if file_sha256(path) != record["sha256"]:
            raise InputFileError("model file differs from the one the checkpoint was trained with", file=path,
                                 field="sha256", fix="pass the same .py file (or retrain)")
        cls, _ = load_model_class(path)
    model = build_model(cls, params, sizes, source=str(checkpoint))
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise InputFileError(f"weights do not fit the model ({str(exc).splitlines()[0][:120]})", file=checkpoint,
                             fix="use the model file and checkpoint of the same training") from exc
    model.eval()
    return model, inputs, vocab, sizes


def keep_decision(scores: np.ndarray, mode: str, *, threshold: float = 0.5, min_probability: float = 0.01,
                  scale: float = 1.0, rng: np.random.Generator | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keep mask, keep probability, weight) for each score; weights are 0 for dropped events.

    Sampling keeps with ``p = min(1, max(scale * score, min_probability))``: any positive p gives an
    unbiased weighted sample; ``scale`` trades cost (kept fraction) against weight spread.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if mode == "threshold":
        keep = scores >= threshold
        p = keep.astype(np.float64)
    elif mode == "sample":
        if rng is None:
            raise ValueError("sampling needs a random generator")
        p = np.clip(np.maximum(scale * scores, min_probability), 0.0, 1.0)
        keep = rng.random(scores.size) < p
    else:
        raise ConfigError(f"unknown mode {mode!r}", field="--mode", fix="use threshold or sample")
    weight = np.where(keep, 1.0 / np.where(p > 0, p, 1.0), 0.0)
    return keep, p, weight


@torch.no_grad()
def score_arrays(model: NNBaseClass, inputs: list[str], arrays: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    dtypes = {"particle": torch.float32}
    n = next(iter(arrays.values())).shape[0]
    out = np.empty(n, dtype=np.float64)
    for lo in range(0, n, batch_size):
        xs = [torch.from_numpy(arrays[k][lo : lo + batch_size]).to(dtypes.get(k, torch.long)) for k in inputs]
        out[lo : lo + batch_size] = torch.sigmoid(model(*xs)).double().numpy()
    return out


def apply_filter(cfg: ApplyConfig, *, progress: bool = True) -> dict[str, Any]:
    """Score every event of ``cfg.input`` and write scores, keep decisions and weights to ``cfg.output``."""
    if cfg.input is None:
        raise ConfigError("no input file", field="--input", fix="pass -i EVENTS.h5 (generator-level particles)")
    if cfg.checkpoint is None:
        raise ConfigError("no checkpoint", field="--checkpoint",
                          fix="pass --checkpoint OUT/best.pt (or OUT/best, OUT/latest)")
    model, inputs, vocab, sizes = load_filter(cfg.checkpoint, cfg.model_file)
    frames = []
    filter_cpu = 0.0
    with EventFile(cfg.input) as ef, progress_bar(ef.n_events, "apply", enabled=progress) as bar:
        n = ef.n_events
        for k, lo in enumerate(range(0, n, cfg.chunk_events)):
            hi = min(lo + cfg.chunk_events, n)
            df, offsets = ef.particles(lo, hi)
            t0 = time.process_time()
            arrays, _ = encode_events(df, offsets, vocab, sizes["max_particles"], sizes["max_tokens"],
                                      source=cfg.input)
            scores = score_arrays(model, inputs, arrays, cfg.batch_size)
            filter_cpu += time.process_time() - t0
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, k]))
            keep, p, weight = keep_decision(scores, cfg.mode, threshold=cfg.threshold,
                                            min_probability=cfg.min_probability, scale=cfg.sample_scale, rng=rng)
            frames.append(pd.DataFrame({"event": ef.events_chunk(lo, hi)["event"].to_numpy(), "score": scores,
                                        "p_keep": p, "keep": keep, "weight": weight}))
            bar.advance(hi - lo)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["event", "score", "p_keep", "keep", "weight"])
    summary = {
        "input": str(cfg.input), "checkpoint": str(cfg.checkpoint), "mode": cfg.mode, "threshold": cfg.threshold,
        "min_probability": cfg.min_probability, "sample_scale": cfg.sample_scale, "seed": cfg.seed,
        "n_events": len(table),
        "n_kept": int(table["keep"].sum()), "sum_weights": float(table["weight"].sum()),
        "filter_cpu_s_per_event": filter_cpu / max(len(table), 1),
    }
    with atomic_path(cfg.output) as tmp, pd.HDFStore(tmp, mode="w") as store:
        store.put("scores", table, format="table")
        # fixed format: an empty kept list (nothing passed) is still written and readable
        store.put("kept", table.loc[table["keep"], ["event", "weight"]].reset_index(drop=True), format="fixed")
        store.get_storer("scores").attrs.summary = summary
    return summary

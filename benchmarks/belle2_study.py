"""Belle II study: a filter that generalises, what it saves, and pre-training for rare skims.

    OMP_NUM_THREADS=1 python benchmarks/belle2_study.py --size cpu --work runs/belle2_study      # ~40 min
    OMP_NUM_THREADS=1 python benchmarks/belle2_study.py --size tiny --work /tmp/belle2_tiny      # smoke run
    ... --train-events a.h5 b.h5 --test-events t.h5      # reuse produced files (same events and seeds)

1. **Filters** (resnet and gnn): trained on the standard skim label (the hadronic/semileptonic B-tag skim of
   ``belle2 produce``) with early stopping on the validation loss, weight decay and dropout; the best
   checkpoint (lowest validation loss) is applied to an independent test sample and evaluated: AUC,
   speed-up at 95 % retention on the measured stand-in chain and projected onto a real simulation +
   reconstruction time per event, and the weighted-sample bias (chi2/ndf of every checked distribution).
2. **Pre-train and fine-tune** for a rare skim: the resnet of (1), pre-trained on the high-efficiency skim
   with all training events, is fine-tuned on the rare skim with 10x fewer labelled events; a network of
   the same size is trained from scratch on the same events.  Both are scored on the rare labels of the
   test sample (AUC, and the fraction of events kept at 95 % retention).

The rare skim is a stand-in built from the stored skim variables: events that pass the skim *and* have at
least ``RARE_MIN_TRACKS`` reconstructed tracks (a high-multiplicity tag, ~1.6 % of events against ~13 %).

Every stage's result is cached in ``WORK/results.json`` (a rerun resumes); the tables go to stdout and
``WORK/report.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

RARE_MIN_TRACKS = 11
KEYS = ("decay", "particle", "pdg", "mother_pdg", "mother_index", "y")
RESNET = {"embedding_dim": 8, "decay_channels": 32, "decay_kernel": 9, "decay_layers": 2, "particle_channels": 32,
          "residual_blocks": 2, "residual_kernel": 3, "head_units": 64, "dropout": 0.3}
GNN = {"embedding_dim": 8, "hidden": 32, "heads": 2, "layers": 2, "head_units": 64, "dropout": 0.3}
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"train": [(1500, 1)], "test": (1000, 2), "max_steps": 60, "eval_every": 20, "patience": 2,
             "batch": 64, "models": ["resnet"], "finetune_steps": 40},
    # measured: 37 min wall (12 min of CPU) on a busy shared 2-core machine, training and evaluation only;
    # producing the 60k events costs ~3 min more of CPU
    "cpu": {"train": [(20000, 1), (30000, 3)], "test": (10000, 2), "max_steps": 6000, "eval_every": 250,
            "patience": 4, "batch": 128, "models": ["resnet", "gnn"], "finetune_steps": 1500},
    # a GPU: ten times the events, full-size networks (configs/belle2/*.yaml comments)
    "full": {"train": [(1000000, 1)], "test": (100000, 2), "max_steps": 100000, "eval_every": 1000,
             "patience": 5, "batch": 1024, "models": ["resnet", "gnn"], "finetune_steps": 10000},
}


def _produce(path: Path, n: int, seed: int) -> Path:
    from mlfastsim.belle2.config import ProduceConfig
    from mlfastsim.belle2.produce import produce

    if not path.exists():
        produce(ProduceConfig(n_events=n, chunk_size=2000, seed=seed, output=path), progress=False)
    return path


def _preprocess(events: Path, out: Path) -> Path:
    from mlfastsim.belle2.config import PreprocessConfig
    from mlfastsim.belle2.preprocess import preprocess_file

    preprocess_file(PreprocessConfig(input=events, output_dir=out, keys=[*KEYS, "event"]), progress=False)
    return out


def _events(paths: list[Path]):
    import pandas as pd

    from mlfastsim.belle2.produce import EventFile

    frames = []
    for p in paths:
        with EventFile(p, need_labels=True) as ef:
            frames.append(ef.events)
    return pd.concat(frames, ignore_index=True)


def rare_label(events: Any) -> np.ndarray:
    """The rare stand-in skim: passes the standard skim with at least RARE_MIN_TRACKS tracks."""
    return ((events["label"].to_numpy() == 1) & (events["n_tracks"].to_numpy() >= RARE_MIN_TRACKS)).astype(np.float32)


def _subset(pre: Path, dest: Path, rows: int, y: np.ndarray | None = None) -> Path:
    """The first ``rows`` events of the preprocessed inputs (``y`` replaced by another label if given)."""
    from mlfastsim.belle2.memmaps import open_memmap

    dest.mkdir(parents=True, exist_ok=True)
    for k in KEYS:
        src = pre / (f"{k}.memmap" if (pre / f"{k}.memmap").exists() else f"{k}.npy")
        arr = np.asarray(open_memmap(src)[:rows]) if k != "y" or y is None else y[:rows].astype(np.float32)
        np.save(dest / f"{k}.npy", arr)
    vocab = next(iter(sorted(pre.glob("*vocab.json"))))
    shutil.copy(vocab, dest / "vocab.json")
    return dest


def _train(data: Path, out: Path, model: str, size: dict[str, Any], seed: int, *, steps: int | None = None,
           lr: float = 0.002, init: Path | None = None) -> dict[str, Any]:
    from mlfastsim.belle2.config import TrainConfig
    from mlfastsim.belle2.train import train_from_config

    ext = "memmap" if (data / "y.memmap").exists() else "npy"
    cfg = TrainConfig.model_validate({
        "data": {k: data / f"{k}.{ext}" for k in KEYS} | {"val_fraction": 0.2},
        "model": {"name": model, "params": RESNET if model == "resnet" else GNN},
        "trainer": {"max_steps": steps or size["max_steps"], "batch_size": size["batch"], "learning_rate": lr,
                    "weight_decay": 1e-4, "eval_every": size["eval_every"], "checkpoint_every": 100000,
                    "keep_checkpoints": 1, "early_stopping_patience": size["patience"], "seed": seed},
        "output_dir": out, "init_checkpoint": init, "tracking": {"dir": out / "tracking"}})
    t0 = time.perf_counter()
    _, summary = train_from_config(cfg, progress=False)
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def _score(checkpoint: Path, pre: Path) -> np.ndarray:
    """Scores of every event of a preprocessed sample (the arrays apply would build)."""
    from mlfastsim.belle2.apply import load_filter, score_arrays

    model, inputs, _, _ = load_filter(checkpoint)
    arrays = {k: np.load(pre / f"{k}.npy") for k in inputs}
    return score_arrays(model, inputs, arrays, 1024)


def _keep_at_retention(scores: np.ndarray, labels: np.ndarray, retention: float = 0.95) -> float:
    from mlfastsim.belle2.evaluate import threshold_at_retention

    return float(np.mean(scores >= threshold_at_retention(scores, labels, retention)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--work", type=Path, default=Path("runs/belle2_study"))
    ap.add_argument("--seed", type=int, default=0, help="training seed (production uses seeds 1 and 2)")
    ap.add_argument("--train-events", type=Path, nargs="*", help="produced files to train on (default: produce)")
    ap.add_argument("--test-events", type=Path, help="produced file to test on (default: produce)")
    ap.add_argument("--projected-sim-reco-s", type=float, default=None,
                    help="real simulation + reconstruction CPU s/event for the projection (default: evaluate's)")
    args = ap.parse_args()
    import torch

    from mlfastsim.belle2.apply import apply_filter
    from mlfastsim.belle2.config import ApplyConfig, EvaluateConfig
    from mlfastsim.belle2.evaluate import evaluate
    from mlfastsim.belle2.memmaps import create_memmap
    from mlfastsim.belle2.train import safe_auc

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    size, work = SIZES[args.size], args.work
    work.mkdir(parents=True, exist_ok=True)
    res_path = work / "results.json"
    results: dict[str, Any] = json.loads(res_path.read_text()) if res_path.exists() else {}
    results["size"] = args.size
    results["hyper"] = {"resnet": RESNET, "gnn": GNN}

    def save() -> None:
        res_path.write_text(json.dumps(results, indent=1, default=float))

    # produce is a pure function of (events, chunk size, seed): files made elsewhere with the same triple
    # (the README flow) can be passed instead and give the same training
    train_files = args.train_events or [_produce(work / f"train_seed{seed}.h5", n, seed) for n, seed in size["train"]]
    test_file = args.test_events or _produce(work / "test.h5", *size["test"])
    pres = [_preprocess(f, work / "pre" / f"train{i}") for i, f in enumerate(train_files)]
    test_pre = _preprocess(test_file, work / "pre" / "test")
    mm = work / "mm"
    mm.mkdir(exist_ok=True)
    for k in KEYS:
        if not (mm / f"{k}.memmap").exists():
            create_memmap([p / f"{k}.npy" for p in pres], mm / f"{k}.memmap", progress=False)
    train_ev, test_ev = _events(train_files), _events([test_file])
    results["n_train_events"], results["n_test_events"] = len(train_ev), len(test_ev)
    results["pass_fraction_train"] = float(train_ev["label"].mean())

    # 1. filters on the standard skim
    filters = results.setdefault("filters", {})
    for model in size["models"]:
        if model in filters:
            continue
        s = _train(mm, work / model, model, size, args.seed)
        best = Path(s["best_checkpoint"])
        apply_filter(ApplyConfig(input=test_file, checkpoint=best, output=work / model / "scores.h5",
                                 mode="threshold"), progress=False)
        ecfg = {"events": test_file, "scores": work / model / "scores.h5", "output_dir": work / model / "evaluation"}
        if args.projected_sim_reco_s:
            ecfg["projected_sim_reco_s"] = args.projected_sim_reco_s
        m = evaluate(EvaluateConfig.model_validate(ecfg))
        filters[model] = {"train": s, "evaluate": {k: m[k] for k in (
            "auc", "pass_fraction", "keep_fraction_at_retention", "retention_achieved", "speedup_at_retention",
            "max_speedup_perfect_filter", "times_s_per_event", "projected", "weighted_sampling", "bias", "verdict")}}
        save()

    # 2. pre-train (standard skim, all events) -> fine-tune (rare skim, 10x fewer events) vs from scratch
    if "transfer" not in results and "resnet" in filters:
        n_ft = len(train_ev) // 10
        y_rare = rare_label(train_ev)
        ft_data = _subset(mm, work / "pre" / "rare_subset", n_ft, y_rare)
        test_rare = rare_label(test_ev)
        pre_ckpt = Path(filters["resnet"]["train"]["best_checkpoint"])
        out: dict[str, Any] = {"rare_min_tracks": RARE_MIN_TRACKS, "n_labelled_finetune": n_ft,
                               "n_labelled_pretrain": len(train_ev),
                               "rare_pass_fraction_train": float(y_rare[:n_ft].mean()),
                               "rare_positives_finetune": int(y_rare[:n_ft].sum()),
                               "rare_pass_fraction_test": float(test_rare.mean())}
        pre_scores = _score(pre_ckpt, test_pre)
        out["pretrained_only"] = {"auc": safe_auc(test_rare, pre_scores),
                                  "keep_at_95": _keep_at_retention(pre_scores, test_rare)}
        for name, init, lr in (("finetuned", pre_ckpt, 0.0005), ("scratch", None, 0.002)):
            s = _train(ft_data, work / f"rare_{name}", "resnet", size, args.seed, steps=size["finetune_steps"],
                       lr=lr, init=init)
            sc = _score(Path(s["best_checkpoint"]), test_pre)
            out[name] = {"auc": safe_auc(test_rare, sc), "keep_at_95": _keep_at_retention(sc, test_rare),
                         "val_auc": s.get("val_auc"), "steps": s["steps"], "best_step": s.get("best_step"),
                         "wall_s": s["wall_s"]}
        results["transfer"] = out
        save()
    text = report(results)
    (work / "report.md").write_text(text)
    print(text)


def report(r: dict[str, Any]) -> str:
    """Markdown tables of both parts."""
    lines = [f"# Belle II study ({r['size']}): {r['n_train_events']} training events (skim pass fraction "
             f"{r['pass_fraction_train']:.3f}), {r['n_test_events']} test events", "",
             "| filter | steps (best) | stopped early | val AUC | test AUC | keep at 95 % | speed-up measured | "
             "projected | perfect-filter projected | worst weighted chi2/ndf | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, f in r.get("filters", {}).items():
        t, e = f["train"], f["evaluate"]
        worst = max(b["weighted_chi2_ndf"] for b in e["bias"].values())
        lines.append(f"| {name} | {t['steps']} ({t.get('best_step')}) | {t.get('stopped_early')} | "
                     f"{t.get('val_auc', float('nan')):.4f} | {e['auc']:.4f} | {e['keep_fraction_at_retention']:.3f} | "
                     f"{e['speedup_at_retention']:.3f} | {e['projected']['speedup_at_retention']:.2f} | "
                     f"{e['projected']['max_speedup_perfect_filter']:.2f} | {worst:.2f} | {t['wall_s']:.0f} |")
    for name, f in r.get("filters", {}).items():
        e = f["evaluate"]
        lines += ["", f"{name}: {e['verdict']}  Projection onto {e['projected']['sim_reco_s_per_event']:g} s/event; "
                  f"measured CPU s/event: {json.dumps({k: round(v, 6) for k, v in e['times_s_per_event'].items()})}",
                  "", "| variable | threshold chi2/ndf | weighted chi2/ndf |", "|---|---|---|"]
        lines += [f"| {v} | {b['threshold_chi2_ndf']:.2f} | {b['weighted_chi2_ndf']:.2f} |"
                  for v, b in e["bias"].items()]
    t = r.get("transfer")
    if t:
        lines += ["", f"Rare skim (pass and >= {t['rare_min_tracks']} tracks; pass fraction "
                  f"{t['rare_pass_fraction_test']:.4f} on the test sample): pre-trained on {t['n_labelled_pretrain']} "
                  f"events of the high-efficiency skim, then {t['n_labelled_finetune']} labelled rare-skim events "
                  f"({t['rare_positives_finetune']} passing)", "",
                  "| network | test AUC (rare labels) | events kept at 95 % rare retention |", "|---|---|---|",
                  f"| pre-trained, not fine-tuned | {t['pretrained_only']['auc']:.4f} | "
                  f"{t['pretrained_only']['keep_at_95']:.3f} |"]
        for name in ("finetuned", "scratch"):
            lines.append(f"| {name} | {t[name]['auc']:.4f} | {t[name]['keep_at_95']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

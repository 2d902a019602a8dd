"""Few-shot adaptation to an unseen geometry: adapted vs from-scratch, quality and wall time.

The held-out geometry is FCCeeSiW (40 x [1.8 mm W + 0.5 mm Si]) on the ds2 mesh, never seen by the shipped
meta-trained model.  Electrons on a grid of energies (1-1000 GeV) x angles (50, 70, 90 degrees):

* ``few``: ``--n-per-point`` (100) showers per point, the physicist's small sample;
* ``10x``: ten times as many (fresh seed);
* ``reference``: ``--ref-per-point`` (300) per point (fresh seed), what every model is validated against.

Models compared (all the Par04-sized VAE of the shipped model, kl_weight 0.01, batch 64, Adam 1e-3):

* ``unadapted``: the shipped model as is, at slot 0;
* ``adapted``: the shipped model fine-tuned on ``few`` for ``--steps`` (400) steps (``showers adapt``);
* ``scratch few``: ``showers train`` on ``few`` for the same number of steps;
* ``scratch 10x``: ``showers train`` on ``10x`` for ``--scratch-steps`` (6000) steps;
* the two scratch runs again with the voxel-layer bias started at the data's mean (``+init``), the
  initialisation meta-training uses, so the comparison does not hinge on it.

For each: mean separation power over the main observables (and each one), classifier AUC (low- and
high-level, ``validate.run_validation``) against ``reference``, both samples zero-suppressed at the
readout threshold, and the training wall time.  Goal: adapted within 1.5x of the 10x model's mean
separation power in <= 1/10 of its training time; 400 adaptation steps in <= 20 s on 2 cores.

    python benchmarks/adaptation_study.py [--threads 2] [--n-per-point 100] [--steps 400] [--scratch-steps 6000]
                                          [--ref-per-point 300] [--checkpoint FILE] [--no-classifier]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from mlfastsim.core.io import atomic_write_json
from mlfastsim.core.trainer import SupervisedTask, Trainer, TrainerConfig, make_optimizer, split_train_val
from mlfastsim.showers.conditioning.em import load_training_data
from mlfastsim.showers.config import AdaptConfig, DataConfig, SimulateConfig, TrainConfig, VAEConfig
from mlfastsim.showers.io.formats import ShowerData, read_native
from mlfastsim.showers.models import MODELS, checkpoint_meta, load_model
from mlfastsim.showers.pipeline import simulate_to_file
from mlfastsim.showers.pretrained import pretrained_path
from mlfastsim.showers.training.meta import (
    MAIN_OBSERVABLES,
    adapt,
    init_output_bias,
    mean_main_separation_power,
    sample_like,
    separation_powers,
    train_from_scratch,
)
from mlfastsim.showers.validation.classifier import ClassifierConfig
from mlfastsim.showers.validation.observables import CELL_ENERGY_MIN_MEV
from mlfastsim.showers.validation.validate import run_validation

DETECTOR = "FCCeeSiW"
ENERGIES_GEV = [1.0, 4.0, 16.0, 64.0, 256.0, 1000.0]
ANGLES_DEG = [50.0, 70.0, 90.0]
BATCH = 64
LR = 1e-3


def _simulate(n_per_point: int, seed: int, path: Path) -> Path:
    if not path.is_file():
        simulate_to_file(SimulateConfig(detector=DETECTOR, mesh="ds2", energies_gev=ENERGIES_GEV,
                                        angles_deg=ANGLES_DEG, n_per_point=n_per_point, seed=seed, output=path))
    return path


def _scratch_with_init(file: Path, model_cfg: VAEConfig, steps: int, out: Path, seed: int) -> tuple[Path, float]:
    """``showers train`` but with the voxel-layer bias started at the data's mean (the meta-training init)."""
    data = load_training_data(DataConfig(files=[file]))
    (x_tr, c_tr), (x_val, c_val) = split_train_val((data.x, data.c), 0.1, seed)
    torch.manual_seed(seed)
    spec = MODELS["vae"]
    model = spec.build_modules(model_cfg, data.norm)["model"]
    init_output_bias(model, x_tr)
    cfg = TrainerConfig(max_steps=steps, batch_size=BATCH, learning_rate=LR, eval_every=max(steps // 10, 1),
                        checkpoint_every=steps, seed=seed)
    task = SupervisedTask(model, spec.loss, make_optimizer(model.parameters(), cfg))
    trainer = Trainer(task, cfg, out, train_data=(x_tr, c_tr), val_data=(x_val, c_val), progress=False,
                      checkpoint_meta=checkpoint_meta(spec, model_cfg, data.norm))
    result = trainer.fit()
    assert result.last_checkpoint is not None
    return result.last_checkpoint, result.seconds


def _evaluate(checkpoint: Path, reference: ShowerData, out: Path, threads: int, classifier: bool) -> dict[str, Any]:
    loaded = load_model(checkpoint)
    candidate = sample_like(loaded, reference, geometry_index=0, seed=1, threshold_mev=CELL_ENERGY_MIN_MEV)
    sp = separation_powers(reference, candidate)
    res: dict[str, Any] = {"sp": sp, "mean_sp": mean_main_separation_power(sp)}
    if classifier:
        metrics = run_validation(reference, candidate, out, classifier=True, seed=0, exclude_empty=True,
                                 classifier_config=ClassifierConfig(threads=threads))
        res["auc_low"] = metrics["classifier"]["low_level"]["auc"]
        res["auc_high"] = metrics["classifier"]["high_level"]["auc"]
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-per-point", type=int, default=100)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--scratch-steps", type=int, default=6000)
    parser.add_argument("--ref-per-point", type=int, default=300)
    parser.add_argument("--checkpoint", type=Path, default=None, help="pre-trained model (default: the shipped one)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep data, runs and per-stage results here; a rerun skips finished stages")
    parser.add_argument("--no-classifier", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or pretrained_path()
    shipped = load_model(checkpoint)
    model_cfg = shipped.model_config
    assert isinstance(model_cfg, VAEConfig)
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(args.threads):
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        few = _simulate(args.n_per_point, 11, work / "few.h5")
        many = _simulate(10 * args.n_per_point, 12, work / "ten_x.h5")
        reference_file = _simulate(args.ref_per_point, 13, work / "reference.h5")
        raw = read_native(reference_file)
        zs = np.where(raw.showers >= CELL_ENERGY_MIN_MEV, raw.showers, 0.0)
        reference = ShowerData(raw.energies, zs, raw.mesh, raw.angles, {"source": str(reference_file)})
        n_few, n_many = len(read_native(few)), len(read_native(many))
        classifier = not args.no_classifier
        cache = work / "results"
        cache.mkdir(exist_ok=True)

        def cached(label: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            """Each stage's result is kept in the work dir, so a rerun after an interruption skips it."""
            path = cache / (label.replace(" ", "_").replace("+", "") + ".json")
            if path.is_file():
                return json.loads(path.read_text())
            out = run()
            atomic_write_json(path, out)
            return out

        def run_adapt() -> dict[str, Any]:
            t0 = time.perf_counter()
            res = adapt(AdaptConfig(
                data=DataConfig(files=[few]), checkpoint=checkpoint, adaptation_steps=args.steps,
                checkpoint_step=max(args.steps // 8, 1), plot_freq=0, learning_rate=LR, batch_size=BATCH,
                output_dir=work / "runs", study_name="study", tracking={"dir": str(work / "tracking")},
            ), progress=False)
            total = time.perf_counter() - t0
            assert res.last_checkpoint is not None
            return {"n": n_few, "steps": args.steps, "train_s": res.train.seconds, "total_s": total,
                    "checkpoint": str(res.last_checkpoint)}

        def run_scratch(file: Path, n: int, steps: int, out: Path) -> dict[str, Any]:
            cfg = TrainConfig(
                data=DataConfig(files=[file]), model=model_cfg,
                trainer=TrainerConfig(max_steps=steps, batch_size=BATCH, learning_rate=LR,
                                      eval_every=max(steps // 10, 1), checkpoint_every=steps),
                output_dir=out, tracking={"dir": str(work / "tracking")},
            )
            result = train_from_scratch(cfg, progress=False)
            assert result.last_checkpoint is not None
            return {"n": n, "steps": steps, "train_s": result.seconds, "checkpoint": str(result.last_checkpoint)}

        def run_scratch_init(file: Path, n: int, steps: int, out: Path) -> dict[str, Any]:
            ckpt, seconds = _scratch_with_init(file, model_cfg, steps, out, 0)
            return {"n": n, "steps": steps, "train_s": seconds, "checkpoint": str(ckpt)}

        runs: dict[str, dict[str, Any]] = {
            "unadapted (shipped)": {"n": 0, "steps": 0, "train_s": None, "checkpoint": str(checkpoint)},
            "adapted": cached("adapted", run_adapt),
        }
        for label, file, n, steps in (("scratch few", few, n_few, args.steps),
                                      ("scratch 10x", many, n_many, args.scratch_steps)):
            out = work / label.replace(" ", "_")
            runs[label] = cached(label, lambda f=file, n=n, s=steps, o=out: run_scratch(f, n, s, o))
            out_init = out.with_name(out.name + "_init")
            runs[label + " +init"] = cached(
                label + " +init", lambda f=file, n=n, s=steps, o=out_init: run_scratch_init(f, n, s, o))
        adapt_total = runs["adapted"]["total_s"]

        results = []
        for label, run in runs.items():
            ev = cached(f"eval {label}", lambda r=run, lab=label: _evaluate(
                Path(r["checkpoint"]), reference, work / "validation" / lab.replace(" ", "_"), args.threads,
                classifier))
            results.append({"model": label, "n_showers": run["n"], "steps": run["steps"], "train_s": run["train_s"],
                            **ev})
            print(f"evaluated {label}: mean SP {ev['mean_sp']:.3f}", file=sys.stderr, flush=True)

    head = f"{'model':<22}{'showers':>8}{'steps':>7}{'train s':>9}{'mean SP':>9}"
    head += f"{'AUC low':>9}{'AUC high':>9}" if classifier else ""
    head += "".join(f"{k[:10]:>11}" for k in MAIN_OBSERVABLES)
    print(f"\nFCCeeSiW on ds2, {len(ENERGIES_GEV)} energies x {len(ANGLES_DEG)} angles; reference {len(reference)} "
          f"showers; {args.threads} threads; torch {torch.__version__}")
    print(head)
    for r in results:
        line = f"{r['model']:<22}{r['n_showers']:>8}{r['steps']:>7}"
        line += f"{r['train_s']:>9.1f}" if r["train_s"] is not None else f"{'-':>9}"
        line += f"{r['mean_sp']:>9.3f}"
        line += f"{r['auc_low']:>9.3f}{r['auc_high']:>9.3f}" if classifier else ""
        line += "".join(f"{r['sp'][k]:>11.3f}" for k in MAIN_OBSERVABLES)
        print(line)
    by = {r["model"]: r for r in results}
    ad, big = by["adapted"], by["scratch 10x"]
    ratio_sp = ad["mean_sp"] / big["mean_sp"]
    ratio_t = ad["train_s"] / big["train_s"]
    print(f"\nadapted / scratch-10x: mean SP x{ratio_sp:.2f} (goal <= 1.5), training time x{ratio_t:.3f} (goal <= 0.1)")
    big_i = by["scratch 10x +init"]
    print(f"adapted / scratch-10x +init: mean SP x{ad['mean_sp'] / big_i['mean_sp']:.2f}, "
          f"training time x{ad['train_s'] / big_i['train_s']:.3f}")
    print(f"{args.steps} adaptation steps: {ad['train_s']:.1f} s training loop, {adapt_total:.1f} s for the whole "
          f"adapt() call (data, checkpoints every {max(args.steps // 8, 1)} steps, summary) (goal <= 20 s)")
    print(json.dumps({"results": results, "adapt_total_s": adapt_total}, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

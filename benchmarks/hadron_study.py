"""Hadron study (issue 14): WGAN, BIB-AE, BIB-AE + post-processor and flow matching (cfm_grid) against fresh
reference pions.

Everything runs through the ``mlfastsim`` command line (in process), so the study follows the CLI rather
than internal APIs:

1. simulate ``--n-train`` charged pions (uniform 10-100 GeV, seed 1) on hcal48 for training, and a fresh
   reference (seed 2) at 10, 20, ..., 100 GeV, ``--n-ref-per-point`` each (the 0.5 MIP readout threshold of
   the calorimeter applies to both);
2. train the energy regressor and the WGAN, the BIB-AE and its post-processor, and the flow-matching layer
   transformer (``cfm_grid``: ``cfm.yaml``, then its energy network alone, ``cfm_energy.yaml``) from
   ``configs/hadrons/*.yaml`` (step counts here are the CPU budget; a run that exists is reused);
3. generate showers at the reference's energies from every model and compare them with the reference on
   the 48 x 25 x 25 crop, printing the observables of arXiv:2112.09709:

   * the hit-energy spectrum (separation power, SP) with the MIP peak's position and width (in MIP),
   * the number of hits and the energy sum (SP, means), empty showers,
   * the longitudinal and radial profiles (SP) and the centres of gravity (SP of x, y, z),
   * response <E_sum>/E_inc and resolution sigma/mean per incident energy,
   * the low-level classifier AUC (``showers validate``),
   * generation time per shower on CPU at batch 1 and 100 (ONNX Runtime, one thread);

4. ``--curve``: the same scalar SPs (without the classifier) for every checkpoint of the WGAN and BIB-AE+PP
   runs: the budget -> quality curve;
5. ``--compare-to DIR``: the same table for another study's results directory (e.g. the models before a
   change, trained on the same data with the same budget) next to this one's, columns marked "old".

    OMP_NUM_THREADS=1 python benchmarks/hadron_study.py --work-dir build/hadron_study [--bibae-steps 500]

Results are cached per stage in ``<work-dir>/results`` (delete a file to redo that stage).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "hadrons"
REF_ENERGIES_GEV = tuple(float(e) for e in range(10, 101, 10))
SP_ROWS = ("cell_energy", "n_hits", "e_total", "longitudinal_profile", "lateral_profile", "cog_x", "cog_y",
           "first_moment_z", "e_ratio")
TARGETS = {"n_hits": 0.2, "cell_energy": 0.2, "e_total": 0.1, "longitudinal_profile": 0.05}


def cli(*args: object) -> None:
    """Run one ``mlfastsim`` command in this process; raise on a non-zero exit."""
    from mlfastsim.cli.main import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        if int(exc.code or 0) != 0:
            raise RuntimeError(f"mlfastsim {' '.join(map(str, args))} exited with {exc.code}") from None


def _cached(path: Path, run: Any) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    out = run()
    path.write_text(json.dumps(out, indent=1))
    return out


def _last_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    return ckpts[-1] if ckpts else None


def _train(command: str, config: str, run_dir: Path, data: Path, steps: int, seed: int, extra: list[str]
           ) -> dict[str, Any]:
    t0 = time.perf_counter()
    cli("showers", command, "--config", CONFIGS / config, "--data", data, "-o", run_dir,
        "--set", f"trainer.max_steps={steps}", "--set", f"trainer.eval_every={max(steps // 5, 1)}",
        "--set", f"trainer.checkpoint_every={max(steps // 5, 1)}", "--set", f"trainer.seed={seed}", *extra)
    return {"checkpoint": str(_last_checkpoint(run_dir)), "train_s": time.perf_counter() - t0, "steps": steps}


# ------------------------------------------------------------------------------------------- observables
def _crop(data: Any, crop: tuple[int, int] = (25, 25)) -> Any:
    from mlfastsim.showers.conditioning.grid import crop_showers

    return crop_showers(data, crop)


def hit_spectrum_peak(hits_mip: np.ndarray) -> tuple[float, float]:
    """MIP peak of a hit-energy spectrum (MIP units): the mode of a 0.05-MIP histogram between 0.5 and 4 MIP
    (smoothed over 3 bins), and the peak's width as FWHM / 2.355."""
    edges = np.arange(0.5, 4.0001, 0.05)
    counts, _ = np.histogram(hits_mip, bins=edges)
    if counts.sum() == 0:
        return float("nan"), float("nan")
    smooth = np.convolve(counts, np.ones(3) / 3.0, mode="same")
    i = int(np.argmax(smooth))
    half = smooth[i] / 2.0
    lo = i
    while lo > 0 and smooth[lo] > half:
        lo -= 1
    hi = i
    while hi < len(smooth) - 1 and smooth[hi] > half:
        hi += 1
    centres = 0.5 * (edges[1:] + edges[:-1])
    return float(centres[i]), float((centres[hi] - centres[lo]) / 2.355)


def physics_summary(data: Any, mip_mev: float) -> dict[str, Any]:
    """Per-sample numbers of the paper's observables (means, MIP peak, response and resolution per energy)."""
    x = np.asarray(data.showers, dtype=np.float64)
    e_inc = np.asarray(data.energies, dtype=np.float64)
    e_sum = x.sum(axis=1)
    n_hits = (x > 0).sum(axis=1)
    peak, width = hit_spectrum_peak(x[x > 0] / mip_mev)
    out: dict[str, Any] = {"n": len(x), "n_empty": int((n_hits == 0).sum()), "mean_n_hits": float(n_hits.mean()),
                           "mean_e_sum_gev": float(e_sum.mean() / 1e3), "mip_peak": peak, "mip_width": width,
                           "mean_hit_mip": float(x[x > 0].mean() / mip_mev) if (x > 0).any() else float("nan")}
    grid = data.mesh
    cells = grid.to_grid(x.astype(np.float32))
    layer = cells.sum(axis=(2, 3), dtype=np.float64)
    out["cog_z_mm"] = float(np.mean((layer * grid.z_centres).sum(1) / np.maximum(e_sum, 1e-9)))
    resp: dict[str, list[float]] = {"e_gev": [], "response": [], "resolution": []}
    for e in np.unique(np.round(e_inc / 1e3)):
        sel = np.round(e_inc / 1e3) == e
        r = e_sum[sel] / e_inc[sel]
        resp["e_gev"].append(float(e))
        resp["response"].append(float(r.mean()))
        resp["resolution"].append(float(r.std() / max(r.mean(), 1e-12)))
    out["response"] = resp
    return out


def response_gap(model: dict[str, Any], reference: dict[str, Any]) -> float:
    """Largest |response(model) - response(reference)| over the incident energies: 0 when E_sum/E_inc follows
    the reference at every energy, ~4 for a model that makes the mean training shower at every energy."""
    pairs = zip(model["response"]["response"], reference["response"]["response"], strict=True)
    return float(max(abs(a - b) for a, b in pairs))


def compare(reference: Any, candidate: Any, outdir: Path, *, classifier: bool, threads: int) -> dict[str, Any]:
    """Separation powers (``showers validate``'s observables) and, optionally, the classifier AUC."""
    from mlfastsim.showers.validation.classifier import ClassifierConfig
    from mlfastsim.showers.validation.validate import run_validation

    n_filled = int((candidate.showers.max(axis=1) > 0).sum())
    metrics = run_validation(reference, candidate, outdir, classifier=classifier and n_filled >= 20, seed=0,
                             exclude_empty=True, labels=("reference", "candidate"),
                             classifier_config=ClassifierConfig(threads=threads))
    obs = metrics["observables"]
    sp = {k: float(obs[k]["separation_power"]) for k in SP_ROWS if k in obs}
    clf = metrics.get("classifier", {}).get("low_level", {})
    return {"sp": sp, "auc": float(clf.get("auc", float("nan")))}


# ------------------------------------------------------------------------------------------- timing
def onnx_timing(onnx: Path, threads: int) -> dict[str, float]:
    """ms per shower through ONNX Runtime at batch 1 and 100 (z ~ N(0, 1), E = 50 GeV)."""
    from mlfastsim.core.export import make_session

    sess = make_session(onnx, num_threads=threads)
    inp = sess.get_inputs()[0]
    width = int(inp.shape[1])
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for batch, reps in ((1, 50), (100, 3)):
        x = np.concatenate([rng.standard_normal((batch, width - 1)), np.full((batch, 1), 0.5)], 1).astype(np.float32)
        sess.run(None, {inp.name: x})  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            sess.run(None, {inp.name: x})
        out[f"ms_per_shower_b{batch}"] = (time.perf_counter() - t0) / (reps * batch) * 1e3
    return out


def evaluate(label: str, checkpoint: Path, reference: Any, work: Path, *, classifier: bool, threads: int,
             timing: bool = True) -> dict[str, Any]:
    from mlfastsim.showers.io.formats import read_native

    tag = label.replace("+", "_").replace("-", "").lower()
    gen = work / "generated" / f"{tag}_{checkpoint.stem}.h5"
    gen.parent.mkdir(parents=True, exist_ok=True)
    if not gen.is_file():
        cli("showers", "generate", "--checkpoint", checkpoint, "--energy-gev", ",".join(map(str, REF_ENERGIES_GEV)),
            "--n-per-point", len(reference) // len(REF_ENERGIES_GEV), "--seed", 7, "-o", gen)
    cand = read_native(gen)
    mip = float(reference.meta["calorimeter"]["derived"]["mip_mev"])
    out = {"checkpoint": str(checkpoint), **compare(reference, cand, work / "validation" / f"{tag}_{checkpoint.stem}",
                                                    classifier=classifier, threads=threads),
           "physics": physics_summary(cand, mip)}
    if timing:
        onnx = work / "onnx" / f"{tag}.onnx"
        onnx.parent.mkdir(parents=True, exist_ok=True)
        cli("showers", "export", "--checkpoint", checkpoint, "--onnx-file-name", onnx)
        out.update(onnx_timing(onnx, threads))
    return out


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("build/hadron_study"))
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-ref-per-point", type=int, default=100)
    parser.add_argument("--wgan-steps", type=int, default=120)
    parser.add_argument("--regressor-steps", type=int, default=200)
    parser.add_argument("--bibae-steps", type=int, default=120)
    parser.add_argument("--pp-steps", type=int, default=50)
    parser.add_argument("--cfm-steps", type=int, default=6000)
    parser.add_argument("--cfm-energy-steps", type=int, default=8000, help="stage 2: the energy network alone")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="wgan,bibae,postprocess,cfm")
    parser.add_argument("--curve", action="store_true", help="also evaluate every checkpoint (no classifier)")
    parser.add_argument("--compare-to", type=Path, default=None,
                        help="another study's results directory: its models' rows are printed as 'old ...'")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    from mlfastsim.showers.io.formats import read_native

    work = args.work_dir
    res = work / "results"
    res.mkdir(parents=True, exist_ok=True)
    train_file, ref_file = work / "pions_train.h5", work / "pions_ref.h5"
    if not train_file.is_file():
        cli("showers", "simulate", "--particle", "pion", "--grid", "hcal48", "--energy-range-gev", "10:100",
            "--n-per-point", args.n_train, "--seed", 1, "-o", train_file)
    if not ref_file.is_file():
        cli("showers", "simulate", "--particle", "pion", "--grid", "hcal48", "--energy-gev",
            ",".join(map(str, REF_ENERGIES_GEV)), "--n-per-point", args.n_ref_per_point, "--seed", 2, "-o", ref_file)
    wanted = args.models.split(",")
    runs: dict[str, dict[str, Any]] = {}
    if "wgan" in wanted:
        runs["regressor"] = _cached(res / "train_regressor.json", lambda: _train(
            "train-regressor", "regressor.yaml", work / "runs" / "regressor", train_file, args.regressor_steps,
            args.seed, []))
        runs["wgan"] = _cached(res / "train_wgan.json", lambda: _train(
            "train", "wgan.yaml", work / "runs" / "wgan", train_file, args.wgan_steps, args.seed,
            ["--set", f"model.regressor_checkpoint={runs['regressor']['checkpoint']}"]))
    if "bibae" in wanted or "postprocess" in wanted:
        runs["bibae"] = _cached(res / "train_bibae.json", lambda: _train(
            "train", "bibae.yaml", work / "runs" / "bibae", train_file, args.bibae_steps, args.seed, []))
    if "postprocess" in wanted:
        runs["postprocess"] = _cached(res / "train_postprocess.json", lambda: _train(
            "train-postprocess", "postprocess.yaml", work / "runs" / "postprocess", train_file, args.pp_steps,
            args.seed, ["--set", f"model.bibae_checkpoint={runs['bibae']['checkpoint']}"]))

    if "cfm" in wanted:
        runs["cfm_shape"] = _cached(res / "train_cfm_shape.json", lambda: _train(
            "train", "cfm.yaml", work / "runs" / "cfm", train_file, args.cfm_steps, args.seed, []))
        runs["cfm"] = _cached(res / "train_cfm.json", lambda: _train(
            "train", "cfm_energy.yaml", work / "runs" / "cfm_energy", train_file, args.cfm_energy_steps, args.seed,
            ["--set", f"transfer_from={runs['cfm_shape']['checkpoint']}"]))

    reference = _crop(read_native(ref_file))
    mip = float(reference.meta["calorimeter"]["derived"]["mip_mev"])
    labels = {"wgan": "WGAN", "bibae": "BIB-AE", "postprocess": "BIB-AE+PP", "cfm": "CFM"}
    results: dict[str, dict[str, Any]] = {}
    for model in (m for m in labels if m in wanted):
        label = labels[model]
        results[label] = _cached(res / f"eval_{model}.json", lambda model=model, label=label: evaluate(
            label, Path(runs[model]["checkpoint"]), reference, work, classifier=True, threads=args.threads))
        print(f"evaluated {label}", file=sys.stderr, flush=True)
    # the reference against a second fresh reference sample: the statistical floor of every number
    floor = _cached(res / "eval_floor.json", lambda: _floor(work, reference, args))
    ref_phys = physics_summary(reference, mip)

    if args.compare_to is not None:
        for model in labels:
            old = args.compare_to / f"eval_{model}.json"
            if model in wanted and old.is_file():
                results[f"old {labels[model]}"] = json.loads(old.read_text())
    cols = list(results)
    print(f"\nhadron study: {args.n_train} training pions (10-100 GeV), reference {len(reference)} at "
          f"{REF_ENERGIES_GEV[0]:.0f}-{REF_ENERGIES_GEV[-1]:.0f} GeV, 48x25x25 crop, 0.5 MIP threshold")
    print("training steps: " + ", ".join(f"{k} {v['steps']} ({v['train_s']:.0f} s)" for k, v in runs.items()))
    head = f"{'':<34}" + "".join(f"{c:>14}" for c in cols) + f"{'ref floor':>14}{'target':>9}"
    print(head)
    for key in SP_ROWS:
        row = f"{'SP ' + key:<34}" + "".join(f"{results[c]['sp'].get(key, float('nan')):>14.3f}" for c in cols)
        target = f"{TARGETS[key]:>9.2f}" if key in TARGETS else ""
        print(row + f"{floor['sp'].get(key, float('nan')):>14.3f}" + target)
    print(f"{'classifier AUC (low level)':<34}" + "".join(f"{results[c]['auc']:>14.3f}" for c in cols)
          + f"{floor['auc']:>14.3f}{'< 0.9':>9}")
    phys_rows = (("empty showers", "n_empty", "d"), ("mean n_hits", "mean_n_hits", ".0f"),
                 ("mean E_sum, GeV", "mean_e_sum_gev", ".2f"), ("MIP peak, MIP", "mip_peak", ".2f"),
                 ("MIP peak width, MIP", "mip_width", ".2f"), ("mean hit energy, MIP", "mean_hit_mip", ".2f"),
                 ("mean CoG z, mm", "cog_z_mm", ".0f"))
    for name, key, fmt in phys_rows:
        print(f"{name:<34}" + "".join(f"{results[c]['physics'][key]:>14{fmt}}" for c in cols)
              + f"{ref_phys[key]:>14{fmt}}")
    for i, e in enumerate(ref_phys["response"]["e_gev"]):
        print(f"{f'response / resolution {e:.0f} GeV':<34}"
              + "".join(f"  {results[c]['physics']['response']['response'][i]:>6.3f}/"
                        f"{results[c]['physics']['response']['resolution'][i]:<5.3f}" for c in cols)
              + f"  {ref_phys['response']['response'][i]:>6.3f}/{ref_phys['response']['resolution'][i]:<5.3f}")
    # how far the response curve is from the reference's: the energy condition in one number per model
    print(f"{'response max |model - ref|':<34}"
          + "".join(f"{response_gap(results[c]['physics'], ref_phys):>14.3f}" for c in cols))
    for key, name in (("ms_per_shower_b1", "generation ms/shower, ORT b1"),
                      ("ms_per_shower_b100", "generation ms/shower, ORT b100")):
        print(f"{name:<34}" + "".join(f"{results[c].get(key, float('nan')):>14.2f}" for c in cols))

    if args.curve:
        print("\nbudget -> quality (SP, no classifier; each checkpoint of the runs above)")
        print(f"{'model':<12}{'steps':>7}{'train s':>9}" + "".join(f"{k:>22}" for k in TARGETS) + f"{'empty':>7}")
        for model, label in (("wgan", "WGAN"), ("postprocess", "BIB-AE+PP"), ("bibae", "BIB-AE"), ("cfm", "CFM")):
            if model not in runs:
                continue
            for ckpt in sorted((Path(runs[model]["checkpoint"]).parent).glob("step_*.pt")):
                r = _cached(res / f"curve_{model}_{ckpt.stem}.json", lambda ckpt=ckpt, label=label: evaluate(
                    label, ckpt, reference, work, classifier=False, threads=args.threads, timing=False))
                steps = int(ckpt.stem.split("_")[-1])
                print(f"{label:<12}{steps:>7}{runs[model]['train_s'] * steps / runs[model]['steps']:>9.0f}"
                      + "".join(f"{r['sp'].get(k, float('nan')):>22.3f}" for k in TARGETS)
                      + f"{r['physics']['n_empty']:>7d}")
    return 0


def _floor(work: Path, reference: Any, args: argparse.Namespace) -> dict[str, Any]:
    from mlfastsim.showers.io.formats import read_native

    second = work / "pions_ref2.h5"
    if not second.is_file():
        cli("showers", "simulate", "--particle", "pion", "--grid", "hcal48", "--energy-gev",
            ",".join(map(str, REF_ENERGIES_GEV)), "--n-per-point", args.n_ref_per_point, "--seed", 3, "-o", second)
    return compare(reference, _crop(read_native(second)), work / "validation" / "floor", classifier=True,
                   threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())

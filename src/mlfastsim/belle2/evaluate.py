"""``belle2 evaluate``: how good is the filter, how much time does it save, and is the filtered sample biased?

* **ROC and AUC** of the scores against the true skim labels.
* **Speed-up at fixed retention** r (default 95 % of the skim-passing events kept), from measured CPU
  times: per skim-passing event in the final sample, the full chain costs ``(t_gen + t_sim) / pass``,
  the filtered chain ``(t_gen + t_filter + f * t_sim) / (pass * r)`` where f is the fraction of all
  events the filter keeps at that working point, with the *measured* times of the stand-in chain
  (generation, expensive stage, filter).
* **Projected speed-up**: the same formula with ``t_sim`` replaced by ``projected_sim_reco_s``, the CPU time
  of the real Geant4 simulation + reconstruction per event (a stated default, see
  :class:`~mlfastsim.belle2.config.EvaluateConfig`), keeping the measured generation and filter times.
  The stand-in expensive stage costs milliseconds, so the measured speed-up is bounded by a few; the
  projection is what a production would see.  A speed-up below 1 is reported as lost time, in words.
* **Bias**: distributions of the skim variables of skim-passing events, full sample vs the sample
  kept by the threshold cut (shapes compared) and vs the weighted sample of the sampling mode at the
  same expected cost (p = min(1, max(scale * score, floor)) with the scale that keeps the same fraction
  of events; weighted counts compared with the full counts, exact sampling variance sum (1-p)/p per bin).
  chi2/ndf near 1 means no visible bias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfastsim.belle2.apply import keep_decision
from mlfastsim.belle2.config import EvaluateConfig
from mlfastsim.belle2.produce import EventFile
from mlfastsim.core.errors import ConfigError, DataError, InputFileError
from mlfastsim.core.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_h5_no_code,
    ensure_writable_dir,
)

BIAS_VARIABLES = ("mbc_mev", "delta_e_mev", "n_tracks", "e_vis_mev", "r2")
#: axis labels of the bias figure (the table columns are the variable names)
BIAS_LABELS = {"mbc_mev": "beam-constrained mass M_bc [MeV]", "delta_e_mev": "ΔE [MeV]",
               "n_tracks": "number of tracks", "e_vis_mev": "visible energy [MeV]", "r2": "Fox-Wolfram R2"}


def read_scores(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    p = check_h5_no_code(path, what="scores file", fix="read only scores files you trust; re-create this one with "
                                                       "'mlfastsim belle2 apply'")
    try:
        with pd.HDFStore(p, mode="r") as store:
            if "/scores" not in store.keys():
                raise InputFileError("no 'scores' table", file=p, field="scores",
                                     fix="pass the output of 'mlfastsim belle2 apply'")
            table = store.select("scores")
            summary = dict(getattr(store.get_storer("scores").attrs, "summary", {}) or {})
    except InputFileError:
        raise
    except Exception as exc:
        raise InputFileError(f"not a readable scores file ({type(exc).__name__})", file=p,
                             fix="pass the output of 'mlfastsim belle2 apply'") from exc
    for col in ("event", "score"):
        if col not in table:
            raise InputFileError(f"scores table lacks column '{col}'", file=p, field=col,
                                 fix="pass the output of 'mlfastsim belle2 apply'")
    if not np.all(np.isfinite(table["score"].to_numpy())):
        raise DataError("NaN/inf scores", file=p, field="score", fix="re-run belle2 apply")
    return table, summary


def threshold_at_retention(scores: np.ndarray, labels: np.ndarray, retention: float) -> float:
    """The highest threshold keeping at least ``retention`` of the positive events."""
    pos = np.sort(scores[labels == 1])[::-1]
    if pos.size == 0:
        raise DataError("no skim-passing events: retention is undefined", field="label",
                        fix="evaluate on a sample with passing events")
    k = int(np.ceil(retention * pos.size)) - 1
    return float(pos[min(max(k, 0), pos.size - 1)])


def speedup(keep_fraction: np.ndarray | float, retention: np.ndarray | float, t_gen: float, t_sim: float,
            t_filter: float) -> np.ndarray:
    """Speed-up per skim-passing event in the final sample (see the module docstring)."""
    keep_fraction = np.asarray(keep_fraction, dtype=float)
    retention = np.asarray(retention, dtype=float)
    full = t_gen + t_sim
    filtered = (t_gen + t_filter + keep_fraction * t_sim) / np.where(retention > 0, retention, np.nan)
    return full / filtered


def matching_scale(scores: np.ndarray, keep_fraction: float, min_probability: float) -> float:
    """The sampling scale whose expected kept fraction equals ``keep_fraction`` (bisection; same cost)."""
    def kept(scale: float) -> float:
        return float(np.mean(np.clip(np.maximum(scale * scores, min_probability), 0.0, 1.0)))

    lo, hi = 0.0, 1.0
    while kept(hi) < keep_fraction and hi < 1e9:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kept(mid) < keep_fraction else (lo, mid)
    return hi


def chi2_weighted(values: np.ndarray, weights: np.ndarray, p: np.ndarray, bins: np.ndarray) -> tuple[float, int]:
    """chi2 of weighted kept counts vs full counts (variance sum (1-p)/p per bin); (chi2, ndf)."""
    full, _ = np.histogram(values, bins)
    w, _ = np.histogram(values, bins, weights=weights)
    var, _ = np.histogram(values, bins, weights=(1.0 - p) / np.where(p > 0, p, 1.0))
    use = var > 0
    return float(np.sum((w[use] - full[use]) ** 2 / var[use])), int(use.sum())


def chi2_shape(values: np.ndarray, keep: np.ndarray, bins: np.ndarray) -> tuple[float, int]:
    """chi2 of the kept histogram vs the full one scaled to the kept total (binomial variance)."""
    full, _ = np.histogram(values, bins)
    kept, _ = np.histogram(values[keep], bins)
    if full.sum() == 0 or kept.sum() == 0:
        return float("nan"), 0
    f = kept.sum() / full.sum()
    expected = full * f
    var = full * f * (1 - f)
    use = var > 0
    return float(np.sum((kept[use] - expected[use]) ** 2 / var[use])), int(use.sum())


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Compute metrics, write ``metrics.json``, ``report.md`` and the figures into ``cfg.output_dir``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if cfg.events is None or cfg.scores is None:
        raise ConfigError("need both the events file and the scores file", field="--events/--scores",
                          fix="pass --events EVENTS.h5 --scores SCORES.h5")
    with EventFile(cfg.events, need_labels=True) as ef:
        events = ef.events
    scores, apply_summary = read_scores(cfg.scores)
    missing = [c for c in ("sim_cpu_s", "gen_cpu_s", *BIAS_VARIABLES) if c not in events]
    if missing:
        raise InputFileError(f"events table lacks {', '.join(missing)}", file=cfg.events, field="events",
                             fix="pass a file written by belle2 produce")
    df = events.merge(scores[["event", "score"]], on="event", how="inner")
    if len(df) != len(events) or len(df) != len(scores):
        raise DataError(f"{len(scores)} scored events but {len(events)} events, {len(df)} in common",
                        file=cfg.scores, field="event", fix="apply the filter to the same events file")
    if "filter_cpu_s_per_event" not in apply_summary:
        raise InputFileError("scores file has no measured filter time", file=cfg.scores, field="summary",
                             fix="re-run belle2 apply")
    outdir = ensure_writable_dir(cfg.output_dir)
    y = df["label"].to_numpy().astype(int)
    s = df["score"].to_numpy()
    if len(np.unique(y)) < 2:
        raise DataError("labels have a single class: ROC is undefined", file=cfg.events, field="label",
                        fix="evaluate on a larger sample")
    auc = float(roc_auc_score(y, s))
    fpr, tpr, _ = roc_curve(y, s)
    t_gen = float(df["gen_cpu_s"].mean())
    t_sim_measured = float(df["sim_cpu_s"].mean())
    t_sim = t_sim_measured
    t_proj = cfg.projected_sim_reco_s
    t_filter = float(apply_summary["filter_cpu_s_per_event"])
    pass_rate = float(y.mean())
    t95 = threshold_at_retention(s, y, cfg.retention)
    keep95 = s >= t95
    retained = float(keep95[y == 1].mean())
    f95 = float(keep95.mean())
    su95 = float(speedup(f95, retained, t_gen, t_sim, t_filter))
    # speed-up vs signal efficiency over the ROC thresholds
    keep_frac = tpr * pass_rate + fpr * (1 - pass_rate)
    su_curve = speedup(keep_frac, tpr, t_gen, t_sim, t_filter)

    # bias on skim-passing events: threshold at the working point vs weighted sampling at the same cost
    scale = matching_scale(s, f95, cfg.min_probability)
    rng = np.random.default_rng(cfg.seed)
    keep_s, p_s, w_s = keep_decision(s, "sample", min_probability=cfg.min_probability, scale=scale, rng=rng)
    pos = y == 1
    bias: dict[str, Any] = {}
    hists: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for var in BIAS_VARIABLES:
        v = df[var].to_numpy(dtype=float)
        ok = pos & np.isfinite(v)
        if ok.sum() < 2:
            continue
        lo, hi = np.quantile(v[ok], [0.0, 1.0])
        bins = np.linspace(lo, hi + 1e-9 * max(abs(hi), 1.0), cfg.n_bins + 1)
        c_thr, n_thr = chi2_shape(v[ok], keep95[ok], bins)
        c_w, n_w = chi2_weighted(v[ok], w_s[ok], p_s[ok], bins)
        bias[var] = {"threshold_chi2_ndf": c_thr / max(n_thr, 1), "threshold_ndf": n_thr,
                     "weighted_chi2_ndf": c_w / max(n_w, 1), "weighted_ndf": n_w}
        hists[var] = (v[ok], bins, keep95[ok], w_s[ok])
    weighted_pass = float(w_s[pos].sum())
    w2 = float(np.sum(w_s[pos] ** 2))
    n_eff = weighted_pass**2 / w2 if w2 > 0 else 0.0  # Kish effective sample size of the passing events
    metrics: dict[str, Any] = {
        "n_events": len(df), "pass_fraction": pass_rate, "auc": auc,
        "retention_target": cfg.retention, "threshold_at_retention": t95, "retention_achieved": retained,
        "keep_fraction_at_retention": f95, "speedup_at_retention": su95,
        "times_s_per_event": {"generation": t_gen, "expensive_stage": t_sim,
                              "expensive_stage_measured": t_sim_measured, "filter": t_filter},
        "max_speedup_perfect_filter": float(speedup(pass_rate, 1.0, t_gen, t_sim, t_filter)),
        "projected": {"sim_reco_s_per_event": t_proj,
                      "speedup_at_retention": float(speedup(f95, retained, t_gen, t_proj, t_filter)),
                      "max_speedup_perfect_filter": float(speedup(pass_rate, 1.0, t_gen, t_proj, t_filter)),
                      "weighted_speedup": float(speedup(keep_s.mean(), n_eff / max(pos.sum(), 1), t_gen, t_proj,
                                                        t_filter))},
        "weighted_sampling": {"min_probability": cfg.min_probability, "scale": scale,
                              "kept_fraction": float(keep_s.mean()),
                              "sum_weights_passing": weighted_pass, "true_passing": int(pos.sum()),
                              "pull": (weighted_pass - pos.sum()) / np.sqrt(max(((1 - p_s[pos]) / p_s[pos]).sum(),
                                                                                 1e-12)),
                              "effective_passing": n_eff,
                              # cost per *effective* passing event: weights dilute the statistical power
                              "speedup": float(speedup(keep_s.mean(), n_eff / max(pos.sum(), 1), t_gen, t_sim,
                                                       t_filter))},
        "bias": bias,
    }
    if {"keep", "weight"} <= set(scores.columns):  # written by every belle2 apply
        metrics["as_applied"] = as_applied(df, scores, apply_summary, t_gen, t_sim, t_proj, t_filter)
    metrics["verdict"] = verdict(metrics)
    figures = _plots(outdir, fpr, tpr, auc, s, y, su_curve, cfg.retention, su95, hists)
    metrics["figures"] = figures
    atomic_write_json(outdir / "metrics.json", metrics)
    atomic_write_text(outdir / "report.md", _report(metrics))
    return metrics


def as_applied(df: pd.DataFrame, scores: pd.DataFrame, summary: dict[str, Any], t_gen: float, t_sim: float,
               t_proj: float, t_filter: float) -> dict[str, Any]:
    """What ``belle2 apply`` actually did to these events: its mode and parameters, the events it kept and
    their weights, the passing events it kept, and the speed-up of exactly that selection.

    The other numbers of the evaluation re-choose a working point (``retention``); these are the ones a
    user who ran ``apply`` gets.  Sampling mode is judged per *effective* passing event (Kish): weights
    dilute the statistical power, so keeping rare events with large weights costs as much as it saves.
    """
    applied = df[["event", "label"]].merge(scores[["event", "keep", "weight", "score"]], on="event", how="inner")
    keep = applied["keep"].to_numpy(dtype=bool)
    weight = applied["weight"].to_numpy(dtype=float)
    pos = applied["label"].to_numpy().astype(int) == 1
    kept_fraction = float(keep.mean()) if len(keep) else 0.0
    passing_kept = float(keep[pos].mean()) if pos.any() else 0.0
    w = np.where(keep & pos, weight, 0.0)
    n_eff = float(w.sum() ** 2 / np.sum(w**2)) if np.sum(w**2) > 0 else 0.0
    effective = n_eff / max(int(pos.sum()), 1) if summary.get("mode") == "sample" else passing_kept
    score = applied["score"].to_numpy(dtype=float)
    out = {
        "mode": summary.get("mode"), "threshold": summary.get("threshold"),
        "sample_scale": summary.get("sample_scale"), "min_probability": summary.get("min_probability"),
        "n_kept": int(keep.sum()), "kept_fraction": kept_fraction, "passing_kept_fraction": passing_kept,
        "sum_weights_passing": float(w.sum()), "true_passing": int(pos.sum()), "effective_passing": n_eff,
        "speedup_measured": float(speedup(kept_fraction, effective, t_gen, t_sim, t_filter)),
        "speedup_projected": float(speedup(kept_fraction, effective, t_gen, t_proj, t_filter)),
        "max_score": float(score.max()) if len(score) else 0.0,
    }
    # an over-confident (overfit) filter squashes every score towards 0: a sampling scale of 1e8 and a
    # threshold of 1e-9 then "work" but say nothing about the events
    out["scores_squashed"] = bool(len(score) and np.quantile(score[pos] if pos.any() else score, 0.5) < 1e-3)
    return out


def verdict(m: dict[str, Any]) -> str:
    """One plain sentence: does the filter save time, on the stand-in chain and on the projected real one?"""
    su, proj = m["speedup_at_retention"], m["projected"]["speedup_at_retention"]
    t = m["times_s_per_event"]

    def say(x: float, what: str) -> str:
        if abs(x - 1.0) < 0.01:
            return f"on {what} the filter breaks even (speed-up {x:.3f}x)"
        if x > 1.0:
            return f"on {what} the filter saves time (speed-up {x:.2f}x)"
        return f"on {what} the filter LOSES time: it costs {1.0 / x:.2f}x the unfiltered chain (speed-up {x:.2f}x)"

    return (f"At {m['retention_target']:.0%} retention, " + say(su, f"the measured stand-in chain "
            f"({t['expensive_stage_measured'] * 1e3:.2f} ms/event expensive stage)") + "; "
            + say(proj, f"the projected real chain ({m['projected']['sim_reco_s_per_event']:g} s/event "
                        "simulation + reconstruction)") + ".")


def _plots(outdir: Path, fpr: np.ndarray, tpr: np.ndarray, auc: float, s: np.ndarray, y: np.ndarray,
           su: np.ndarray, retention: float, su95: float,
           hists: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        with atomic_path(outdir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        out[name.split(".")[0]] = name

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot(fpr, tpr, label=f"filter (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", label="random")
    ax.set_xlabel("fraction of failing events kept")
    ax.set_ylabel("fraction of passing events kept")
    ax.legend()
    ax.set_title("ROC")
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(s[y == 0], bins, histtype="step", density=True, label="fails skim")
    ax.hist(s[y == 1], bins, histtype="step", density=True, label="passes skim")
    ax.set_xlabel("filter score")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.legend()
    save(fig, "scores.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    ok = np.isfinite(su) & (tpr > 0)
    ax.plot(tpr[ok], su[ok])
    ax.axvline(retention, color="k", ls=":")
    ax.axhline(su95, color="k", ls=":")
    ax.set_xlabel("signal efficiency (passing events kept)")
    ax.set_ylabel("speed-up")
    ax.set_title(f"speed-up {su95:.2f} at {retention:.0%} retention")
    save(fig, "speedup.png")

    if hists:
        fig, axes = plt.subplots(1, len(hists), figsize=(4 * len(hists), 3.5))
        axes = np.atleast_1d(axes)
        for ax, (var, (v, b, keep, w)) in zip(axes, hists.items(), strict=True):
            ax.hist(v, b, histtype="step", density=True, label="full")
            ax.hist(v[keep], b, histtype="step", density=True, label="threshold")
            ax.hist(v, b, histtype="step", density=True, weights=w, label="weighted")
            ax.set_xlabel(BIAS_LABELS.get(var, var))
            ax.set_ylabel("passing events (normalised)")
        axes[0].legend()
        fig.tight_layout()
        save(fig, "bias.png")
    return out


def _applied_lines(a: dict[str, Any] | None) -> list[str]:
    """The report's paragraph on the selection ``belle2 apply`` made (see :func:`as_applied`)."""
    if not a:
        return []
    how = (f"threshold {a['threshold']:g}" if a["mode"] == "threshold" else
           f"p = min(1, max({a['sample_scale']:g} x score, {a['min_probability']:g})), weight 1/p")
    lines = [
        "## As applied",
        "",
        f"- `belle2 apply` ({a['mode']}: {how}) kept {a['n_kept']} events ({a['kept_fraction']:.1%}) and "
        f"{a['passing_kept_fraction']:.1%} of the passing ones; sum of weights of kept passing events "
        f"{a['sum_weights_passing']:.1f} vs {a['true_passing']} true (effective {a['effective_passing']:.1f})",
        f"- speed-up of this selection: {a['speedup_measured']:.3f} on the measured stand-in chain, "
        f"{a['speedup_projected']:.3f} projected",
    ]
    if a["scores_squashed"]:
        lines.append(f"- **the filter's scores are squashed towards 0 (highest {a['max_score']:.3g}): it is "
                     "over-confident, typically overfit; retrain with more events or more regularisation**")
    return [*lines, ""]


def _report(m: dict[str, Any]) -> str:
    t = m["times_s_per_event"]
    lines = [
        "# Belle II selective background simulation: filter evaluation",
        "",
        f"- events: {m['n_events']}, skim pass fraction: {m['pass_fraction']:.4f}",
        f"- ROC AUC: {m['auc']:.4f}",
        f"- working point: threshold {m['threshold_at_retention']:.4g} keeps {m['retention_achieved']:.1%} of passing "
        f"events and {m['keep_fraction_at_retention']:.1%} of all events",
        f"- CPU s/event (measured): generation {t['generation']:.3g}, stand-in expensive stage "
        f"{t['expensive_stage_measured']:.3g}, filter {t['filter']:.3g}",
        f"- speed-up at {m['retention_target']:.0%} retention, measured stand-in chain: "
        f"{m['speedup_at_retention']:.3f} (perfect filter: {m['max_speedup_perfect_filter']:.3f})",
        f"- speed-up at {m['retention_target']:.0%} retention, projected onto "
        f"{m['projected']['sim_reco_s_per_event']:g} s/event real simulation + reconstruction: "
        f"{m['projected']['speedup_at_retention']:.3f} (perfect filter: "
        f"{m['projected']['max_speedup_perfect_filter']:.3f}; weighted sampling per effective event: "
        f"{m['projected']['weighted_speedup']:.3f})",
        f"- **{m['verdict']}**",
        f"- weighted sampling (p = min(1, max({m['weighted_sampling']['scale']:.3g} x score, "
        f"{m['weighted_sampling']['min_probability']})), same cost as the cut): kept "
        f"{m['weighted_sampling']['kept_fraction']:.1%}, sum of weights of passing events "
        f"{m['weighted_sampling']['sum_weights_passing']:.1f} vs {m['weighted_sampling']['true_passing']} true "
        f"(pull {m['weighted_sampling']['pull']:.2f}), effective passing events "
        f"{m['weighted_sampling']['effective_passing']:.1f}, speed-up per effective event "
        f"{m['weighted_sampling']['speedup']:.3f}",
        "",
        *_applied_lines(m.get("as_applied")),
        "| variable | threshold chi2/ndf | weighted chi2/ndf |",
        "|---|---|---|",
    ]
    for var, b in m["bias"].items():
        lines.append(f"| {var} | {b['threshold_chi2_ndf']:.2f} | {b['weighted_chi2_ndf']:.2f} |")
    lines += ["", *[f"![{k}]({v})" for k, v in m["figures"].items()], ""]
    return "\n".join(lines)

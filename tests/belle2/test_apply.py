"""Keeping events: weighted sampling is unbiased, a threshold cut is not (and the test can tell)."""

from __future__ import annotations

import numpy as np

from mlfastsim.belle2.apply import keep_decision
from mlfastsim.belle2.evaluate import chi2_shape, chi2_weighted, speedup, threshold_at_retention


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, an imperfect score and a skim variable that the score's mistakes correlate with."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)  # a "skim variable"
    label = rng.random(n) < 1 / (1 + np.exp(-(x - 1.5) * 2))
    score = 1 / (1 + np.exp(-(2.5 * label - 1.2 + 0.8 * x + rng.normal(0, 1, n))))
    return label, score, x


def test_weighted_sampling_is_unbiased() -> None:
    pulls = []
    for seed in range(40):
        label, score, _ = _toy(4000, seed)
        keep, p, w = keep_decision(score, "sample", min_probability=0.02, rng=np.random.default_rng(100 + seed))
        assert np.all(w[keep] >= 1) and np.all(w[~keep] == 0)
        var = ((1 - p[label]) / p[label]).sum()
        pulls.append((w[label].sum() - label.sum()) / np.sqrt(var))
    pulls = np.array(pulls)
    assert abs(pulls.mean()) < 4 / np.sqrt(pulls.size), pulls.mean()
    assert 0.6 < pulls.std() < 1.5, pulls.std()


def test_weighted_distributions_match_threshold_ones_do_not() -> None:
    label, score, x = _toy(60000, 1)
    _, p, w = keep_decision(score, "sample", min_probability=0.02, rng=np.random.default_rng(7))
    bins = np.linspace(-3, 4, 15)
    c_w, n_w = chi2_weighted(x[label], w[label], p[label], bins)
    assert c_w / n_w < 2.0, c_w / n_w
    t = threshold_at_retention(score, label.astype(int), 0.9)
    keep_t, _, w_t = keep_decision(score, "threshold", threshold=t)
    assert 0.89 <= keep_t[label].mean() <= 0.91
    c_t, n_t = chi2_shape(x[label], keep_t[label], bins)
    assert c_t / n_t > 5.0, c_t / n_t  # the cut sculpts the variable the score depends on
    # weighting a threshold sample cannot repair it: the lost events are gone
    assert abs(w_t[label].sum() - label.sum()) > 5 * np.sqrt(label.sum())


def test_sampling_is_reproducible_and_speedup_formula() -> None:
    _, score, _ = _toy(1000, 3)
    a = keep_decision(score, "sample", rng=np.random.default_rng(5))
    b = keep_decision(score, "sample", rng=np.random.default_rng(5))
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    # no filter cost, keep everything, full retention: no gain; perfect filter: (t_gen + t_sim)/(t_gen + f t_sim)
    assert np.isclose(speedup(1.0, 1.0, 1.0, 9.0, 0.0), 1.0)
    assert np.isclose(speedup(0.1, 1.0, 1.0, 9.0, 0.0), 10.0 / 1.9)
    assert np.isclose(speedup(0.1, 0.5, 1.0, 9.0, 0.0), 10.0 / 3.8)


def test_scaled_sampling_matches_the_cost_of_a_cut_and_stays_unbiased() -> None:
    from mlfastsim.belle2.evaluate import matching_scale

    label, score, x = _toy(60000, 4)
    t = threshold_at_retention(score, label.astype(int), 0.95)
    f = float(np.mean(score >= t))
    scale = matching_scale(score, f, 0.01)
    keep, p, w = keep_decision(score, "sample", min_probability=0.01, scale=scale, rng=np.random.default_rng(9))
    assert scale > 0 and abs(keep.mean() - f) < 0.01
    pull = (w[label].sum() - label.sum()) / np.sqrt(((1 - p[label]) / p[label]).sum())
    assert abs(pull) < 4
    c_w, n_w = chi2_weighted(x[label], w[label], p[label], np.linspace(-3, 4, 15))
    assert c_w / n_w < 2.0


def test_verdict_says_when_a_filter_loses_time() -> None:
    """The same filter loses time on a 2 ms stand-in and saves it on a 1 s real chain; the sentence says so."""
    from mlfastsim.belle2.evaluate import verdict

    # keeps 60 % of events at 95 % retention; generation 0.6 ms, filter 1.5 ms
    t_gen, t_filter, keep, ret = 0.0006, 0.0015, 0.6, 0.95
    measured = float(speedup(keep, ret, t_gen, 0.002, t_filter))
    projected = float(speedup(keep, ret, t_gen, 1.0, t_filter))
    assert measured < 1.0 < projected
    assert projected == (t_gen + 1.0) / ((t_gen + t_filter + keep * 1.0) / ret)
    m = {"speedup_at_retention": measured, "retention_target": 0.95,
         "times_s_per_event": {"expensive_stage_measured": 0.002},
         "projected": {"speedup_at_retention": projected, "sim_reco_s_per_event": 1.0}}
    text = verdict(m)
    assert "stand-in chain (2.00 ms/event expensive stage) the filter LOSES time" in text
    assert "projected real chain (1 s/event simulation + reconstruction) the filter saves time" in text

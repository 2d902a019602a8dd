"""Distances between samples: exact limits and the statistics behind the defaults."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlfastsim.showers.validation.metrics import (
    auc_null,
    binned_counts,
    compare_profiles,
    compare_samples,
    default_n_bins,
    distance_grade,
    excess,
    fpd,
    frechet_distance,
    grade,
    kpd,
    mmd_poly_unbiased,
    reference_edges,
    reference_split_floor,
    separation_power,
    separation_power_floor,
    separation_power_null,
    split_halves,
    wasserstein,
    wasserstein_split_floor,
)


def test_separation_power_limits_on_histograms() -> None:
    h = np.array([1.0, 4.0, 9.0, 2.0])
    assert separation_power(h, h) == 0.0
    assert separation_power(h, 3 * h) == pytest.approx(0.0)  # normalised first
    assert separation_power([1, 2, 0, 0], [0, 0, 5, 1]) == pytest.approx(1.0)
    # one bin moved: h1 = (1/2, 1/2, 0), h2 = (1/2, 0, 1/2) -> 1/2 (1/4 / 1/2 + 1/4 / 1/2) = 1/2
    assert separation_power([1, 1, 0], [1, 0, 1]) == pytest.approx(0.5)


def test_separation_power_limits_on_samples() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert compare_samples(ref, ref)["separation_power"] == 0.0
    # disjoint: the candidate lies entirely in the overflow bin, where the reference has nothing
    assert compare_samples(ref, ref + 100.0)["separation_power"] == pytest.approx(1.0)
    assert compare_samples(ref, ref - 100.0)["separation_power"] == pytest.approx(1.0)


def test_separation_power_of_same_distribution_matches_its_floor() -> None:
    """Two samples of one distribution: mean S = (B-1)/4 (1/N1 + 1/N2); the default B keeps it at 0.0025."""
    rng = np.random.default_rng(1)
    n = 2000
    bins = default_n_bins(n, n)
    values = [
        compare_samples(rng.gamma(2.0, size=n), rng.gamma(2.0, size=n))["separation_power"] for _ in range(60)
    ]
    floor = separation_power_floor(bins, n, n)
    assert floor == pytest.approx(0.0025, rel=0.2)
    # chi2_{B-1}/(2N): the mean of 60 draws has a relative standard error of sqrt(2/(B-1)/60) ~ 6 %
    assert np.mean(values) == pytest.approx(floor, rel=0.25)
    # a shift of 0.4 sigma adds ~ (0.4)^2 / 8 = 0.02, far above the floor
    shifted = compare_samples(rng.normal(size=n), rng.normal(0.4, 1.0, size=n))["separation_power"]
    assert shifted > 5 * floor


def test_default_bins_follow_sample_size() -> None:
    assert default_n_bins(100, 100) == 10
    assert default_n_bins(4000, 4000) == 21
    assert default_n_bins(10_000, 10_000) == 51
    assert default_n_bins(10**6, 10**6) == 100


def test_reference_edges_handle_ties_and_constants() -> None:
    ref = np.concatenate([np.zeros(900), np.linspace(1, 2, 100)])
    edges = reference_edges(ref, 10)
    assert np.all(np.diff(edges) > 0) and edges[0] == 0.0 and edges[-1] == 2.0
    const = reference_edges(np.full(50, 3.0), 10)
    assert const.size == 2 and const[0] < 3.0 < const[1]
    counts = binned_counts(np.array([3.0, 3.0, 4.0, 2.0]), const)
    assert counts.tolist() == [1, 2, 1]
    assert compare_samples(np.full(50, 3.0), np.full(50, 3.0))["separation_power"] == 0.0


def test_wasserstein_and_its_normalisation() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(0.0, 2.0, 20000)
    w, w_norm = wasserstein(ref, ref + 1.0)
    assert w == pytest.approx(1.0, rel=1e-9)
    assert w_norm == pytest.approx(0.5, rel=0.02)
    assert wasserstein(np.ones(10), np.ones(10) * 2)[1] is None  # no spread: normalisation undefined


def test_profile_comparison_in_mm() -> None:
    z = np.arange(10) * 2.0 + 1.0
    prof = np.exp(-0.5 * ((z - 9.0) / 3.0) ** 2)
    same = compare_profiles(z, prof, 2.0 * prof)
    assert same["separation_power"] == pytest.approx(0.0) and same["wasserstein"] == pytest.approx(
        0.0, abs=1e-12
    )
    moved = compare_profiles(z, prof, np.roll(prof, 1))  # one cell deeper: W1 = 2 mm (edges aside)
    assert moved["wasserstein"] == pytest.approx(2.0, rel=0.05)


def test_frechet_distance_of_one_dimensional_gaussians() -> None:
    # FD(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2
    fd = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]]))
    assert fd == pytest.approx(4.0 + 1.0)
    cov = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert frechet_distance(np.zeros(2), cov, np.zeros(2), cov) == pytest.approx(0.0, abs=1e-10)


def test_fpd_and_kpd_vanish_for_one_distribution_and_grow_with_a_shift() -> None:
    rng = np.random.default_rng(4)
    d, n = 8, 3000
    mix = rng.normal(size=(d, d)) / math.sqrt(d)
    ref = rng.gamma(3.0, size=(n, d)) @ mix
    same = rng.gamma(3.0, size=(n, d)) @ mix
    shifted = same + 0.3 * ref.std(axis=0)
    f_same, f_shift = fpd(ref, same, seed=0), fpd(ref, shifted, seed=0)
    assert abs(f_same["value"]) < max(4 * f_same["error"], 0.01)
    assert f_same["raw"] > f_same["value"]  # the finite-N bias the extrapolation removes
    assert f_shift["value"] > 0.3 * 0.3 * d * 0.8 and f_shift["value"] > 10 * f_shift["error"]
    k_same, k_shift = kpd(ref, same, seed=0), kpd(ref, shifted, seed=0)
    assert abs(k_same["value"]) < 3 * k_same["error"] + 1e-4
    assert k_shift["value"] > 5 * k_shift["error"]
    assert grade("fpd", f_same["value"], f_same["error"]) == "pass"
    assert grade("fpd", f_shift["value"], f_shift["error"]) == "fail"


def test_grades_are_excesses_over_the_floor() -> None:
    # separation power 0.004 over a floor of 0.0025 +- 0.0005: 3 spreads -> pass; 0.0075 -> 10 -> warn
    assert grade("separation_power", 0.004, floor=0.0025, floor_sd=0.0005) == "pass"
    assert grade("separation_power", 0.0075, floor=0.0025, floor_sd=0.0005) == "warn"
    assert grade("separation_power", 0.02, floor=0.0025, floor_sd=0.0005) == "fail"
    # the same value passes at a larger floor (fewer showers): grades follow the statistics
    assert grade("separation_power", 0.02, floor=0.015, floor_sd=0.002) == "pass"
    # no floor, no grade
    assert grade("separation_power", 0.004) == "n/a"
    assert grade("jsd", 0.3) == "n/a"
    assert grade("wasserstein", None) == "n/a"
    # AUC against an uninformative classifier on 1000 + 1000 evaluation showers
    mean, sd = auc_null(1000, 1000)
    assert mean == 0.5 and sd == pytest.approx(math.sqrt(2001 / 12e6))
    assert grade("auc", 0.52, floor=mean, floor_sd=sd) == "pass"
    assert grade("auc", 0.95, floor=mean, floor_sd=sd) == "fail"
    # FPD/KPD: value over error; negative values (an unbiased estimate of 0) pass
    assert grade("kpd", -0.002, 0.001) == "pass"
    assert grade("fpd", 0.05, 0.001) == "fail"
    assert grade("fpd", 0.05, 0.0) == "n/a"
    assert excess(1.0, 0.0, 0.0) is None  # a constant reference has no spread to compare against


def test_separation_power_null_spread_matches_simulation() -> None:
    """The chi-square null: S of two same-distribution samples has mean c (B - 1) and spread c sqrt(2 (B - 1))."""
    rng = np.random.default_rng(11)
    n, bins = 2000, 20
    values = [compare_samples(rng.normal(size=n), rng.normal(size=n), n_bins=bins)["separation_power"]
              for _ in range(200)]
    mean, sd = separation_power_null(bins, n, n)
    reported = compare_samples(rng.normal(size=n), rng.normal(size=n), n_bins=bins)
    # quantile bins add under- and overflow: ~1/(N + 1) more than the chi-square mean
    assert reported["separation_power_floor"] == pytest.approx(mean + 1.0 / (n + 1))
    assert np.mean(values) == pytest.approx(reported["separation_power_floor"], rel=0.06)
    assert np.std(values) == pytest.approx(sd, rel=0.25)


def test_wasserstein_norm_is_never_an_undefined_ratio() -> None:
    """A nearly constant reference (an almost empty layer) no longer divides W1 by ~0."""
    ref = np.zeros(1000)
    ref[0] = 1e-9
    cand = np.random.default_rng(0).uniform(0.0, 5.0, 1000)
    w, w_norm = wasserstein(ref, cand)
    assert w == pytest.approx(cand.mean(), rel=1e-6)
    assert w_norm is not None and w_norm < 2.0
    assert wasserstein(np.zeros(10), np.zeros(10))[1] is None


def test_reference_split_floor_estimates_the_same_vs_same_distance() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=4000)
    floor, sd = reference_split_floor(ref, lambda a, b: wasserstein(a, b)[0], 4000, n_splits=8, seed=1)
    same = [wasserstein(ref, rng.normal(size=4000))[0] for _ in range(30)]
    assert floor == pytest.approx(np.mean(same), rel=0.35)
    assert sd > 0


def test_kpd_and_fpd_errors_come_from_resampling_even_when_the_batch_is_the_sample() -> None:
    """300 vs 300 showers with batch size 1000: the batches still differ, so the error is not 0."""
    rng = np.random.default_rng(6)
    d = 40
    ref, cand = rng.normal(size=(300, d)), rng.normal(size=(300, d))
    k = kpd(ref, cand, seed=0)
    assert k["batch_size"] == 300 and k["error"] > 0
    assert abs(k["value"]) < 4 * k["error"]  # unbiased: no upward bias from repeated showers
    # more features than showers allow an extrapolation: full-sample distance with a bootstrap error
    wide = rng.normal(size=(60, 80)), rng.normal(size=(60, 80))
    f = fpd(*wide, seed=0)
    assert f["error"] > 0 and "bootstrap" in f["method"]
    # ... whose bias is far above any difference: shown, not graded
    assert f["extrapolated"] is False and distance_grade("fpd", f) == "n/a"


def test_split_halves_keep_the_mix_of_conditions() -> None:
    rng = np.random.default_rng(9)
    strata = np.repeat(np.array(["10|90", "50|90", "100|70"]), [100, 101, 60])
    a, b = split_halves(strata.size, rng, strata)
    assert a.size == b.size and np.intersect1d(a, b).size == 0
    for label, count in (("10|90", 50), ("50|90", 50), ("100|70", 30)):
        assert np.sum(strata[a] == label) >= count - 1 and np.sum(strata[b] == label) >= count - 1
    # a bimodal observable with a fixed number of showers per point: no mixture fluctuation in the floor
    values = np.where(strata == "10|90", 10.0, np.where(strata == "50|90", 50.0, 100.0)) + rng.normal(0, 1, strata.size)
    plain = wasserstein_split_floor(values, strata.size, n_splits=10, seed=0)[0]
    strat = wasserstein_split_floor(values, strata.size, n_splits=10, seed=0, strata=strata)[0]
    assert strat < 0.5 * plain


def test_mmd_without_self_pairs_is_unbiased_under_resampling() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(200, 5)), rng.normal(size=(200, 5))
    vals = []
    for _ in range(40):
        ia, ib = rng.integers(0, 200, 200), rng.integers(0, 200, 200)
        vals.append(mmd_poly_unbiased(a[ia], b[ib], ids_a=ia, ids_b=ib))
    full = mmd_poly_unbiased(a, b)
    # the bootstrap replicates centre on the full-sample U-statistic (no k(x, x) bias)
    assert np.mean(vals) == pytest.approx(full, abs=3 * np.std(vals) / math.sqrt(40))

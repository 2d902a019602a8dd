"""Wall time per stage and peak memory of ``showers validate`` on CaloChallenge-sized samples.

By default: 10k reference vs 10k candidate showers on the ds2 mesh (6480 voxels), both from the
reference simulator (SiW, independent seeds; ``--candidate-detector SciPb`` for a clearly different
candidate), electrons 1-1000 GeV log-uniform at normal incidence; BLAS, OpenMP and torch limited to
``--threads`` (2) threads.  Prints seconds per stage (observables, metrics, classifier, plots, report),
the total against the 60 s target, the peak resident memory during the validation (VmHWM, reset after
the samples are made) and the headline metrics as a sanity check.  Without the simulator it falls back
to synthetic showers.

    python benchmarks/bench_validate.py [--n 10000] [--threads 2] [--candidate-detector SiW] [--no-classifier]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from mlfastsim.showers.geometry import DETECTOR_PRESETS, MESH_PRESETS, CylindricalMesh
from mlfastsim.showers.io.formats import ShowerData
from mlfastsim.showers.validation.classifier import ClassifierConfig
from mlfastsim.showers.validation.validate import run_validation

MESH = MESH_PRESETS["ds2"]
TARGET_S = 60.0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _synthetic(n: int, seed: int, mesh: CylindricalMesh, radius_mm: float) -> ShowerData:
    rng = np.random.default_rng(seed)
    e_inc = 10 ** rng.uniform(3.0, 6.0, n)
    z, r = mesh.z_centres, mesh.r_centres
    t_max = 20.0 + 8.0 * np.log10(e_inc / 1e3)[:, None] + rng.normal(0.0, 3.0, (n, 1))
    longit = z[None, :] ** 2 * np.exp(-2.0 * z[None, :] / t_max)
    longit /= longit.sum(axis=1, keepdims=True)
    lateral = r * np.exp(-r / radius_mm)
    lateral /= lateral.sum()
    showers = np.empty((n, mesh.n_voxels), dtype=np.float32)
    for lo in range(0, n, 1000):
        e = e_inc[lo : lo + 1000]
        mean = 0.95 * e[:, None, None, None] * longit[lo : lo + 1000, :, None, None] * lateral / mesh.n_phi
        cells = rng.gamma(1.5, np.broadcast_to(mean, (len(e), *mesh.shape)) / 1.5)
        cells[cells < 0.015] = 0.0
        showers[lo : lo + len(e)] = mesh.to_flat(cells)
    return ShowerData(energies=e_inc, showers=showers, mesh=mesh)


def _samples(n: int, candidate_detector: str) -> tuple[ShowerData, ShowerData, str]:
    try:
        from mlfastsim.showers.sim.em import make_kinematics, simulate
    except ImportError:
        radius = 9.0 if candidate_detector == "SiW" else 14.0
        return _synthetic(n, 1, MESH, 9.0), _synthetic(n, 2, MESH, radius), "synthetic showers"
    energies, angles = make_kinematics(energy_range_gev=(1.0, 1000.0), n_per_point=n, seed=5)
    ref = simulate(DETECTOR_PRESETS["SiW"], MESH, energies, angles, seed=1)
    cand = simulate(DETECTOR_PRESETS[candidate_detector], MESH, energies, angles, seed=2)
    return ref, cand, f"reference simulator: SiW vs {candidate_detector}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="showers per sample")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidate-detector", default="SiW", choices=sorted(DETECTOR_PRESETS))
    parser.add_argument("--no-classifier", action="store_true")
    args = parser.parse_args(argv)

    with threadpool_limits(limits=args.threads):
        t0 = time.perf_counter()
        ref, cand, origin = _samples(args.n, args.candidate_detector)
        make_s = time.perf_counter() - t0
        exact_peak = _reset_peak_rss()
        base_mib = _status_mib("VmRSS")
        with tempfile.TemporaryDirectory() as tmp:
            metrics = run_validation(
                ref,
                cand,
                Path(tmp) / "validation",
                classifier=not args.no_classifier,
                seed=0,
                classifier_config=ClassifierConfig(threads=args.threads),
            )
            report_mib = (Path(tmp) / "validation" / "report.html").stat().st_size / 2**20
        peak_mib = _status_mib("VmHWM")

    timing = metrics["timing_s"]
    print(
        f"mlfastsim showers validate: {args.n} vs {args.n} showers on {MESH.describe()} "
        f"= {MESH.n_voxels} voxels"
    )
    print(
        f"{origin}; made in {make_s:.1f} s (not counted); {args.threads} threads (BLAS/OpenMP/torch), "
        f"{os.cpu_count()} cpus visible"
    )
    print()
    print(f"{'stage':<14}{'seconds':>10}{'share':>8}")
    stages = [s for s in ("observables", "metrics", "classifier", "plots", "report") if s in timing]
    for stage in stages:
        print(f"{stage:<14}{timing[stage]:>10.2f}{timing[stage] / timing['total']:>8.0%}")
    verdict = "within" if timing["total"] <= TARGET_S else "OVER"
    print(f"{'total':<14}{timing['total']:>10.2f}{'':>8}  ({verdict} the {TARGET_S:.0f} s target)")
    print()
    inputs_mib = (ref.showers.nbytes + cand.showers.nbytes) / 2**20
    how = "VmHWM reset before the validation" if exact_peak else "ru_maxrss, includes making the samples"
    print(
        f"peak RSS during validation: {peak_mib:.0f} MiB ({how}); before: {base_mib:.0f} MiB, "
        f"of which the two input arrays {inputs_mib:.0f} MiB"
    )
    print(f"report.html: {report_mib:.1f} MiB with {len(metrics['figures'])} embedded figures")
    print()
    obs = metrics["observables"]
    worst = max(obs, key=lambda k: obs[k]["separation_power"])
    print(
        f"worst separation power {obs[worst]['separation_power']:.4f} ({worst}); "
        f"floor {obs['e_total']['separation_power_floor']:.4f}"
    )
    for level, res in metrics.get("classifier", {}).items():
        print(
            f"classifier {level}: AUC {res['auc']:.4f}, JSD {res['jsd']:.4f}, "
            f"{res['epochs']} epochs, {res['seconds']:.1f} s"
        )
    print(
        f"FPD {metrics['fpd']['value']:.4g} ± {metrics['fpd']['error']:.2g}, "
        f"KPD {metrics['kpd']['value']:.4g} ± {metrics['kpd']['error']:.2g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

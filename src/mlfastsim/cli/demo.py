"""``mlfastsim demo``: the main road end to end on data it makes itself.

Simulates two detectors (SiW and SciPb) on the CaloChallenge ds2 mesh, then validates a second,
independent SiW sample against the first (should be statistically indistinguishable) and the SciPb
sample against it (should be clearly separated), and prints one table side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the demo outputs.")] = Path(
        "demo_out"
    ),
    n_per_point: Annotated[int, typer.Option(help="Showers per energy point.")] = 1000,
    energies: Annotated[str, typer.Option(help="Energies in GeV.")] = "2,8,32,128,512",
    workers: Annotated[int, typer.Option(help="Dask workers for the simulation.")] = 1,
    no_classifier: Annotated[bool, typer.Option("--no-classifier", help="Skip the classifier test.")] = False,
    seed: Annotated[int, typer.Option(help="Base random seed.")] = 1,
) -> None:
    """Simulate two detectors, validate same-vs-same and different-vs-same, print the table."""
    from mlfastsim.cli.common import parse_floats
    from mlfastsim.core.io import ensure_writable_dir
    from mlfastsim.core.parallel import ParallelConfig
    from mlfastsim.core.tracking import TrackingConfig
    from mlfastsim.showers.config import SimulateConfig, ValidateConfig
    from mlfastsim.showers.pipeline import simulate_to_file, validate_files

    out = ensure_writable_dir(output)
    energy_list = parse_floats(energies, "--energies")
    samples = {"SiW_a": ("SiW", seed), "SiW_b": ("SiW", seed + 1000), "SciPb": ("SciPb", seed + 2000)}
    for name, (detector, s) in samples.items():
        console.rule(f"simulate {name} ({detector})")
        cfg = SimulateConfig(
            detector=detector, mesh="ds2", energies_gev=energy_list, angles_deg=[90.0], n_per_point=n_per_point,
            seed=s, output=out / f"{name}.h5", parallel=ParallelConfig(workers=workers),
        )
        simulate_to_file(cfg, progress=True)
    results: dict[str, dict[str, Any]] = {}
    for name in ("SiW_b", "SciPb"):
        console.rule(f"validate {name} against SiW_a")
        vcfg = ValidateConfig(
            reference=out / "SiW_a.h5", candidate=out / f"{name}.h5", output=out / f"validate_{name}",
            classifier=not no_classifier, seed=seed, tracking=TrackingConfig(dir=out / "runs"),
        )
        results[name] = validate_files(vcfg, progress=True)
    console.print(_comparison_table(results))
    console.print(f"reports: {out / 'validate_SiW_b' / 'report.html'}, {out / 'validate_SciPb' / 'report.html'}")


def _comparison_table(results: dict[str, dict[str, Any]]) -> Table:
    """Side-by-side headline numbers: per-shower observables, worst layer of each per-layer family,
    classifier AUCs and FPD/KPD."""
    from mlfastsim.showers.observables import PER_LAYER, layer_prefix

    names = list(results)
    table = Table(title="Validation against SiW_a (separation power: 0 = identical, 1 = disjoint)")
    table.add_column("metric")
    for name in names:
        table.add_column(f"{name} vs SiW_a", justify="right")
    first = results[names[0]]["observables"]
    prefixes = [layer_prefix(key) for key in PER_LAYER]
    for obs in first:
        if not any(obs.startswith(p) for p in prefixes):
            table.add_row(f"sep. power {obs}", *(f"{results[n]['observables'][obs]['separation_power']:.4f}"
                                                 for n in names))
    for key, prefix in zip(PER_LAYER, prefixes, strict=True):
        worst = [max((m["separation_power"] for o, m in results[n]["observables"].items() if o.startswith(prefix)),
                     default=float("nan")) for n in names]
        table.add_row(f"sep. power {key} (worst layer)", *(f"{w:.4f}" for w in worst))
    for level in ("low_level", "high_level"):
        if level in results[names[0]].get("classifier", {}):
            table.add_row(f"classifier AUC ({level.replace('_', '-')})",
                          *(f"{results[n]['classifier'][level]['auc']:.3f}" for n in names))
    for key in ("fpd", "kpd"):
        if key in results[names[0]]:
            table.add_row(key.upper(), *(f"{results[n][key]['value']:.3g} ± {results[n][key]['error']:.2g}"
                                        for n in names))
    return table

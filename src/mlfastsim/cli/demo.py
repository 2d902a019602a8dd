"""``mlfastsim demo``: the main road end to end on data it makes itself, in a few minutes on 2 cores.

``mlfastsim demo`` tells the MetaHEP story (adapt the shipped model to a detector it never saw, export
to ONNX, generate from it, validate, compare with no adaptation and with training from scratch);
``mlfastsim demo detectors`` validates two simulated detectors against each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
app = typer.Typer(help="End-to-end demos on data mlfastsim makes itself.", invoke_without_command=True)

OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Directory for the demo outputs.")]
NoClsOpt = Annotated[bool, typer.Option("--no-classifier", help="Skip the classifier test.")]


@app.callback(invoke_without_command=True)
def metahep(
    ctx: typer.Context,
    output: OutOpt = Path("demo_out"),
    n_few: Annotated[int, typer.Option(help="Showers per (energy, angle) point to adapt on.")] = 100,
    n_reference: Annotated[int, typer.Option(help="Reference showers per point.")] = 400,
    adaptation_steps: Annotated[int, typer.Option(help="Adaptation (and from-scratch) steps.")] = 400,
    cfm_steps: Annotated[int, typer.Option(help="Adaptation steps of the shipped cfm_ds2 row (0: no cfm row).")]
    = 100,
    no_classifier: NoClsOpt = False,
    seed: Annotated[int, typer.Option(help="Base random seed.")] = 1,
) -> None:
    """Adapt the shipped model to an unseen detector, export, generate, validate; compare three ways."""
    if ctx.invoked_subcommand is not None:
        return
    from mlfastsim.core.quick import cap
    from mlfastsim.showers.demo import metahep_story

    # MLFASTSIM_QUICK=1 (the README test): smoke-test sizes, the same steps
    results = metahep_story(output, n_few=cap("n_per_point", n_few), n_reference=cap("n_per_point", n_reference),
                            adaptation_steps=cap("adaptation_steps", adaptation_steps), seed=seed,
                            classifier=not no_classifier, cfm_steps=cap("adaptation_steps", cfm_steps))
    console.print(_metahep_table(results))
    console.print(f"reports: {output}/validate_*/report.html; ONNX model: {output / 'adapted.onnx'}")


@app.command()
def detectors(
    output: OutOpt = Path("demo_out/detectors"),
    n_per_point: Annotated[int, typer.Option(help="Showers per energy point.")] = 1000,
    energies: Annotated[str, typer.Option(help="Energies in GeV.")] = "2,8,32,128,512",
    workers: Annotated[int, typer.Option(help="Dask workers for the simulation.")] = 1,
    no_classifier: NoClsOpt = False,
    seed: Annotated[int, typer.Option(help="Base random seed.")] = 1,
) -> None:
    """Simulate two detectors, validate same-vs-same and different-vs-same, print the table."""
    from mlfastsim.cli.common import parse_floats
    from mlfastsim.core.quick import cap
    from mlfastsim.showers.demo import detectors_story

    results = detectors_story(output, n_per_point=cap("n_per_point", n_per_point),
                              energies_gev=parse_floats(energies, "--energies"), workers=workers,
                              classifier=not no_classifier, seed=seed)
    console.print(_comparison_table(results))
    console.print(f"reports: {output}/validate_*/report.html")


def _main_observables() -> tuple[str, ...]:
    from mlfastsim.showers.training.meta import MAIN_OBSERVABLES

    return MAIN_OBSERVABLES


def _metahep_table(results: dict[str, dict[str, Any]]) -> Table:
    import numpy as np

    names = list(results)
    table = Table(title="MetaHEP: a detector the model never saw (FCCeeSiW), validated against a large reference "
                        "(separation power: 0 = identical, 1 = disjoint)")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    table.add_row("training time (s, wall clock)", *(f"{results[n]['train_s']:.1f}" for n in names))
    table.add_row("showers of the new detector used", *(str(results[n]["n_showers"]) for n in names))
    table.add_row("showers validated (vs as many reference)", *(str(results[n].get("n_validated", "")) for n in names))
    table.add_row("generated with", *(results[n]["generator"] for n in names))
    main = _main_observables()
    sep = {n: [results[n]["metrics"]["observables"][o]["separation_power"] for o in main
               if o in results[n]["metrics"]["observables"]] for n in names}
    table.add_row("[bold]mean separation power[/]", *(f"[bold]{np.mean(sep[n]):.3f}[/]" for n in names))
    for o in main:
        if o in results[names[0]]["metrics"]["observables"]:
            table.add_row(f"  {o}", *(f"{results[n]['metrics']['observables'][o]['separation_power']:.3f}"
                                       for n in names))
    for level in ("low_level", "high_level"):
        if level in results[names[0]]["metrics"].get("classifier", {}):
            table.add_row(f"classifier AUC ({level.replace('_', '-')})",
                          *(f"{results[n]['metrics']['classifier'][level]['auc']:.3f}" for n in names))
    table.add_row("FPD", *(f"{results[n]['metrics']['fpd']['value']:.3g}" for n in names))
    return table


def _comparison_table(results: dict[str, dict[str, Any]]) -> Table:
    """Side-by-side headline numbers: per-shower observables, worst layer of each per-layer family,
    classifier AUCs and FPD/KPD."""
    from mlfastsim.showers.validation.observables import PER_LAYER, layer_prefix

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

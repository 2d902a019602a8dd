"""``mlfastsim deploy ...``: compile deployment artefacts (the Kubeflow pipeline of the showers road).

The Slurm and Kubernetes templates are plain files in the repository's ``deploy/`` directory; only the
Kubeflow pipeline needs compiling, with the optional ``kfp`` SDK (``pip install 'mlfastsim[kubeflow]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Deployment: compile the Kubeflow pipeline of the showers road.", no_args_is_help=True)
console = Console()


@app.command()
def kubeflow(
    output: Annotated[Path, typer.Option("--output", "-o", help="Pipeline YAML to write.")] = Path("pipeline.yaml"),
    image: Annotated[str | None, typer.Option(help="Container image with mlfastsim installed.")] = None,
) -> None:
    """Compile simulate -> meta-train -> adapt -> validate -> export into a Kubeflow Pipelines YAML."""
    from mlfastsim.deploy.kubeflow import DEFAULT_IMAGE, PARAMETERS, STEPS, compile_pipeline

    path = compile_pipeline(output, image=image or DEFAULT_IMAGE)
    console.print(f"[green]wrote[/] {path}: {len(STEPS)} steps ({' -> '.join(s.name for s in STEPS)}), "
                  f"{len(PARAMETERS)} parameters; upload it in the Kubeflow UI "
                  "(or kfp.Client().create_run_from_pipeline_package)")

"""The showers road as a Kubeflow pipeline: simulate -> meta-train -> adapt -> validate -> export.

Why plain data first: the pipeline's parameters and steps (:data:`PARAMETERS`, :data:`STEPS`) are
ordinary dataclasses, so they are tested without the ``kfp`` SDK (it pins ``protobuf<7`` and is an
optional extra, ``pip install 'mlfastsim[kubeflow]'``); :func:`compile_pipeline` only translates them
into KFP components and compiles the YAML a Kubeflow installation runs.

Every step is one ``mlfastsim`` command in the project's container image.  Steps hand each other files
as KFP artifacts (a directory or a file), so every arrow of the road stays a file a user can download
from the Kubeflow UI, as on a laptop.  Argument templates use three placeholders: ``{param:NAME}`` (a
pipeline parameter), ``{in:STEP.OUTPUT}`` (an artifact another step produced) and ``{out:NAME}`` (an
artifact this step produces).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mlfastsim.core.errors import ConfigError

PIPELINE_NAME = "mlfastsim-showers-road"
DEFAULT_IMAGE = "ghcr.io/mlfastsim/mlfastsim:latest"
INSTALL_HINT = "pip install 'mlfastsim[kubeflow]'"

_PLACEHOLDER = re.compile(r"\{(param|in|out):([A-Za-z_][A-Za-z0-9_.]*)\}")


@dataclass(frozen=True)
class Parameter:
    """A pipeline parameter: what a user sets when starting a run in the Kubeflow UI."""

    name: str
    type: Literal["str", "int", "float"]
    default: Any
    help: str


@dataclass(frozen=True)
class Step:
    """One ``mlfastsim`` command of the road; ``script`` is a shell script so one step may chain commands."""

    name: str
    description: str
    script: str
    outputs: tuple[str, ...] = ()
    run_after: tuple[str, ...] = ()  # ordering without a file passed (export waits for a passed validation)

    def references(self) -> list[tuple[str, str]]:
        """Every ``(kind, name)`` placeholder of the script, in order."""
        return [(m.group(1), m.group(2)) for m in _PLACEHOLDER.finditer(self.script)]

    def parameters(self) -> list[str]:
        return list(dict.fromkeys(n for k, n in self.references() if k == "param"))

    def inputs(self) -> list[str]:
        """``STEP.OUTPUT`` artifacts this step reads (what makes it run after STEP)."""
        return list(dict.fromkeys(n for k, n in self.references() if k == "in"))

    def after(self) -> list[str]:
        """The steps this one waits for: those whose artifacts it reads, and ``run_after``."""
        return list(dict.fromkeys([*(ref.split(".", 1)[0] for ref in self.inputs()), *self.run_after]))


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("pretrain_detectors", "str", "SiW,SciPb,PbWO4", "pre-training geometries (detector presets)"),
    Parameter("new_detector", "str", "PbWO4", "the geometry to adapt to (detector preset)"),
    Parameter("mesh", "str", "par04", "mesh preset of every geometry"),
    Parameter("energies_gev", "str", "1,10,100", "incident energies of the simulated showers, GeV"),
    Parameter("n_per_point", "int", 200, "showers per energy point and geometry (pre-training)"),
    Parameter("n_adapt", "int", 100, "showers per energy point of the new geometry (few-shot adaptation)"),
    Parameter("workers", "int", 4, "Dask workers of the simulation step (one pod, a LocalCluster)"),
    Parameter("seed", "int", 1, "base seed: geometry i is simulated with seed + i"),
    Parameter("meta_config", "str", "configs/showers/meta.yaml", "meta-training config inside the image"),
    Parameter("meta_steps", "int", 2000, "meta-training steps"),
    Parameter("adaptation_steps", "int", 400, "adaptation steps"),
)

STEPS: tuple[Step, ...] = (
    Step(
        "simulate",
        "reference showers: the pre-training geometries and a few of the new one (Dask inside the pod)",
        'set -e; mkdir -p "{out:data}"; i=0; '
        'for det in $(echo "{param:pretrain_detectors}" | tr , " "); do '
        'mlfastsim showers simulate --detector "$det" --mesh "{param:mesh}" --energy-gev "{param:energies_gev}" '
        '--n-per-point "{param:n_per_point}" --seed $(({param:seed} + i)) --workers "{param:workers}" '
        '-o "{out:data}/pretrain_$det.h5"; i=$((i + 1)); done; '
        'mlfastsim showers simulate --detector "{param:new_detector}" --mesh "{param:mesh}" '
        '--energy-gev "{param:energies_gev}" --n-per-point "{param:n_adapt}" --seed $(({param:seed} + 100)) '
        '--workers "{param:workers}" -o "{out:data}/new.h5"',
        ("data",),
    ),
    Step(
        "meta_train",
        "MetaHEP meta-learning over the pre-training geometries (torchrun-ready: one process here)",
        'set -e; files=""; for f in "{in:simulate.data}"/pretrain_*.h5; do files="$files --data $f"; done; '
        'mlfastsim showers meta-train --config "{param:meta_config}" $files '
        '--set meta_steps={param:meta_steps} --set tracking.dir="{out:run}/tracking" -o "{out:run}"',
        ("run",),
    ),
    Step(
        "adapt",
        "few-shot adaptation of the meta-model to the new geometry (every checkpoint kept)",
        'mlfastsim showers adapt --checkpoint "{in:meta_train.run}/latest" --data "{in:simulate.data}/new.h5" '
        '--study-name road --run-name adapted --adaptation-steps "{param:adaptation_steps}" --plot-freq 0 '
        '--set output_dir="{out:runs}" --set tracking.dir="{out:runs}/tracking"',
        ("runs",),
    ),
    Step(
        "validate",
        "generate showers of the new geometry with the adapted model and compare them with the reference",
        'set -e; mkdir -p "{out:report}"; '
        'mlfastsim showers generate --checkpoint "{in:adapt.runs}/road/adapted/best" '
        '--energy-gev "{param:energies_gev}" --n-per-point "{param:n_adapt}" --geometry-index 0 '
        '--seed "{param:seed}" -o "{out:report}/generated.h5"; '
        'mlfastsim showers validate --reference "{in:simulate.data}/new.h5" --candidate "{out:report}/generated.h5" '
        '--no-classifier --set tracking.dir="{out:report}/tracking" -o "{out:report}"',
        ("report",),
    ),
    Step(
        "export",
        "the adapted decoder as ONNX (Par04 C++ inference layout) with its JSON sidecar",
        'set -e; mkdir -p "{out:model}"; '
        'mlfastsim showers export --output-dir "{in:adapt.runs}" --study-name road --run-name adapted '
        '--adaptation-step best --onnx-file-name "{out:model}/model.onnx"',
        ("model",),
        run_after=("validate",),
    ),
)


def check_pipeline(parameters: tuple[Parameter, ...] = PARAMETERS, steps: tuple[Step, ...] = STEPS) -> None:
    """Every placeholder resolves: known parameters, outputs of *earlier* steps, declared own outputs."""
    names = {p.name for p in parameters}
    produced: dict[str, tuple[str, ...]] = {}
    for step in steps:
        for kind, ref in step.references():
            if kind == "param" and ref not in names:
                raise ConfigError(f"step {step.name!r} uses unknown parameter {ref!r}", field=f"steps.{step.name}",
                                  fix=f"use one of {', '.join(sorted(names))}")
            if kind == "out" and ref not in step.outputs:
                raise ConfigError(f"step {step.name!r} writes undeclared output {ref!r}", field=f"steps.{step.name}",
                                  fix="add it to the step's outputs")
            if kind == "in":
                src, _, out = ref.partition(".")
                if out not in produced.get(src, ()):
                    raise ConfigError(f"step {step.name!r} reads {ref!r}, which no earlier step produces",
                                      field=f"steps.{step.name}", fix="order the steps or fix the reference")
        for name in step.run_after:
            if name not in produced:
                raise ConfigError(f"step {step.name!r} runs after {name!r}, which is not an earlier step",
                                  field=f"steps.{step.name}", fix="order the steps or fix run_after")
        produced[step.name] = step.outputs


def component_spec(step: Step, parameters: tuple[Parameter, ...] = PARAMETERS,
                   image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """The step as a KFP component specification (the v1 component YAML schema KFP v2 still loads).

    Parameters become ``inputValue`` inputs, other steps' artifacts ``inputPath`` inputs (named
    ``STEP__OUTPUT``), own artifacts ``outputPath`` outputs; the script runs under ``sh -c`` with them as
    positional arguments, so KFP substitutes real paths and values at run time.
    """
    types = {"str": "String", "int": "Integer", "float": "Float"}
    ptype = {p.name: types[p.type] for p in parameters}
    order: list[tuple[str, str]] = list(dict.fromkeys(step.references()))
    args: list[Any] = []
    script = step.script
    for pos, (kind, ref) in enumerate(order, start=1):
        script = script.replace(f"{{{kind}:{ref}}}", f"${{{pos}}}")
        if kind == "param":
            args.append({"inputValue": ref})
        elif kind == "in":
            args.append({"inputPath": ref.replace(".", "__")})
        else:
            args.append({"outputPath": ref})
    inputs = [{"name": n, "type": ptype[n]} for n in step.parameters()]
    inputs += [{"name": ref.replace(".", "__"), "type": "Directory"} for ref in step.inputs()]
    outputs = [{"name": n, "type": "Directory"} for n in step.outputs]
    return {
        "name": step.name,
        "description": step.description,
        "inputs": inputs,
        "outputs": outputs,
        "implementation": {"container": {"image": image, "command": ["sh", "-c", script, step.name], "args": args}},
    }


def compile_pipeline(output: str | Path, *, image: str = DEFAULT_IMAGE) -> Path:
    """Compile the road into a Kubeflow Pipelines YAML at ``output`` (atomically); needs the ``kfp`` SDK."""
    check_pipeline()
    try:
        import yaml
        from kfp import compiler, components, dsl
    except ImportError as exc:
        raise ConfigError(f"the Kubeflow Pipelines SDK is not installed ({exc.name or 'kfp'})",
                          field="kfp", fix=INSTALL_HINT) from exc
    import inspect

    from mlfastsim.core.io import atomic_path

    ops = {s.name: components.load_component_from_text(yaml.safe_dump(component_spec(s, image=image)))
           for s in STEPS}
    pytypes = {"str": str, "int": int, "float": float}

    def road(*args: Any, **kwargs: Any) -> None:
        # KFP passes the parameters positionally, in signature (PARAMETERS) order
        params = {**dict(zip([p.name for p in PARAMETERS], args, strict=False)), **kwargs}
        tasks: dict[str, Any] = {}
        for step in STEPS:
            kwargs = {n: params[n] for n in step.parameters()}
            for ref in step.inputs():
                src, _, out = ref.partition(".")
                kwargs[ref.replace(".", "__")] = tasks[src].outputs[out]
            task = ops[step.name](**kwargs)
            task.set_display_name(step.name.replace("_", "-"))
            for name in step.run_after:
                task.after(tasks[name])
            tasks[step.name] = task

    # KFP reads the pipeline's parameters from the function signature: build it from PARAMETERS
    road.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default,
                          annotation=pytypes[p.type])
        for p in PARAMETERS
    ])
    road.__annotations__ = {p.name: pytypes[p.type] for p in PARAMETERS}
    road.__name__ = PIPELINE_NAME.replace("-", "_")
    pipeline = dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])(road)
    out = Path(output)
    with atomic_path(out) as tmp:
        compiler.Compiler().compile(pipeline, package_path=str(tmp.with_suffix(".yaml")))
        tmp.with_suffix(".yaml").replace(tmp)
    return out

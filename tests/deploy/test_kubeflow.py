"""The Kubeflow pipeline of the showers road: its structure always, the real compile where ``kfp`` is installed.

``kfp`` is an optional extra (it pins protobuf<7), so the structure is plain data tested here without it,
and the CLI without it fails with one line naming the extra.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlfastsim.core.errors import ConfigError
from mlfastsim.deploy import kubeflow as kf

ROAD = ["simulate", "meta_train", "adapt", "validate", "export"]


def test_steps_follow_the_showers_road() -> None:
    assert [s.name for s in kf.STEPS] == ROAD
    deps = {s.name: s.after() for s in kf.STEPS}
    assert deps == {"simulate": [], "meta_train": ["simulate"], "adapt": ["meta_train", "simulate"],
                    "validate": ["adapt", "simulate"], "export": ["adapt", "validate"]}
    commands = {s.name: s.script for s in kf.STEPS}
    for step, command in (("simulate", "showers simulate"), ("meta_train", "showers meta-train"),
                          ("adapt", "showers adapt"), ("validate", "showers validate"),
                          ("export", "showers export")):
        assert f"mlfastsim {command}" in commands[step]
    assert "--workers" in commands["simulate"]  # the data step uses Dask inside its pod
    kf.check_pipeline()


def test_parameters_are_typed_and_used() -> None:
    names = [p.name for p in kf.PARAMETERS]
    assert len(names) == len(set(names))
    for p in kf.PARAMETERS:
        assert isinstance(p.default, {"str": str, "int": int, "float": float}[p.type]), p.name
        assert p.help
    used = {n for s in kf.STEPS for n in s.parameters()}
    assert used == set(names)  # no dead parameter, no undeclared one
    assert {"n_per_point", "meta_steps", "adaptation_steps", "seed", "workers"} <= used


def test_component_specs_map_every_placeholder() -> None:
    spec = kf.component_spec(kf.STEPS[2], image="registry.example/mlfastsim:1")  # adapt
    container = spec["implementation"]["container"]
    assert container["image"] == "registry.example/mlfastsim:1"
    script = container["command"][2]
    assert "{" not in script.replace("${", "")  # every placeholder became a positional argument
    assert {"inputPath": "meta_train__run"} in container["args"]
    assert {"inputPath": "simulate__data"} in container["args"]
    assert {"outputPath": "runs"} in container["args"]
    assert {"inputValue": "adaptation_steps"} in container["args"]
    assert [o["name"] for o in spec["outputs"]] == ["runs"]
    assert {i["name"]: i["type"] for i in spec["inputs"]} == {
        "adaptation_steps": "Integer", "meta_train__run": "Directory", "simulate__data": "Directory"}


def test_broken_references_are_refused() -> None:
    bad = (*kf.STEPS[:1], kf.Step("x", "reads a missing artifact", 'echo "{in:nowhere.data}"'))
    with pytest.raises(ConfigError, match="no earlier step produces"):
        kf.check_pipeline(steps=bad)
    with pytest.raises(ConfigError, match="unknown parameter"):
        kf.check_pipeline(steps=(kf.Step("y", "bad param", 'echo "{param:nope}"'),))


def test_without_kfp_the_cli_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    import builtins

    from mlfastsim.cli.main import main

    real_import = builtins.__import__

    def no_kfp(name: str, *args, **kwargs):
        if name == "kfp" or name.startswith("kfp."):
            raise ImportError("No module named 'kfp'", name="kfp")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_kfp)
    with pytest.raises(SystemExit) as info:
        main(["deploy", "kubeflow", "-o", str(tmp_path / "p.yaml")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'mlfastsim[kubeflow]'" in err
    assert not (tmp_path / "p.yaml").exists()


def test_compile_with_kfp(tmp_path: Path) -> None:
    pytest.importorskip("kfp")
    from mlfastsim.cli.main import main

    out = tmp_path / "pipeline.yaml"
    with pytest.raises(SystemExit) as info:
        main(["deploy", "kubeflow", "-o", str(out), "--image", "registry.example/mlfastsim:1"])
    assert info.value.code in (0, None)
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = docs[0]
    assert spec["pipelineInfo"]["name"] == kf.PIPELINE_NAME
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {p.name for p in kf.PARAMETERS}
    kinds = {"str": "STRING", "int": "NUMBER_INTEGER", "float": "NUMBER_DOUBLE"}
    for p in kf.PARAMETERS:
        assert params[p.name]["parameterType"] == kinds[p.type]
        assert params[p.name]["defaultValue"] == p.default
    tasks = spec["root"]["dag"]["tasks"]
    by_step = {name.replace("-", "_"): t for name, t in tasks.items()}
    assert set(by_step) == set(ROAD)
    for step in kf.STEPS:
        assert sorted(by_step[step.name].get("dependentTasks", [])) == sorted(
            d.replace("_", "-") for d in step.after()), step.name
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/mlfastsim:1"}

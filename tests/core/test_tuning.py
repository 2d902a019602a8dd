"""Optuna studies over a config: search spaces, pruning, shared storage, clear errors.

The objectives are analytic (no training), so a study of dozens of trials takes a few seconds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from pydantic import Field

from mlfastsim.core.config import StrictModel, parse_override
from mlfastsim.core.errors import ConfigError
from mlfastsim.core.tuning import SearchSpace, TuneConfig, load_tune_config, run_study, yaml_value

MEMORY = "sqlite:///:memory:"  # a real RDB storage without a file to fsync: fast analytic studies
SPACE = {
    "trainer.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "model.latent_dim": {"type": "int", "low": 4, "high": 16, "step": 2},
    "model.encoder_sizes": {"type": "categorical", "choices": [[100, 50, 20, 14], [200, 100, 50, 14]]},
}
BASE = {
    "trainer": {"learning_rate": 0.001, "max_steps": 1000},
    "model": {"latent_dim": 10, "encoder_sizes": [100, 50, 20, 14], "kl_weight": 1.0},
    "output_dir": "runs/x",
}


class _Trainer(StrictModel):
    learning_rate: float = 1e-3
    max_steps: int = 100


class _Model(StrictModel):
    latent_dim: int = 10
    encoder_sizes: list[int] = Field(default_factory=lambda: [100, 50, 20, 14])
    kl_weight: float = 1.0


class _Workflow(StrictModel):
    """Stands in for a workflow's config class (core must not import one)."""

    trainer: _Trainer = _Trainer()
    model: _Model = _Model()
    output_dir: Path = Path("runs")


@pytest.fixture
def base_config(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False))
    return path


def _values(overrides: list[str]) -> dict[str, Any]:
    """What the workflow's load_config would see: the overrides parsed exactly as --set parses them."""
    return {".".join(parts): value for parts, value in map(parse_override, overrides)}


def bowl(overrides: list[str], report: Any) -> float:
    """Minimum at lr = 10^-2.5, latent 10, the wider encoder."""
    v = _values(overrides)
    assert v["trainer.max_steps"] == 50  # the fixed overrides reach every trial
    value = ((math.log10(v["trainer.learning_rate"]) + 2.5) ** 2 + (v["model.latent_dim"] - 10) ** 2 / 16
             + (0.0 if v["model.encoder_sizes"] == [200, 100, 50, 14] else 0.5))
    report(1, value + 1.0)
    return value


def test_study_finds_the_optimum_region_and_writes_its_files(tmp_path: Path, base_config: Path) -> None:
    cfg = TuneConfig(base_config=base_config, search_space=SPACE, overrides=["trainer.max_steps=50"],
                     n_trials=20, sampler_startup_trials=8, pruner="none", seed=3, storage=MEMORY,
                     output_dir=tmp_path / "out")
    summary = run_study(cfg, bowl, progress=False, config_model=_Workflow)
    best = summary["best_params"]
    assert summary["n_trials"] == 20 and summary["states"]["complete"] == 20
    assert summary["best_value"] < 0.3  # the bowl is 0 at its centre; over seeds 0-7 TPE ends at 0.003-0.25
    assert abs(math.log10(best["trainer.learning_rate"]) + 2.5) < 0.3
    assert best["model.latent_dim"] in (8, 10, 12)
    assert "model.encoder_sizes=[200, 100, 50, 14]" in summary["best_overrides"]

    out = tmp_path / "out"
    assert json.loads((out / "study.json").read_text()) == summary
    assert (out / "optimization_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resolved = yaml.safe_load((out / "best_config.yaml").read_text())
    assert resolved["model"]["encoder_sizes"] == [200, 100, 50, 14]
    assert resolved["model"]["latent_dim"] == best["model.latent_dim"]
    assert resolved["trainer"]["learning_rate"] == best["trainer.learning_rate"]
    # the fixed overrides made trials cheap; the best config is for the full run
    assert resolved["trainer"]["max_steps"] == 1000


def test_best_config_without_a_model_merges_the_yaml(tmp_path: Path, base_config: Path) -> None:
    cfg = TuneConfig(base_config=base_config, search_space=SPACE, overrides=["trainer.max_steps=50"],
                     n_trials=3, pruner="none", output_dir=tmp_path)
    summary = run_study(cfg, bowl, progress=False)
    assert (tmp_path / "optuna.db").is_file()  # the default storage lives with the outputs
    merged = yaml.safe_load((tmp_path / "best_config.yaml").read_text())
    assert merged["output_dir"] == "runs/x" and merged["model"]["kl_weight"] == 1.0
    assert merged["model"]["latent_dim"] == summary["best_params"]["model.latent_dim"]


def test_median_pruner_stops_bad_curves(tmp_path: Path, base_config: Path) -> None:
    def curve(overrides: list[str], report: Any) -> float:
        x = _values(overrides)["model.kl_weight"]  # the higher, the worse the whole curve
        for step in range(1, 6):
            report(step, x + 1.0 / step)
        return x + 0.1

    space = {"model.kl_weight": {"type": "float", "low": 0.0, "high": 1.0}}
    cfg = TuneConfig(base_config=base_config, search_space=space, n_trials=12, pruner="median",
                     pruner_startup_trials=3, seed=1, storage=MEMORY, output_dir=tmp_path)
    summary = run_study(cfg, curve, progress=False)
    assert summary["states"]["pruned"] >= 3 and summary["states"]["complete"] >= 3
    pruned = [t for t in summary["trials"] if t["state"] == "pruned"]
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    assert any(t["last_step"] < 5 for t in pruned)
    assert all(t["value"] == t["last_intermediate"] for t in pruned)  # Optuna keeps the last report
    assert summary["best_value"] == min(t["value"] for t in complete)
    # what was pruned was worse than what was kept
    mean = lambda ts: sum(t["params"]["model.kl_weight"] for t in ts) / len(ts)  # noqa: E731
    assert mean(pruned) > mean(complete)


def test_two_processes_share_one_study(tmp_path: Path, base_config: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from mlfastsim.core.tuning import TuneConfig, run_study

        def objective(overrides, report):
            time.sleep(0.05)  # let the two workers interleave
            return float(overrides[0].split("=")[1])

        cfg = TuneConfig(base_config={str(base_config)!r}, n_trials=4, storage={storage!r}, study_name="shared",
                         search_space={{"model.kl_weight": {{"type": "float", "low": 0, "high": 1}}}},
                         seed=int(sys.argv[1]), output_dir=sys.argv[2])
        run_study(cfg, objective, progress=False)
    """))
    procs = [subprocess.Popen([sys.executable, str(script), str(seed), str(tmp_path / f"w{seed}")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for seed in (1, 2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-3000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 8 and sorted(t.number for t in trials) == list(range(8))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.params["model.kl_weight"] for t in trials}) == 8


@pytest.mark.parametrize("storage", [
    "postgresql://u:secret@127.0.0.1:1/db",  # no driver here, or nothing listening: either way unreachable
    "sqlite:////nonexistent-dir/for/sure/optuna.db",
    "not a url",
])
def test_unreachable_storage_is_a_config_error(tmp_path: Path, base_config: Path, storage: str) -> None:
    cfg = TuneConfig(base_config=base_config, search_space=SPACE, storage=storage, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="cannot open Optuna storage") as info:
        run_study(cfg, bowl, progress=False)
    assert info.value.field == "--storage" and info.value.fix
    assert "secret" not in str(info.value)


def test_joining_a_study_with_the_other_direction_is_refused(tmp_path: Path, base_config: Path) -> None:
    cfg = TuneConfig(base_config=base_config, search_space=SPACE, overrides=["trainer.max_steps=50"], n_trials=1,
                     output_dir=tmp_path)
    run_study(cfg, bowl, progress=False)
    with pytest.raises(ConfigError, match="already exists with direction minimize"):
        run_study(cfg.model_copy(update={"direction": "maximize"}), bowl, progress=False)


@pytest.mark.parametrize(("key", "spec", "message"), [
    ("trainer.lr", {"type": "gaussian", "low": 0, "high": 1}, "type must be one of"),
    ("trainer.lr", {"low": 0, "high": 1}, "type must be one of"),
    ("trainer.lr", {"type": "float", "low": 1, "high": 0.1}, "must not exceed high"),
    ("trainer.lr", {"type": "float", "low": 0, "high": 1, "log": True}, "needs low > 0"),
    ("trainer.lr", {"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}, "not both"),
    ("trainer.lr", {"type": "float", "high": 1}, "low: Field required"),
    ("trainer.lr", {"type": "float", "low": 0, "high": 1, "scale": "log"}, "scale: unknown entry"),
    ("model.latent_dim", {"type": "int", "low": 4.5, "high": 16}, "low: Input should be a valid integer"),
    ("model.latent_dim", {"type": "int", "low": 4, "high": 16, "step": 0}, "step: Input should be greater"),
    ("model.encoder_sizes", {"type": "categorical", "choices": []}, "choices: List should have at least 1"),
    ("model.encoder_sizes", {"type": "categorical", "choices": [[1, 2], [1, 2]]}, "distinct"),
    ("model.encoder_sizes", [1, 2], "expected a mapping"),
    ("model..x", {"type": "int", "low": 1, "high": 2}, "not a dotted config key"),
    ("a=b", {"type": "int", "low": 1, "high": 2}, "not a dotted config key"),
])
def test_bad_search_space_entries_name_the_key(key: str, spec: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        SearchSpace.from_mapping({key: spec})
    assert info.value.field == f"search_space.{key}"
    assert info.value.fix


def test_tune_yaml_errors_name_the_file(tmp_path: Path, base_config: Path) -> None:
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({"base_config": str(base_config),
                                    "search_space": {"trainer.learning_rate": {"type": "float", "low": 1}}}))
    with pytest.raises(ConfigError, match="high: Field required") as info:
        load_tune_config(path)
    assert info.value.file == str(path) and info.value.field == "search_space.trainer.learning_rate"
    path.write_text(yaml.safe_dump({"base_config": str(base_config), "search_space": SPACE,
                                    "overrides": ["model.latent_dim=8"]}))
    with pytest.raises(ConfigError, match="both tuned and fixed"):
        load_tune_config(path)
    path.write_text(yaml.safe_dump({"base_config": str(base_config), "search_space": {}}))
    with pytest.raises(ConfigError, match="search space is empty"):
        load_tune_config(path)
    path.write_text(yaml.safe_dump({"base_config": str(base_config), "search_space": SPACE, "n_trails": 3}))
    with pytest.raises(ConfigError, match="unknown key") as info:
        load_tune_config(path)
    assert info.value.field == "n_trails"


def test_typo_in_a_tuned_key_fails_before_any_trial(tmp_path: Path, base_config: Path) -> None:
    space = {"model.latnt_dim": {"type": "int", "low": 4, "high": 16}}
    cfg = TuneConfig(base_config=base_config, search_space=space, output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key 'model\.latnt_dim'"):
        run_study(cfg, lambda o, r: pytest.fail("no trial may run"), progress=False, config_model=_Workflow)
    missing = TuneConfig(base_config=tmp_path / "nope.yaml", search_space=space, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="base config does not exist") as info:
        run_study(missing, lambda o, r: 0.0, progress=False)
    assert info.value.field == "base_config"


def test_overrides_round_trip_through_set_parsing() -> None:
    for value in (1e-5, 0.001, 3, True, "adam", [100, 50, 20, 14], [0.5, 1e-3], {"a": 1}):
        (_, parsed) = parse_override(f"k={yaml_value(value)}")
        assert parsed == value, (value, yaml_value(value))


def test_an_error_in_the_objective_stops_the_study(tmp_path: Path, base_config: Path) -> None:
    def broken(overrides: list[str], report: Any) -> float:
        raise ConfigError("base config is wrong", field="model")

    cfg = TuneConfig(base_config=base_config, search_space=SPACE, n_trials=5, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="base config is wrong"):
        run_study(cfg, broken, progress=False)
    study = optuna.load_study(study_name="mlfastsim", storage=cfg.storage_url())
    assert len(study.get_trials()) == 1


def test_no_completed_trial_writes_no_best_config(tmp_path: Path, base_config: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cfg = TuneConfig(base_config=base_config, search_space=SPACE, n_trials=2, output_dir=tmp_path)
    summary = run_study(cfg, lambda overrides, report: math.nan, progress=False)
    assert summary["states"]["fail"] == 2 and summary["best_value"] is None
    assert "no trial of study 'mlfastsim' completed" in caplog.text
    assert not (tmp_path / "best_config.yaml").exists()
    assert (tmp_path / "optimization_history.png").is_file()


def test_shipped_tune_yaml_fits_the_train_config() -> None:
    from mlfastsim.core.config import load_config
    from mlfastsim.showers.config import TrainConfig

    root = Path(__file__).resolve().parents[2]
    cfg = load_tune_config(root / "configs" / "showers" / "tune.yaml")
    assert cfg.base_config == Path("configs/showers/pretrain.yaml")
    space = cfg.space()
    assert set(space.keys) == {"trainer.learning_rate", "trainer.batch_size", "model.latent_dim", "model.kl_weight"}
    resolved = load_config(TrainConfig, None, overrides=[*cfg.overrides, *space.representative_overrides()])
    assert resolved.trainer.max_steps == 200 and resolved.model.latent_dim == 4

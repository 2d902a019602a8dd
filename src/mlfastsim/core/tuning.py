"""Hyper-parameter search with Optuna over any workflow config.

core knows nothing of physics: a trial is a list of ``--set``-style overrides (``trainer.learning_rate=3e-4``)
applied to a workflow's own config file, and the workflow supplies the objective that trains with them.
So a search space is plain YAML next to the config it tunes::

    base_config: configs/showers/pretrain.yaml
    overrides: [trainer.max_steps=200]          # every trial: keep trials cheap
    search_space:
      trainer.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.latent_dim: {type: int, low: 4, high: 16, step: 2}
      model.encoder_sizes: {type: categorical, choices: [[100, 50, 20, 14], [200, 100, 50, 14]]}

Trials live in an RDB storage (sqlite next to the outputs by default; any SQLAlchemy URL such as
``postgresql://...`` for many machines) or an Optuna journal file (``journal:///path/study.log``, for
workers on a shared disk), created with ``load_if_exists`` so that several processes given the same
storage and study name share one study: each runs ``n_trials`` of it.  The objective reports
its validation metric at every evaluation; a pruner compares the curve with the other trials' and stops
a hopeless trial early.  At the end ``output_dir`` holds ``study.json`` (every trial), ``best_config.yaml``
(the base config with the best trial's values) and ``optimization_history.png``.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator, model_validator

from mlfastsim.core.config import StrictModel, deep_merge, dump_config, load_config, parse_override, read_yaml
from mlfastsim.core.errors import ConfigError
from mlfastsim.core.io import atomic_path, atomic_write_json, atomic_write_text, ensure_writable_dir
from mlfastsim.core.progress import progress_bar

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

Report = Callable[[int, float], None]
"""``report(step, value)``: the objective's validation metric at a training step."""

Objective = Callable[[list[str], Report], float]
"""``objective(overrides, report) -> value``: train with the overrides, report at every evaluation."""

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_PRIMITIVE = (str, int, float, bool, type(None))


# ---------------------------------------------------------------------------------------- search space
class FloatParam(StrictModel):
    """A float in [low, high], optionally on a log scale or on a grid of ``step``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("give either log: true or a step, not both")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)


class IntParam(StrictModel):
    """An integer in [low, high] (both included), on a grid of ``step`` or on a log scale."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if not self.low <= self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"a log-scale range needs low >= 1 (got {self.low})")
        if self.log and self.step != 1:
            raise ValueError("give either log: true or a step, not both")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)


class CategoricalParam(StrictModel):
    """One of ``choices``; a choice may be a list or mapping (e.g. layer sizes), not only a scalar.

    Optuna stores only scalars, so a non-scalar choice is stored as its YAML text and mapped back.
    """

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Any]) -> list[Any]:
        labels = [_label(c) for c in choices]
        if len(set(labels)) != len(labels):
            raise ValueError("choices must be distinct")
        return choices

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        label = trial.suggest_categorical(name, [_label(c) for c in self.choices])
        return self.value_of(label)

    def value_of(self, label: Any) -> Any:
        """The choice behind an Optuna parameter value (itself for scalars, the YAML text otherwise)."""
        for choice in self.choices:
            if _label(choice) == label:
                return choice
        raise KeyError(label)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
_PARAM_ADAPTER: TypeAdapter[Any] = TypeAdapter(Param)
_TYPES = ("float", "int", "categorical")


def _label(choice: Any) -> Any:
    return choice if isinstance(choice, _PRIMITIVE) else yaml_value(choice)


def yaml_value(value: Any) -> str:
    """``value`` as one line of YAML, as ``--set key=<this>`` expects it (lists and floats survive)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1).strip()
    return text.removesuffix("...").strip()


class SearchSpace:
    """Validated search space: dotted config keys -> parameter distributions."""

    def __init__(self, params: Mapping[str, FloatParam | IntParam | CategoricalParam]) -> None:
        self.params = dict(params)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, file: str | Path | None = None) -> SearchSpace:
        """Validate a ``search_space:`` mapping; every error names the offending key."""
        if not isinstance(mapping, Mapping) or not mapping:
            raise ConfigError("search space is empty", file=file, field="search_space",
                              fix="give at least one key: {type: float|int|categorical, ...}")
        params: dict[str, FloatParam | IntParam | CategoricalParam] = {}
        for key, spec in mapping.items():
            field = f"search_space.{key}"
            if not isinstance(key, str) or not _KEY.match(key):
                raise ConfigError(f"{key!r} is not a dotted config key", file=file, field=field,
                                  fix="write the key as in --set, e.g. trainer.learning_rate")
            if not isinstance(spec, Mapping):
                raise ConfigError(f"expected a mapping, got {spec!r}", file=file, field=field,
                                  fix="write {type: float, low: ..., high: ...}")
            if spec.get("type") not in _TYPES:
                raise ConfigError(f"type must be one of {', '.join(_TYPES)} (got {spec.get('type')!r})",
                                  file=file, field=field, fix="set type: float, int or categorical")
            try:
                params[key] = _PARAM_ADAPTER.validate_python(dict(spec))
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(x) for x in err["loc"][1:])  # drop the union tag
                msg = "unknown entry" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
                raise ConfigError(f"{loc + ': ' if loc else ''}{msg}", file=file, field=field,
                                  fix=f"see the {spec['type']} parameter format in core/tuning.py") from exc
        return cls(params)

    @property
    def keys(self) -> list[str]:
        return list(self.params)

    def suggest(self, trial: optuna.Trial) -> list[str]:
        """Ask the trial for a value of every parameter; return them as ``key=value`` overrides."""
        return [f"{key}={yaml_value(p.suggest(trial, key))}" for key, p in self.params.items()]

    def overrides_for(self, trial_params: Mapping[str, Any]) -> list[str]:
        """The overrides of a finished trial, from Optuna's stored parameter values."""
        out = []
        for key, p in self.params.items():
            value = trial_params[key]
            if isinstance(p, CategoricalParam):
                value = p.value_of(value)
            out.append(f"{key}={yaml_value(value)}")
        return out

    def representative_overrides(self) -> list[str]:
        """One valid point of the space (each lower bound / first choice), to check keys before any trial."""
        out = []
        for key, p in self.params.items():
            value = p.choices[0] if isinstance(p, CategoricalParam) else p.low
            out.append(f"{key}={yaml_value(value)}")
        return out


# ---------------------------------------------------------------------------------------------- config
class TuneConfig(StrictModel):
    """A tuning run: which config to tune, over what, for how long, and where the study lives."""

    base_config: Path
    search_space: dict[str, Any]
    overrides: list[str] = Field(default_factory=list)  # applied to every trial, e.g. trainer.max_steps=200
    n_trials: int = Field(20, ge=1)  # trials run by *this* process (several processes may share a study)
    timeout_s: float | None = Field(None, gt=0)
    storage: str | None = None  # SQLAlchemy URL or journal:///file.log; None = sqlite:///<output_dir>/optuna.db
    study_name: str = Field("mlfastsim", min_length=1)
    direction: Literal["minimize", "maximize"] = "minimize"
    metric: str = "loss"  # the validation metric the objective reports and returns
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_startup_trials: int = Field(5, ge=0)  # median: never prune before this many trials have finished
    pruner_warmup_steps: int = Field(0, ge=0)  # median: never prune a trial before this step
    sampler_startup_trials: int = Field(10, ge=1)  # TPE: random trials before it models the space
    seed: int | None = 0  # give each process that shares a study its own seed
    output_dir: Path = Path("runs/tune")

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        space = SearchSpace.from_mapping(self.search_space)
        tuned = set(space.keys)
        for item in self.overrides:
            parts, _ = parse_override(item)
            if ".".join(parts) in tuned:
                raise ConfigError(f"{'.'.join(parts)!r} is both tuned and fixed", field="overrides",
                                  fix="remove it from overrides or from search_space")
        return self

    def space(self) -> SearchSpace:
        return SearchSpace.from_mapping(self.search_space)

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.output_dir / 'optuna.db').resolve()}"


def load_tune_config(path: str | Path | None, *, overrides: Sequence[str] = ()) -> TuneConfig:
    """Load a tune YAML; errors raised while checking the search space also name the file."""
    try:
        return load_config(TuneConfig, path, overrides=overrides)
    except ConfigError as exc:
        if exc.file is None and path is not None:
            exc.file = str(path)
        raise


# ----------------------------------------------------------------------------------------------- study
def _safe_url(url: str) -> str:
    """The storage URL without its password, for messages and study.json."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password we could find anyway
        return url


def _open_study(cfg: TuneConfig, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner
                ) -> optuna.Study:
    """Create or join the study; every storage failure becomes one ConfigError naming ``--storage``."""
    import optuna
    import sqlalchemy.exc

    url = cfg.storage_url()
    if url.startswith(JOURNAL_PREFIX):
        return _open_journal_study(cfg, url, sampler, pruner)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes share one sqlite file: wait for the lock instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 60}
    fix = ("give a reachable SQLAlchemy URL: sqlite:///path/in/an/existing/dir.db, or postgresql://user:pass@host/db "
           "with its driver (psycopg2) installed")
    last_exc: Exception | None = None
    for attempt in range(6):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
            return optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=cfg.study_name,
                                       direction=cfg.direction, load_if_exists=True)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
            # Workers started together all create the schema at once: all but one collide (a duplicate
            # version row, a table that now exists, a locked file) and succeed on the next try.
            # A bad URL fails the same way every time, and fast.
            last_exc = exc
            text = str(exc).lower()
            transient = isinstance(exc, sqlalchemy.exc.IntegrityError) or "locked" in text or "already exists" in text
            if not transient:
                break
            time.sleep(0.1 * 2**attempt)
        except (ImportError, sqlalchemy.exc.SQLAlchemyError, ValueError, OSError) as exc:
            last_exc = exc
            break
    detail = str(last_exc).splitlines()[0][:160] if last_exc else "unknown error"
    raise ConfigError(f"cannot open Optuna storage {_safe_url(url)} ({detail})", field="--storage", fix=fix) \
        from last_exc


JOURNAL_PREFIX = "journal:///"


def _open_journal_study(cfg: TuneConfig, url: str, sampler: optuna.samplers.BaseSampler,
                        pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """A study in an Optuna journal file (``journal:///path/study.log``).

    Why: a journal is one append-only file with file locks, no database server and none of sqlite's
    lock timeouts under many writers, so it is the simplest storage for workers sharing a network disk
    (a Slurm array job); PostgreSQL is the choice across machines without a shared disk.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = Path(url[len(JOURNAL_PREFIX) - 1 :])  # keep the leading "/" of an absolute path
    if not path.parent.is_dir():
        raise ConfigError(f"cannot open Optuna journal {path} (no directory {path.parent})", field="--storage",
                          fix="give journal:///path/in/an/existing/dir/study.log")
    try:
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=cfg.study_name,
                                   direction=cfg.direction, load_if_exists=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot open Optuna journal {path} ({str(exc).splitlines()[0][:160]})",
                          field="--storage", fix="give journal:///path/to/a/writable/study.log") from exc


def _make_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials,
                                           n_warmup_steps=cfg.pruner_warmup_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def _check_base_config(cfg: TuneConfig, space: SearchSpace, config_model: type[BaseModel] | None) -> None:
    """Fail before the first trial if the base config, a fixed override or a tuned key is wrong."""
    if not cfg.base_config.is_file():
        raise ConfigError("base config does not exist", file=cfg.base_config, field="base_config",
                          fix="point base_config at the workflow config to tune")
    if config_model is None:
        read_yaml(cfg.base_config)
        return
    load_config(config_model, cfg.base_config, overrides=[*cfg.overrides, *space.representative_overrides()])


def best_config_text(cfg: TuneConfig, best_overrides: Sequence[str],
                     config_model: type[BaseModel] | None = None) -> str:
    """The base config with the best trial's values: resolved by ``config_model`` if given, else merged YAML.

    The fixed ``overrides`` are left out on purpose: they make trials cheap (fewer steps, less data),
    while the best config is meant for the full run.
    """
    if config_model is not None:
        return dump_config(load_config(config_model, cfg.base_config, overrides=list(best_overrides)))
    data = read_yaml(cfg.base_config)
    for item in best_overrides:
        parts, value = parse_override(item)
        nested: dict[str, Any] = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            nested = {part: nested}
        data = deep_merge(data, nested)
    return yaml.safe_dump(data, sort_keys=False)


def summarize(study: optuna.Study, cfg: TuneConfig, space: SearchSpace) -> dict[str, Any]:
    """Everything study.json holds: the best completed trial, counts per state and every trial.

    It covers the whole study, so with several processes sharing it, the one that finishes last writes
    the complete picture.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): 0 for s in TrialState}
    rows = []
    for t in trials:
        states[t.state.name.lower()] += 1
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        last_step = t.last_step
        rows.append({
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": t.params,
            "last_step": last_step,
            "last_intermediate": t.intermediate_values.get(last_step) if last_step is not None else None,
            "duration_s": duration,
        })
    bt = study.best_trial if any(t.state == TrialState.COMPLETE for t in trials) else None
    return {
        "study_name": study.study_name,
        "storage": _safe_url(cfg.storage_url()),
        "direction": cfg.direction,
        "metric": cfg.metric,
        "base_config": str(cfg.base_config),
        "fixed_overrides": list(cfg.overrides),
        "n_trials": len(trials),
        "states": states,
        # the best *completed* trial; all None while no trial has completed
        "best_value": bt.value if bt else None,
        "best_params": bt.params if bt else None,
        "best_trial": bt.number if bt else None,
        "best_overrides": space.overrides_for(bt.params) if bt else None,
        "trials": rows,
    }


def plot_history(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Optimisation history: each finished trial's value and the best so far (PNG, atomic)."""
    # a bare Figure on the Agg canvas: no pyplot state, no GUI backend, safe in any process
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = summary["trials"]
    done = [(r["number"], r["value"]) for r in rows if r["state"] == "complete" and r["value"] is not None]
    pruned = [(r["number"], r["last_intermediate"]) for r in rows
              if r["state"] == "pruned" and r["last_intermediate"] is not None]
    if done:
        ax.scatter(*zip(*done, strict=True), s=18, color="tab:blue", label="complete")
        pick = min if summary["direction"] == "minimize" else max
        best, running = [], None
        for _, v in done:
            running = v if running is None else pick(running, v)
            best.append(running)
        ax.step([n for n, _ in done], best, where="post", color="tab:red", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned, strict=True), s=14, marker="x", color="0.5", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.set_ylabel(summary["metric"])
    ax.set_title(f"study {summary['study_name']}: {summary['n_trials']} trials")
    if done or pruned:
        ax.legend(frameon=False)
    with atomic_path(path, what="plot") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def run_study(
    cfg: TuneConfig,
    objective: Objective,
    *,
    progress: bool = True,
    config_model: type[BaseModel] | None = None,
) -> dict[str, Any]:
    """Run ``cfg.n_trials`` trials of the study (joining it if it exists) and write its summary files.

    ``objective(overrides, report)`` gets the fixed overrides followed by the trial's own, trains, calls
    ``report(step, value)`` at each evaluation (this raises ``optuna.TrialPruned`` when the pruner says
    so: let it propagate) and returns the final value.  An :class:`MlfastsimError` from the objective (a
    bad config, a missing file) stops the whole study: every other trial would fail the same way.
    ``config_model`` (the workflow's pydantic config class) makes the checks before the first trial
    complete and ``best_config.yaml`` fully resolved.  Returns what ``study.json`` holds.
    """
    import optuna

    space = cfg.space()
    _check_base_config(cfg, space, config_model)
    out = ensure_writable_dir(cfg.output_dir, what="tuning output")

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says what the INFO lines would
    try:
        study = _open_study(cfg, optuna.samplers.TPESampler(seed=cfg.seed,
                                                            n_startup_trials=cfg.sampler_startup_trials),
                            _make_pruner(cfg))
        if study.direction.name.lower() != cfg.direction:
            raise ConfigError(f"study {cfg.study_name!r} already exists with direction "
                              f"{study.direction.name.lower()}", field="direction",
                              fix="use the study's direction or another study_name")
        n_before = len(study.get_trials(deepcopy=False))
        if n_before and cfg.seed is not None:
            # Joining a study: a seed mixed with the trial count, so this process does not replay the
            # proposals of the one that started it (a plain seed + n could equal another worker's seed).
            mixed = random.Random(f"mlfastsim-tune:{cfg.seed}:{n_before}").getrandbits(32)
            study.sampler = optuna.samplers.TPESampler(seed=mixed, n_startup_trials=cfg.sampler_startup_trials)

        def trial_fn(trial: optuna.Trial) -> float:
            trial_overrides = space.suggest(trial)
            trial.set_user_attr("overrides", trial_overrides)

            def report(step: int, value: float) -> None:
                trial.report(float(value), int(step))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step} ({cfg.metric}={value:.4g})")

            # a NaN or infinite value is recorded by Optuna as a failed trial, and the study goes on
            return float(objective([*cfg.overrides, *trial_overrides], report))

        with progress_bar(cfg.n_trials, f"tuning {cfg.study_name}", enabled=progress) as bar:

            def advance(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                bar.advance()
                if trial.state == optuna.trial.TrialState.COMPLETE:
                    bar.update(description=f"tuning {cfg.study_name} last {cfg.metric}={trial.value:.4g}")

            study.optimize(trial_fn, n_trials=cfg.n_trials, timeout=cfg.timeout_s, callbacks=[advance],
                           catch=(), gc_after_trial=True)
    finally:
        optuna.logging.set_verbosity(level)

    summary = summarize(study, cfg, space)
    atomic_write_json(out / "study.json", summary)
    if summary["best_trial"] is not None:
        header = (f"# best trial {summary['best_trial']} of study {cfg.study_name!r}: "
                  f"{cfg.metric} = {summary['best_value']:.6g}\n# tuned: {', '.join(summary['best_overrides'])}\n")
        atomic_write_text(out / "best_config.yaml",
                          header + best_config_text(cfg, summary["best_overrides"], config_model))
    else:
        logger.warning("no trial of study %r completed: no best_config.yaml written", cfg.study_name)
    plot_history(summary, out / "optimization_history.png")
    return summary

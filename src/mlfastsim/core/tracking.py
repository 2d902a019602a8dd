"""Experiment tracking behind one small protocol.

Backends are looked up by name (``local``, ``mlflow``, ``wandb``).  ``local`` is the default and needs
nothing: metrics go to ``metrics.jsonl`` (one JSON object per call), params to ``params.json``, and
artifacts are copied into ``artifacts/``.  ``mlflow`` uses a sqlite database (``sqlite:///...``), so no
server is needed and ``mlflow ui --backend-store-uri sqlite:///PATH`` browses it.  ``wandb`` runs offline
unless the user has logged in and sets ``WANDB_MODE``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from mlfastsim.core.config import PlainName, StrictModel, check_plain_name
from mlfastsim.core.errors import ConfigError
from mlfastsim.core.io import atomic_write_json, ensure_writable_dir


class TrackingConfig(StrictModel):
    """The ``tracking:`` section of every workflow config."""

    backend: Literal["local", "mlflow", "wandb"] = "local"
    dir: Path = Path("runs")
    run_name: PlainName | None = None  # a folder under dir: never '../x' (it would write outside dir)


@runtime_checkable
class Tracker(Protocol):
    """What a workflow may ask of a tracker."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None: ...

    def close(self) -> None: ...


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


class LocalTracker:
    """JSONL metrics + JSON params + copied artifacts in one run directory."""

    def __init__(self, run_dir: str | Path, run_name: str | None = None) -> None:
        self.run_dir = ensure_writable_dir(run_dir, what="tracking")
        self.run_name = run_name or self.run_dir.name
        self._metrics = self.run_dir / "metrics.jsonl"
        self._params: dict[str, Any] = {}

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._params.update(_flatten(params))
        atomic_write_json(self.run_dir / "params.json", self._params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        record = {"time": time.time(), "step": step, **{k: float(v) for k, v in metrics.items()}}
        with open(self._metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        src = Path(path)
        dest_dir = ensure_writable_dir(self.run_dir / "artifacts" / (subdir or ""))
        if src.resolve().parent == dest_dir.resolve():
            return
        shutil.copy2(src, dest_dir / src.name)

    def close(self) -> None:
        return None


class MlflowTracker:
    """MLflow with a sqlite backend by default (no server)."""

    def __init__(self, run_dir: str | Path, run_name: str | None = None, experiment: str = "mlfastsim",
                 uri: str | None = None) -> None:
        import mlflow

        run_dir = ensure_writable_dir(run_dir, what="tracking")
        self._mlflow = mlflow
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        mlflow.set_tracking_uri(uri)
        artifact_root = (run_dir / "mlartifacts").resolve().as_uri()
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=artifact_root)
        mlflow.set_experiment(experiment)
        self._run = mlflow.start_run(run_name=run_name)
        self.uri = uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: str(v)[:500] for k, v in _flatten(params).items()}
        self._mlflow.log_params(flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=subdir)

    def close(self) -> None:
        self._mlflow.end_run()


class WandbTracker:
    """Weights & Biases, offline unless the user has logged in and set WANDB_MODE=online."""

    def __init__(self, run_dir: str | Path, run_name: str | None = None, project: str = "mlfastsim") -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError(
                "tracking backend 'wandb' needs the wandb package",
                field="tracking.backend",
                fix="pip install 'mlfastsim[wandb]' or use backend local/mlflow",
            ) from exc
        run_dir = ensure_writable_dir(run_dir, what="tracking")
        os.environ.setdefault("WANDB_MODE", "offline")
        self._wandb = wandb
        self._run = wandb.init(project=project, name=run_name, dir=str(run_dir), reinit=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._run.config.update(_flatten(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._run.log(dict(metrics), step=step)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        self._run.save(str(path), base_path=str(Path(path).parent), policy="now")

    def close(self) -> None:
        self._run.finish()


TRACKERS: dict[str, Callable[..., Tracker]] = {
    "local": LocalTracker,
    "mlflow": MlflowTracker,
    "wandb": WandbTracker,
}


def tracker_from_config(cfg: TrackingConfig, default_name: str) -> Tracker:
    """Create the tracker a ``tracking:`` section asks for; runs live in ``dir/run_name``.

    Without an explicit run name, the default gets a timestamp so repeated runs never mix their metrics.
    """
    name = cfg.run_name or f"{check_plain_name(default_name, what='run name')}-{time.strftime('%Y%m%d-%H%M%S')}"
    return make_tracker(cfg.backend, cfg.dir / name, run_name=name)


def make_tracker(backend: str, run_dir: str | Path, run_name: str | None = None) -> Tracker:
    """Create a tracker by backend name."""
    try:
        factory = TRACKERS[backend]
    except KeyError:
        raise ConfigError(
            f"unknown tracking backend {backend!r}",
            field="tracking.backend",
            fix=f"use one of {', '.join(TRACKERS)}",
        ) from None
    return factory(run_dir, run_name=run_name)


@contextmanager
def training_run(cfg: BaseModel, output_dir: str | Path, tracking: TrackingConfig, default_name: str,
                 ) -> Iterator[tuple[Path, Tracker | None]]:
    """What every training command does around its loop, rank-0 aware.

    On the main process: create ``output_dir``, open the tracker, log the config as parameters and
    write it as ``config.yaml`` (so a run directory says how it was made); close the tracker at the end,
    also on errors.  Other DDP ranks get ``(output_dir, None)`` and write nothing.
    """
    from mlfastsim.core import distributed as dist_utils
    from mlfastsim.core.config import dump_config
    from mlfastsim.core.io import atomic_write_text

    if not dist_utils.is_main():
        yield Path(output_dir), None
        return
    outdir = ensure_writable_dir(output_dir)
    tracker = tracker_from_config(tracking, default_name=default_name)
    try:
        tracker.log_params(cfg.model_dump(mode="json"))
        atomic_write_text(outdir / "config.yaml", dump_config(cfg))
        yield outdir, tracker
    finally:
        tracker.close()

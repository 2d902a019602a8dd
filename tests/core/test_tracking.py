from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mlfastsim.core.errors import ConfigError
from mlfastsim.core.tracking import LocalTracker, make_tracker


def test_local_tracker_writes_jsonl_params_and_artifacts(tmp_path: Path) -> None:
    t = LocalTracker(tmp_path / "run")
    t.log_params({"model": {"latent": 10}, "lr": 0.1})
    t.log_metrics({"loss": 1.5}, step=1)
    t.log_metrics({"loss": 1.0}, step=2)
    art = tmp_path / "fig.png"
    art.write_bytes(b"png")
    t.log_artifact(art, subdir="plots")
    t.close()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in lines] == [1.5, 1.0] and lines[1]["step"] == 2
    assert json.loads((tmp_path / "run" / "params.json").read_text())["model.latent"] == 10
    assert (tmp_path / "run" / "artifacts" / "plots" / "fig.png").read_bytes() == b"png"


def test_mlflow_tracker_uses_sqlite(tmp_path: Path) -> None:
    t = make_tracker("mlflow", tmp_path / "ml", run_name="r1")
    t.log_params({"a": 1})
    t.log_metrics({"auc": 0.5}, step=0)
    f = tmp_path / "m.json"
    f.write_text("{}")
    t.log_artifact(f)
    t.close()
    db = tmp_path / "ml" / "mlflow.db"
    assert db.exists()
    with sqlite3.connect(db) as con:
        rows = con.execute("select key, value from metrics").fetchall()
    assert ("auc", 0.5) in rows


def test_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="unknown tracking backend"):
        make_tracker("tensorboardx", "x")

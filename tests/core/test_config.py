from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from mlfastsim.core.config import StrictModel, load_config, parse_override
from mlfastsim.core.errors import ConfigError


class Inner(StrictModel):
    lr: float = 1e-3
    layers: list[int] = Field(default_factory=lambda: [10, 5])


class Cfg(StrictModel):
    name: str = "x"
    steps: int = 10
    inner: Inner = Inner()


def test_defaults_file_cli_and_set_precedence(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("steps: 20\ninner:\n  lr: 0.1\n")
    cfg = load_config(Cfg, f, cli={"steps": 30, "name": None}, overrides=["inner.lr=0.5", "inner.layers=[3,2,1]"])
    assert cfg.steps == 30  # CLI beats file
    assert cfg.inner.lr == 0.5  # --set beats file
    assert cfg.inner.layers == [3, 2, 1]
    assert cfg.name == "x"  # None means "not given"


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Cfg, f)
    assert exc.value.file == str(f)
    assert exc.value.field == "inner.lrr"
    assert "unknown key" in exc.value.one_line()


def test_bad_set_key_and_type() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Cfg, overrides=["inner.nope=1"])
    assert "inner.nope" in exc.value.one_line() and "lr" in exc.value.one_line()
    with pytest.raises(ConfigError) as exc:
        load_config(Cfg, overrides=["steps=many"])
    assert exc.value.field == "steps" and exc.value.file == "--set"
    with pytest.raises(ConfigError):
        parse_override("steps")


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Cfg, f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
    g = tmp_path / "list.yaml"
    g.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, g)


def test_override_values_parse_as_yaml() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=1e-3")[1] == pytest.approx(1e-3)
    assert parse_override("a=true")[1] is True
    assert parse_override("a=hello")[1] == "hello"

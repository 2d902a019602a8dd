"""YAML configs validated by pydantic, with ``--set a.b=c`` overrides.

Precedence, lowest first: model defaults < YAML file (``--config``) < command-line options < ``--set``;
with ``MLFASTSIM_QUICK=1`` the size knobs are then capped (:mod:`mlfastsim.core.quick`).
``--set`` is the most specific thing a user can type, so it wins.  Unknown keys are errors (a typo in a
config must never be silently ignored), and every error names the file, the dotted key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from mlfastsim.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigValueError(ValueError):
    """A value a validator rejects, with the fix to print (``load_config`` shows both on one line)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


def check_plain_name(value: str, *, what: str = "name") -> str:
    """``value`` if it is one plain file or folder name, else :class:`ConfigValueError`.

    Run, study and experiment names become directories under an output folder: ``../../x`` or ``/abs``
    must not write outside it, and a hidden or empty name would vanish from listings.
    """
    bad = (not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value
           or value.startswith(".") or len(value) > 200)
    if bad:
        raise ConfigValueError(f"{what} {value!r} is not a plain folder name",
                               fix="use letters, digits, '-' or '_' (no '/', '..' or leading '.')")
    return value


def _plain_name(value: str) -> str:
    return check_plain_name(value)


#: a config field naming a folder that is created under an output directory (a run or study name)
PlainName = Annotated[str, AfterValidator(_plain_name)]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping with ``safe_load`` and clear errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config file does not exist", file=p, fix="check the --config path")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"invalid YAML{where}", file=p, fix="fix the YAML syntax") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("config is not UTF-8 text", file=p, fix="pass a YAML file") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping (key: value)", file=p, fix="write key: value pairs")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b=c`` into (["a", "b"], value); the value is parsed as YAML (so 3, 1e-3, [1,2], true work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} has no '='", field="--set", fix="write --set section.key=value")
    key, raw = item.split("=", 1)
    parts = [k for k in key.strip().split(".") if k]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key", field="--set", fix="write --set section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string; a user typing it means a number.
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            pass
    return parts, value


def _check_path(model: type[BaseModel], parts: Sequence[str], item: str) -> None:
    """Make sure a dotted key names a real field, so a typo fails instead of silently doing nothing.

    A field typed as a union of models (e.g. a ``model:`` section discriminated by ``type``) accepts a
    key that any member has; the model's own validation then checks it against the chosen member.
    """
    candidates: list[Any] = [model]
    for i, part in enumerate(parts):
        models = [c for c in candidates if getattr(c, "model_fields", None) is not None]
        if not models:
            if any(isinstance(c, dict) or c is dict for c in candidates):
                return
            raise ConfigError(
                f"'{'.'.join(parts[:i])}' is not a section", field=f"--set {item}", fix="check the key"
            )
        having = [m for m in models if part in m.model_fields]
        if not having:
            keys = sorted({k for m in models for k in m.model_fields})
            raise ConfigError(
                f"unknown key {'.'.join(parts[: i + 1])!r}",
                field=f"--set {item}",
                fix=f"valid keys here: {', '.join(keys)}",
            )
        candidates = []
        for m in having:
            annotation = m.model_fields[part].annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                candidates.append(annotation)
            else:
                candidates.extend(_models_in(annotation))
        if not candidates and i < len(parts) - 1:
            # A free-form mapping (dict) accepts any sub-key.
            return


def _models_in(annotation: Any) -> list[Any]:
    """The pydantic models inside a (possibly Annotated/Optional) union annotation."""
    found: list[Any] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append(arg)
        else:
            found.extend(_models_in(arg))
    return found


def _set_nested(d: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    for part in parts[:-1]:
        nxt = d.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            d[part] = nxt
        d = nxt
    d[parts[-1]] = value


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``extra`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    model: type[M],
    path: str | Path | None = None,
    *,
    cli: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> M:
    """Build a validated config: defaults < YAML file < ``cli`` values (None = not given) < ``--set``."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    if cli:
        given: dict[str, Any] = {}
        for key, value in cli.items():
            if value is not None:
                _set_nested(given, key.split("."), value)
        data = deep_merge(data, given)
    for item in overrides:
        parts, value = parse_override(item)
        _check_path(model, parts, item)
        _set_nested(data, parts, value)
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        from_set = any(item.split("=", 1)[0].strip() == loc for item in overrides)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        fix = "remove or rename the key" if err["type"] == "extra_forbidden" else "give a value of the right type"
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigValueError):
            raise ConfigError(cause.message, file="--set" if from_set else path, field=loc, fix=cause.fix) from exc
        raise ConfigError(
            f"{msg} (got {err.get('input')!r})" if err["type"] != "extra_forbidden" else msg,
            file="--set" if from_set else path,
            field=loc,
            fix=fix,
        ) from exc
    from mlfastsim.core.quick import apply_quick, quick_mode

    if quick_mode():  # MLFASTSIM_QUICK=1: the README's commands at smoke-test size
        apply_quick(cfg)
    return cfg


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML, saved next to outputs so a run can be repeated."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

"""Task results stored as plain data: one ``.npz`` per result, read back with ``allow_pickle=False``.

Why not pickle: resume caches and outputs sit on disks shared with Dask workers and other users, and
unpickling a planted file runs its code.  A record here is a JSON tree (numbers, strings, lists, dicts)
whose arrays live as separate ``.npy`` members of the archive, so reading one can never execute
anything; the only objects rebuilt are mlfastsim's own dataclasses and pydantic models, from their
fields (exactly what constructing them from a config does).

Supported values: None, bool, int, float, str, :class:`~pathlib.Path`, numpy arrays (not of dtype
object) and scalars, lists, tuples, dicts, pandas DataFrames of numeric/bool/string columns, and
dataclasses or pydantic models defined in the ``mlfastsim`` package.  Anything else is a bug in the
caller and raises :class:`TypeError` when saving.

Every record carries a ``tag`` (the job fingerprint and task index, see
:class:`mlfastsim.core.resume.TaskCache`) checked on load: a record of another job is never used.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# The record format; a reader meeting another version treats the record as absent (it is recomputed).
RECORD_VERSION = 1
_META = "__record__"


class RecordError(Exception):
    """A record cannot be used: unreadable, corrupt, of another job or of an unknown version."""


def _class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _allowed_class(name: str) -> type:
    """The mlfastsim dataclass or pydantic model named ``module:qualname``; anything else is refused."""
    module_name, _, qualname = name.partition(":")
    if not (module_name == "mlfastsim" or module_name.startswith("mlfastsim.")) or not qualname:
        raise RecordError(f"class {name!r} is not an mlfastsim class")
    if any(part.startswith("_") for part in qualname.split(".")):
        raise RecordError(f"class {name!r} is private")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise RecordError(f"class {name!r} does not exist (any more)") from exc
    from pydantic import BaseModel

    if not isinstance(obj, type) or not (dataclasses.is_dataclass(obj) or issubclass(obj, BaseModel)):
        raise RecordError(f"{name!r} is not a dataclass or pydantic model")
    return obj


class _Encoder:
    """Turns a value into a JSON tree plus a list of arrays (referenced by index from the tree)."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def _array(self, arr: np.ndarray) -> dict[str, int]:
        if arr.dtype.hasobject:
            raise TypeError("arrays of Python objects cannot be stored as data; use a numeric or string dtype")
        self.arrays.append(arr)
        return {"__array__": len(self.arrays) - 1}

    def encode(self, value: Any) -> Any:
        from pydantic import BaseModel

        if value is None or isinstance(value, bool | str):
            return value
        if isinstance(value, int | float) and not isinstance(value, np.generic):
            return value
        if isinstance(value, np.ndarray):
            return self._array(value)
        if isinstance(value, np.generic):
            return {"__scalar__": self._array(np.asarray(value))["__array__"]}
        if isinstance(value, Path):
            return {"__path__": str(value)}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v) for v in value]}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {"__dict__": {k: self.encode(v) for k, v in value.items()}}
            return {"__pairs__": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if _is_dataframe(value):
            return self._dataframe(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            name = _class_name(value)
            _allowed_class(name)
            fields = {f.name: self.encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
            return {"__object__": name, "fields": fields}
        if isinstance(value, BaseModel):
            name = _class_name(value)
            _allowed_class(name)
            return {"__model__": name, "json": value.model_dump_json()}
        raise TypeError(f"a {type(value).__name__} cannot be stored as data in a task record")

    def _dataframe(self, df: Any) -> dict[str, Any]:
        columns = []
        for name in df.columns:
            col = df[name].to_numpy()
            if col.dtype.hasobject:
                col = col.astype(str)  # strings: a fixed-width unicode array, no pickle needed
            columns.append([self.encode(name), self._array(col)["__array__"]])
        index = df.index.to_numpy()
        if index.dtype.hasobject:
            index = index.astype(str)
        return {"__dataframe__": columns, "index": self._array(index)["__array__"]}


def _is_dataframe(value: Any) -> bool:
    cls = type(value)
    return cls.__name__ == "DataFrame" and cls.__module__.startswith("pandas")


class _Decoder:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def _array(self, index: Any) -> np.ndarray:
        try:
            return self.arrays[f"a{int(index)}"]
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"record refers to a missing array {index!r}") from exc

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise RecordError("malformed record")
        if "__array__" in node:
            return self._array(node["__array__"])
        if "__scalar__" in node:
            return self._array(node["__scalar__"])[()]
        if "__path__" in node:
            return Path(node["__path__"])
        if "__tuple__" in node:
            return tuple(self.decode(v) for v in node["__tuple__"])
        if "__dict__" in node:
            return {str(k): self.decode(v) for k, v in node["__dict__"].items()}
        if "__pairs__" in node:
            return {self.decode(k): self.decode(v) for k, v in node["__pairs__"]}
        if "__dataframe__" in node:
            import pandas as pd

            data = {self.decode(name): self._array(i) for name, i in node["__dataframe__"]}
            return pd.DataFrame(data, index=self._array(node["index"]))
        if "__object__" in node:
            cls = _allowed_class(str(node["__object__"]))
            fields = self.decode({"__dict__": node["fields"]})
            return cls(**fields)
        if "__model__" in node:
            cls = _allowed_class(str(node["__model__"]))
            return cls.model_validate_json(node["json"])  # type: ignore[attr-defined]
        raise RecordError("malformed record")


def write_record(fh: Any, value: Any, tag: dict[str, Any]) -> None:
    """Write ``value`` with ``tag`` as a compressed ``.npz`` archive to the open binary file ``fh``.

    Compressed: a resume cache holds every finished chunk of a job until its output is written, and
    shower chunks are mostly empty cells (an uncompressed cache of a small run took 162 MB)."""
    enc = _Encoder()
    tree = enc.encode(value)
    meta = json.dumps({"version": RECORD_VERSION, "tag": tag, "value": tree}).encode("utf-8")
    members = {_META: np.frombuffer(meta, dtype=np.uint8)}
    members.update({f"a{i}": a for i, a in enumerate(enc.arrays)})
    np.savez_compressed(fh, **members)


def read_record(path: str | Path, tag: dict[str, Any]) -> Any:
    """The value stored in ``path``, if its tag equals ``tag``; :class:`RecordError` for anything else.

    Corrupt and truncated archives (bad CRC, short file), another job's tag, an unknown version and
    a class outside mlfastsim all raise :class:`RecordError`: the caller recomputes the task.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(bytes(archive[_META]).decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("version") != RECORD_VERSION:
                raise RecordError("record of another format version")
            if meta.get("tag") != tag:
                raise RecordError("record of another job")
            arrays = {name: archive[name] for name in archive.files if name != _META}
    except RecordError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise RecordError(f"unreadable record ({type(exc).__name__})") from exc
    try:
        return _Decoder(arrays).decode(meta.get("value"))
    except RecordError:
        raise
    except Exception as exc:  # a field a dataclass/model rejects (its own validation error)
        raise RecordError(f"record does not rebuild ({type(exc).__name__})") from exc


def record_bytes(value: Any, tag: dict[str, Any]) -> bytes:
    """The bytes :func:`write_record` would write (for tests and checksums)."""
    buf = io.BytesIO()
    write_record(buf, value, tag)
    return buf.getvalue()

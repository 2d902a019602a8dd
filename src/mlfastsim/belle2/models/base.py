"""The plug-in contract of the Belle II filter networks.

A model is a subclass of :class:`NNBaseClass` that declares

* ``inputs``: which preprocessed input types it reads, in the order ``forward`` takes them (any of
  ``decay``, ``particle``, ``pdg``, ``mother_pdg``, ``mother_index``); the training and apply code feed
  exactly these, so a particle-only model never pays for reading decay strings;
* ``Params``: a :class:`~mlfastsim.core.config.StrictModel` of its hyperparameters, filled from the
  ``model.params`` section of the config (unknown keys are errors, like everywhere else);
* ``forward(*inputs)``: one logit per event (shape ``(batch,)``); the probability to pass the skim is
  its sigmoid.

The constructor receives the validated params plus the data sizes (``vocab_size``, ``n_features``,
``max_particles``, ``max_tokens``).  ``-m`` takes a built-in name or the path of a user's ``.py`` file
that defines exactly one subclass (or names one in ``MODEL = ...``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import ValidationError
from torch import nn

from mlfastsim.core.config import StrictModel
from mlfastsim.core.errors import ConfigError, InputFileError

VALID_INPUTS = ("decay", "particle", "pdg", "mother_pdg", "mother_index")


class NNBaseClass(nn.Module):
    """Base class of every filter network (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()

    class Params(StrictModel):
        """No hyperparameters by default."""

    def __init__(self, params: StrictModel, *, vocab_size: int, n_features: int, max_particles: int,
                 max_tokens: int) -> None:
        super().__init__()
        self.params = params
        self.vocab_size = vocab_size
        self.n_features = n_features
        self.max_particles = max_particles
        self.max_tokens = max_tokens

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


BUILTINS: dict[str, str] = {
    "resnet": "mlfastsim.belle2.models.resnet:CNNResNet",
    "particle": "mlfastsim.belle2.models.resnet:ParticleResNet",
    "decay": "mlfastsim.belle2.models.resnet:DecayResNet",
    "gnn": "mlfastsim.belle2.models.gnn:GATModel",
}


def _import_builtin(spec: str) -> type[NNBaseClass]:
    module, cls = spec.split(":")
    return getattr(importlib.import_module(module), cls)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_model_class(name: str | Path) -> tuple[type[NNBaseClass], dict[str, str]]:
    """Resolve ``-m``: a built-in name, or a ``.py`` file defining an :class:`NNBaseClass` subclass.

    Returns the class and a small record (``kind``, ``name``/``path``, ``sha256``) stored in checkpoints
    so ``apply`` rebuilds the same model.
    """
    text = str(name)
    if text in BUILTINS:
        return _import_builtin(BUILTINS[text]), {"kind": "builtin", "name": text}
    path = Path(text)
    if path.suffix != ".py":
        raise ConfigError(f"unknown model {text!r}", field="model.name",
                          fix=f"use one of {', '.join(BUILTINS)} or the path of a .py file")
    if not path.is_file():
        raise InputFileError("model file does not exist", file=path, field="model.name", fix="check the -m path")
    module_name = f"mlfastsim_user_model_{file_sha256(path)[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InputFileError("cannot import the model file", file=path, fix="pass a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # user code: any error means the file is unusable as a model
        sys.modules.pop(module_name, None)
        raise InputFileError(f"importing the model file failed ({type(exc).__name__}: {exc})", file=path,
                             fix="fix the error in the file") from exc
    chosen = getattr(module, "MODEL", None)
    if chosen is None:
        found = [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                 if issubclass(obj, NNBaseClass) and obj is not NNBaseClass and obj.__module__ == module_name]
        if not found:
            raise InputFileError("defines no subclass of NNBaseClass", file=path, field="model.name",
                                 fix="subclass mlfastsim.belle2.models.base.NNBaseClass in the file")
        if len(found) > 1:
            raise InputFileError(f"defines several NNBaseClass subclasses ({', '.join(c.__name__ for c in found)})",
                                 file=path, field="MODEL", fix="set MODEL = TheOneToTrain in the file")
        chosen = found[0]
    if not (inspect.isclass(chosen) and issubclass(chosen, NNBaseClass)):
        raise InputFileError("MODEL is not a subclass of NNBaseClass", file=path, field="MODEL",
                             fix="subclass mlfastsim.belle2.models.base.NNBaseClass")
    return chosen, {"kind": "file", "path": str(path.resolve()), "sha256": file_sha256(path)}


def validate_inputs(cls: type[NNBaseClass], source: str) -> tuple[str, ...]:
    inputs = tuple(cls.inputs)
    bad = [i for i in inputs if i not in VALID_INPUTS]
    if not inputs or bad:
        raise ConfigError(f"model {cls.__name__} declares invalid inputs {bad or '(none)'}", file=source,
                          field="inputs", fix=f"declare a tuple of {', '.join(VALID_INPUTS)}")
    return inputs


def build_model(cls: type[NNBaseClass], params: dict[str, Any], sizes: dict[str, int], *,
                source: str = "model.params") -> NNBaseClass:
    """Validate ``params`` against ``cls.Params`` and construct the model."""
    validate_inputs(cls, source)
    try:
        p = cls.Params.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{msg} for model {cls.__name__}", file=source, field=f"model.params.{loc}",
                          fix=f"valid keys: {', '.join(cls.Params.model_fields) or '(none)'}") from exc
    return cls(p, **sizes)

"""Belle II filter networks: the :class:`NNBaseClass` plug-in contract and the built-in models."""

from mlfastsim.belle2.models.base import BUILTINS, NNBaseClass, build_model, load_model_class

__all__ = ["BUILTINS", "NNBaseClass", "build_model", "load_model_class"]

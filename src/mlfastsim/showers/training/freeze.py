"""Fine-tuning a chosen subset of a model's weights (``adapt --trainable``, ``train`` with ``trainable:``)."""

from __future__ import annotations

from torch import nn

from mlfastsim.core.errors import ConfigError


def _matches(name: str, prefix: str) -> bool:
    """``prefix`` names this parameter or a module above it (``shape.out`` matches ``shape.out.weight``)."""
    return name == prefix or name.startswith(prefix.rstrip(".") + ".")


def freeze_all_but(modules: dict[str, nn.Module], prefixes: list[str]) -> None:
    """Leave trainable only the parameters whose names start with one of ``prefixes``, over every module of a
    task (a GAN's generator and critic, say; a module no prefix names is frozen whole).

    Frozen weights get no gradient, so every torch optimiser leaves them (and its state for them) alone.  A
    prefix that names nothing in any module is an error, not a silent no-op.
    """
    named = [(n, p) for m in modules.values() for n, p in m.named_parameters()]
    unmatched = [pre for pre in prefixes if not any(_matches(n, pre) for n, _ in named)]
    if unmatched:
        tops = sorted({n.split(".")[0] for n, _ in named})
        raise ConfigError(f"trainable prefix(es) {unmatched} name no parameter of this model", field="trainable",
                          fix=f"use dotted parameter-name prefixes, e.g. one of {tops}")
    for name, p in named:
        p.requires_grad_(any(_matches(name, pre) for pre in prefixes))


def trainable_parameters(model: nn.Module, prefixes: list[str] | None) -> list[nn.Parameter]:
    """The parameters to fine-tune: all, or those :func:`freeze_all_but` leaves trainable (the rest frozen).

    Adapting a subset (say a cfm's layer-energy network, or its last blocks) keeps what pre-training learned
    about shower shapes and needs fewer showers.
    """
    if prefixes is not None:
        freeze_all_but({"model": model}, prefixes)
    return [p for p in model.parameters() if p.requires_grad]

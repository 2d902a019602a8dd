"""Fine-tuning a chosen subset of a model's weights (``adapt --trainable``, ``train`` with ``trainable:``)."""

from __future__ import annotations

from torch import nn

from mlfastsim.core.errors import ConfigError


def trainable_parameters(model: nn.Module, prefixes: list[str] | None) -> list[nn.Parameter]:
    """The parameters to fine-tune: all, or those whose name starts with one of ``prefixes`` (the rest frozen).

    Adapting a subset (say a cfm's layer-energy network, or its last blocks) keeps what pre-training learned
    about shower shapes and needs fewer showers; a prefix that names nothing is an error, not a silent no-op.
    """
    named = list(model.named_parameters())
    if prefixes is None:
        return [p for _, p in named]

    def chosen(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix.rstrip(".") + ".")

    unmatched = [pre for pre in prefixes if not any(chosen(n, pre) for n, _ in named)]
    if unmatched:
        tops = sorted({n.split(".")[0] for n, _ in named})
        raise ConfigError(f"trainable prefix(es) {unmatched} name no parameter of this model", field="trainable",
                          fix=f"use dotted parameter-name prefixes, e.g. one of {tops}")
    keep = []
    for name, p in named:
        p.requires_grad_(any(chosen(name, pre) for pre in prefixes))
        if p.requires_grad:
            keep.append(p)
    return keep


def freeze_all_but(modules: dict[str, nn.Module], prefixes: list[str]) -> None:
    """:func:`trainable_parameters` over every module of a task (a GAN's generator and critic, say): each prefix
    must name a parameter of at least one of them; modules it names nothing in are frozen whole."""
    named = {k: [n for n, _ in m.named_parameters()] for k, m in modules.items()}

    def names_in(key: str, pre: str) -> bool:
        return any(n == pre or n.startswith(pre.rstrip(".") + ".") for n in named[key])

    unmatched = [pre for pre in prefixes if not any(names_in(k, pre) for k in modules)]
    if unmatched:
        trainable_parameters(next(iter(modules.values())), unmatched)  # raises: lists the model's parts
    for key, module in modules.items():
        mine = [pre for pre in prefixes if names_in(key, pre)]
        if mine:
            trainable_parameters(module, mine)
        else:
            module.requires_grad_(False)

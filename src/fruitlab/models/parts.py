"""Which backbone parameters a fine-tuning phase trains, named through timm's own parameter groups."""

from __future__ import annotations

from timm.models import group_parameters
from torch import nn

from fruitlab.config import TrainSpec
from fruitlab.errors import ConfigError, did_you_mean


def backbone_groups(backbone: nn.Module, coarse: bool) -> list[list[str]]:
    """Parameter names per group, input side first: coarse = stages, fine = blocks (timm's group_matcher)."""
    names = {n for n, _ in backbone.named_parameters()}
    if hasattr(backbone, "group_matcher"):
        groups = group_parameters(backbone, backbone.group_matcher(coarse=coarse))
        ordered = [[n for n in groups[k] if n in names] for k in sorted(groups)]
        return [g for g in ordered if g]
    # No matcher (a non-timm module): one group per top-level child, in registration order.
    by_child: dict[str, list[str]] = {}
    for n in names:
        by_child.setdefault(n.split(".")[0], []).append(n)
    order = [c for c, _ in backbone.named_children() if c in by_child]
    return [sorted(by_child[c]) for c in order]


def select_trainable(backbone: nn.Module, train: str | TrainSpec, where: str = "") -> set[str]:
    """Names of the backbone parameters that train under `train` (none | all | TrainSpec)."""
    all_names = {n for n, _ in backbone.named_parameters()}
    if train == "none":
        return set()
    if train == "all":
        return all_names
    assert isinstance(train, TrainSpec)  # the schema allows nothing else
    if train.modules is not None:
        return _by_module_names(backbone, train.modules, where)
    n = train.last_stages or train.last_blocks or 0
    groups = backbone_groups(backbone, coarse=train.last_stages is not None)
    if n > len(groups):
        unit = "stages" if train.last_stages is not None else "blocks"
        raise ConfigError(f"{where} asks for the last {n} {unit}, but this backbone has {len(groups)}")
    return {name for group in groups[-n:] for name in group}


def _by_module_names(backbone: nn.Module, prefixes: list[str], where: str) -> set[str]:
    modules = [n for n, _ in backbone.named_modules() if n]
    chosen: set[str] = set()
    for prefix in prefixes:
        hit = {n for n, _ in backbone.named_parameters() if n == prefix or n.startswith(prefix + ".")}
        if not hit:
            hint = did_you_mean(prefix, modules) or f" (top-level modules: {[c for c, _ in backbone.named_children()]})"
            raise ConfigError(f"module {prefix!r} {where} is not in the backbone{hint}")
        chosen |= hit
    return chosen


def batchnorm_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

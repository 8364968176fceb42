"""A backbone's feature path as a chain of modules, so that a frozen prefix can run once and be cached.

timm offers a model's stages as outputs (`forward_intermediates`, `feature_info`) but no way to *resume* the
forward pass from a stage; that is what a frozen-prefix cache needs, so it is written here. Most CNNs in timm
(EfficientNet/MobileNet, ResNet, RegNet, ConvNeXt, VGG...) compute `forward_features` as their top-level children
run one after another, with the stage containers (`blocks`, `layers`, `stages`, `features`) unrolled one level.
`stage_chain` proposes that chain and *checks it numerically* against the model's own forward pass; a model whose
forward is anything else (ViTs add position embeddings, some nets have skip paths across children) fails the check
and gets no chain - those still get the whole-backbone feature cache, which needs none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

# Children that belong to the head side (forward_head), never to forward_features.
HEAD_CHILDREN = {"global_pool", "head", "fc", "classifier", "pre_logits", "head_drop", "fc_norm", "head_hidden_size"}


class StageChain:
    """`backbone.forward_features(x) == run(x)`, and `run(x, start=k)` resumes after the first k links."""

    def __init__(self, links: list[tuple[str, nn.Module]]):
        self.links = links

    def __len__(self) -> int:
        return len(self.links)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.links]

    def run(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for _, module in self.links[start:stop]:
            x = module(x)
        return x

    def modules(self, start: int = 0, stop: int | None = None) -> list[nn.Module]:
        return [module for _, module in self.links[start:stop]]


def propose_chain(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    links: list[tuple[str, nn.Module]] = []
    for name, child in backbone.named_children():
        if name in HEAD_CHILDREN:
            continue
        if isinstance(child, nn.Sequential) and len(child) > 0:
            links += [(f"{name}.{sub}", module) for sub, module in child.named_children()]
        else:
            links.append((name, child))
    return links


@torch.no_grad()
def stage_chain(backbone: nn.Module, example: torch.Tensor) -> StageChain | None:
    """The verified chain, or None when running the children in order is not what the model computes."""
    links = propose_chain(backbone)
    if not links or not hasattr(backbone, "forward_features"):
        return None
    chain = StageChain(links)
    was_training = backbone.training
    backbone.eval()
    try:
        expected = backbone.forward_features(example)
        got = chain.run(example)
    except Exception as exc:  # a child that cannot run on its own (needs extra arguments): not a chain
        log.debug("no stage chain for %s: %s", type(backbone).__name__, exc)
        return None
    finally:
        backbone.train(was_training)
    if not isinstance(expected, torch.Tensor) or got.shape != expected.shape or not torch.equal(got, expected):
        log.debug("no stage chain for %s: running its children in order differs", type(backbone).__name__)
        return None
    return chain


def parameter_owner(chain: StageChain) -> Callable[[str], int | None]:
    """Maps a backbone parameter name to the index of the link holding it (None: outside the chain)."""
    prefixes = [(name + ".", i) for i, name in enumerate(chain.names)]

    def owner(param_name: str) -> int | None:
        for prefix, i in prefixes:
            if param_name.startswith(prefix):
                return i
        return None

    return owner

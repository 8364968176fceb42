"""Mixup and CutMix on a training batch, for one task or several.

Hand-written because torchvision's v2.MixUp / v2.CutMix and timm's Mixup take a single class-index target and
`num_classes` and return one-hot soft labels: that fits neither several tasks, each with its own classes, nor
losses that take class indices. Here the batch is mixed with a permutation of itself, and each task's loss becomes

    lam * loss(logits, y) + (1 - lam) * loss(logits, y[perm])          (`mixed_loss`)

which for cross-entropy equals the loss on the soft labels lam * onehot(y) + (1 - lam) * onehot(y[perm]).
As timm does it (mode "batch"): one lam per batch from Beta(alpha, alpha); `mix_prob` is the chance that a batch
is mixed at all; with both mixup and cutmix on, each mixed batch gets one of them, 50/50; cutmix's lam is
corrected to the area actually pasted (the box is clipped at the image border).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from fruitlab.config import AugmentConfig


def mix_batch(
    images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mixed images (N, C, H, W), permutation (N,) on the images' device, lam); unmixed: (images, arange, 1.0).

    Random draws: one number from `generator` (CPU; None = torch's global generator, which Lightning's seeding
    sets) seeds a numpy generator, because torch samples Beta only from its global generator.
    """
    n, device = images.shape[0], images.device
    identity = torch.arange(n, device=device)
    if not cfg.mixing or n < 2:
        return images, identity, 1.0
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))
    if rng.random() >= cfg.mix_prob:
        return images, identity, 1.0
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cfg.cutmix, cfg.cutmix) if use_cutmix else rng.beta(cfg.mixup, cfg.mixup))
    perm = torch.from_numpy(rng.permutation(n)).to(device)
    if not use_cutmix:
        return images * lam + images[perm] * (1 - lam), perm, lam
    height, width = images.shape[-2:]
    y0, y1, x0, x1 = _cut_box(height, width, lam, rng)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
    return mixed, perm, 1 - (y1 - y0) * (x1 - x0) / (height * width)


def _cut_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of about (1 - lam) of the area around a uniform centre, clipped to the image (timm's rand_bbox)."""
    ratio = math.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


def mixed_loss(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    target: torch.Tensor,
    perm: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """One task's loss on a batch from `mix_batch`; an unmixed batch (lam == 1) costs one loss call."""
    if lam == 1.0:
        return loss(logits, target)
    return lam * loss(logits, target) + (1 - lam) * loss(logits, target[perm])

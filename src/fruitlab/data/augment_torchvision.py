"""The pipeline of transforms.py on torchvision.transforms.v2 (uint8 tensors until normalising).

Random draws come from torch's global generator, which the DataLoader seeds per worker from the experiment seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from fruitlab.data.transforms import AugmentPlan, Transform, eval_resize, fill_colour


def build(pre: dict[str, Any], plan: AugmentPlan | None) -> Transform:
    size = pre["input_size"]
    interp = InterpolationMode(pre["interpolation"])
    # Tensors warp with nearest or bilinear only: bicubic becomes bilinear for the affine ops (in both backends).
    warp = InterpolationMode.NEAREST if interp == InterpolationMode.NEAREST else InterpolationMode.BILINEAR
    fill = list(fill_colour(pre))
    ops: list[Any] = [v2.ToImage()]
    if plan is not None and plan.crop_area:
        ops.append(v2.RandomResizedCrop(size, scale=plan.crop_area, interpolation=interp, antialias=True))
    else:
        ops += [v2.Resize(eval_resize(pre), interpolation=interp, antialias=True), v2.CenterCrop(size)]
    if plan is not None:
        ops += _augmentations(plan, warp, fill)
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(pre["mean"]), std=list(pre["std"]))]
    return v2.Compose(ops)  # takes the HxWx3 uint8 array as it is (ToImage)


def _augmentations(plan: AugmentPlan, warp: InterpolationMode, fill: list[int]) -> list[Any]:
    ops: list[Any] = []
    if plan.hflip:
        ops.append(v2.RandomHorizontalFlip(p=plan.hflip))
    if plan.vflip:
        ops.append(v2.RandomVerticalFlip(p=plan.vflip))
    if plan.affine:
        ops.append(RandomAffine(plan, warp, fill))
    if plan.randaugment:
        num_ops, magnitude = plan.randaugment
        ops.append(v2.RandAugment(num_ops=num_ops, magnitude=magnitude, interpolation=warp, fill=fill))
    if plan.colour:
        ops.append(
            v2.ColorJitter(brightness=plan.brightness, contrast=plan.contrast, saturation=plan.saturation, hue=plan.hue)
        )
    if plan.blur:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=plan.blur_sigma)], p=plan.blur))
    if plan.sharpness:
        ops.append(v2.RandomAdjustSharpness(sharpness_factor=plan.sharpness_factor, p=plan.sharpness))
    return ops


def _uniform(bounds: tuple[float, float]) -> float:
    return float(torch.empty(()).uniform_(*bounds)) if bounds[0] != bounds[1] else bounds[0]


class RandomAffine(torch.nn.Module):
    """v2.RandomAffine with a range per parameter (its shift is symmetric only) and albumentations' shift rule.

    Shifts are whole pixels, truncated towards zero as albumentations' Affine does (v2.RandomAffine rounds).
    """

    def __init__(self, plan: AugmentPlan, interpolation: InterpolationMode, fill: list[int]):
        super().__init__()
        self.plan, self.interpolation, self.fill = plan, interpolation, fill

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        plan = self.plan
        angle = _uniform(plan.rotate)
        dx, dy = _uniform(plan.shift), _uniform(plan.shift)
        return F.affine(
            image,
            angle=-angle,  # F.affine turns clockwise for a positive angle; the plan's rotation is counter-clockwise
            translate=[int(dx * width), int(dy * height)],
            scale=_uniform(plan.scale),
            shear=[_uniform(plan.shear), 0.0],
            interpolation=self.interpolation,
            fill=self.fill,
        )

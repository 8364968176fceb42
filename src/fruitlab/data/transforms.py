"""Image transforms from the library-neutral spec, on albumentations or torchvision.transforms.v2.

The spec (`config.AugmentConfig`) resolves to an `AugmentPlan` of explicit ranges, and each backend builds the
same pipeline from it, in this order:

    frame        eval: resize the shorter side to size / crop_pct, centre-crop `size` (timm's eval recipe);
                 train: the same, or a random resized crop (area range, aspect 3/4-4/3) when asked
    flips        horizontal, vertical
    affine       rotation, zoom, horizontal shear and shift in one warp, around the centre; pixels from outside
                 the image take the mean colour (0 after normalising)
    RandAugment  torchvision's 14 operations and magnitudes (albumentations: hand-written, see augment_albumentations)
    colour       brightness, contrast, saturation, hue in random order; Gaussian blur; sharpening
    normalise    to a float tensor (3, size, size)

Validation and test data get the frame alone. tests/data/test_transforms.py compares the backends on real
photos (scikit-image's cat and coffee); each operation with fixed parameters agrees to < 0.5 grey levels on
average. What cannot be made identical, with the differences measured there (grey levels, 0-255):
- shrinking: torchvision antialiases (a triangle filter widened by the reduction); OpenCV has no such filter, so
  albumentations shrinks with INTER_AREA (a box filter), the closest it has: mean 0.4-0.7 from 300-400 px to
  256 px, 1.6-1.8 down to 64 px (INTER_LINEAR would be 0.6-4.4);
- bicubic: torch's antialiased bicubic uses a = -0.5 (PIL's), OpenCV a = -0.75 (mean <= 0.6 enlarging 32 -> 64 px);
  affine warps are bilinear in both, because torchvision warps tensors with nearest or bilinear only;
- rotation together with shear: albumentations shears after rotating, torchvision before, and neither library
  offers the other order in one warp (mean 16-18 at 20 degrees + 10 degrees); either alone matches;
- hue: OpenCV keeps 8-bit hue in 2-degree steps, torchvision shifts it in float (mean 0.4-0.5, at most 4);
- 8-bit rounding between steps (+-1), and where warped pixels meet the fill colour (< 2% of pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fruitlab.config import AugmentConfig

Transform = Callable[[np.ndarray], torch.Tensor]  # HxWx3 uint8 RGB -> (3, size, size) float32
BACKENDS = ("albumentations", "torchvision")

Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentPlan:
    """What both backends build from: every random choice as an explicit range (a single value = fixed)."""

    crop_area: Range | None = None  # random resized crop, fraction of the image area; None = eval framing
    hflip: float = 0.0  # probability
    vflip: float = 0.0  # probability
    rotate: Range = (0.0, 0.0)  # degrees, counter-clockwise
    scale: Range = (1.0, 1.0)  # zoom factor
    shear: Range = (0.0, 0.0)  # horizontal shear around the centre, degrees; positive moves the top rows right
    shift: Range = (0.0, 0.0)  # translation on each axis, fraction of the side; positive = right / down
    brightness: Range = (1.0, 1.0)  # factors, 1 = unchanged
    contrast: Range = (1.0, 1.0)
    saturation: Range = (1.0, 1.0)
    hue: Range = (0.0, 0.0)  # fraction of the colour circle
    blur: float = 0.0  # probability of a 5x5 Gaussian blur
    blur_sigma: Range = (0.1, 2.0)  # pixels
    sharpness: float = 0.0  # probability
    sharpness_factor: float = 2.0  # torchvision's adjust_sharpness: 1 = unchanged, 0 = smoothed
    randaugment: tuple[int, int] | None = None  # (num_ops, magnitude bin 0-30)

    @property
    def affine(self) -> bool:
        return (self.rotate, self.scale, self.shear, self.shift) != ((0.0, 0.0), (1.0, 1.0), (0.0, 0.0), (0.0, 0.0))

    @property
    def colour(self) -> bool:
        return (self.brightness, self.contrast, self.saturation, self.hue) != ((1.0, 1.0),) * 3 + ((0.0, 0.0),)


def plan_augment(aug: AugmentConfig | None) -> AugmentPlan | None:
    """The spec's symmetric maxima as ranges; None (no per-image augmentation) gives None."""
    if aug is None or not aug.enabled:
        return None
    jitter = (max(0.0, 1 - aug.color_jitter), 1 + aug.color_jitter)
    rand = aug.randaugment
    return AugmentPlan(
        crop_area=tuple(aug.random_resized_crop) if aug.random_resized_crop else None,
        hflip=aug.hflip,
        vflip=aug.vflip,
        rotate=(-aug.rotate, aug.rotate),
        scale=tuple(aug.scale) if aug.scale else (1.0, 1.0),
        shear=(-aug.shear, aug.shear),
        shift=(-aug.shift, aug.shift),
        brightness=jitter,
        contrast=jitter,
        saturation=jitter,
        hue=(-aug.hue, aug.hue),
        blur=aug.blur,
        sharpness=aug.sharpness,
        randaugment=(rand.num_ops, rand.magnitude) if rand else None,
    )


def build_transform(pre: dict[str, Any], augment: AugmentConfig | None, backend: str = "albumentations") -> Transform:
    """`augment=None` (or a spec without per-image augmentation) gives the evaluation transform."""
    return build_pipeline(pre, plan_augment(augment), backend)


def build_pipeline(pre: dict[str, Any], plan: AugmentPlan | None, backend: str) -> Transform:
    if backend == "albumentations":
        from fruitlab.data import augment_albumentations

        return augment_albumentations.build(pre, plan)
    if backend == "torchvision":
        from fruitlab.data import augment_torchvision

        return augment_torchvision.build(pre, plan)
    raise ValueError(f"unknown augmentation backend {backend!r} (allowed: {', '.join(BACKENDS)})")


def eval_resize(pre: dict[str, Any]) -> int:
    return round(pre["input_size"] / pre["crop_pct"])


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the shorter side `short_side`, the longer truncated (torchvision's Resize(int) rule)."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def centre_offset(side: int, crop: int) -> int:
    """Start of a centred crop, rounded half to even (torchvision's CenterCrop rule)."""
    return round((side - crop) / 2)


def fill_colour(pre: dict[str, Any]) -> tuple[int, int, int]:
    """The mean colour, 0-255: what pixels from outside the image become (0 after normalising)."""
    return tuple(round(255 * m) for m in pre["mean"])  # type: ignore[return-value]

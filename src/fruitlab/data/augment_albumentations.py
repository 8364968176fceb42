"""The pipeline of transforms.py on albumentations (OpenCV, uint8 HxWx3 arrays until normalising)."""

from __future__ import annotations

import random
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image, ImageOps

from fruitlab.data.transforms import AugmentPlan, Transform, centre_offset, eval_resize, fill_colour, resized_shape

INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


def build(pre: dict[str, Any], plan: AugmentPlan | None) -> Transform:
    size = pre["input_size"]
    interp = INTERPOLATION[pre["interpolation"]]
    # Tensors warp with nearest or bilinear only in torchvision, so the affine ops are bilinear here too.
    warp = cv2.INTER_NEAREST if interp == cv2.INTER_NEAREST else cv2.INTER_LINEAR
    fill = fill_colour(pre)
    ops: list[Any]
    if plan is not None and plan.crop_area:
        ops = [
            A.RandomResizedCrop(
                size=(size, size), scale=plan.crop_area, interpolation=interp, area_for_downscale="image"
            )
        ]
    else:
        ops = [CentreFrame(eval_resize(pre), size, interp)]
    if plan is not None:
        ops += _augmentations(plan, size, warp, fill)
    ops += [A.Normalize(mean=pre["mean"], std=pre["std"], max_pixel_value=255.0), ToTensorV2()]
    return SeededCompose(A.Compose(ops))


def _augmentations(plan: AugmentPlan, size: int, warp: int, fill: tuple[int, ...]) -> list[Any]:
    ops: list[Any] = []
    if plan.hflip:
        ops.append(A.HorizontalFlip(p=plan.hflip))
    if plan.vflip:
        ops.append(A.VerticalFlip(p=plan.vflip))
    if plan.affine:
        ops.append(
            A.Affine(
                rotate=plan.rotate,
                scale=plan.scale,
                keep_ratio=True,  # one zoom factor for both axes, as torchvision (False draws one per axis)
                shear={"x": plan.shear, "y": (0.0, 0.0)},  # torchvision shears x only
                translate_percent={"x": plan.shift, "y": plan.shift},
                interpolation=warp,
                border_mode=cv2.BORDER_CONSTANT,
                fill=fill,
                p=1.0,
            )
        )
    if plan.randaugment:
        ops.append(rand_augment(*plan.randaugment, size=size, interpolation=warp, fill=fill))
    if plan.colour:
        ops.append(
            A.ColorJitter(
                brightness=plan.brightness, contrast=plan.contrast, saturation=plan.saturation, hue=plan.hue, p=1.0
            )
        )
    if plan.blur:
        # A fixed 5x5 kernel as torchvision's GaussianBlur(5); blur_limit=(3, 5) would also draw 3x3 kernels.
        ops.append(A.GaussianBlur(blur_limit=(5, 5), sigma_limit=plan.blur_sigma, p=plan.blur))
    if plan.sharpness:
        ops.append(AdjustSharpness(plan.sharpness_factor, p=plan.sharpness))
    return ops


class SeededCompose:
    """Runs the pipeline on random state seeded from torch's, once per process (each DataLoader worker).

    albumentations 2 keeps its own generators: seeded from OS entropy they are copied unchanged into every forked
    DataLoader worker (all workers repeat the same draws) and no run can be repeated; and `Compose(seed=...)`
    gives every transform its own generator with the same seed, so e.g. hflip and vflip at equal p always flip
    together (measured with 2.0.8). One shared generator seeded from torch.initial_seed() fixes all three: the
    DataLoader seeds torch per worker from the experiment seed.
    """

    def __init__(self, pipeline: A.Compose):
        self.pipeline, self.seed = pipeline, None

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        seed = torch.initial_seed()
        if seed != self.seed:
            self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
            self.seed = seed
        return self.pipeline(image=image)["image"]


class CentreFrame(A.ImageOnlyTransform):
    """Resize the shorter side to `resize` and centre-crop `size` with torchvision's rounding.

    SmallestMaxSize + CenterCrop round the long side and the crop offset differently (a pixel's shift at times).
    Shrinking uses INTER_AREA, closest in OpenCV to torchvision's antialiased resize.
    """

    def __init__(self, resize: int, size: int, interpolation: int):
        super().__init__(p=1.0)
        self.resize, self.size, self.interpolation = resize, size, interpolation

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        height, width = img.shape[:2]
        new_h, new_w = resized_shape(height, width, self.resize)
        if (new_h, new_w) != (height, width):
            flag = cv2.INTER_AREA if new_h < height else self.interpolation
            img = cv2.resize(img, (new_w, new_h), interpolation=flag)
        top, left = centre_offset(new_h, self.size), centre_offset(new_w, self.size)
        return np.ascontiguousarray(img[top : top + self.size, left : left + self.size])


class AdjustSharpness(A.ImageOnlyTransform):
    """torchvision's adjust_sharpness: blend with a 3x3 smoothed copy (1s around a 5, / 13); border pixels kept.

    A.Sharpen with alpha = (factor - 1) / 13 and lightness 1 has the same kernel, but only sharpens (alpha >= 0),
    rounds differently and filters the border too; RandAugment also needs factors below 1.
    """

    KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13

    def __init__(self, factor: float, p: float = 1.0):
        super().__init__(p=p)
        self.factor = factor

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.shape[0] <= 2 or img.shape[1] <= 2:
            return img
        smooth = img.astype(np.float32)
        smooth[1:-1, 1:-1] = np.round(cv2.filter2D(img, cv2.CV_32F, self.KERNEL)[1:-1, 1:-1])
        out = smooth + self.factor * (img.astype(np.float32) - smooth)  # factor * img + (1 - factor) * smooth
        return np.clip(out, 0, 255).astype(np.uint8)


class CornerShear(A.ImageOnlyTransform):
    """RandAugment's shear as torchvision (and TF's AutoAugment) does it: around the top-left corner.

    A.Affine shears around the centre and could make up the difference with whole-pixel shifts only.
    """

    def __init__(self, axis: str, tan: float, interpolation: int, fill: tuple[int, ...]):
        super().__init__(p=1.0)
        self.axis, self.tan, self.interpolation, self.fill = axis, tan, interpolation, fill

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        t = self.tan  # the corner is at pixel coordinates (-0.5, -0.5): x' = x - t * (y + 0.5)
        matrix = [[1, -t, -t / 2], [0, 1, 0]] if self.axis == "x" else [[1, 0, 0], [-t, 1, -t / 2]]
        height, width = img.shape[:2]
        return cv2.warpAffine(
            img,
            np.array(matrix, dtype=np.float64),
            (width, height),
            flags=self.interpolation,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=self.fill,
        )


class Equalize(A.ImageOnlyTransform):
    """PIL's histogram equalization, which torchvision reproduces; A.Equalize(mode="pil") builds its table
    differently (2-4 grey levels apart on average, up to 29, on scikit-image's photos)."""

    def __init__(self) -> None:
        super().__init__(p=1.0)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return np.asarray(ImageOps.equalize(Image.fromarray(img)))


def rand_augment(num_ops: int, magnitude: int, size: int, interpolation: int, fill: tuple[int, ...]) -> A.Sequential:
    """RandAugment as torchvision.transforms.v2.RandAugment does it, built from albumentations ops by hand
    because albumentations (2.0) has none: `num_ops` times, one of torchvision's 14 operations drawn uniformly
    (with replacement), at magnitude bin `magnitude` of 31, with a random sign where torchvision draws one.
    """
    ops = [A.OneOf(variants, p=1.0) for variants in rand_augment_ops(magnitude, size, interpolation, fill).values()]
    # OneOf weighs its members by their p: all are 1, so each operation has chance 1/14 and each sign 1/2.
    return A.Sequential([A.OneOf(ops, p=1.0) for _ in range(num_ops)], p=1.0)


def rand_augment_ops(magnitude: int, size: int, interpolation: int, fill: tuple[int, ...]) -> dict[str, list[Any]]:
    """torchvision's RandAugment operations at one magnitude bin, by its names: [op] or [op(+m), op(-m)].

    Magnitudes follow torchvision's table (31 bins); images are `size` x `size` here (after framing).
    """
    m = magnitude / 30
    shear = 0.3 * m  # tan of the shear angle
    shift = int(150 / 331 * size * m)  # pixels
    factor = 0.9 * m  # enhancement factors are 1 +- factor
    bits = round(8 - 4 * m)
    warp = {"interpolation": interpolation, "border_mode": cv2.BORDER_CONSTANT, "fill": fill, "p": 1.0}
    zero = (0.0, 0.0)

    def jitter(name: str, value: float) -> A.ColorJitter:
        ranges = {"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0), "hue": zero}
        return A.ColorJitter(**{**ranges, name: (value, value)}, p=1.0)

    signs = (1, -1)
    return {
        "Identity": [A.NoOp(p=1.0)],
        "ShearX": [CornerShear("x", s * shear, interpolation, fill) for s in signs],
        "ShearY": [CornerShear("y", s * shear, interpolation, fill) for s in signs],
        "TranslateX": [A.Affine(translate_px={"x": s * shift, "y": 0}, **warp) for s in signs],
        "TranslateY": [A.Affine(translate_px={"x": 0, "y": s * shift}, **warp) for s in signs],
        "Rotate": [A.Affine(rotate=(s * 30 * m, s * 30 * m), **warp) for s in signs],
        "Brightness": [jitter("brightness", 1 + s * factor) for s in signs],
        "Color": [jitter("saturation", 1 + s * factor) for s in signs],
        "Contrast": [jitter("contrast", 1 + s * factor) for s in signs],
        "Sharpness": [AdjustSharpness(1 + s * factor) for s in signs],
        "Posterize": [A.Posterize(num_bits=bits, p=1.0) if bits < 8 else A.NoOp(p=1.0)],
        "Solarize": [A.Solarize(threshold_range=(1 - m, 1 - m), p=1.0)],
        "AutoContrast": [A.AutoContrast(method="pil", p=1.0)],
        "Equalize": [Equalize()],
    }

"""Common image corruptions at five severities, in the spirit of ImageNet-C (Hendrycks & Dietterich 2019).

One table, `CORRUPTIONS`: each corruption's parameter per severity 1..5 is written once, next to what it means.
Noise, blur, JPEG, brightness and contrast take ImageNet-C's values (its images are 224 px, as the decoded
images here are about); colour shift, rotation and crop are ours. They apply to decoded RGB uint8 images
(H, W, 3) before a model's own preprocessing, so any model can be scored under them.

Deterministic: the random part of a corruption (the noise, a rotation's direction, a crop's position) is drawn from
a generator seeded by the image's name, the corruption and the severity, never by its position in a batch or the
number of workers, so two runs give the same pixels.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from fruitlab.errors import FruitlabError, did_you_mean

SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SEVERITIES = (1, 3, 5)  # one pass over the images per corruption and severity: three bound the cost

Apply = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Corruption:
    name: str
    apply: Apply  # (RGB uint8 image, parameter, seeded generator) -> RGB uint8 image of the same size
    levels: tuple[float, ...]  # the parameter at severity 1..5
    meaning: str  # what the parameter is, for the report


def _gaussian_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(_unit(image) + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(std))


def _gaussian_blur(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))


def _jpeg(image: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(buffer).convert("RGB"))


def _brightness(image: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(_unit(image) + np.float32(shift))


def _contrast(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = (image.reshape(-1, 3).mean(axis=0) / 255).astype(np.float32)  # per channel
    return _to_uint8((_unit(image) - mean) * np.float32(factor) + mean)


def _colour_shift(image: np.ndarray, gain: float, rng: np.random.Generator) -> np.ndarray:
    """White balance off: red times (1 + gain), blue times (1 - gain), or the reverse (warm or cool light)."""
    sign = rng.choice((-1.0, 1.0))
    gains = np.array([1 + sign * gain, 1.0, 1 - sign * gain], dtype=np.float32)
    return _to_uint8(_unit(image) * gains)


def _rotation(image: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Turned about the centre by +-degrees (direction drawn), same size; corners filled with the border's mean."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).mean(axis=0)
    angle = float(rng.choice((-1.0, 1.0)) * degrees)
    turned = Image.fromarray(image).rotate(angle, Image.BILINEAR, fillcolor=tuple(int(c) for c in border))
    return np.asarray(turned)


def _crop(image: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    """A `keep` x `keep` window (position drawn) scaled back up to the full size: zoomed in, parts cut off."""
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * keep)), max(1, round(w * keep))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    window = Image.fromarray(image[top : top + ch, left : left + cw])
    return np.asarray(window.resize((w, h), Image.BILINEAR))


def _unit(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] (float32: half the memory traffic of float64, these run once per image)."""
    return image.astype(np.float32) * np.float32(1 / 255)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("gaussian_noise", _gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38), "noise std (1 = full range)"),
        Corruption("gaussian_blur", _gaussian_blur, (1, 2, 3, 4, 6), "blur sigma, px"),
        Corruption("jpeg", _jpeg, (25, 18, 15, 10, 7), "JPEG quality"),
        Corruption("brightness", _brightness, (0.1, 0.2, 0.3, 0.4, 0.5), "added to every channel (1 = full range)"),
        Corruption("contrast", _contrast, (0.4, 0.3, 0.2, 0.1, 0.05), "contrast factor (1 = unchanged)"),
        Corruption("colour_shift", _colour_shift, (0.1, 0.2, 0.3, 0.4, 0.5), "red/blue gain change (white balance)"),
        Corruption("rotation", _rotation, (10, 20, 30, 45, 60), "rotation, degrees (direction drawn)"),
        Corruption("crop", _crop, (0.9, 0.8, 0.7, 0.6, 0.5), "side kept of a window scaled to full size"),
    )
}


def corrupt(image: np.ndarray, name: str, severity: int, key: str) -> np.ndarray:
    """`image` (H, W, 3 uint8) under corruption `name` at `severity`; `key` names the image (seeds the draw)."""
    corruption = CORRUPTIONS[name]
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return corruption.apply(image, corruption.levels[severity - 1], _generator(key, name, severity))


def parse_corruptions(names: str | None) -> list[str]:
    """'all' or None -> every corruption; 'noise,jpeg'-style comma lists are checked, with 'did you mean'."""
    if names is None or names.strip() == "all":
        return list(CORRUPTIONS)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    for name in chosen:
        if name not in CORRUPTIONS:
            raise FruitlabError(
                f"--corruption-names: unknown corruption {name!r}{did_you_mean(name, CORRUPTIONS)}; "
                f"allowed: all, {', '.join(CORRUPTIONS)}"
            )
    if not chosen:
        raise FruitlabError(f"--corruption-names: give 'all' or some of {', '.join(CORRUPTIONS)}, comma-separated")
    return list(dict.fromkeys(chosen))


def parse_severities(text: str | None) -> list[int]:
    """'1,3,5' -> [1, 3, 5]; None -> DEFAULT_SEVERITIES; each between 1 and 5."""
    if text is None:
        return list(DEFAULT_SEVERITIES)
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v not in SEVERITIES for v in values):
        raise FruitlabError(
            f"--corruption-severities {text!r}: give severities from 1 (mild) to 5 (severe), comma-separated, "
            "e.g. 1,3,5"
        )
    return sorted(set(values))


def _generator(key: str, name: str, severity: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{key}\0{name}\0{severity}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))

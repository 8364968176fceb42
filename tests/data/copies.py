"""Real photos (scikit-image's bundled ones) and copies made the way the fruit set's augmented copies were made."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

Copy = Callable[[np.ndarray], np.ndarray]


def photo(name: str) -> np.ndarray:
    """An HxWx3 uint8 photo from skimage.data (grey ones as RGB)."""
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


# Different scenes: none is a copy of another.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def rotate(degrees: float) -> Copy:
    """Rotated about the centre, same size, black corners (like `rotated_by_45_...`)."""

    def apply(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        return cv2.warpAffine(image, matrix, (w, h), borderValue=(0, 0, 0))

    return apply


def shift(fraction: float) -> Copy:
    """Moved right and down by `fraction` of the size, black where nothing was (like `translation_...`)."""

    def apply(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        matrix = np.float32([[1, 0, fraction * w], [0, 1, fraction * h]])
        return cv2.warpAffine(image, matrix, (w, h), borderValue=(0, 0, 0))

    return apply


def crop(keep: float) -> Copy:
    """The centre `keep` x `keep` of the image, resized back to the original size."""

    def apply(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        dh, dw = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
        return cv2.resize(image[dh : h - dh, dw : w - dw], (w, h), interpolation=cv2.INTER_LINEAR)

    return apply


def salt_and_pepper(amount: float = 0.03, seed: int = 0) -> Copy:
    def apply(image: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        noisy = image.copy()
        dots = rng.random(image.shape[:2])
        noisy[dots < amount / 2] = 0
        noisy[dots > 1 - amount / 2] = 255
        return noisy

    return apply


def reencode(quality: int = 40, scale: float = 0.6) -> Copy:
    """Smaller and re-encoded as a low-quality JPEG."""

    def apply(image: np.ndarray) -> np.ndarray:
        small = Image.fromarray(image).resize((int(image.shape[1] * scale), int(image.shape[0] * scale)))
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))

    return apply


def hflip(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def vflip(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[::-1])


def both(*steps: Copy) -> Copy:
    def apply(image: np.ndarray) -> np.ndarray:
        for step in steps:
            image = step(image)
        return image

    return apply


COPIES: dict[str, Copy] = {
    "rotate15": rotate(15),
    "rotate45": rotate(45),
    "rotate75": rotate(75),
    "hflip": hflip,
    "vflip": vflip,
    "shift": shift(0.15),
    "crop": crop(0.75),
    "salt_and_pepper": salt_and_pepper(),
    "reencode": reencode(),
    "vflip_rotate30_noise": both(vflip, rotate(30), salt_and_pepper(seed=1)),
}


def save(image: np.ndarray, path: Path, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return path


def small(image: np.ndarray, side: int = 320) -> np.ndarray:
    """Scaled so the longer side is `side` px: quick to check, still a real photo."""
    scale = side / max(image.shape[:2])
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

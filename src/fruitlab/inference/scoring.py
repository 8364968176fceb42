"""Logits of a loaded model over many images, optionally with their mirror images (flip TTA).

Logits, not probabilities, are kept: temperature scaling needs them, and any temperature can then be applied
afterwards without another pass over the images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fruitlab.data.images import load_rgb_array
from fruitlab.evaluation.confidence import softmax
from fruitlab.inference.predict import DECODE_THREADS, Predictor


@dataclass
class Scores:
    logits: dict[str, np.ndarray]  # task -> (N, C)
    flipped: dict[str, np.ndarray] | None = None  # the same for the horizontally mirrored inputs (TTA)


Alter = Callable[[np.ndarray, int], np.ndarray]  # (decoded RGB image, its index in the items) -> RGB image


def score(
    predictor: Predictor, items: Sequence[Any], tta: bool = False, batch_size: int = 32, alter: Alter | None = None
) -> Scores:
    """`alter`: applied to each decoded image before the model's preprocessing (a corruption, robustness.py)."""
    chunks: list[dict[str, np.ndarray]] = []
    flipped: list[dict[str, np.ndarray]] = []
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for start in range(0, len(items), batch_size):
            x = model_inputs(predictor, items[start : start + batch_size], pool, alter, start)  # (B, 3, S, S)
            chunks.append(_numpy(predictor.logits(x)))
            if tta:
                flipped.append(_numpy(predictor.logits(x.flip(-1))))  # mirror left-right
    return Scores(_concat(chunks), _concat(flipped) if tta else None)


def probabilities(scores: Scores, temperature: dict[str, float] | None = None, tta: bool = False) -> dict[str, Any]:
    """{task: (N, C)} softmax(logits / T); with TTA the mean of the image's and its mirror's probabilities."""
    out = {}
    for task, logits in scores.logits.items():
        t = (temperature or {}).get(task, 1.0)
        probs = softmax(logits, t)
        if tta and scores.flipped is not None:
            probs = (probs + softmax(scores.flipped[task], t)) / 2
        out[task] = probs
    return out


def model_inputs(
    predictor: Predictor,
    items: Sequence[Any],
    pool: ThreadPoolExecutor | None = None,
    alter: Alter | None = None,
    first: int = 0,
) -> torch.Tensor:
    """Items framed and normalised exactly as the model's validation images were: (B, 3, S, S).

    `alter(image, index)` changes each decoded image first; `first` is the index of items[0] in the whole set.
    """

    def load(index: int) -> torch.Tensor:
        image = load_rgb_array(items[index], predictor.min_side)
        return predictor.transform(alter(image, first + index) if alter else image)

    decoded = list(pool.map(load, range(len(items)))) if pool else [load(i) for i in range(len(items))]
    return torch.stack(decoded)


def to_display(predictor: Predictor, x: torch.Tensor) -> np.ndarray:
    """Model inputs (B, 3, S, S) back to what the model saw, as RGB uint8 (B, S, S, 3)."""
    mean = torch.tensor(predictor.preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(predictor.preprocess["std"]).view(1, 3, 1, 1)
    rgb = (x.detach().cpu().float() * std + mean).clamp(0, 1)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _numpy(logits: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {task: value.numpy() for task, value in logits.items()}


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {task: np.concatenate([c[task] for c in chunks]) for task in chunks[0]}

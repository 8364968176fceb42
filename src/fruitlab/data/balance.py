"""Class balance (`data.balance`): inverse-frequency class weights for the loss, per-sample weights for a sampler."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """Weight per class proportional to 1 / its count, scaled so that the weights average 1.

    A class with no images gets weight 0 (nothing to weigh); the others still average 1.
    """
    counts = Counter(labels)
    inverse = [1.0 / counts[c] if counts[c] else 0.0 for c in range(num_classes)]
    present = [w for w in inverse if w]
    if not present:
        return [0.0] * num_classes
    mean = sum(present) / len(present)
    return [w / mean for w in inverse]


def sample_weights(labels: Sequence[int]) -> list[float]:
    """Weight per sample = 1 / its class's count: every class is drawn equally often by a weighted sampler."""
    counts = Counter(labels)
    return [1.0 / counts[label] for label in labels]

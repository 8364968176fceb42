"""Confidence: answering `unknown` below a threshold, and temperature scaling.

A threshold trades coverage (the share of images that get an answer) for accuracy on the answered ones; the table
and curve here let a user pick one from validation data. Temperature scaling (Guo et al. 2017) divides the logits
by one fitted scalar T: the argmax - hence accuracy - is unchanged, but probabilities stop being over- (T > 1) or
under-confident (T < 1), which is what makes a threshold on them mean something.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fruitlab.errors import FruitlabError

UNKNOWN = "unknown"
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # rows of the report's table
CURVE_STEPS = 101  # thresholds 0.00, 0.01, ..., 1.00 for the plot


def check_threshold(value: float | None, option: str = "--threshold") -> None:
    """A probability in [0, 1], else a one-line error for the user."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise FruitlabError(f"{option} {value:g} is not a probability: give a value between 0 and 1, e.g. 0.8")


def answers(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Predicted class index per row, or -1 (unknown) where the top probability is below `threshold`."""
    probs = np.asarray(probs)
    pred = probs.argmax(1)
    if threshold is None:
        return pred
    return np.where(probs.max(1) >= threshold, pred, -1)


def at_threshold(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Coverage and accuracy on the answered images at one threshold (accuracy None when none is answered)."""
    given = answers(probs, threshold)
    answered = given >= 0
    n_answered = int(answered.sum())
    right = int((given[answered] == np.asarray(labels)[answered]).sum())
    return {
        "threshold": float(threshold),
        "coverage": n_answered / len(given) if len(given) else 0.0,
        "answered": n_answered,
        "unknown": len(given) - n_answered,
        "accuracy": right / n_answered if n_answered else None,
        "errors": n_answered - right,
    }


def threshold_table(
    probs: np.ndarray, labels: np.ndarray, thresholds: tuple[float, ...] | list[float] = THRESHOLDS
) -> list[dict[str, Any]]:
    return [at_threshold(probs, labels, t) for t in sorted(set(thresholds))]


def threshold_curve(probs: np.ndarray, labels: np.ndarray, steps: int = CURVE_STEPS) -> dict[str, list[Any]]:
    """Coverage and answered accuracy on an even grid of thresholds, for the plot."""
    rows = threshold_table(probs, labels, list(np.linspace(0.0, 1.0, steps)))
    return {key: [row[key] for row in rows] for key in ("threshold", "coverage", "accuracy")}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(1, keepdims=True)  # exp of large logits would overflow
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll_at(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class after dividing the logits by `temperature`."""
    import torch  # here, not at the top: the CLI checks --threshold with this module before torch is needed

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    return float(torch.nn.functional.cross_entropy(z, torch.as_tensor(np.asarray(labels, dtype=np.int64))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on held-out data.

    Optimised over log T (so T stays positive) with L-BFGS, as in the reference implementation; the problem is
    one-dimensional and convex in 1/T, so it converges in a few steps from T = 1.
    """
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp())

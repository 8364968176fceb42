"""Confidence thresholds (coverage vs accuracy) and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from fruitlab.errors import FruitlabError
from fruitlab.evaluation.confidence import (
    answers,
    check_threshold,
    fit_temperature,
    nll_at,
    softmax,
    threshold_curve,
    threshold_table,
)
from fruitlab.evaluation.records import predictions_csv


def test_threshold_table_by_hand():
    # confidences 0.95 right, 0.85 wrong, 0.75 right, 0.65 right, 0.55 wrong
    probs = np.array([[0.95, 0.05], [0.15, 0.85], [0.25, 0.75], [0.65, 0.35], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 0, 0])
    rows = {r["threshold"]: r for r in threshold_table(probs, labels, [0.0, 0.7, 0.9, 1.0])}
    assert rows[0.0] == {"threshold": 0.0, "coverage": 1.0, "answered": 5, "unknown": 0, "accuracy": 0.6, "errors": 2}
    assert rows[0.7]["coverage"] == 0.6 and rows[0.7]["accuracy"] == pytest.approx(2 / 3) and rows[0.7]["errors"] == 1
    assert rows[0.9]["answered"] == 1 and rows[0.9]["accuracy"] == 1.0
    assert rows[1.0]["answered"] == 0 and rows[1.0]["accuracy"] is None and rows[1.0]["unknown"] == 5
    assert answers(probs, 0.7).tolist() == [0, 1, 1, -1, -1]
    assert answers(probs, None).tolist() == [0, 1, 1, 0, 1]
    curve = threshold_curve(probs, labels)
    assert len(curve["threshold"]) == 101 and curve["coverage"][0] == 1.0 and curve["coverage"][-1] == 0.0
    assert all(a >= b for a, b in zip(curve["coverage"], curve["coverage"][1:], strict=False))  # never grows


def test_unknown_answers_in_the_predictions_csv():
    probs = np.array([[0.9, 0.1], [0.4, 0.6]])
    text = predictions_csv(["x.jpg", "y.jpg"], np.array([0, 0]), probs, ["cat", "coffee"], threshold=0.7)
    lines = text.splitlines()
    assert lines[0] == "path,true,predicted,confidence,answer,p:cat,p:coffee"
    assert lines[1] == "x.jpg,cat,cat,0.9,cat,0.9,0.1"
    assert lines[2] == "y.jpg,cat,coffee,0.6,unknown,0.4,0.6"


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_thresholds_outside_0_1_are_refused(value):
    with pytest.raises(FruitlabError, match="is not a probability"):
        check_threshold(value)
    check_threshold(0.0)
    check_threshold(1.0)


def _miscalibrated(scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 4-class model that is right ~70% of the time, multiplied by `scale` (>1: over-confident)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 600)
    guess = np.where(rng.random(600) < 0.7, labels, rng.integers(0, 4, 600))
    logits = rng.normal(0, 0.5, (600, 4)) + 2.0 * np.eye(4)[guess]
    return scale * logits, labels


@pytest.mark.parametrize(("scale", "over"), [(4.0, True), (0.3, False)])
def test_temperature_scaling_lowers_the_nll(scale, over):
    logits, labels = _miscalibrated(scale)
    t = fit_temperature(logits, labels)
    assert (t > 1.5) if over else (t < 0.7)  # over-confident logits need T > 1, under-confident T < 1
    before, after = nll_at(logits, labels), nll_at(logits, labels, t)
    assert after < before - 0.05
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))
    z = logits[None] / grid[:, None, None]  # (grid, N, C): the NLL at every T at once, in numpy
    log_probs = z - np.log(np.exp(z - z.max(2, keepdims=True)).sum(2, keepdims=True)) - z.max(2, keepdims=True)
    nll = -log_probs[:, np.arange(len(labels)), labels].mean(1)
    assert t == pytest.approx(grid[nll.argmin()], rel=0.03)  # L-BFGS finds the grid's minimum
    assert after == pytest.approx(nll.min(), abs=1e-3)
    # the argmax (and so accuracy) does not change
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()

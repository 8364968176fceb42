"""The raw predictions of an evaluation as CSV, one file per task: what every reported number derives from."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from fruitlab.evaluation.confidence import UNKNOWN, answers


def predictions_csv(
    paths: Sequence[str], labels: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float | None = None
) -> str:
    """Columns: path, true, predicted, confidence, answer (`unknown` below the threshold), p:<class> for each class.

    Probabilities are written with 9 significant digits: enough to recompute every metric to ~1e-7.
    """
    probs = np.asarray(probs, dtype=np.float64)
    given = answers(probs, threshold)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "true", "predicted", "confidence", "answer", *(f"p:{c}" for c in classes)])
    for i, path in enumerate(paths):
        row = probs[i]
        answer = classes[given[i]] if given[i] >= 0 else UNKNOWN
        writer.writerow(
            [path, classes[labels[i]], classes[row.argmax()], f"{row.max():.9g}", answer, *(f"{p:.9g}" for p in row)]
        )
    return out.getvalue()

"""Everything `fruitlab evaluate` reports about one task, from raw predictions alone.

Inputs are arrays - probabilities (N, C) and true labels (N,) - so the numbers can be recomputed from the
predictions CSV the evaluation saves. torchmetrics does the standard metrics (the same implementation fit's
per-epoch metrics use); numpy only bins the reliability diagram, which torchmetrics does not expose.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

N_BINS = 15  # reliability-diagram / ECE bins of equal width (Guo et al. 2017 use 15)
TOP_K = (2, 5)  # reported where k < number of classes (top-k of k >= C is 1 by definition)
PROB_FLOOR = 1e-12  # NLL of a probability that rounds to 0 stays finite


def task_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str], n_bins: int = N_BINS) -> dict[str, Any]:
    """Overall, per-class, confusion and calibration figures of one task; probs (N, C), labels (N,) indices."""
    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    kw: dict[str, Any] = {"num_classes": len(classes)}
    out: dict[str, Any] = {"n": len(y), "classes": list(classes)}
    out["acc"] = float(multiclass_accuracy(p, y, average="micro", **kw))
    for k in TOP_K:
        if k < len(classes):
            out[f"top{k}_acc"] = float(multiclass_accuracy(p, y, average="micro", top_k=k, **kw))
    for average in ("macro", "weighted"):
        out[f"precision_{average}"] = float(multiclass_precision(p, y, average=average, **kw))
        out[f"recall_{average}"] = float(multiclass_recall(p, y, average=average, **kw))
        out[f"f1_{average}"] = float(multiclass_f1_score(p, y, average=average, **kw))
    out["per_class"] = per_class(p, y, classes)
    out["confusion"] = multiclass_confusion_matrix(p, y, **kw).tolist()  # rows: true class, columns: predicted
    with warnings.catch_warnings():  # a class absent from the data has a 0/0 row: torchmetrics zeros it and says so
        warnings.filterwarnings("ignore", message=".*NaN values found in confusion matrix.*")
        out["confusion_normalised"] = multiclass_confusion_matrix(p, y, normalize="true", **kw).tolist()
    out["ece"] = float(multiclass_calibration_error(p, y, n_bins=n_bins, norm="l1", **kw))
    out["nll"] = nll(probs, labels)
    out["reliability"] = reliability_bins(probs, labels, n_bins)
    return out


def per_class(p: torch.Tensor, y: torch.Tensor, classes: list[str]) -> list[dict[str, Any]]:
    kw: dict[str, Any] = {"num_classes": len(classes), "average": "none"}
    precision, recall = multiclass_precision(p, y, **kw), multiclass_recall(p, y, **kw)
    f1 = multiclass_f1_score(p, y, **kw)
    support = torch.bincount(y, minlength=len(classes))
    return [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    probs = np.asarray(probs, dtype=np.float64)
    true = probs[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.maximum(true, PROB_FLOOR)).mean())


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, Any]]:
    """Per confidence bin [lo, hi): count, mean confidence, accuracy (None when empty); confidence = top-1 prob.

    ECE is the count-weighted mean of |accuracy - confidence| over these bins (torchmetrics' binning too).
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(1)
    correct = probs.argmax(1) == np.asarray(labels)
    index = np.clip((confidence * n_bins).astype(int), 0, n_bins - 1)  # 1.0 goes into the last bin
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return bins


def joint_accuracy(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> float | None:
    """Share of images with every task right; None for a single-task model."""
    if len(probs) < 2:
        return None
    right = np.stack([np.asarray(probs[t]).argmax(1) == np.asarray(labels[t]) for t in probs]).all(0)
    return float(right.mean())


def evaluate_probabilities(
    probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], tasks: dict[str, list[str]]
) -> dict[str, Any]:
    """{'n', 'tasks': {task: task_metrics}, 'joint_acc'} for a model's {task: (N, C)} probabilities."""
    reports = {task: task_metrics(probs[task], labels[task], names) for task, names in tasks.items()}
    n = len(next(iter(labels.values())))
    return {"n": n, "tasks": reports, "joint_acc": joint_accuracy(probs, labels)}


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of one task's report (what goes to MLflow and the summary table)."""
    return {k: v for k, v in report.items() if isinstance(v, float)}

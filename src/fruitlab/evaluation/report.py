"""Classification metrics from raw predictions: overall, per class, and the confusion matrix.

Plain torch + torchmetrics, no Lightning: fit uses it at the end of training, and serving-side tools can use
it on a loaded model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


@torch.inference_mode()
def predict_batches(
    model: torch.nn.Module, batches: Iterable[Any], device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (N, C) and labels (N,) over (images, labels) batches."""
    model = model.eval().to(device)
    probs, labels = [], []
    for images, target in batches:
        probs.append(model(images.to(device)).float().softmax(-1).cpu())
        labels.append(torch.as_tensor(target))
    return torch.cat(probs), torch.cat(labels)


def classification_report(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    n = len(classes)
    preds = probs.argmax(-1)
    kw: dict[str, Any] = {"num_classes": n}
    per_class = {
        "precision": multiclass_precision(preds, labels, average="none", **kw),
        "recall": multiclass_recall(preds, labels, average="none", **kw),
        "f1": multiclass_f1_score(preds, labels, average="none", **kw),
    }
    support = torch.bincount(labels, minlength=n)
    return {
        "n": len(labels),
        "acc": float(multiclass_accuracy(preds, labels, average="micro", **kw)),
        "precision_macro": float(multiclass_precision(preds, labels, average="macro", **kw)),
        "recall_macro": float(multiclass_recall(preds, labels, average="macro", **kw)),
        "f1_macro": float(multiclass_f1_score(preds, labels, average="macro", **kw)),
        "per_class": [
            {
                "class": name,
                "precision": float(per_class["precision"][i]),
                "recall": float(per_class["recall"][i]),
                "f1": float(per_class["f1"][i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        ],
        "confusion": multiclass_confusion_matrix(preds, labels, **kw).tolist(),
        "classes": list(classes),
    }


def confusion_figure(report: dict[str, Any], title: str) -> Any:
    """A matplotlib figure of the confusion matrix, counts in the cells, rows = true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix, classes = report["confusion"], report["classes"]
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    fig.tight_layout()
    return fig


def format_report(report: dict[str, Any], split: str) -> str:
    lines = [
        f"{split}: accuracy {report['acc']:.4f}  macro P/R/F1 {report['precision_macro']:.4f}/"
        f"{report['recall_macro']:.4f}/{report['f1_macro']:.4f}  (n={report['n']})",
        f"  {'class':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}",
    ]
    for row in report["per_class"]:
        lines.append(
            f"  {row['class']:<24}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>9}"
        )
    return "\n".join(lines)

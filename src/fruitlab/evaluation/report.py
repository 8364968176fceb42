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

SINGLE_TASK = "class"  # what a single-task model's one task is called in metric names


@torch.inference_mode()
def predict_batches(
    model: torch.nn.Module, batches: Iterable[Any], device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Softmax probabilities {task: (N, C_task)} and labels {task: (N,)} over (images, labels) batches.

    A single-task model (logits tensor, integer labels) reports as the one task `class`.
    """
    model = model.eval().to(device)
    probs: dict[str, list[torch.Tensor]] = {}
    labels: dict[str, list[torch.Tensor]] = {}
    for images, target in batches:
        out = model(images.to(device))
        out = out if isinstance(out, dict) else {SINGLE_TASK: out}
        target = target if isinstance(target, dict) else {SINGLE_TASK: target}
        for task, logits in out.items():
            probs.setdefault(task, []).append(logits.float().softmax(-1).cpu())
            labels.setdefault(task, []).append(torch.as_tensor(target[task]))
    return {t: torch.cat(v) for t, v in probs.items()}, {t: torch.cat(v) for t, v in labels.items()}


def evaluate_tasks(
    probs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], tasks: dict[str, list[str]]
) -> dict[str, Any]:
    """{'n', 'tasks': {task: classification_report}, 'joint_acc'}; joint = every task right (None if one task)."""
    reports = {task: classification_report(probs[task], labels[task], names) for task, names in tasks.items()}
    joint = None
    if len(tasks) > 1:
        right = torch.stack([probs[t].argmax(-1) == labels[t] for t in tasks]).all(0)
        joint = float(right.float().mean())
    n = len(next(iter(labels.values())))
    return {"n": n, "tasks": reports, "joint_acc": joint}


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


def format_evaluation(evaluation: dict[str, Any], split: str) -> str:
    """The terminal summary: one block per task, then the joint accuracy of a multi-task model."""
    blocks = []
    for task, report in evaluation["tasks"].items():
        blocks.append(format_report(report, split if task == SINGLE_TASK else f"{split} {task}"))
    if evaluation.get("joint_acc") is not None:
        blocks.append(f"{split} joint (every task right): accuracy {evaluation['joint_acc']:.4f} (n={evaluation['n']})")
    return "\n".join(blocks)


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

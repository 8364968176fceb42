"""Fit's final evaluation around the metrics: probabilities from batches, the confusion figure, the terminal text.

The metrics themselves come from evaluation/metrics.py, the one pipeline `fruitlab evaluate` uses too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from fruitlab.names import SINGLE_TASK


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

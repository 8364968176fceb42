"""The vocabulary every package shares: task names and metric names. Defined once here, imported everywhere.

Metric names are `{stage}/{task}/{metric}` (STYLE.md): `val/freshness/acc`, `best/val/class/f1_macro`, plus a few
stage-wide ones such as `val/loss`. A single-task model has one task, SINGLE_TASK; a multi-task model also reports
JOINT, the share of images with every task right.
"""

from __future__ import annotations

SINGLE_TASK = "class"  # the one task of a single-task model
JOINT = "joint"  # multi-task: every task right at once


PER_EPOCH = ("acc", "f1_macro")  # what fit logs per task every epoch; its final evaluation uses the same names

# Run-wide timings fit logs (seconds)
FIT_SECONDS = "fit_seconds"  # fit() from start to end
FIRST_STEP_SECONDS = "first_step_seconds"  # fit() start to the first training batch: the fixed cost before training


def metric_key(stage: str, task: str, metric: str) -> str:
    """`{stage}/{task}/{metric}`, e.g. metric_key('best/val', 'class', 'acc') == 'best/val/class/acc'."""
    return f"{stage}/{task}/{metric}"

"""The vocabulary every package shares: task names and metric names. Defined once here, imported everywhere.

Metric names are `{stage}/{task}/{metric}` (STYLE.md): `val/freshness/acc`, `val_best/class/f1_macro`, plus a few
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
    """`{stage}/{task}/{metric}`, e.g. metric_key('val', 'class', 'acc') == 'val/class/acc'."""
    return f"{stage}/{task}/{metric}"


# The best checkpoint's val scores (fit's final evaluation; a study's best trial on its parent run): stage VAL_BEST,
# so the MLflow UI, which sorts chart sections by name, shows them after the per-epoch `val/...` curves
# ('/' sorts before '_'). Runs logged before the rename carry `best/val/...`: tracking/metric_names.py reads both.
VAL = "val"
VAL_BEST = "val_best"


def best_key(key: str) -> str:
    """The best checkpoint's score under a per-epoch val metric's name: best_key('val/class/acc') ==
    'val_best/class/acc', best_key('val/loss') == 'val_best/loss'."""
    stage, slash, rest = key.partition("/")
    if stage != VAL or not slash or not rest:
        raise ValueError(f"best_key: {key!r} is not a per-epoch val metric (val/...)")
    return f"{VAL_BEST}/{rest}"


# Robustness (`fruitlab evaluate --corruptions`): `corrupt/<corruption>/<severity>/acc`, the model's headline
# accuracy (a multi-task model's joint one) on corrupted images; `.../<task>/acc` per task of a multi-task model;
# MEAN in place of the severity averages a corruption's severities, in place of the corruption every corruption.
CORRUPT = "corrupt"
MEAN = "mean"


def corruption_key(corruption: str, severity: int | str | None = None, task: str | None = None) -> str:
    """corruption_key('jpeg', 3) == 'corrupt/jpeg/3/acc'; corruption_key(MEAN) == 'corrupt/mean/acc'."""
    parts = [CORRUPT, corruption, *([str(severity)] if severity is not None else []), *([task] if task else [])]
    return "/".join([*parts, "acc"])


# What an evaluation's figures are worth (`fruitlab evaluate`): how many evaluated images copy a training image, and
# with --shift the model's own val split beside the shifted data: `shift/in_distribution/{task}/acc` and the drop
# `shift/drop/{task}/acc` (in-distribution minus shifted).
TRAIN_COPIES = "train_copies"  # count; TRAIN_COPIES + "_share": the share of the evaluated images
IN_DISTRIBUTION = "shift/in_distribution"
SHIFT_DROP = "shift/drop"

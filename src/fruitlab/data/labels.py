"""Labels per task: one task (`class`, the class folder) or several parsed from the data.

Every dataset gives each image one class (its folder, or nested folders `apple/fresh`). A multi-task dataset
maps each image to one label per task: from the class name by a regular expression, from nested folder
levels, or from a CSV. The label names of each task come from the data, sorted, like class names.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fruitlab.config import LabelsConfig
from fruitlab.errors import DataError
from fruitlab.names import SINGLE_TASK


@dataclass
class TaskLabels:
    tasks: dict[str, list[str]]  # task -> its label names, sorted; index == label
    targets: dict[str, dict[str, list[int]]]  # split -> task -> one label per item


def derive_task_labels(
    cfg: LabelsConfig,
    classes: Sequence[str],
    splits: Mapping[str, Any],  # split -> object with .items and .labels (class indices)
    root: str | os.PathLike[str],
    where: str = "",
) -> TaskLabels:
    if cfg.source == "class":
        return TaskLabels({SINGLE_TASK: list(classes)}, {s: {SINGLE_TASK: list(p.labels)} for s, p in splits.items()})
    if cfg.source == "csv":
        return _from_csv(cfg, splits, Path(root), where)
    per_class = [_parse_class(cfg, name, where) for name in classes]  # class index -> {task: raw value}
    tasks = list(per_class[0])
    names = {t: sorted({_rename(cfg, t, values[t]) for values in per_class}) for t in tasks}
    index = [{t: names[t].index(_rename(cfg, t, values[t])) for t in tasks} for values in per_class]
    targets = {s: {t: [index[label][t] for label in p.labels] for t in tasks} for s, p in splits.items()}
    return TaskLabels(names, targets)


def _parse_class(cfg: LabelsConfig, name: str, where: str) -> dict[str, str]:
    if cfg.source == "nested":
        parts = name.split("/")
        tasks = cfg.tasks or []
        if len(parts) != len(tasks):
            raise DataError(
                f"class folder {name!r} is {len(parts)} level(s) deep but data.labels.tasks names {len(tasks)} "
                f"({tasks}) {where}; nest the folders one level per task, e.g. train/apple/fresh/...".replace("  ", " ")
            )
        return dict(zip(tasks, parts, strict=True))
    try:
        pattern = re.compile(cfg.pattern or "")
    except re.error as exc:
        raise DataError(f"data.labels.pattern {cfg.pattern!r} is not a valid regular expression: {exc}") from None
    if not pattern.groupindex:
        raise DataError(
            f"data.labels.pattern {cfg.pattern!r} has no named groups; name one group per task, "
            "e.g. ^(?P<freshness>fresh|rotten)(?P<fruit>.+)$"
        )
    match = pattern.fullmatch(name) or pattern.match(name)
    if match is None:
        raise DataError(
            f"class {name!r} does not match data.labels.pattern {cfg.pattern!r} {where}; "
            "every class folder name must match it".replace("  ", " ")
        )
    return {task: value for task, value in match.groupdict().items() if value is not None}


def _rename(cfg: LabelsConfig, task: str, value: str) -> str:
    return cfg.rename.get(task, {}).get(value, value)


def _from_csv(cfg: LabelsConfig, splits: Mapping[str, Any], root: Path, where: str) -> TaskLabels:
    path = Path(cfg.csv or "")
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(f"data.labels.csv {path} does not exist {where}".replace("  ", " "))
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    if "path" not in columns:
        raise DataError(f"{path}: needs a 'path' column (image paths relative to {root}); columns: {columns}")
    tasks = cfg.tasks or [c for c in columns if c != "path"]
    missing_cols = [t for t in tasks if t not in columns]
    if missing_cols:
        raise DataError(f"{path}: no column(s) {missing_cols} for data.labels.tasks; columns: {columns}")
    by_path = {os.path.normpath(r["path"]): r for r in rows}
    names = {t: sorted({_rename(cfg, t, r[t]) for r in rows if r[t] != ""}) for t in tasks}
    targets: dict[str, dict[str, list[int]]] = {}
    for split, part in splits.items():
        targets[split] = {t: [] for t in tasks}
        missing = []
        for item in part.items:
            rel = os.path.normpath(os.path.relpath(str(item), root)) if isinstance(item, str | Path) else None
            row = by_path.get(rel) if rel else None
            if row is None or any(row[t] == "" for t in tasks):
                missing.append(rel)
                continue
            for t in tasks:
                targets[split][t].append(names[t].index(_rename(cfg, t, row[t])))
        if missing:
            raise DataError(
                f"{path}: {len(missing)} image(s) of split {split!r} have no row or an empty label, "
                f"e.g. {missing[:3]}; add a row per image (path relative to {root})"
            )
    return TaskLabels(names, targets)

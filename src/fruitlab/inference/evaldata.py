"""The images an evaluation runs on: a registered dataset's split, or a user's folder, labelled as the model labels.

A model trained by `fruitlab fit` carries its resolved experiment (config/experiment.yaml in its run), so a
registered dataset is split exactly as in training - the same scheme (e.g. `dli`), seed, caps and labels - and
"val" means the images the model was validated on. A folder holds `<class>/` folders (every image is evaluated)
or `train/` with `val/`|`valid/` and `test/` (one of them is). Labels are matched to the model's by name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fruitlab.config import DataConfig, Experiment, LabelsConfig, validate_experiment
from fruitlab.data.folders import image_folder_layout
from fruitlab.data.registry import get_source, load_dataset
from fruitlab.errors import DataError, FruitlabError, did_you_mean

log = logging.getLogger(__name__)

SPLIT_NAMES = {"val": "val", "valid": "val", "validation": "val", "test": "test"}  # what --split accepts
ALL = "all"  # a folder of <class>/ folders: every image


@dataclass
class EvalData:
    name: str  # the dataset (and its split scheme) or the folder
    split: str  # val | test | all
    items: list[Any]  # file paths, or HxWx3 arrays (CIFAR pickles)
    paths: list[str]  # how each item is named in the report: path relative to the data root, or #index
    targets: dict[str, np.ndarray]  # task -> the model's label index per item
    fingerprint: str  # the dataset's fingerprint + split: the evaluation dataset's digest in MLflow
    root: str

    def __len__(self) -> int:
        return len(self.items)


def check_split(split: str | None) -> str | None:
    """val (also valid, validation) or test; None = val for a dataset, every image for a plain folder."""
    if split is None:
        return None
    if split not in SPLIT_NAMES:
        raise FruitlabError(
            f"--split {split!r} is not a split (allowed: val or valid, test){did_you_mean(split, SPLIT_NAMES)}"
        )
    return SPLIT_NAMES[split]


def load_run_experiment(uri: str, run_id: str | None) -> Experiment | None:
    """The experiment a run was fitted with (its config artifact); None for models without one."""
    if not run_id:
        return None
    from fruitlab.tracking import runs  # MLflow: seconds to import, so not for the CLI's argument checks

    try:
        raw = yaml.safe_load(runs.load_run_config(uri, run_id))
        name = raw.get("tracking", {}).get("experiment") or "evaluated"
        return validate_experiment(raw, source=f"run {run_id}", name=name)
    except FruitlabError as exc:  # no config, or one an older fruitlab wrote: evaluate with defaults
        log.info("run %s: its experiment config cannot be used (%s); using the data defaults", run_id, exc)
        return None


def load_eval_data(
    data: str,
    split: str | None,
    model_tasks: dict[str, list[str]],
    exp: Experiment | None = None,
    data_dir: str | None = None,
) -> EvalData:
    cfg, plain = data_config(data, exp)
    return _eval_data(cfg, plain, split, model_tasks, exp.seed if exp else 42, data_dir)


def load_model_data(
    exp: Experiment, split: str, model_tasks: dict[str, list[str]], data_dir: str | None = None
) -> EvalData:
    """The model's own dataset, split exactly as in training (its run's experiment): in-distribution figures."""
    return _eval_data(exp.data, False, split, model_tasks, exp.seed, data_dir)


def _eval_data(
    cfg: DataConfig,
    plain: bool,
    split: str | None,
    model_tasks: dict[str, list[str]],
    seed: int,
    data_dir: str | None,
) -> EvalData:
    loaded = load_dataset(cfg, seed=seed, data_dir=data_dir)
    name = f"{loaded.name} ({loaded.scheme})" if cfg.dataset != "image_folder" else str(cfg.root)
    if plain:
        if split is not None:
            raise DataError(f"--split {split}: {cfg.root} holds class folders only (no train/ val/ test/)")
        parts, split = [loaded.splits["train"], loaded.splits["val"]], ALL
    else:
        split = split or "val"
        if split not in loaded.splits:
            have = ", ".join(s for s in loaded.splits if s != "train")
            raise DataError(f"--split {split}: {name} has no {split} split (it has: {have})")
        parts = [loaded.splits[split]]
    items = [item for part in parts for item in part.items]
    targets = _model_targets(
        loaded.tasks, model_tasks, {t: [v for p in parts for v in p.targets[t]] for t in loaded.tasks}
    )
    paths = [_display_path(item, i, loaded.root) for i, item in enumerate(items)]
    return EvalData(name, split, items, paths, targets, f"{loaded.fingerprint}-{split}", loaded.root)


def check_data(data: str) -> Path | None:
    """The folder `data` names, or None for a registered dataset name; a one-line error for neither."""
    path = Path(data).expanduser()
    if path.exists() or os.sep in data or data.startswith("."):
        if not path.is_dir():
            raise DataError(
                f"--data {data}: no such folder; give a folder of <class>/ images (or train/ val/ test/) "
                "or a dataset name (fruitlab data list)"
            )
        return path
    get_source(data, "(--data)")  # an unknown name gets 'did you mean' and the known names
    return None


def data_config(data: str, exp: Experiment | None) -> tuple[DataConfig, bool]:
    """(DataConfig, is it a plain folder of class folders) for a dataset name or a folder."""
    path = check_data(data)
    if path is not None:
        base = exp.data if exp else DataConfig()
        root = str(path.absolute())
        cfg = base.model_copy(update={"dataset": "image_folder", "root": root, "split": None, "max_per_class": None})
        return cfg, set(image_folder_layout(path)) == {"train"} and image_folder_layout(path)["train"] == path
    if exp is not None and exp.data.dataset == data:
        return exp.data, False  # the model's own split scheme, seed, caps and labels
    return DataConfig(dataset=data, labels=exp.data.labels if exp else LabelsConfig()), False


def _model_targets(
    data_tasks: dict[str, list[str]], model_tasks: dict[str, list[str]], targets: dict[str, list[int]]
) -> dict[str, np.ndarray]:
    """Data label indices -> the model's label indices, by name; an unknown name is an error."""
    if sorted(data_tasks) != sorted(model_tasks):
        raise DataError(
            f"the data is labelled for tasks {sorted(data_tasks)} but the model predicts {sorted(model_tasks)}; "
            "evaluate on data with the model's tasks"
        )
    out = {}
    for task, names in model_tasks.items():
        unknown = [n for n in data_tasks[task] if n not in names]
        if unknown:
            raise DataError(
                f"the data has {task} labels the model does not know: {', '.join(unknown)} "
                f"(the model's: {', '.join(names)}); rename or remove those folders"
            )
        mapping = np.array([names.index(n) for n in data_tasks[task]])
        out[task] = mapping[np.asarray(targets[task], dtype=np.int64)]
    return out


def _display_path(item: Any, index: int, root: str) -> str:
    if isinstance(item, str | os.PathLike):
        try:
            return str(Path(item).relative_to(root))
        except ValueError:
            return str(item)
    return f"#{index}"

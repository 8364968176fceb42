"""The experiment file `fruitlab init` writes for a user's image folder: a working start, not a template.

The folder is read as `fit` reads it (dataset `image_folder`: classes from the folders, unreadable files left out,
one class refused); the recipe is the quickstart's (EfficientNet-Lite0 with its offline ImageNet weights, a head
phase, then the last stage), taken from the packaged quickstart.yaml so it is written down once; the batch size
suits the machine, the validation split suits the folder, and the MLflow experiment is the file's own name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fruitlab.config import PACKAGED_EXPERIMENTS, DataConfig, validate_experiment
from fruitlab.data.folders import image_folder_layout, list_class_folders
from fruitlab.data.registry import DatasetSplits, load_dataset
from fruitlab.errors import ConfigError

RECIPE = "quickstart"  # the packaged experiment whose recipe (all but its data, sweep and tracking) a file starts from
NOT_RECIPE = ("description", "seed", "data", "sweep", "tracking")
LARGE_ON_CPU = 10_000  # images: above this, the header suggests a capped first run on a CPU
SMALL_CLASS = 50  # images: below this in the smallest class, hold out 30% for val instead of 20%


@dataclass
class StarterFile:
    path: Path
    name: str
    splits: DatasetSplits
    val: str  # how val is chosen, in words

    def summary(self) -> str:
        counts = ", ".join(f"{split} {n}" for split, n in self.splits.counts().items())
        return (
            f"wrote {self.path}: {self.splits.num_classes} classes ({counts} images), val: {self.val}, MLflow "
            f"experiment {self.name!r}. Next: fruitlab check -e {self.name}  then  fruitlab fit -e {self.name}"
        )


def write_starter(
    folder: Path, *, name: str | None = None, out: Path | None = None, force: bool = False, seed: int = 42
) -> StarterFile:
    """Write `out` (default ./experiments/<name>.yaml, so `-e <name>` finds it) for the images in `folder`."""
    root = folder.expanduser().absolute()
    name = name or _name_of(root)
    path = out or Path("experiments", f"{name}.yaml")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; choose another --name or --out, or overwrite it with --force")
    layout = image_folder_layout(root, "(fruitlab init FOLDER)")
    data: dict[str, Any] = {"dataset": "image_folder", "root": str(root)}
    if "val" not in layout:  # files per class, listed before anything is decoded
        smallest = min(len(files) for files in list_class_folders(layout["train"], "train").values())
        data["val_fraction"] = 0.2 if smallest >= SMALL_CLASS else 0.3
    splits = load_dataset(DataConfig(**data), seed=seed)  # every check fit makes: classes, readable files
    recipe = _recipe()
    data |= {"batch_size": _batch_size(), "augment": recipe.pop("augment")}
    raw = {"description": f"EfficientNet-Lite0 (offline ImageNet weights) on {root.name}: {splits.num_classes} classes"}
    raw |= {"seed": seed, "data": data, **recipe, "tracking": {"experiment": name}}
    val = (
        "your val/ folder"
        if "val" in layout
        else f"a stratified {data['val_fraction']:.0%} of each class (data.val_fraction)"
    )
    validate_experiment(raw, source=str(path), name=name)  # only a file that fit accepts is written
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_header(root, splits, val, data["batch_size"]) + yaml.safe_dump(raw, sort_keys=False))
    return StarterFile(path, name, splits, val)


def _name_of(root: Path) -> str:
    """The folder's name as an experiment name: letters, digits, '_' and '-'."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", root.name).strip("_-")
    if not name:
        raise ConfigError(f"cannot name an experiment after {root}; give --name NAME")
    return name


def _class_counts(splits: DatasetSplits, split: str | None = None) -> dict[str, int]:
    """Images per class in `split`, or over every split."""
    counts = dict.fromkeys(splits.classes, 0)
    for name, part in splits.splits.items():
        for label in part.labels if split in (None, name) else []:
            counts[splits.classes[label]] += 1
    return counts


def _recipe() -> dict[str, Any]:
    """The quickstart's model, loss, phases, cache settings and augmentation (its fruit data and sweep stay behind)."""
    raw = yaml.safe_load((PACKAGED_EXPERIMENTS / f"{RECIPE}.yaml").read_text())
    return {"augment": raw["data"].get("augment", {}), **{k: v for k, v in raw.items() if k not in NOT_RECIPE}}


def _batch_size() -> int:
    """32 on a CPU (the quickstart's, measured there); 64 where a CUDA GPU is visible."""
    import torch

    return 64 if torch.cuda.is_available() else 32


def _header(root: Path, splits: DatasetSplits, val: str, batch: int) -> str:
    counts = _class_counts(splits)
    width = max(len(c) for c in counts)
    per_split = {name: _class_counts(splits, name) for name in splits.splits}
    lines = [
        f"# Written by `fruitlab init {root}`: the quickstart's recipe (EfficientNet-Lite0, offline ImageNet",
        "# weights; a linear head on the frozen backbone, then its last stage) on your folder. Edit freely;",
        "# `fruitlab check -e FILE` validates it, `--set key=value` overrides a key for one run. Training images are",
        "# augmented as the quickstart's (data.augment): remove what changes a class in your images (vflip for upright",
        "# scenes, hflip for text). Near-copies of one photo in train and val inflate val: data.split: grouped keeps",
        "# them on one side (a one-off search of every image for copies, then cached).",
        f"# {len(counts)} classes, {sum(counts.values())} readable images; val: {val}.",
        f"# images per class ({' / '.join(per_split)}):",
        *(f"#   {cls:<{width}}  {' / '.join(str(per_split[s][cls]) for s in per_split)}" for cls in counts),
        f"# Sized for this machine: batch {batch} ({'a CUDA GPU' if batch > 32 else 'CPU only'}), "
        f"{os.cpu_count()} CPU cores (data.num_workers auto: cores - 1).",
    ]
    if batch == 32 and sum(counts.values()) > LARGE_ON_CPU:
        lines.append("# Many images for a CPU: try a run with --set data.max_per_class=200 first.")
    return "\n".join(lines) + "\n"

"""The built-in datasets, one registered function each: find the files (fetching if needed), group them by split
and class. Validation splits, caps, labels and checks happen in `registry.load_dataset`."""

from __future__ import annotations

import logging
from pathlib import Path

from fruitlab.data import cifar
from fruitlab.data.dli import assign_dli, read_dli_map
from fruitlab.data.fetch import available_locally, fetch, is_fetched, obtain_file, verify_file
from fruitlab.data.folders import image_folder_layout, read_split_folders
from fruitlab.data.registry import GROUPED, RawData, SourceRequest, register_dataset
from fruitlab.data.remotes import CIFAR10, CIFAR10_JPEG_REMOTE, FRUITS, FRUITS_DLI_TSV
from fruitlab.errors import DataError

log = logging.getLogger(__name__)

FRUITS_FOLDER = "fruits-fresh-rotten"  # the archive's top folder


# ------------------------------------------------------------------------------------------------- fruits
@register_dataset(
    "fruits_fresh_rotten",
    splits=("dli", "folder"),
    default_split=GROUPED,
    description=(
        "fresh/rotten apples, bananas, oranges: 6 classes, 3,395 photos (a Kaggle subsample; mirror or data.root). "
        "grouped (default): the dli photos re-split so that no photo and its copies span train and val, "
        "2,715 train / 680 val with seed 42; dli: the NVIDIA assessment's split by source-photo name, 2,659 train / "
        "736 val - it LEAKS: `fruitlab data check` finds 207 val photos with a renamed, cropped or recoloured copy in "
        "train; folder: the archive's train/ and test/ (test/ serves as val and test) - it LEAKS: 81% of test "
        "images are augmented copies of train photos"
    ),
)
def fruits_fresh_rotten(req: SourceRequest) -> RawData:
    root = _fruits_root(req)
    folders = {"train": root / "train", "test": root / "test"}
    grouped, skipped = read_split_folders(folders, root, req.data_dir)
    if req.split == "folder":
        log.warning("fruits_fresh_rotten split 'folder' leaks: most test photos are copies of train photos")
        return RawData(
            root,
            {"train": grouped["train"], "val": grouped["test"]},
            folders={"train": str(folders["train"]), "val": str(folders["test"]), "test": str(folders["test"])},
            skipped=skipped,
            copies={"test": "val"},
        )
    tsv = _dli_tsv(root, req)
    where = {s: f"{root}/{{train,test}} via {tsv.name}" for s in ("train", "val")}
    return RawData(root, assign_dli(grouped, read_dli_map(tsv), tsv), folders=where, skipped=skipped)


def _fruits_root(req: SourceRequest) -> Path:
    if req.root is None:
        return fetch(FRUITS, req.data_dir, req.mirror) / FRUITS_FOLDER
    root = req.root
    for candidate in (root, root / FRUITS_FOLDER):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise DataError(
        f"data.root {root} {req.where('root')}: expected a folder with train/ and test/ class folders "
        "(an extracted fruits-fresh-rotten.tar.gz or Kaggle copy)".replace("  ", " ")
    )


def _dli_tsv(root: Path, req: SourceRequest) -> Path:
    """The split file next to the photos (where fetch installs it), else from the mirror or the data dir."""
    for candidate in (root / FRUITS_DLI_TSV.name, root.parent / FRUITS_DLI_TSV.name):
        if candidate.is_file():
            verify_file(FRUITS_DLI_TSV, candidate, "next to the photos")  # 85 kB: checking costs nothing
            return candidate
    return obtain_file(FRUITS_DLI_TSV, FRUITS.name, req.data_dir, req.mirror)


# ------------------------------------------------------------------------------------------------ cifar10
@register_dataset(
    "cifar10",
    splits=("default",),
    description=(
        "CIFAR-10: 10 classes of 32x32 photos, 50,000 train (val: a stratified data.val_fraction of it) and "
        "10,000 test; torchvision's pickled batches (downloaded) or the mirror's JPEG copy"
    ),
)
def cifar10(req: SourceRequest) -> RawData:
    layout, folder = _cifar_folder(req)
    if layout == "pickle":
        folders = {"train": str(folder / "data_batch_[1-5]"), "test": str(folder / cifar.TEST_BATCH)}
        return RawData(folder, cifar.read_pickled(folder), folders=folders)
    split_dirs = {"train": folder / "train", "test": folder / "test"}
    grouped, skipped = read_split_folders(split_dirs, folder, req.data_dir)
    return RawData(folder, grouped, folders={s: str(p) for s, p in split_dirs.items()}, skipped=skipped)


def _cifar_folder(req: SourceRequest) -> tuple[str, Path]:
    """data.root, else an installed copy, else a local archive (mirror or data dir), else the public download."""
    if req.root is not None:
        return cifar.detect_layout(req.root, req.where("root"))
    # The canonical pickles first: they are what published CIFAR-10 numbers were measured on.
    remotes = (CIFAR10, CIFAR10_JPEG_REMOTE)
    for remote in remotes:
        if is_fetched(remote, req.data_dir):
            return cifar.detect_layout(req.data_dir / remote.name)
    for remote in remotes:
        if available_locally(remote, req.data_dir, req.mirror):
            return cifar.detect_layout(fetch(remote, req.data_dir, req.mirror))
    return cifar.detect_layout(fetch(CIFAR10, req.data_dir, req.mirror))


# ------------------------------------------------------------------------------------------- image_folder
@register_dataset(
    "image_folder",
    splits=("default",),
    description=(
        "your own images in data.root: train/<class>/ with optional val/ (or valid/) and test/, or just <class>/ "
        "folders; without a val folder, val is a stratified data.val_fraction of train"
    ),
)
def image_folder(req: SourceRequest) -> RawData:
    if req.root is None:
        raise DataError(
            f"dataset 'image_folder' needs data.root {req.where('root')}: set it to a folder holding "
            "train/<class>/<images> (optionally val/ and test/) or <class>/<images>".replace("  ", " ")
        )
    root = req.root
    layout = image_folder_layout(root, req.where("root"))
    labels = req.cfg.labels
    depth = len(labels.tasks or []) if labels.source == "nested" else 1  # nested: one folder level per task
    grouped, skipped = read_split_folders(layout, root, req.data_dir, depth=max(depth, 1))
    return RawData(root, grouped, folders={s: str(p) for s, p in layout.items()}, skipped=skipped)

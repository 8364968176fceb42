"""Class-per-folder layouts: `<split>/<class>/<image files>`, read and checked.

Hidden files and folders (a leading '.') are ignored everywhere; every other file in a class folder is a candidate
image, and the scan decides by content whether it is one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from fruitlab.data.images import scan_cache_path, scan_images
from fruitlab.errors import DataError

log = logging.getLogger(__name__)

Grouped = dict[str, list[str]]  # class name -> file paths
VAL_FOLDERS = ("val", "valid", "validation")  # names of a validation folder next to train/


def visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders that are not hidden, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_dirs(split_dir: Path, depth: int = 1) -> list[Path]:
    """Class folders `depth` levels below `split_dir` (depth 2: `apple/fresh`), sorted."""
    level = [split_dir]
    for _ in range(depth):
        level = [child for folder in level for child in visible_dirs(folder)]
    return level


def list_class_folders(split_dir: Path, split: str, depth: int = 1) -> Grouped:
    """{class: sorted file paths} for `split_dir/<class>/...`; DataError for no classes or an empty class.

    With `depth` > 1 (nested labels, one folder level per task) the class is the relative path `apple/fresh`.
    """
    if not split_dir.is_dir():
        raise DataError(f"split {split!r}: folder {split_dir} does not exist")
    classes = class_dirs(split_dir, depth)
    if not classes:
        raise DataError(
            f"split {split!r}: {split_dir} has no class folders; expected {split_dir}/<class name>/<image files>"
        )
    grouped = {}
    for class_dir in classes:
        files = _files_under(class_dir)
        if not files:
            raise DataError(
                f"class {class_dir.name!r} in split {split!r} is empty: {class_dir} has no files; "
                "add images or delete the folder"
            )
        grouped[class_dir.relative_to(split_dir).as_posix()] = files
    return grouped


def read_split_folders(
    folders: Mapping[str, Path], root: Path, data_dir: Path, depth: int = 1
) -> tuple[dict[str, Grouped], list[tuple[str, str]]]:
    """List every split's class folders and keep the files that decode; ({split: {class: paths}}, skipped)."""
    splits = {split: list_class_folders(folder, split, depth) for split, folder in folders.items()}
    every = [p for grouped in splits.values() for paths in grouped.values() for p in paths]
    scan = scan_images(every, cache=scan_cache_path(root, data_dir))
    mismatched = scan.mismatched()
    if mismatched:
        # Not a problem (we decode by content); `fruitlab data check` reports it, and a dataset known to have it says
        # so in its description (fruits_fresh_rotten), so a fit does not repeat it every run.
        log.debug(
            "%d of %d files in %s have an extension that does not match their content",
            len(mismatched),
            len(every),
            root,
        )
    good, reasons = set(scan.good), dict(scan.bad)
    kept = {}
    for split, grouped in splits.items():
        kept[split] = {cls: [p for p in paths if p in good] for cls, paths in grouped.items()}
        for cls, paths in kept[split].items():
            if not paths:
                raise DataError(
                    f"class {cls!r} in split {split!r} has no readable images: none of the "
                    f"{len(grouped[cls])} files in {folders[split] / cls} decodes "
                    f"(e.g. {os.path.basename(grouped[cls][0])}: {reasons[grouped[cls][0]]}); "
                    "replace the files or delete the folder"
                )
    return kept, scan.bad


def _files_under(folder: Path) -> list[str]:
    """Every non-hidden file below `folder` (sub-folders included), sorted for a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune hidden folders in place
        found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(found)


def image_folder_layout(root: Path, where: str = "") -> dict[str, Path]:
    """{split: folder} for `root/train/<class>/` (+ `val/` or `valid/`, `test/`), or `root/<class>/` as train."""
    if not root.is_dir():
        raise DataError(f"data.root {root} {where} is not a folder; point it at your image folder".replace("  ", " "))
    names = {d.name for d in visible_dirs(root)}
    val_names = [n for n in VAL_FOLDERS if n in names]
    if len(val_names) > 1:
        raise DataError(f"{root} has both {' and '.join(f'{n}/' for n in val_names)}; keep one validation folder")
    if "train" not in names:
        if val_names or "test" in names:
            found = ", ".join(f"{n}/" for n in [*val_names, "test"] if n in names)
            raise DataError(f"{root} has {found} but no train/ folder; add train/<class>/ or rename the folders")
        return {"train": root}  # the root itself holds the class folders
    layout = {"train": root / "train"}
    if val_names:
        layout["val"] = root / val_names[0]
    if "test" in names:
        layout["test"] = root / "test"
    return layout

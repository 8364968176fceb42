"""The leak-free 'dli' split of the fresh/rotten fruit photos.

The Kaggle set holds augmented copies of each source photo (`rotated_by_45_<photo>.png`, `translation_<photo>.png`,
...), and its own train/test folders put copies of one photo on both sides. The DLI split file maps each source
photo to one split; every copy follows its photo, so no photo is in both train and val.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from fruitlab.errors import DataError

# The augmentations present in the archive (checked against all 3,395 file names): rotations by 15-75 degrees,
# translation, salt-and-pepper noise, vertical flip. Originals have no prefix ("Screen Shot 2018-06-12 at ...").
AUGMENTATION_PREFIX = re.compile(r"^(?:rotated_by_\d+_|translation_|saltandpepper_|vertical_flip_)")
TSV_COLUMNS = ("dli_split", "class", "source_name")
TSV_SPLITS = {"train": "train", "valid": "val"}  # the file's names -> fruitlab's split names

Grouped = dict[str, list[str]]


def source_name(path: str) -> str:
    """The source photo of an image file: its name without augmentation prefixes and extension."""
    stem = os.path.splitext(os.path.basename(path))[0]
    while match := AUGMENTATION_PREFIX.match(stem):
        stem = stem[match.end() :]
    return stem


def read_dli_map(tsv: Path) -> dict[tuple[str, str], str]:
    """{(class, source photo): 'train' | 'val'} from the split file."""
    with open(tsv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if tuple(reader.fieldnames or ()) != TSV_COLUMNS:
            raise DataError(
                f"{tsv}: expected the tab-separated columns {', '.join(TSV_COLUMNS)}, got {reader.fieldnames}"
            )
        mapping = {}
        for line, row in enumerate(reader, start=2):
            split = TSV_SPLITS.get(row["dli_split"])
            if split is None:
                raise DataError(f"{tsv}:{line}: dli_split {row['dli_split']!r} is not one of {', '.join(TSV_SPLITS)}")
            mapping[(row["class"], row["source_name"])] = split
    return mapping


def assign_dli(folders: dict[str, Grouped], mapping: dict[tuple[str, str], str], tsv: Path) -> dict[str, Grouped]:
    """Regroup the images of every folder split into {'train', 'val'} by their source photo's split."""
    out: dict[str, Grouped] = {"train": {}, "val": {}}
    unmapped = []
    for grouped in folders.values():
        for cls, paths in grouped.items():
            for split in out.values():
                split.setdefault(cls, [])
            for path in paths:
                split = mapping.get((cls, source_name(path)))
                if split is None:
                    unmapped.append(path)
                else:
                    out[split][cls].append(path)
    if unmapped:
        raise DataError(
            f"{len(unmapped)} image(s) have no source photo in {tsv} (e.g. {unmapped[0]}); the dli split covers only "
            "the 3,395-image fruits-fresh-rotten subsample. For another copy of the data use data.split: folder"
        )
    return {split: {cls: sorted(paths) for cls, paths in grouped.items()} for split, grouped in out.items()}

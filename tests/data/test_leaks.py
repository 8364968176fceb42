"""A split's leak status (data/leaks.py), from what is known without a slow search; on real photos and copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fruitlab.config import DataConfig
from fruitlab.data.checks import check_dataset, data_config_for
from fruitlab.data.leaks import check_record_path, leak_status
from fruitlab.data.registry import load_dataset

from .copies import COPIES, photo, save, small

TRAIN = {"animal": ["chelsea", "astronaut"], "thing": ["coffee", "rocket"]}
VAL = {"animal": ["hubble_deep_field"], "thing": ["retina"]}


def _folder(root: Path, copy: str | None = None) -> Path:
    """train/ and val/ of distinct real photos; `copy`: 'near' adds a rotated copy of a train photo to val,
    'identical' a byte-identical one."""
    for split, layout in (("train", TRAIN), ("val", VAL)):
        for cls, names in layout.items():
            for name in names:
                save(small(photo(name)), root / split / cls / f"{name}.jpg")
    if copy == "near":
        save(COPIES["rotate45"](small(photo("chelsea"))), root / "val" / "animal" / "IMG_1.jpg")
    if copy == "identical":
        shutil.copy(root / "train" / "thing" / "coffee.jpg", root / "val" / "thing" / "IMG_2.jpg")
    return root


def _status(root: Path, data_dir: Path, split: str | None = None):
    splits = load_dataset(DataConfig(dataset="image_folder", root=str(root), split=split), seed=42, data_dir=data_dir)
    return leak_status(splits, data_dir), splits


def test_unknown_until_the_data_check_has_run_then_its_counts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for copy, leaked in ((None, 0), ("near", 1)):
        root = _folder(tmp_path / f"photos-{copy}", copy)
        status, splits = _status(root, data_dir)
        assert status.leak_free is None and status.label == "unknown" and status.copies_across is None
        assert f"fruitlab data check {root} --split default" in status.source

        check_dataset(data_config_for(str(root)), data_dir=data_dir)  # what `fruitlab data check ROOT` runs
        assert check_record_path(splits.fingerprint, data_dir).is_file()
        status, _ = _status(root, data_dir)
        assert (status.leak_free, status.copies_across) == (leaked == 0, leaked), copy
        assert "fruitlab data check of this split" in status.source and f"val {leaked}" in status.source


def test_identical_files_across_splits_are_leaky_without_a_check(tmp_path: Path) -> None:
    status, _ = _status(_folder(tmp_path / "photos", "identical"), tmp_path / "data")
    assert status.leak_free is False and "1 val/test image(s) have identical bytes" in status.source


def test_the_grouped_split_is_leak_free(tmp_path: Path) -> None:
    status, splits = _status(_folder(tmp_path / "photos", "near"), tmp_path / "data", split="grouped")
    assert (status.leak_free, status.copies_across) == (True, 0) and splits.scheme == "grouped"


@pytest.mark.parametrize("scheme", ["dli", "folder"])
def test_the_fruit_photos_documented_leaky_splits_are_flagged(fruit_data_dir: Path, scheme: str) -> None:
    cfg = DataConfig(dataset="fruits_fresh_rotten", split=scheme, max_per_class=6)
    splits = load_dataset(cfg, seed=42, data_dir=fruit_data_dir)
    status = leak_status(splits, fruit_data_dir)
    assert status.leak_free is False and status.copies_across is None
    assert f"documented leak of split {scheme!r}" in status.source and "have a copy in train" in status.source

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fruitlab.config import DataConfig
from fruitlab.data.registry import DatasetSplits, load_dataset
from fruitlab.errors import DataError

from .helpers import CIFAR_CLASSES, make_class_tree, write_cifar_batches


def load(root: Path, data_dir: Path, **cfg: object) -> DatasetSplits:
    return load_dataset(DataConfig(dataset="cifar10", root=str(root), **cfg), seed=0, data_dir=data_dir)


def test_torchvision_pickled_batches(tmp_path: Path, data_dir: Path) -> None:
    written = write_cifar_batches(tmp_path / "tv" / "cifar-10-batches-py", train_per_class=5, test_per_class=2)
    ds = load(tmp_path / "tv", data_dir, val_fraction=0.2)

    assert ds.classes == CIFAR_CLASSES and ds.root == str(tmp_path / "tv" / "cifar-10-batches-py")
    assert ds.counts() == {"train": 40, "val": 10, "test": 20}
    assert ds.skipped == []
    image = ds.splits["test"].items[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8

    # The test batch's first image of class 0: row = 1024 red, 1024 green, 1024 blue bytes, row-major 32x32.
    rows, labels = written["test_batch"]
    row = rows[labels.index(0)]
    expected = row.reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(image, expected) and ds.splits["test"].labels[0] == 0
    assert image[0, 1, 0] == row[1] and image[0, 0, 2] == row[2048]


def test_root_may_be_the_batches_folder_itself(tmp_path: Path, data_dir: Path) -> None:
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    by_parent = load(tmp_path, data_dir)
    by_folder = load(tmp_path / "cifar-10-batches-py", data_dir)
    assert by_parent.fingerprint == by_folder.fingerprint


def test_fingerprint_hashes_pixels(tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder)
    before = load(folder, data_dir).fingerprint
    entry = pickle.loads((folder / "test_batch").read_bytes())
    entry["data"][0, 0] ^= 0xFF
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    assert load(folder, data_dir).fingerprint != before


def test_jpeg_layout(tmp_path: Path, data_dir: Path) -> None:
    classes = {c: 3 for c in CIFAR_CLASSES[:3]}
    make_class_tree(tmp_path / "cifar10" / "train", classes)
    make_class_tree(tmp_path / "cifar10" / "test", {c: 1 for c in classes})
    ds = load(tmp_path, data_dir, val_fraction=0.34)
    assert ds.classes == CIFAR_CLASSES[:3]
    assert ds.counts() == {"train": 6, "val": 3, "test": 3}
    assert all(isinstance(item, str) and os.path.isfile(item) for item in ds.splits["train"].items)


def test_missing_or_foreign_files_are_errors(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(DataError, match="is not a CIFAR-10 folder"):
        load(tmp_path, data_dir)
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3"):
        load(folder, data_dir)


def test_pickles_that_would_run_code_are_refused(tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder)

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("touch pwned",))

    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": Exploit()}, protocol=2))
    with pytest.raises(DataError, match=r"batches.meta: cannot read .*(posix|os)\.system is not allowed"):
        load(folder, data_dir)

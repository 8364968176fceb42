"""The real archives from the mirror, end to end: fetch, verify, extract, scan, split."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from fruitlab.config import DataConfig
from fruitlab.data.dli import source_name
from fruitlab.data.images import scan_cache_path
from fruitlab.data.registry import DatasetSplits, load_dataset

pytestmark = pytest.mark.slow

FRUIT_FOLDER_COUNTS = {  # README: train / test images per class
    "freshapples": (423, 98),
    "freshbanana": (395, 95),
    "freshoranges": (366, 97),
    "rottenapples": (585, 150),
    "rottenbanana": (556, 132),
    "rottenoranges": (398, 100),
}


def photos(ds: DatasetSplits, split: str) -> set[tuple[str, str]]:
    s = ds.splits[split]
    return {(ds.classes[label], source_name(path)) for path, label in zip(s.items, s.labels, strict=True)}


def per_class(ds: DatasetSplits, split: str) -> dict[str, int]:
    counts = Counter(ds.splits[split].labels)
    return {cls: counts[i] for i, cls in enumerate(ds.classes)}


def test_fruits_from_the_real_mirror(real_mirror: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    start = time.perf_counter()
    cfg = DataConfig(dataset="fruits_fresh_rotten", split="dli")
    dli = load_dataset(cfg, seed=0, data_dir=data_dir, mirror=real_mirror)
    first = time.perf_counter() - start
    assert dli.classes == sorted(FRUIT_FOLDER_COUNTS) and dli.skipped == []
    assert dli.counts() == {"train": 2659, "val": 736}
    assert not photos(dli, "train") & photos(dli, "val")  # no source photo on both sides
    assert scan_cache_path(dli.root, data_dir).is_file()

    start = time.perf_counter()
    cfg = DataConfig(dataset="fruits_fresh_rotten", split="folder")
    folder = load_dataset(cfg, seed=0, data_dir=data_dir, mirror=real_mirror)
    cached = time.perf_counter() - start
    assert folder.counts() == {"train": 2723, "val": 672, "test": 672}
    assert per_class(folder, "train") == {c: n[0] for c, n in FRUIT_FOLDER_COUNTS.items()}
    assert per_class(folder, "test") == {c: n[1] for c, n in FRUIT_FOLDER_COUNTS.items()}
    # The README's measure of the leak: 544 of the 672 test images are copies of a photo that is also in train.
    train_photos = photos(folder, "train")
    test = folder.splits["test"]
    test_photos = [(folder.classes[lab], source_name(p)) for p, lab in zip(test.items, test.labels, strict=True)]
    leaked = sum(photo in train_photos for photo in test_photos)
    assert leaked == 544
    print(f"fruits: first load (fetch + full scan) {first:.1f}s, second load (cached scan) {cached:.2f}s")


@pytest.mark.slow  # extracting 60,000 files takes ~20 s, deleting them later ~1 min
def test_cifar10_jpeg_from_the_real_mirror(real_mirror: Path, tmp_path: Path) -> None:
    cfg = DataConfig(dataset="cifar10", val_fraction=0.1)
    ds = load_dataset(cfg, seed=0, data_dir=tmp_path / "data", mirror=real_mirror)
    assert ds.root.endswith("cifar10_jpeg/cifar10") and ds.skipped == []
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and len(ds.classes) == 10
    assert ds.counts() == {"train": 45000, "val": 5000, "test": 10000}
    assert set(per_class(ds, "val").values()) == {500}

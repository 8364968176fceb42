"""`data.split: grouped`: copies of one photo never end up in two splits."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from fruitlab.config import DataConfig
from fruitlab.data.dli import source_name
from fruitlab.data.grouping import copy_groups, split_groups
from fruitlab.data.registry import (
    DatasetSplits,
    dataset_names,
    describe_datasets,
    get_source,
    load_dataset,
    resolve_split,
)
from fruitlab.errors import DataError

from .copies import COPIES, photo, save, small


def split_of(ds: DatasetSplits) -> dict[str, str]:
    return {item: name for name, split in ds.splits.items() for item in split.items}


def assert_no_group_crosses(ds: DatasetSplits, data_dir: Path) -> None:
    where = split_of(ds)
    items = list(where)
    groups = defaultdict(set)
    for item, group in zip(items, copy_groups(items, ds.root, data_dir, seed=0), strict=True):
        groups[group].add(where[item])
    assert all(len(splits) == 1 for splits in groups.values()), groups


def test_grouped_is_a_split_scheme_of_every_dataset() -> None:
    for name in dataset_names():
        assert resolve_split(get_source(name), "grouped") == "grouped"
    assert all("grouped" in text for _, text in describe_datasets())
    with pytest.raises(DataError, match=r"did you mean 'grouped'.*allowed: default, grouped"):
        resolve_split(get_source("image_folder"), "gruoped")


def test_split_groups_keeps_groups_whole_and_fills_val_per_class() -> None:
    sizes = {"a": [4, 3, 1, 1, 1], "b": [1, 1, 1, 1, 1]}
    entries, group = [], 0
    for cls, group_sizes in sizes.items():
        for size in group_sizes:
            entries += [((cls, f"{cls}{group}-{k}"), group) for k in range(size)]
            group += 1
    train, val = split_groups(entries, fraction=0.2, seed=3, dataset="x")
    assert sorted(cls for cls, _ in val) == ["a", "a", "b"]  # 20% of 10 and of 5
    group_of = {item: g for (_, item), g in entries}
    assert not {group_of[i] for _, i in train} & {group_of[i] for _, i in val}
    assert split_groups(entries, fraction=0.2, seed=3, dataset="x") == (train, val)  # seeded

    big_groups = [(("a", f"a{k}"), k // 3) for k in range(9)]  # three groups of 3; 20% of 9 is 2
    train, val = split_groups(big_groups, fraction=0.2, seed=0, dataset="x")
    assert len(val) == 3 and len({group_of for (_, i), group_of in big_groups if ("a", i) in val}) == 1
    with pytest.raises(DataError, match=r"all 5 images of class 'a' are copies of one photo"):
        split_groups([(("a", f"a{k}"), 0) for k in range(5)], fraction=0.2, seed=0, dataset="x")


def test_grouped_split_of_a_folder_with_copies_across_splits(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    names = ["chelsea", "coffee", "rocket", "astronaut", "camera", "hubble_deep_field", "retina", "coins"]
    p = {n: small(photo(n)) for n in names}
    save(p["chelsea"], root / "train" / "a" / "1.jpg")
    save(COPIES["hflip"](p["chelsea"]), root / "train" / "a" / "2.jpg")
    save(p["astronaut"], root / "train" / "a" / "3.jpg")
    save(p["camera"], root / "train" / "a" / "4.jpg")
    save(p["coffee"], root / "train" / "b" / "1.jpg")
    save(p["rocket"], root / "train" / "b" / "2.jpg")  # a copy of it is in test: it must move there
    save(p["retina"], root / "train" / "b" / "3.jpg")
    save(COPIES["rotate45"](p["chelsea"]), root / "val" / "a" / "1.jpg")
    save(p["hubble_deep_field"], root / "val" / "a" / "2.jpg")
    save(COPIES["crop"](p["coffee"]), root / "val" / "b" / "1.jpg")
    save(p["coins"], root / "val" / "b" / "2.jpg")
    test_files = [save(COPIES["vflip_rotate30_noise"](p["rocket"]), root / "test" / "b" / "1.jpg")]
    test_files.append(save(COPIES["salt_and_pepper"](p["astronaut"]), root / "test" / "a" / "1.jpg"))

    cfg = DataConfig(dataset="image_folder", root=str(root), split="grouped", val_fraction=0.3)
    ds = load_dataset(cfg, seed=0, data_dir=tmp_path / "data")
    where = split_of(ds)
    assert ds.scheme == "grouped" and ds.counts() == {"train": 6, "val": 3, "test": 4}  # val: 30% of 5 and of 4
    assert {where[str(f)] for f in test_files} == {"test"}  # test keeps its images...
    assert where[str(root / "train" / "b" / "2.jpg")] == "test"  # ...and takes in their copies
    assert where[str(root / "train" / "a" / "3.jpg")] == "test"
    cat = {where[str(root / s / "a" / "1.jpg")] for s in ("train", "val")} | {where[str(root / "train/a/2.jpg")]}
    assert len(cat) == 1  # the cat and its two copies stay together
    assert_no_group_crosses(ds, tmp_path / "data")
    assert load_dataset(cfg, seed=0, data_dir=tmp_path / "data").fingerprint == ds.fingerprint  # cached, same


def test_grouped_split_keeps_every_real_fruit_photo_with_its_copies(fruit_data_dir: Path, tmp_path: Path) -> None:
    """Copies of real fruit photos, renamed img_NN.jpg and spread over train/ and val/ so that each photo is on
    both sides: grouped must bring every photo's copies together (the names cannot help it)."""
    fruits = next(fruit_data_dir.rglob("fruits-fresh-rotten"))
    photos: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for cls in ("freshapples", "rottenbanana"):
        for path in sorted((fruits / "train" / cls).iterdir()):
            photos[(cls, source_name(str(path)))].append(path)
    chosen = [(key, paths) for key, paths in photos.items() if len(paths) >= 3]
    chosen = [c for c in chosen if c[0][0] == "freshapples"][:3] + [c for c in chosen if c[0][0] == "rottenbanana"][:3]
    singles = [(key, paths[:1]) for key, paths in photos.items() if len(paths) == 1][:6]
    root, truth, n = tmp_path / "fruit", {}, 0
    for key, paths in chosen + singles:
        for k, path in enumerate(paths):
            target = root / ("train" if k % 2 == 0 or len(paths) == 1 else "val") / key[0] / f"img_{n:02d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
            truth[str(target)] = key
            n += 1
    assert sum(len(p) for _, p in chosen) >= 18

    ds = load_dataset(DataConfig(dataset="image_folder", root=str(root), split="grouped"), seed=0, data_dir=tmp_path)
    where = split_of(ds)
    sides = defaultdict(set)
    for item, key in truth.items():
        sides[key].add(where[item])
    assert all(len(s) == 1 for s in sides.values()), sides
    assert len(ds.splits["val"]) >= 2

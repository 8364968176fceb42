from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fruitlab.config import DataConfig
from fruitlab.data.dli import assign_dli, read_dli_map, source_name
from fruitlab.data.registry import load_dataset
from fruitlab.errors import DataError

from .helpers import make_class_tree, write_image

CLASSES = ["freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana", "rottenoranges"]


@pytest.mark.parametrize(
    ("file_name", "source"),
    [
        ("Screen Shot 2018-06-12 at 9.45.22 PM.png", "Screen Shot 2018-06-12 at 9.45.22 PM"),
        ("rotated_by_75_Screen Shot 2018-06-12 at 10.01.52 PM.png", "Screen Shot 2018-06-12 at 10.01.52 PM"),
        ("translation_Screen Shot 2018-06-08 at 5.00.03 PM.png", "Screen Shot 2018-06-08 at 5.00.03 PM"),
        ("saltandpepper_a.png", "a"),
        ("vertical_flip_a.png", "a"),
        ("/x/train/freshapples/rotated_by_15_a b.c.png", "a b.c"),
    ],
)
def test_source_name_strips_augmentation_prefix_and_extension(file_name: str, source: str) -> None:
    assert source_name(file_name) == source


def write_tsv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["dli_split\tclass\tsource_name", *("\t".join(r) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_copy_follows_its_source_photo(tmp_path: Path) -> None:
    tsv = write_tsv(tmp_path / "s.tsv", [("train", "apple", "p1"), ("valid", "apple", "p2"), ("valid", "pear", "p1")])
    folders = {
        "train": {"apple": ["/d/train/apple/p1.png", "/d/train/apple/rotated_by_30_p2.png"], "pear": []},
        "test": {
            "apple": ["/d/test/apple/translation_p1.png", "/d/test/apple/p2.png"],
            "pear": ["/d/test/pear/p1.png"],
        },
    }
    splits = assign_dli(folders, read_dli_map(tsv), tsv)
    assert splits["train"] == {"apple": ["/d/test/apple/translation_p1.png", "/d/train/apple/p1.png"], "pear": []}
    assert splits["val"] == {
        "apple": ["/d/test/apple/p2.png", "/d/train/apple/rotated_by_30_p2.png"],
        "pear": ["/d/test/pear/p1.png"],
    }

    with pytest.raises(DataError, match=r"1 image\(s\) have no source photo .*unknown\.png.*data.split: folder"):
        assign_dli({"train": {"apple": ["/d/train/apple/unknown.png"]}}, read_dli_map(tsv), tsv)


def test_split_file_is_validated(tmp_path: Path) -> None:
    bad_header = tmp_path / "h.tsv"
    bad_header.write_text("split\tclass\tname\n")
    with pytest.raises(DataError, match="expected the tab-separated columns dli_split, class, source_name"):
        read_dli_map(bad_header)
    with pytest.raises(DataError, match=r"b.tsv:3: dli_split 'test' is not one of train, valid"):
        read_dli_map(write_tsv(tmp_path / "b.tsv", [("train", "a", "x"), ("test", "a", "y")]))


@pytest.fixture
def fruit_copy(tmp_path: Path) -> Path:
    """A tiny extracted copy: JPEG content in .png files, like the real archive."""
    root = tmp_path / "fruits-fresh-rotten"
    make_class_tree(root / "train", {c: 3 for c in CLASSES}, ext=".png")
    make_class_tree(root / "test", {c: 1 for c in CLASSES}, ext=".png")
    return root


def test_folder_split_uses_test_as_val_and_test_and_warns_about_the_leak(
    fruit_copy: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = DataConfig(dataset="fruits_fresh_rotten", split="folder", root=str(fruit_copy.parent))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(cfg, seed=0, data_dir=data_dir)
    assert ds.classes == CLASSES and ds.scheme == "folder"
    assert ds.counts() == {"train": 18, "val": 6, "test": 6}
    assert ds.splits["val"] == ds.splits["test"]
    assert "leaks" in caplog.text


def test_dli_split_refuses_a_split_file_with_the_wrong_checksum(fruit_copy: Path, data_dir: Path) -> None:
    write_tsv(fruit_copy.parent / "fruits-fresh-rotten.dli-split.tsv", [("train", "freshapples", "x")])
    cfg = DataConfig(dataset="fruits_fresh_rotten", split="dli", root=str(fruit_copy))
    with pytest.raises(DataError, match=r"dli-split.tsv \(next to the photos\): sha256 mismatch .*expected 0afb1005"):
        load_dataset(cfg, seed=0, data_dir=data_dir)


def test_dli_split_without_the_split_file_says_where_to_get_it(fruit_copy: Path, data_dir: Path) -> None:
    cfg = DataConfig(dataset="fruits_fresh_rotten", split="dli", root=str(fruit_copy))
    with pytest.raises(DataError, match=r"(?s)cannot get fruits-fresh-rotten.dli-split.tsv .*fruitlab data mirror"):
        load_dataset(cfg, seed=0, data_dir=data_dir)


def test_root_without_train_and_test_is_an_error(tmp_path: Path, data_dir: Path) -> None:
    write_image(tmp_path / "x" / "a.png")
    cfg = DataConfig(dataset="fruits_fresh_rotten", split="folder", root=str(tmp_path / "x"))
    with pytest.raises(DataError, match=r"data.root .*/x : expected a folder with train/ and test/"):
        load_dataset(cfg, seed=0, data_dir=data_dir)

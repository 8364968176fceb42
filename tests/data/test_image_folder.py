from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from fruitlab.config import DataConfig
from fruitlab.data.images import UnreadableFilesWarning
from fruitlab.data.registry import DatasetSplits, load_dataset
from fruitlab.errors import DataError

from .helpers import make_class_tree, write_image, write_text, write_truncated_jpeg

COUNTS = {"cat": 10, "dog": 20, "eel": 5}


def load(root: Path, data_dir: Path, seed: int = 0, **cfg: object) -> DatasetSplits:
    return load_dataset(DataConfig(dataset="image_folder", root=str(root), **cfg), seed=seed, data_dir=data_dir)


def per_class(ds: DatasetSplits, split: str) -> dict[str, int]:
    labels = ds.splits[split].labels
    return {cls: labels.count(i) for i, cls in enumerate(ds.classes)}


def test_train_val_test_folders(tmp_path: Path, data_dir: Path) -> None:
    make_class_tree(tmp_path / "ds" / "train", {"b": 3, "a": 2})
    make_class_tree(tmp_path / "ds" / "valid", {"b": 1, "a": 1})
    make_class_tree(tmp_path / "ds" / "test", {"b": 2, "a": 2})
    ds = load(tmp_path / "ds", data_dir)
    assert ds.classes == ["a", "b"]
    assert ds.counts() == {"train": 5, "val": 2, "test": 4}
    assert ds.splits["train"].labels == [0, 0, 1, 1, 1]
    test = ds.splits["test"]
    assert all(Path(p).parent.name == ds.classes[lab] for p, lab in zip(test.items, test.labels, strict=True))
    assert ds.skipped == [] and ds.root == str(tmp_path / "ds")


def test_stratified_val_split_is_deterministic_balanced_and_disjoint(tmp_path: Path, data_dir: Path) -> None:
    all_files = {str(p) for p in make_class_tree(tmp_path / "ds" / "train", COUNTS)}
    first = load(tmp_path / "ds", data_dir, seed=1, val_fraction=0.2)
    again = load(tmp_path / "ds", data_dir, seed=1, val_fraction=0.2)
    other = load(tmp_path / "ds", data_dir, seed=2, val_fraction=0.2)

    assert first.splits == again.splits and first.fingerprint == again.fingerprint
    assert first.splits["val"].items != other.splits["val"].items
    assert per_class(first, "val") == {"cat": 2, "dog": 4, "eel": 1}
    train, val = set(first.splits["train"].items), set(first.splits["val"].items)
    assert not train & val and train | val == all_files
    assert "test" not in first.splits


def test_root_holding_class_folders_is_the_train_split(tmp_path: Path, data_dir: Path) -> None:
    make_class_tree(tmp_path / "ds", {"x": 4, "y": 4})
    ds = load(tmp_path / "ds", data_dir, val_fraction=0.25)
    assert ds.classes == ["x", "y"] and ds.counts() == {"train": 6, "val": 2}


def test_max_per_class_caps_every_split_without_moving_images_between_splits(tmp_path: Path, data_dir: Path) -> None:
    make_class_tree(tmp_path / "ds" / "train", COUNTS)
    full = load(tmp_path / "ds", data_dir, seed=3)
    capped = load(tmp_path / "ds", data_dir, seed=3, max_per_class=3)
    assert per_class(capped, "train") == {"cat": 3, "dog": 3, "eel": 3}
    assert per_class(capped, "val") == {"cat": 2, "dog": 3, "eel": 1}
    assert set(capped.splits["val"].items) <= set(full.splits["val"].items)
    assert capped.splits == load(tmp_path / "ds", data_dir, seed=3, max_per_class=3).splits


def test_unreadable_files_are_skipped_with_one_warning(tmp_path: Path, data_dir: Path) -> None:
    make_class_tree(tmp_path / "ds" / "train", {"a": 3, "b": 3})
    jpeg_named_png = write_image(tmp_path / "ds" / "train" / "a" / "real.png", fmt="JPEG")
    bad = [
        write_truncated_jpeg(tmp_path / "ds" / "train" / "a" / "cut.jpg"),
        write_text(tmp_path / "ds" / "train" / "b" / "notes.jpg"),
    ]
    (tmp_path / "ds" / "train" / "b" / "empty.jpg").touch()
    write_text(tmp_path / "ds" / "train" / "b" / ".DS_Store")  # hidden: not even looked at
    write_text(tmp_path / "ds" / "train" / ".hidden_class" / "x.jpg")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load(tmp_path / "ds", data_dir, val_fraction=0.25)
    ours = [w for w in caught if w.category is UnreadableFilesWarning]
    assert len(ours) == 1 and "skipped 3 unreadable" in str(ours[0].message)
    empty = tmp_path / "ds" / "train" / "b" / "empty.jpg"
    assert sorted(p for p, _ in ds.skipped) == sorted(map(str, [*bad, empty]))
    assert ds.classes == ["a", "b"]
    assert str(jpeg_named_png) in ds.splits["train"].items + ds.splits["val"].items


def test_empty_class_folder_is_an_error_naming_class_and_folder(tmp_path: Path, data_dir: Path) -> None:
    make_class_tree(tmp_path / "ds" / "train", {"a": 3})
    (tmp_path / "ds" / "train" / "ghost").mkdir()
    with pytest.raises(DataError, match=r"class 'ghost' in split 'train' is empty: .*ds/train/ghost"):
        load(tmp_path / "ds", data_dir)


def test_class_with_only_unreadable_files_is_an_error(tmp_path: Path, data_dir: Path) -> None:
    make_class_tree(tmp_path / "ds" / "train", {"a": 3})
    write_text(tmp_path / "ds" / "train" / "b" / "one.jpg")
    with pytest.raises(DataError, match=r"class 'b' in split 'train' has no readable images.*one\.jpg: not an image"):
        load(tmp_path / "ds", data_dir)


def test_classes_must_match_across_splits(tmp_path: Path, data_dir: Path) -> None:
    make_class_tree(tmp_path / "ds" / "train", {"a": 2, "b": 2})
    make_class_tree(tmp_path / "ds" / "val", {"a": 1, "c": 1})
    with pytest.raises(DataError, match=r"split 'val' \(.*ds/val\) differ from train .*missing \['b'\], extra \['c'\]"):
        load(tmp_path / "ds", data_dir)


def test_a_held_out_split_with_no_images_is_an_error(tmp_path: Path, data_dir: Path) -> None:
    make_class_tree(tmp_path / "ds" / "train", {"a": 1, "b": 1})
    with pytest.raises(DataError, match=r"split 'val' has no images .*fewer than 2 readable images"):
        load(tmp_path / "ds", data_dir)


def test_layout_errors(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(DataError, match="is not a folder"):
        load(tmp_path / "missing", data_dir)
    make_class_tree(tmp_path / "two" / "train", {"a": 2})
    (tmp_path / "two" / "val").mkdir()
    (tmp_path / "two" / "valid").mkdir()
    with pytest.raises(DataError, match="both val/ and valid/"):
        load(tmp_path / "two", data_dir)
    make_class_tree(tmp_path / "notrain" / "test", {"a": 2})
    with pytest.raises(DataError, match="test/ but no train/"):
        load(tmp_path / "notrain", data_dir)
    (tmp_path / "noclasses" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"split 'train': .* has no class folders"):
        load(tmp_path / "noclasses", data_dir)


def test_fingerprint_follows_the_data_not_its_location(tmp_path: Path, data_dir: Path) -> None:
    make_class_tree(tmp_path / "ds" / "train", {"a": 4, "b": 4})
    before = load(tmp_path / "ds", data_dir).fingerprint
    shutil.copytree(tmp_path / "ds", tmp_path / "copy")
    assert load(tmp_path / "copy", data_dir).fingerprint == before

    write_image(tmp_path / "ds" / "train" / "a" / "new.jpg", seed=99)
    added = load(tmp_path / "ds", data_dir).fingerprint
    assert added != before
    write_image(tmp_path / "ds" / "train" / "a" / "new.jpg", size=(30, 30), seed=99)  # same name, new content
    assert load(tmp_path / "ds", data_dir).fingerprint not in (before, added)
    assert load(tmp_path / "ds", data_dir, seed=5).fingerprint != load(tmp_path / "ds", data_dir).fingerprint


def test_relative_root_gives_absolute_items(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_class_tree(tmp_path / "ds" / "train", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    ds = load(Path("ds"), data_dir)
    assert ds.root == str(tmp_path / "ds")
    assert all(Path(p).is_absolute() for p in ds.splits["train"].items + ds.splits["val"].items)


def test_one_class_is_refused_naming_it(tmp_path: Path, data_dir: Path) -> None:
    make_class_tree(tmp_path / "ds", {"apple": 4})
    with pytest.raises(DataError) as info:
        load(tmp_path / "ds", data_dir)
    message = str(info.value)
    assert "classification needs at least 2 classes; found 1 ('apple', 4 images in " in message
    assert str(tmp_path / "ds" / "apple") in message and "Add a folder of images for each other class" in message


def test_a_class_too_small_to_hold_out_is_named_in_a_warning(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_class_tree(tmp_path / "ds", {"apple": 6, "kiwi": 1, "plum": 5})
    with caplog.at_level("WARNING", logger="fruitlab"):
        ds = load(tmp_path / "ds", data_dir, val_fraction=0.2)
    assert per_class(ds, "val") == {"apple": 1, "kiwi": 0, "plum": 1}
    warned = [r.getMessage() for r in caplog.records if "has no image in split" in r.getMessage()]
    assert warned == [
        "warning: dataset image_folder: class 'kiwi' has no image in split 'val': too few images to hold one out "
        "(data.val_fraction=0.2; a class needs at least 2); its val accuracy is not measured. Add images of 'kiwi', "
        "or give the data a val/ folder"
    ]
    caplog.clear()
    make_class_tree(tmp_path / "ok", {"apple": 6, "kiwi": 2})
    with caplog.at_level("WARNING", logger="fruitlab"):
        load(tmp_path / "ok", data_dir, val_fraction=0.2)
    assert not [r for r in caplog.records if "has no image in split" in r.getMessage()]

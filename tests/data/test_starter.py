"""`fruitlab init`'s experiment file for a user's folder: classes counted, the quickstart's recipe, a fitting split."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fruitlab.config import load_experiment
from fruitlab.data.starter import write_starter
from fruitlab.errors import ConfigError, DataError
from tests.data.helpers import make_class_tree


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRUITLAB_EXPERIMENTS", raising=False)
    return tmp_path


def test_the_written_file_loads_by_name_with_the_folders_data(in_tmp):
    folder = in_tmp / "My Photos"
    make_class_tree(folder, {"apple": 6, "pear": 4})
    written = write_starter(folder)

    assert written.path == Path("experiments", "My_Photos.yaml") and written.name == "My_Photos"
    exp = load_experiment("My_Photos")  # found in ./experiments by the config loader fit uses
    assert exp.data.dataset == "image_folder" and exp.data.root == str(folder)
    assert exp.tracking.experiment == "My_Photos"  # never the fruit demo's 'quickstart'
    quickstart = load_experiment("quickstart")
    for part in ("model", "finetune", "loss", "performance"):  # the quickstart's recipe
        assert getattr(exp, part) == getattr(quickstart, part), part
    assert exp.data.augment == quickstart.data.augment and exp.sweep is None
    assert exp.data.val_fraction == 0.3  # small classes: a larger held-out share
    assert exp.data.batch_size == 32  # this machine has no CUDA GPU

    text = written.path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "#   apple  4 / 2" in header and "#   pear   3 / 1" in header, header  # train / val per class
    assert "# 2 classes, 10 readable images; val: a stratified 30% of each class (data.val_fraction)." in header
    assert yaml.safe_load(text)["data"]["root"] == str(folder)
    assert "2 classes (train 7, val 3 images)" in written.summary() and "fruitlab fit -e My_Photos" in written.summary()


def test_a_val_folder_is_used_as_it_is(in_tmp):
    make_class_tree(in_tmp / "shots" / "train", {"cat": 3, "dog": 3})
    make_class_tree(in_tmp / "shots" / "val", {"cat": 1, "dog": 2})
    written = write_starter(in_tmp / "shots", name="pets", out=in_tmp / "pets.yaml")
    exp = load_experiment(str(written.path))
    assert "val_fraction" not in yaml.safe_load(written.path.read_text())["data"]
    assert exp.tracking.experiment == "pets" and written.val == "your val/ folder"
    assert "#   dog  3 / 2" in written.path.read_text()


def test_an_existing_file_is_kept_without_force(in_tmp):
    make_class_tree(in_tmp / "photos", {"a": 3, "b": 3})
    (in_tmp / "experiments").mkdir()
    mine = in_tmp / "experiments" / "photos.yaml"
    mine.write_text("description: mine\n")
    with pytest.raises(ConfigError, match=r"experiments/photos.yaml exists; .*--force"):
        write_starter(in_tmp / "photos")
    assert mine.read_text() == "description: mine\n"
    write_starter(in_tmp / "photos", force=True)
    assert load_experiment("photos").data.root == str(in_tmp / "photos")


def test_a_folder_fit_would_refuse_is_refused_and_nothing_written(in_tmp):
    make_class_tree(in_tmp / "one", {"only": 4})
    with pytest.raises(DataError, match="classification needs at least 2 classes; found 1"):
        write_starter(in_tmp / "one")
    with pytest.raises(DataError, match="is not a folder"):
        write_starter(in_tmp / "missing")
    assert not (in_tmp / "experiments").exists()

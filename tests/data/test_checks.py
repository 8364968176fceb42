"""`check_dataset` / `fruitlab data check` and the quick check before a fit, on folders of real photos."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fruitlab.config import DataConfig
from fruitlab.data.checks import check_dataset, data_config_for, quick_check
from fruitlab.data.grids import save_report
from fruitlab.data.registry import load_dataset
from fruitlab.errors import DataError

from .copies import COPIES, photo, save, small
from .helpers import write_cifar_batches, write_truncated_jpeg

FRUITLAB = str(Path(sys.executable).with_name("fruitlab"))


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and val/ of real photos: val holds a rotated copy, a flipped noisy copy and a byte-identical copy of
    train photos, plus photos that are in no other split; one JPEG is named .png; one file is truncated."""
    root = tmp_path_factory.mktemp("leaky")
    cat, coffee, rocket = (small(photo(n)) for n in ("chelsea", "coffee", "rocket"))
    astronaut, hubble, retina = (small(photo(n)) for n in ("astronaut", "hubble_deep_field", "retina"))
    save(cat, root / "train" / "animal" / "cat.jpg")
    save(astronaut, root / "train" / "animal" / "astronaut.jpg")
    save(coffee, root / "train" / "thing" / "coffee.jpg")
    save(rocket, root / "train" / "thing" / "rocket.png")  # JPEG bytes in a .png
    save(small(photo("camera")), root / "train" / "thing" / "camera.jpg")
    shutil.copy(root / "train" / "thing" / "camera.jpg", root / "train" / "thing" / "camera copy.jpg")
    write_truncated_jpeg(root / "train" / "thing" / "broken.jpg")
    save(COPIES["rotate45"](cat), root / "val" / "animal" / "a.jpg")
    save(hubble, root / "val" / "animal" / "b.jpg")
    save(COPIES["vflip_rotate30_noise"](coffee), root / "val" / "thing" / "c.jpg")
    save(retina, root / "val" / "thing" / "d.jpg")
    shutil.copy(root / "train" / "animal" / "astronaut.jpg", root / "val" / "animal" / "e.jpg")
    return root


def test_report_finds_copies_duplicates_mismatches_and_broken_files(leaky: Path, tmp_path: Path) -> None:
    report = check_dataset(data_config_for(str(leaky)), data_dir=tmp_path / "data")

    assert report.dataset == "image_folder" and report.classes == ["animal", "thing"]
    assert report.counts == {"train": {"animal": 2, "thing": 4}, "val": {"animal": 3, "thing": 2}}
    assert report.imbalance() == {"train": 2.0, "val": 1.5}
    assert [Path(p).name for p, _ in report.unreadable] == ["broken.jpg"]
    assert [(Path(p).name, fmt) for p, fmt in report.mismatched] == [("rocket.png", "JPEG")]
    groups = {tuple(sorted(Path(n).name for _, n in g.members)): g.splits for g in report.exact_duplicates}
    assert groups == {("camera copy.jpg", "camera.jpg"): ["train"], ("astronaut.jpg", "e.jpg"): ["train", "val"]}
    near = {(Path(p.item).name, Path(p.other).name, p.mirrored) for p in report.near_duplicates or []}
    assert near == {("a.jpg", "cat.jpg", False), ("c.jpg", "coffee.jpg", True)}  # e.jpg: reported as exact
    assert report.leaked() == {"val": 3}
    text = "\n".join(report.summary())
    assert "val: 3 of 5 images have an exact or near copy in an earlier split" in text
    assert "train/thing/rocket.png is JPEG" in text

    written = save_report(report, tmp_path / "out")
    assert set(written) == {"report", "examples", "duplicates"}
    saved = json.loads(written["report"].read_text())
    assert saved["leaked"] == {"val": 3} and len(saved["near_duplicates"]) == 2
    assert Image.open(written["duplicates"]).height > 2 * 160  # three pairs: two rows
    assert Image.open(written["examples"]).width > 4 * 112


@pytest.mark.filterwarnings("ignore::fruitlab.data.images.UnreadableFilesWarning")
def test_quick_check_warns_about_identical_files_across_splits(
    leaky: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fruitlab"):
        splits = load_dataset(DataConfig(dataset="image_folder", root=str(leaky)), seed=0, data_dir=tmp_path)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 image(s) appear in more than one split" in m and f"data check {leaky}" in m for m in warned)
    assert quick_check(splits, tmp_path) == [m.removeprefix("warning: ") for m in warned]


def test_quick_check_warns_about_imbalance_and_is_quiet_on_clean_data(tmp_path: Path) -> None:
    for i, name in enumerate(("chelsea", "coffee", "rocket", "astronaut")):
        save(small(photo(name), 64), tmp_path / "big" / "train" / "a" / f"{i}.jpg")
    save(small(photo("retina"), 64), tmp_path / "big" / "train" / "b" / "0.jpg")
    for cls, name in (("a", "camera"), ("b", "hubble_deep_field")):
        save(small(photo(name), 64), tmp_path / "big" / "val" / cls / "0.jpg")
    splits = load_dataset(DataConfig(dataset="image_folder", root=str(tmp_path / "big")), seed=0, data_dir=tmp_path)
    (message,) = quick_check(splits, tmp_path)
    assert "train classes are imbalanced: a has 4 images, b 1 (4.0x)" in message and "data.balance" in message
    assert splits.class_weights() == pytest.approx([0.4, 1.6])


@pytest.mark.slow  # the first look at the 3,395 fruit photos decodes every one (about 10 s)
def test_folder_split_of_the_real_fruits_is_seen_as_one_split_repeated(fruit_data_dir: Path) -> None:
    cfg = DataConfig(dataset="fruits_fresh_rotten", split="folder", max_per_class=4)
    report = check_dataset(cfg, data_dir=fruit_data_dir, near=False)
    assert report.aliases == {"test": "val"}
    assert report.near_duplicates is None and report.exact_duplicates == []
    assert len(report.mismatched) == 48  # every fruit photo is a JPEG named .png
    assert report.leaked() == {"val": 0, "test": 0}


def test_targets_that_are_neither_a_dataset_nor_a_folder(tmp_path: Path) -> None:
    assert data_config_for("fruits_fresh_rotten", "grouped") == DataConfig(split="grouped")
    assert data_config_for(str(tmp_path)).root == str(tmp_path)
    with pytest.raises(DataError, match=r"unknown dataset 'fruits_fresh_roten'.*did you mean 'fruits_fresh_rotten'"):
        data_config_for("fruits_fresh_roten")
    with pytest.raises(DataError, match=r"folder .*/nope does not exist"):
        data_config_for(str(tmp_path / "nope"))


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([FRUITLAB, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_check_prints_and_saves_the_report(leaky: Path, tmp_path: Path) -> None:
    result = run("data", "check", str(leaky), "--out", "out", "--data-dir", "data", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "near-duplicates across splits: 2 pair(s)" in result.stdout
    assert "1 group(s) within a split, 1 across splits" in result.stdout
    assert "saved out/report.json, out/examples.png, out/duplicates.png" in result.stdout
    assert (tmp_path / "out" / "report.json").is_file()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("fruits_fresh_roten", "did you mean 'fruits_fresh_rotten'"),
        ("./missing", "folder ./missing does not exist"),
    ],
)
def test_cli_check_bad_input_is_one_error_line(target: str, message: str, tmp_path: Path) -> None:
    result = run("data", "check", target, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_check_unknown_split(leaky: Path, tmp_path: Path) -> None:
    result = run("data", "check", str(leaky), "--split", "grouepd", cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'grouped'" in result.stderr


def test_in_memory_images_are_checked_too(tmp_path: Path) -> None:
    """CIFAR-10's pickled batches: arrays, named split[index]; one test image repeats a train image."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder, train_per_class=2, test_per_class=1)
    test_batch = pickle.loads((folder / "test_batch").read_bytes())
    train_batch = pickle.loads((folder / "data_batch_1").read_bytes())
    same_class = train_batch["labels"].index(test_batch["labels"][0])
    test_batch["data"][0] = train_batch["data"][same_class]
    (folder / "test_batch").write_bytes(pickle.dumps(test_batch, protocol=2))

    report = check_dataset(DataConfig(dataset="cifar10", root=str(folder)), data_dir=tmp_path / "data")
    (group,) = report.exact_duplicates
    assert group.splits == ["test", "train"] or group.splits == ["test", "val"]
    assert all(name.startswith(("train[", "val[", "test[")) for _, name in group.members)
    assert report.near_duplicates == []  # random pixels: nothing alike across splits
    written = save_report(report, tmp_path / "out")
    assert Image.open(written["duplicates"]).width > 2 * 160

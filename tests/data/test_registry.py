from __future__ import annotations

from pathlib import Path

import pytest

from fruitlab.config import DataConfig
from fruitlab.data.registry import dataset_names, describe_datasets, get_source, load_dataset, resolve_split
from fruitlab.errors import DataError

WHERE = "(experiments/x.yaml: data.dataset)"


def test_builtin_datasets_are_listed_with_their_split_schemes() -> None:
    assert dataset_names() == ["cifar10", "fruits_fresh_rotten", "image_folder"]
    described = dict(describe_datasets())
    assert "[splits: grouped (default), dli, folder]" in described["fruits_fresh_rotten"]
    assert (
        "dli: the NVIDIA assessment's split by source-photo name, 2,659 train / 736 val - it LEAKS"
        in (described["fruits_fresh_rotten"])
    )
    assert described["cifar10"].endswith("[splits: default (default), grouped]")


def test_the_fruit_photos_default_to_the_leak_free_split_of_the_dli_photos() -> None:
    """dli and folder put copies of train photos in val (README: Data checks): the default must not."""
    fruits = get_source("fruits_fresh_rotten")
    assert resolve_split(fruits, None) == "grouped" and fruits.base_split == "dli"
    assert resolve_split(get_source("image_folder"), None) == "default"


def test_unknown_dataset_suggests_close_names_and_lists_all(data_dir: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset="fruits_fresh_roten"), seed=0, data_dir=data_dir, where=WHERE)
    message = str(err.value)
    assert message.startswith(f"unknown dataset 'fruits_fresh_roten' {WHERE} - did you mean 'fruits_fresh_rotten'?")
    assert "known: cifar10, fruits_fresh_rotten, image_folder" in message


def test_unknown_split_scheme_lists_the_allowed_ones(data_dir: Path) -> None:
    cfg = DataConfig(dataset="fruits_fresh_rotten", split="dil")
    with pytest.raises(DataError) as err:
        load_dataset(cfg, seed=0, data_dir=data_dir, where=WHERE)
    message = str(err.value)
    assert "(experiments/x.yaml: data.split)" in message and "did you mean 'dli'" in message
    assert "allowed: dli, folder, grouped. Set data.split to one of them, or to null for the default (grouped)" in (
        message
    )


def test_names_are_checked_before_any_file_is_touched(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="did you mean 'cifar10'"):
        load_dataset(DataConfig(dataset="cifar"), seed=0, data_dir=tmp_path / "never-created")
    assert not (tmp_path / "never-created").exists()


def test_image_folder_needs_a_root(data_dir: Path) -> None:
    with pytest.raises(DataError, match=r"needs data.root \(experiments/x.yaml: data.root\)"):
        load_dataset(DataConfig(dataset="image_folder"), seed=0, data_dir=data_dir, where=WHERE)

"""`data.balance`: inverse-frequency class weights, and a seeded class-balanced sampler in the train loader."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from torch.utils.data import DistributedSampler, WeightedRandomSampler

from fruitlab.config import DataConfig
from fruitlab.data.balance import class_weights, sample_weights
from fruitlab.data.datamodule import ImageDataModule
from fruitlab.errors import ConfigError

from ..conftest import real_photo_crops

PREPROCESS = {"input_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


def test_class_weights_are_inverse_frequency_with_mean_one() -> None:
    assert class_weights([0, 0, 0, 1], 2) == pytest.approx([0.5, 1.5])
    weights = class_weights([0] * 10 + [1] * 5 + [2] * 2, 3)
    assert sum(weights) / 3 == pytest.approx(1.0)
    assert weights[0] * 10 == pytest.approx(weights[1] * 5) == pytest.approx(weights[2] * 2)
    assert class_weights([1, 1], 3) == [0.0, 1.0, 0.0]  # an absent class weighs nothing
    assert sample_weights([0, 0, 1]) == [0.5, 0.5, 1.0]


def imbalanced() -> SimpleNamespace:
    """Real photo crops: 12 of class 0 and 3 of class 1 in train."""
    photos = real_photo_crops(n_per_class=12)
    train = photos.splits["train"]
    keep = [i for i, label in enumerate(train.labels) if label == 0 or i % 4 == 0]
    photos.splits["train"] = SimpleNamespace(
        items=[train.items[i] for i in keep], labels=[train.labels[i] for i in keep]
    )
    assert Counter(photos.splits["train"].labels) == {0: 12, 1: 3}
    return photos


def test_sampler_draws_classes_equally_often_and_is_seeded() -> None:
    cfg = DataConfig(balance="sampler", num_workers=0, batch_size=5)
    loader = ImageDataModule(imbalanced(), cfg, PREPROCESS, seed=7).train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler) and len(loader.sampler) == 15
    labels = imbalanced().splits["train"].labels
    draws = [i for _ in range(40) for i in loader.sampler]  # 40 epochs
    share = Counter(labels[i] for i in draws)[1] / len(draws)
    assert 0.4 < share < 0.6  # 3 of 15 images, drawn half the time
    again = ImageDataModule(imbalanced(), cfg, PREPROCESS, seed=7).train_dataloader()
    assert [i for _ in range(40) for i in again.sampler] == draws
    images, batch_labels = next(iter(loader))
    assert images.shape == (5, 3, 32, 32) and len(batch_labels) == 5


def test_no_balancing_by_default_and_unknown_modes_are_config_errors() -> None:
    loader = ImageDataModule(imbalanced(), DataConfig(num_workers=0), PREPROCESS).train_dataloader()
    # a plain shuffle, seeded per epoch (one replica: every index once per epoch, no weighting)
    assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.shuffle
    assert sorted(loader.sampler) == list(range(len(imbalanced().splits["train"].labels)))
    val = ImageDataModule(imbalanced(), DataConfig(balance="sampler", num_workers=0), PREPROCESS).val_dataloader()
    assert not isinstance(val.sampler, WeightedRandomSampler)

    from fruitlab.config import validate_experiment

    with pytest.raises(ConfigError, match=r"data.balance"):
        validate_experiment({"data": {"balance": "oversample"}})

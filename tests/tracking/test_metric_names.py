"""Today's summary names (names.best_key) and the legacy `best/val/...` ones older runs carry (metric_names)."""

from __future__ import annotations

import pytest

from fruitlab.names import VAL_BEST, best_key
from fruitlab.tracking import metric_names


def test_best_key_puts_the_best_checkpoint_after_the_val_curves():
    assert best_key("val/class/acc") == "val_best/class/acc" and best_key("val/loss") == f"{VAL_BEST}/loss"
    # MLflow's "Model metrics" tab: sections (the key minus its last part) sorted as strings, curves first
    sections = ["val/class", "val", "val_best/class", "train", "test/class"]
    assert sorted(sections) == ["test/class", "train", "val", "val/class", "val_best/class"]
    for wrong in ("train/loss", "val", "val/", "best/val/class/acc"):
        with pytest.raises(ValueError, match="not a per-epoch val metric"):
            best_key(wrong)


def test_legacy_names_read_as_todays():
    assert metric_names.current_name("best/val/class/acc") == "val_best/class/acc"
    assert metric_names.current_name("val_best/loss") == "val_best/loss"
    for other in ("test/class/acc", "val/class/acc", "best/valx/acc", "best/val", "fit_seconds"):
        assert metric_names.current_name(other) == other and metric_names.legacy_name(other) is None
    assert metric_names.legacy_name("val_best/joint/acc") == "best/val/joint/acc"
    assert (
        metric_names.names("best/val/loss") == metric_names.names("val_best/loss") == ("val_best/loss", "best/val/loss")
    )
    assert metric_names.names("test/class/acc") == ("test/class/acc",)


def test_a_run_with_both_names_keeps_todays_value():
    logged = {"best/val/class/acc": 0.5, "val_best/class/acc": 0.9, "best/val/class/f1_macro": 0.4, "val/loss": 1.0}
    assert metric_names.metrics(logged) == {"val_best/class/acc": 0.9, "val_best/class/f1_macro": 0.4, "val/loss": 1.0}
    assert metric_names.metric(logged, "val_best/class/acc") == 0.9
    assert metric_names.metric(logged, "val_best/class/f1_macro") == 0.4  # only the old name: read
    assert metric_names.metric(logged, "best/val/class/f1_macro") == 0.4
    assert metric_names.metric(logged, "val_best/joint/acc") is None

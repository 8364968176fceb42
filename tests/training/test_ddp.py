"""The phase schedule under DDP: two CPU processes on gloo stay in sync across a phase change.

DDP's reducer only all-reduces parameters that required grad when it was built; without re-wrapping at the
phase change, the newly unfrozen backbone parameters would train on each rank's own shard and drift apart.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from fruitlab.config import DataConfig, PhaseConfig, TrainSpec
from fruitlab.data.datamodule import ImageDataModule
from fruitlab.training.phases import PhaseSchedule
from tests.training.test_phases import make_module


class RecordPerRank(L.Callback):
    """Each rank writes what it ended with: the phase, its trainable names and a checksum per parameter."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        backbone = pl_module.model.backbone
        record = {
            "phase": pl_module.plan.index,
            "trainable": sorted(n for n, p in backbone.named_parameters() if p.requires_grad),
            "sums": {n: float(p.detach().double().sum()) for n, p in pl_module.model.named_parameters()},
        }
        with open(f"{self.out_dir}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(record, f)


@pytest.mark.slow
def test_two_gloo_processes_agree_after_unfreezing(tmp_path, photo_splits):
    phases = [
        PhaseConfig(epochs=1, train="none"),
        PhaseConfig(epochs=1, train=TrainSpec(last_stages=2), optimizer={"name": "sgd", "lr": 0.05}),
    ]
    module = make_module(photo_splits.classes, phases)
    initial = {n: float(p.detach().double().sum()) for n, p in module.model.named_parameters()}
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        callbacks=[PhaseSchedule(), RecordPerRank(str(tmp_path))],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    data = ImageDataModule(photo_splits, DataConfig(batch_size=2, num_workers=0), module.model.preprocess)
    trainer.fit(module, datamodule=data)

    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["phase"] == r1["phase"] == 1
    assert r0["trainable"] == r1["trainable"] and r0["trainable"]
    unfrozen = [f"backbone.{n}" for n in r0["trainable"]]
    assert any(abs(r0["sums"][n] - initial[n]) > 1e-6 for n in unfrozen)  # phase 2 really trained them
    for name, value in r0["sums"].items():
        assert value == pytest.approx(r1["sums"][name], rel=1e-6, abs=1e-6), name
    assert torch.distributed.is_available()

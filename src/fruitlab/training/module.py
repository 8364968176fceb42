"""The LightningModule: one shared step for train/val/test, torchmetrics per stage, optimizers per phase."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fruitlab.training.phases import PhasePlan

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")
TASK = "class"  # single-task models report under {stage}/class/{metric}


def stage_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
        }
    )


class ClassifierModule(L.LightningModule):
    def __init__(self, model: nn.Module, plan: PhasePlan, channels_last: bool = False):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.plan = plan
        self.channels_last = channels_last
        num_classes = len(model.classes)
        # ModuleDict keys cannot be 'train' (an nn.Module method), hence the suffix.
        self.metrics = nn.ModuleDict({f"{s}_metrics": stage_metrics(num_classes) for s in STAGES})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    # --- phases -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.announce_phase(self.plan.apply(self.model))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fruitlab_phase"] = self.plan.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs before the optimizer is built on resume: restore the phase, then freeze accordingly,
        # so configure_optimizers sees the same parameters the saved optimizer state belongs to.
        if "fruitlab_phase" in checkpoint:
            self.plan.load_state_dict(checkpoint["fruitlab_phase"])
            self.plan.apply(self.model)

    def train(self, mode: bool = True) -> ClassifierModule:
        super().train(mode)
        if mode:
            self.plan.enforce_bn_modes()  # Lightning switches everything to train mode each epoch
        return self

    def announce_phase(self, counts: dict[str, int]) -> None:
        log.info(
            "phase %d/%d %r: training %s of %s backbone parameters + %s head parameters",
            self.plan.index + 1,
            len(self.plan.phases),
            self.plan.label(),
            f"{counts['backbone_trainable']:,}",
            f"{counts['backbone_total']:,}",
            f"{counts['head']:,}",
        )

    def configure_optimizers(self) -> dict[str, Any]:
        return self.plan.build_optimizer(self.model)

    # --- steps --------------------------------------------------------------------------------------------
    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(logits, labels)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        if stage == "train":  # the running loss for the progress bar only; curves are per epoch
            self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        for name, metric in metrics.items():
            self.log(f"{stage}/{TASK}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        # Phase markers and learning rates, one point per epoch.
        self.log("phase", float(self.plan.index), on_step=False, on_epoch=True)
        optimizer = self.optimizers(use_pl_optimizer=False)
        for group in optimizer.param_groups:
            self.log(f"lr/{group.get('name', 'group')}", group["lr"], on_step=False, on_epoch=True)

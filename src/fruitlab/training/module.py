"""The LightningModule: one shared step for train/val/test, torchmetrics per stage, optimizers per phase."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fruitlab.config import AugmentConfig, LossConfig
from fruitlab.data.mixing import mix_batch
from fruitlab.names import JOINT, SINGLE_TASK, metric_key
from fruitlab.training.losses import TaskLoss
from fruitlab.training.phases import PhasePlan

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


def stage_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes=num_classes, average="macro"),  # names.PER_EPOCH
        }
    )


class ClassifierModule(L.LightningModule):
    """Trains a Classifier (single- or multi-task); metrics are `{stage}/{task}/{metric}` (STYLE.md 6)."""

    def __init__(
        self,
        model: nn.Module,
        plan: PhasePlan,
        channels_last: bool = False,
        loss: LossConfig | None = None,
        class_weights: dict[str, list[float]] | None = None,
        augment: AugmentConfig | None = None,
        feature_cache: Any = None,
    ):
        super().__init__()
        self.augment = augment  # only its batch-level part (mixup/cutmix) is used here, on training batches
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.plan = plan
        self.channels_last = channels_last
        self.tasks: dict[str, list[str]] = dict(model.tasks)
        self.multitask = bool(getattr(model, "multitask", False))
        self.loss_fn = TaskLoss(list(self.tasks), loss, {t: torch.tensor(w) for t, w in (class_weights or {}).items()})
        # ModuleDict keys cannot be 'train' (an nn.Module method), hence the suffix.
        self.metrics = nn.ModuleDict(
            {
                f"{s}_metrics": nn.ModuleDict({t: stage_metrics(len(names)) for t, names in self.tasks.items()})
                for s in STAGES
            }
        )
        if self.multitask:
            self.joint = nn.ModuleDict({f"{s}_joint": MeanMetric() for s in STAGES})
        # Shared with the data module, which records in it which stages' loaders serve cached tensors now
        # (FeatureCache.serving), so only the rest of the model runs on those.
        self.feature_cache = feature_cache
        self._phase_counts: dict[str, int] = {}  # what the current phase trains (setup / a restored checkpoint)
        self._restored = False  # the phase came from a checkpoint (--resume)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare_input(x))

    def _forward(self, x: torch.Tensor, stage: str) -> Any:
        cache = self.feature_cache
        if cache is not None and stage in cache.serving:
            return cache.rest(self.prepare_input(x), cache.serving[stage])
        return self(x)

    # --- phases -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._phase_counts = self.plan.apply(self.model)
            self._restored = False

    def on_fit_start(self) -> None:
        # Announced here, not in setup: on --resume the checkpoint (and its phase) is restored between the two.
        self.announce_phase(self._phase_counts, resumed=self._restored)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fruitlab_phase"] = self.plan.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs before the optimizer is built on resume: restore the phase, then freeze accordingly,
        # so configure_optimizers sees the same parameters the saved optimizer state belongs to.
        if "fruitlab_phase" in checkpoint:
            self.plan.load_state_dict(checkpoint["fruitlab_phase"])
            self._phase_counts = self.plan.apply(self.model)
            self._restored = True

    def train(self, mode: bool = True) -> ClassifierModule:
        super().train(mode)
        if mode:
            self.plan.enforce_bn_modes()  # Lightning switches everything to train mode each epoch
        return self

    def announce_phase(self, counts: dict[str, int], resumed: bool = False) -> None:
        trainable = counts["backbone_trainable"] + counts["head"]
        log.info(
            "%sphase %d/%d %r: %s of %s parameters train (backbone %s of %s, head %s)",
            "resumed from the checkpoint in " if resumed else "",
            self.plan.index + 1,
            len(self.plan.phases),
            self.plan.label(),
            f"{trainable:,}",
            f"{counts['backbone_total'] + counts['head']:,}",
            f"{counts['backbone_trainable']:,}",
            f"{counts['backbone_total']:,}",
            f"{counts['head']:,}",
        )

    def configure_optimizers(self) -> dict[str, Any]:
        extra = [p for p in self.loss_fn.parameters() if p.requires_grad]
        return self.plan.build_optimizer(self.model, extra=extra)

    # --- steps --------------------------------------------------------------------------------------------
    def _step(self, batch: tuple[torch.Tensor, Any], stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the objective, the logits {task: (N, C_task)})."""
        images, target = batch
        perm, lam = None, 1.0
        if stage == "train" and self.augment is not None and self.augment.mixing:
            images, perm, lam = mix_batch(images, self.augment)
        logits = self._forward(images, stage)
        # Single-task models and data speak tensors; everything below speaks {task: tensor}.
        logits = logits if isinstance(logits, dict) else {SINGLE_TASK: logits}
        labels = target if isinstance(target, dict) else {SINGLE_TASK: target}
        n = len(images)
        losses = self.loss_fn.per_task(logits, labels, perm, lam)
        objective = self.loss_fn.combine_losses(losses)
        # val/loss (what checkpoints and early stopping watch) is the plain sum of the tasks' losses, so it
        # stays comparable across loss weightings; the weighted objective is what the optimizer sees.
        plain = torch.stack(list(losses.values())).sum()
        self.log(f"{stage}/loss", plain, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        if stage == "train":  # the running loss for the progress bar only; curves are per epoch
            self.log("loss", objective, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        metrics = self.metrics[f"{stage}_metrics"]
        for task, task_logits in logits.items():
            metrics[task].update(task_logits, labels[task])
            if self.multitask:
                self.log(metric_key(stage, task, "loss"), losses[task], on_step=False, on_epoch=True, batch_size=n)
            for name, metric in metrics[task].items():
                bar = name == "acc" and not self.multitask
                self.log(metric_key(stage, task, name), metric, on_step=False, on_epoch=True, prog_bar=bar)
        if self.multitask:
            right = torch.stack([logits[t].argmax(-1) == labels[t] for t in logits]).all(0).float()
            joint = self.joint[f"{stage}_joint"]
            joint.update(right)
            self.log(metric_key(stage, JOINT, "acc"), joint, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return objective, logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._step(batch, "val")[1]  # the logits, for callbacks (final_evaluation.LastValidation)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        # Phase markers and learning rates, one point per epoch.
        self._log_epoch_as_step()
        self.log("phase", float(self.plan.index), on_step=False, on_epoch=True)
        optimizer = self.optimizers(use_pl_optimizer=False)
        # one curve per name (with layer decay, a layer's decayed and non-decayed parameters share a rate)
        lrs = {group.get("name", "group"): group["lr"] for group in optimizer.param_groups}
        for name, lr in lrs.items():
            if name != "loss":
                self.log(f"lr/{name}", lr, on_step=False, on_epoch=True)
        if self.multitask:  # the weight each task's loss gets this epoch (fixed, or learned)
            for task, weight in self.loss_fn.weights().items():
                self.log(f"loss_weight/{task}", weight, on_step=False, on_epoch=True)

    def on_validation_epoch_start(self) -> None:
        self._log_epoch_as_step()

    def _log_epoch_as_step(self) -> None:
        """Per-epoch curves are logged at step = epochs trained (1 after the first epoch), so MLflow plots them
        against epochs, numbered as `fruitlab compare` and the run's learning_curves.png number them. Lightning
        takes a logged `step` as the step of everything logged with it; a per-step metric (on_step=True) would
        keep the global step, since `step` is logged per epoch only."""
        self.log("step", float(self.current_epoch + 1), on_step=False, on_epoch=True)

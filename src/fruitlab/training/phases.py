"""Fine-tuning in phases: which parameters train, with which optimizer, and when the phase changes.

Owned here rather than taken from Lightning's BackboneFinetuning, whose open bugs this design avoids:
- BatchNorm of frozen parts (or, with `bn: frozen_all`, of every part) is put in eval mode and kept there
  (Lightning re-enables train mode each epoch), so frozen running statistics stay bit-identical;
- the phase index is part of the checkpoint and is re-applied *before* the optimizer is built on resume,
  so a run resumed in phase 2 neither re-freezes nor mismatches the saved optimizer state;
- a phase change builds a fresh optimizer and scheduler for exactly the parameters that train (no param
  group is appended to a live optimizer, which breaks schedulers), and under DDP re-wraps the model so the
  reducer covers the newly trainable parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from timm.optim import param_groups_layer_decay
from torch import nn

from fruitlab.config import OptimizerConfig, PhaseConfig, ScheduleConfig
from fruitlab.models.parts import batchnorm_modules, select_trainable

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


@dataclass
class PhasePlan:
    """The phases of one fit and which one is current. Persisted in checkpoints via `state_dict`."""

    phases: list[PhaseConfig]
    where: str = "finetune.phases"
    index: int = 0
    start_epoch: int = 0
    end_requested: bool = False  # set by early stopping inside a phase that is not the last
    frozen_bn: list[nn.Module] = field(default_factory=list, repr=False)

    @property
    def phase(self) -> PhaseConfig:
        return self.phases[self.index]

    @property
    def is_last(self) -> bool:
        return self.index == len(self.phases) - 1

    def label(self) -> str:
        return self.phase.name or f"phase{self.index}"

    # --- freezing ------------------------------------------------------------------------------------------
    def apply(self, model: nn.Module) -> dict[str, int]:
        """Set requires_grad and BatchNorm modes for the current phase; returns parameter counts."""
        backbone, head = model.backbone, model.head
        trainable = select_trainable(backbone, self.phase.train, f"({self.where}.{self.index}.train)")
        for name, p in backbone.named_parameters():
            p.requires_grad_(name in trainable)
        for p in head.parameters():
            p.requires_grad_(True)
        self.frozen_bn = []
        for _, bn in batchnorm_modules(backbone):
            frozen = not any(p.requires_grad for p in bn.parameters(recurse=False))
            # frozen_all: batch statistics of small batches would replace the pretrained ones in the layers that
            # start training: a shock to accuracy at the unfreeze, measured in benchmarks/quickstart.md
            if (frozen and self.phase.bn == "frozen") or self.phase.bn == "frozen_all":
                self.frozen_bn.append(bn)
            else:
                bn.train(model.training)  # may have been held in eval mode by the previous phase
        self.enforce_bn_modes()
        return {
            "backbone_trainable": sum(backbone.get_parameter(n).numel() for n in trainable),
            "backbone_total": sum(p.numel() for p in backbone.parameters()),
            "head": sum(p.numel() for p in head.parameters()),
        }

    def enforce_bn_modes(self) -> None:
        """Frozen BatchNorm runs on its stored statistics and never updates them."""
        for bn in self.frozen_bn:
            bn.eval()

    # --- optimizers ----------------------------------------------------------------------------------------
    def build_optimizer(self, model: nn.Module, extra: list[nn.Parameter] | None = None) -> dict[str, Any]:
        """Lightning's configure_optimizers dict for the current phase: only what trains is passed.

        `extra`: parameters outside the model that train in every phase (learned loss weights), at the head's
        rate and without weight decay (decay would pull the log-variances to 0, i.e. to equal weights).
        """
        opt_cfg = self.phase.optimizer
        groups = [{"name": "head", "params": list(model.head.parameters()), "lr": opt_cfg.lr}]
        groups += backbone_param_groups(model.backbone, opt_cfg)
        if extra:
            groups.append({"name": "loss", "params": list(extra), "lr": opt_cfg.lr, "weight_decay": 0.0})
        optimizer = make_optimizer(opt_cfg, groups)
        scheduler = make_scheduler(self.phase.schedule, optimizer, self.phase.epochs)
        if scheduler is None:
            return {"optimizer": optimizer}
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    # --- transitions ---------------------------------------------------------------------------------------
    def due(self, epoch: int) -> bool:
        """Whether the current phase is over at the start of `epoch`."""
        return not self.is_last and (self.end_requested or epoch - self.start_epoch >= self.phase.epochs)

    def index_at(self, epoch: int) -> int:
        """The phase `epoch` will run in, asked before on_train_epoch_start has moved to it."""
        return self.index + 1 if self.due(epoch) else self.index

    def advance(self, epoch: int) -> None:
        self.index += 1
        self.start_epoch = epoch
        self.end_requested = False

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start_epoch": self.start_epoch, "end_requested": self.end_requested}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index, self.start_epoch = int(state["index"]), int(state["start_epoch"])
        self.end_requested = bool(state.get("end_requested", False))


def backbone_param_groups(backbone: nn.Module, cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """The optimizer groups of the backbone parameters that train now (none while it is frozen).

    Without `layer_decay`: one group at backbone_lr (or lr). With it: timm's param_groups_layer_decay over the whole
    backbone (so layer k of L gets scale layer_decay^(L-1-k), whether or not the layers below it train), of which the
    trainable parameters form one group per layer at backbone_lr x scale; timm also drops weight decay on 1-d
    parameters (BatchNorm, biases) there. Torch's schedulers scale each group's own lr, so the ratios hold.
    """
    base_lr = cfg.backbone_lr or cfg.lr
    if cfg.layer_decay is None:
        params = [p for p in backbone.parameters() if p.requires_grad]
        return [{"name": "backbone", "params": params, "lr": base_lr}] if params else []
    groups = param_groups_layer_decay(backbone, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    return [
        {
            "name": _layer_group_name(g["lr_scale"], cfg.layer_decay),
            "params": g["params"],
            "lr": base_lr * g["lr_scale"],
            "lr_scale": g["lr_scale"],
            "weight_decay": g["weight_decay"],
        }
        for g in sorted(groups, key=lambda g: -g["lr_scale"])  # top layer first
    ]


def _layer_group_name(scale: float, decay: float) -> str:
    """'backbone' for the top layer (its lr is backbone_lr, as without decay), 'backbone-k' k layers below it."""
    below = 0 if decay == 1 else round(math.log(scale) / math.log(decay))
    return f"backbone-{below}" if below else "backbone"


def make_optimizer(cfg: OptimizerConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.name == "sgd":
        kwargs |= {"momentum": cfg.momentum, "nesterov": cfg.nesterov and cfg.momentum > 0}
    elif cfg.name == "rmsprop":
        kwargs["momentum"] = cfg.momentum
    return OPTIMIZERS[cfg.name](groups, **kwargs)


def make_scheduler(cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    sched = torch.optim.lr_scheduler
    if cfg.name == "constant":
        return None
    if cfg.name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=cfg.min_lr)
    if cfg.name == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "exponential":
        return sched.ExponentialLR(optimizer, gamma=cfg.gamma)
    return sched.ReduceLROnPlateau(optimizer, factor=cfg.gamma, patience=cfg.patience, min_lr=cfg.min_lr)


class PhaseSchedule(Callback):
    """Moves the module from one phase to the next at epoch boundaries."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plan: PhasePlan = pl_module.plan
        if not plan.due(trainer.current_epoch):
            return
        plan.advance(trainer.current_epoch)
        counts = plan.apply(pl_module.model)
        _rewrap_ddp(trainer)
        trainer.strategy.setup_optimizers(trainer)
        for callback in trainer.callbacks:
            if isinstance(callback, PhaseEarlyStopping):
                callback.reset()
        pl_module.announce_phase(counts)


def _rewrap_ddp(trainer: L.Trainer) -> None:
    """DDP's reducer only syncs parameters that required grad when it was built: build a new one."""
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if isinstance(strategy.model, DistributedDataParallel) and hasattr(strategy, "_setup_model"):
        strategy.model = strategy._setup_model(strategy.lightning_module)


class PhaseEarlyStopping(EarlyStopping):
    """Early stopping per phase: in a phase that is not the last, running out of patience ends the phase
    (the next one starts with fresh patience) instead of the whole fit."""

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        stopping_before = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        plan: PhasePlan = trainer.lightning_module.plan
        if trainer.should_stop and not stopping_before and not plan.is_last:
            trainer.should_stop = False
            plan.end_requested = True

    def reset(self) -> None:
        """Fresh patience for a new phase."""
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)

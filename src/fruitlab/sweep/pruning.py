"""Pruning: the per-epoch validation metric goes to the Optuna trial, which may stop the fit.

optuna-integration's `PyTorchLightningPruningCallback` imports `lightning.pytorch` (not the deprecated
`pytorch_lightning` package, which an import contract forbids), so it is reused as is, DDP handling included.
What this subclass adds: a clear error when the metric is not logged at all (the original only warns, so a typo
would silently never prune), the values it saw (the trial's result is the best of them) and the MLflow run id of
the fit. A trial prints nothing per epoch: the sweep prints one line per trial (trials.py).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

from fruitlab.errors import SweepError


class TrialPruning(PyTorchLightningPruningCallback):
    def __init__(self, trial: optuna.Trial, monitor: str, direction: str):
        super().__init__(trial, monitor)
        self.trial_number = trial.number
        self.maximize = direction == "maximize"
        self.values: dict[int, float] = {}  # epoch -> metric
        self.run_id: str | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_fit_start(trainer, pl_module)
        self.run_id = getattr(trainer.logger, "run_id", None)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
            raise SweepError(f"sweep.metric {self.monitor!r} is not logged by this fit (logged: {', '.join(logged)})")
        self.values[pl_module.current_epoch] = float(value)
        super().on_validation_end(trainer, pl_module)  # report; raises optuna.TrialPruned when the pruner says so

    def best(self) -> float:
        """The trial's result: its best epoch (the one its checkpoint keeps, see study.py)."""
        finite = [v for v in self.values.values() if not math.isnan(v)]
        if not finite:
            raise SweepError(f"trial {self.trial_number}: no finite {self.monitor} value in any epoch")
        return max(finite) if self.maximize else min(finite)

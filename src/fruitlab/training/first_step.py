"""The fixed cost before training, measured: `first_step_seconds` on the run, from the start of fit() to the first
training batch (data, model, tracking and trainer set-up). Its MLflow timestamp is the wall-clock moment of that
batch, so a benchmark can tell the time from the process start too (benchmarks/performance.py overhead).

Stamped at the first batch, written when the first training epoch ends (with the epoch's own metrics), so that
nothing talks to the tracking store on the way to the first step; tags known only after the run was opened (the
weights' source when the CLI's child opened it, training/run_start.py) go in the same write."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.callbacks import Callback

from fruitlab.names import FIRST_STEP_SECONDS


class FirstStepTimer(Callback):
    """Logs FIRST_STEP_SECONDS (and `late_tags`) once, for the first training batch this process runs (rank 0)."""

    def __init__(self, started: float, late_tags: dict[str, str] | None = None):
        self.started = started  # time.perf_counter() at the start of fit()
        self.late_tags = late_tags or {}
        self.stamp: tuple[float, int] | None = None  # (seconds since started, wall-clock ms) of the first batch
        self.logged = False

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.stamp is None:
            self.stamp = time.perf_counter() - self.started, int(time.time() * 1000)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.logged or self.stamp is None or trainer.global_rank != 0 or trainer.logger is None:
            return
        from fruitlab.tracking import runs  # imports MLflow: here, not on the way to the first step

        self.logged = True
        seconds, at_ms = self.stamp
        logger = trainer.logger
        runs.log_batch(logger.experiment, logger.run_id, {FIRST_STEP_SECONDS: seconds}, self.late_tags, at_ms)

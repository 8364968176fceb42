"""The fixed cost before training, measured: `first_step_seconds` on the run, from the start of fit() to the first
training batch (data, model, tracking and trainer set-up). Its MLflow timestamp is the wall-clock moment of that
batch, so a benchmark can tell the time from the process start too (benchmarks/performance.py overhead)."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch.callbacks import Callback

from fruitlab.names import FIRST_STEP_SECONDS


class FirstStepTimer(Callback):
    """Logs FIRST_STEP_SECONDS once, at the first training batch this process runs (rank 0)."""

    def __init__(self, started: float):
        self.started = started  # time.perf_counter() at the start of fit()
        self.logged = False

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.logged or trainer.global_rank != 0 or trainer.logger is None:
            return
        self.logged = True
        seconds, now_ms = time.perf_counter() - self.started, int(time.time() * 1000)
        logger = trainer.logger
        logger.experiment.log_metric(logger.run_id, FIRST_STEP_SECONDS, seconds, timestamp=now_ms)

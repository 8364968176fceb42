"""One trial = one fit(): the Optuna objective, and the MLflow run each trial leaves (nested, tagged with its state)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial

from fruitlab.config import Experiment, SweepConfig
from fruitlab.sweep import report
from fruitlab.sweep.pruning import TrialPruning
from fruitlab.sweep.space import suggest, trial_experiment
from fruitlab.sweep.storage import INTERRUPTED_ATTR, RETRY_ATTR, WORKER_ATTR, queue_retry, worker_id
from fruitlab.tracking import runs
from fruitlab.training.fit import fit


class TrialRunner:
    """The objective and the MLflow bookkeeping of trial runs."""

    def __init__(
        self,
        exp: Experiment,
        sweep: SweepConfig,
        study_name: str,
        uri: str,
        data_dir: str | None,
        echo: Callable[[str], None],
    ):
        self.exp, self.sweep, self.study_name, self.uri, self.data_dir, self.echo = (
            exp,
            sweep,
            study_name,
            uri,
            data_dir,
            echo,
        )
        self.experiment = exp.tracking.experiment or exp.name
        self.parent_run_id = ""
        mode = "max" if sweep.direction == "maximize" else "min"
        # The checkpoint (the model a trial logs) is the trial's best epoch by the sweep's own metric.
        self.fixed: dict[str, Any] = {
            "checkpoint.monitor": sweep.metric,
            "checkpoint.mode": mode,
            "trainer.enable_progress_bar": False,  # one line per epoch instead (TrialPruning)
        }

    def objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        params = suggest(trial, self.sweep.params)
        fixed = {k: v for k, v in self.fixed.items() if k not in params}
        fixed["tracking.run_name"] = f"{self.study_name} #{trial.number}"
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "fruitlab.study": self.study_name,
            "fruitlab.trial_number": str(trial.number),
            "fruitlab.trial_state": "running",
        }
        pruning = TrialPruning(trial, self.sweep.metric, self.sweep.direction)
        started = time.perf_counter()
        state, error, interrupted = "failed", None, None
        try:
            exp = trial_experiment(self.exp, {**params, **fixed})
            trial.set_user_attr("fruitlab.max_epochs", exp.total_epochs)
            fit(exp, data_dir=self.data_dir, callbacks=[pruning], tags=tags)
            value = pruning.best()
            state = "complete"
            return value
        except optuna.TrialPruned:
            state = "pruned"
            raise
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl+C into SystemExit after its own clean-up
            interrupted, error = "interrupted", "interrupted (Ctrl+C or SIGTERM)"
            trial.set_user_attr(INTERRUPTED_ATTR, interrupted)
            raise KeyboardInterrupt from None  # Optuna records KeyboardInterrupt as a failed trial, then re-raises
        except Exception as exc:
            error = "".join(traceback.format_exception(exc))
            raise
        finally:
            seconds = time.perf_counter() - started
            trial.set_user_attr("fruitlab.epochs", len(pruning.values))
            trial.set_user_attr("fruitlab.seconds", round(seconds, 1))
            run_id = self.record(trial.number, state, pruning.run_id, error, interrupted)
            trial.set_user_attr("fruitlab.run_id", run_id)
            self.echo(self._outcome(trial, state, pruning, seconds, run_id, error, params))

    def _outcome(
        self, trial: optuna.Trial, state: str, pruning: TrialPruning, seconds: float, run: str, error: Any, params: Any
    ) -> str:
        """The one line a trial prints, when it ends: what came out, what it cost, what it tried."""
        epochs = len(pruning.values)
        if state == "complete":
            what = f"complete: {self.sweep.metric} {pruning.best():.4f}"
        elif state == "pruned":
            what = f"pruned after epoch {epochs}"
        else:
            what = f"failed: {str(error).strip().splitlines()[-1]}"
        retry = trial.user_attrs.get(RETRY_ATTR)
        again = f" (retry of trial {retry})" if retry is not None else ""
        cost = f"{epochs} epochs, {seconds:.0f} s, run {run[:8]}"
        return f"trial {trial.number}{again} {what} ({cost})  {report.format_params(params)}"

    def record(
        self, number: int, state: str, run_id: str | None, error: str | None, interrupted: str | None = None
    ) -> str:
        """Tag the trial's MLflow run with its state (creating the run if the fit failed before opening one)."""
        client = runs.client_for(self.uri)
        run_id = run_id or self._find_run(client, number) or self._placeholder_run(client, number)
        tags = {"fruitlab.trial_state": state}
        if error:
            tags["fruitlab.trial_error"] = str(error).strip().splitlines()[-1][:500]
            client.log_text(run_id, str(error), "error.txt")
        if interrupted:
            tags[INTERRUPTED_ATTR] = interrupted
        runs.set_tags(client, run_id, tags)
        if state != "complete":  # fit finished a complete trial's run itself
            runs.finish_run(client, run_id, "KILLED" if state == "pruned" else "FAILED")
        return run_id

    def on_stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's heartbeat found a trial whose worker (on any host) stopped: record it, run it again."""
        run_id = trial.user_attrs.get("fruitlab.run_id")
        self.record(trial.number, "failed", run_id, "its worker stopped sending heartbeats", "worker died")
        queue_retry(study, trial)

    def _find_run(self, client: MlflowClient, number: int) -> str | None:
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return None
        found = client.search_runs(
            [experiment.experiment_id],
            f"tags.`fruitlab.study` = '{self.study_name}' and tags.`fruitlab.trial_number` = '{number}'",
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def _placeholder_run(self, client: MlflowClient, number: int) -> str:
        experiment_id = runs.ensure_experiment(client, self.experiment, self.uri)
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "fruitlab.study": self.study_name,
            "fruitlab.trial_number": str(number),
        }
        return client.create_run(experiment_id, run_name=f"{self.study_name} #{number}", tags=tags).info.run_id

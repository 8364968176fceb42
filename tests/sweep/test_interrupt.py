"""Interrupting `fruitlab sweep` in the middle of a trial, then running the same command again.

Ctrl+C (SIGINT) first, then SIGKILL (no chance to clean up), then a run to the end: every completed trial is kept,
each interrupted trial is failed (in Optuna and in MLflow) and run again with its parameters, and each trial has
exactly one MLflow run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.conftest import SMOKE_EXPERIMENT, sigint_default, write_experiment
from tests.test_cli import FRUITLAB

SWEEP = SMOKE_EXPERIMENT + (  # two epochs a trial: signals arrive after the first, in the middle of the trial
    """
sweep:
  metric: val/class/acc
  trials: 3
  pruner: none
  params:
    finetune.phases.0.optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
"""
)


def after_first_epoch(uri: str, trial: int) -> bool:
    """Trial `trial` has logged its first epoch's metrics to MLflow (a sweep prints a trial's line only at its end)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    if experiment is None:
        return False
    runs = client.search_runs([experiment.experiment_id], f"tags.`fruitlab.trial_number` = '{trial}'")
    return any("val/class/acc" in run.data.metrics for run in runs)


def interrupt(cmd: list[str], cwd, env, trial: int, sig: int) -> tuple[int, str]:
    """Start the sweep, send `sig` once trial `trial` is half done (1 of 2 epochs); (exit status, output)."""
    log = cwd / f"sweep-{sig}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=sigint_default)
        deadline = time.time() + 600
        while not after_first_epoch(env["MLFLOW_TRACKING_URI"], trial):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(sig)
        return proc.wait(timeout=120), log.read_text()


@pytest.mark.slow
def test_interrupted_sweeps_resume_with_every_completed_trial_kept(tmp_path, fruit_data_dir):
    exp = write_experiment(tmp_path / "tiny.yaml", SWEEP)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "FRUITLAB_DATA_DIR": str(fruit_data_dir)}
    cmd = [FRUITLAB, "sweep", "-e", str(exp)]

    status, out = interrupt(cmd, tmp_path, env, 1, signal.SIGINT)
    assert status == 130 and "run the same command again to resume study 'tiny'" in out
    assert "Traceback" not in out
    status, out = interrupt(cmd, tmp_path, env, 3, signal.SIGKILL)  # trial 2 retries trial 1
    assert status == -signal.SIGKILL
    assert "trial 2 (retry of trial 1) complete" in out
    final = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "trial 4 (retry of trial 3)" in final.stdout

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].user_attrs["fruitlab.interrupted"] == "interrupted"  # Ctrl+C
    assert study.trials[3].user_attrs["fruitlab.interrupted"] == "worker died"  # SIGKILL, found at the restart
    assert study.trials[2].params == study.trials[1].params and study.trials[4].params == study.trials[3].params

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "fruitlab.trial_number" in r.data.tags]
    by_number = {int(r.data.tags["fruitlab.trial_number"]): r for r in runs}
    assert len(runs) == len(by_number) == 5  # one run per trial
    assert [by_number[n].info.status for n in range(5)] == ["FINISHED", "FAILED", "FINISHED", "FAILED", "FINISHED"]
    assert by_number[1].data.tags["fruitlab.interrupted"] == "interrupted"
    assert by_number[3].data.tags["fruitlab.interrupted"] == "worker died"
    assert by_number[0].info.run_id == study.trials[0].user_attrs["fruitlab.run_id"]  # kept, not run again

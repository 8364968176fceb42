"""Trials of a dead worker are failed and queued again, once, with the same parameters."""

from __future__ import annotations

import socket
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from fruitlab.sweep.storage import (
    INTERRUPTED_ATTR,
    RETRY_ATTR,
    WORKER_ATTR,
    fail_dead_workers,
    open_storage,
    retry_interrupted,
)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_killed_workers_trial_fails_at_once_and_runs_again(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", on_stale=lambda study, trial: None)
    study = optuna.create_study(storage=storage, study_name="s")
    done = study.ask()
    done.suggest_float("x", 0, 1)
    study.tell(done, 0.5)
    killed = study.ask()
    x = killed.suggest_float("x", 0, 1)
    killed.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{dead_pid()}")
    alive = study.ask()  # another worker's trial, still running on another host
    alive.set_user_attr(WORKER_ATTR, "elsewhere:1")

    failed = fail_dead_workers(storage, study)
    assert [t.number for t in failed] == [killed.number]
    states = {t.number: t.state for t in study.trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.RUNNING}
    assert study.trials[1].user_attrs[INTERRUPTED_ATTR] == "worker died"

    assert retry_interrupted(study) == [killed.number]
    assert retry_interrupted(study) == []  # queued once only
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING and retry.params == {"x": x}
    assert retry.user_attrs[RETRY_ATTR] == killed.number
    again = study.ask()  # the next trial any worker asks for is the retry, with the same value
    assert again.number == retry.number and again.suggest_float("x", 0, 1) == x

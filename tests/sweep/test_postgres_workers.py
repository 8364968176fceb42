"""Two `fruitlab sweep` processes, one study in PostgreSQL: no trial lost or run twice, each trial one MLflow run.

The study lives in one fresh database and the MLflow store in another (the shared store a tracking server would
give workers on other machines); both are created for the test with unique names and dropped after it.
"""

from __future__ import annotations

import os
import subprocess

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.conftest import PG_SERVER, SMOKE_EXPERIMENT, fresh_pg_databases, write_experiment
from tests.test_cli import FRUITLAB

TRIALS = 4
SWEEP = (
    SMOKE_EXPERIMENT
    + f"""
sweep:
  metric: val/class/acc
  trials: {TRIALS}
  pruner: none
  params:
    finetune.phases.0.optimizer.lr: {{type: float, low: 1.0e-4, high: 1.0e-1, log: true}}
"""
)


@pytest.fixture
def databases():
    with fresh_pg_databases("optuna", "mlflow") as (study_db, mlflow_db):
        # The study URL as a user writes it; MLflow is given the driver (SQLAlchemy 2.1's default is psycopg 3).
        yield [f"postgresql://{PG_SERVER}/{study_db}", f"postgresql+psycopg2://{PG_SERVER}/{mlflow_db}"]


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, fruit_data_dir, databases):
    study_url, mlflow_url = databases
    exp = write_experiment(tmp_path / "tiny.yaml", SWEEP)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_url, "FRUITLAB_DATA_DIR": str(fruit_data_dir)}
    cmd = [FRUITLAB, "sweep", "-e", str(exp), "--storage", study_url, "--study", "shared"]
    workers = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=900) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]

    # Optuna: every trial complete, numbered once; both workers took part; per-trial seeds: no repeated values
    storage = study_url.replace("postgresql://", "postgresql+psycopg2://")
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert TRIALS <= len(trials) <= TRIALS + 1  # two workers may both start the last trial: at most one extra
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t.user_attrs["fruitlab.worker"] for t in trials}) == 2
    assert len({t.params["finetune.phases.0.optimizer.lr"] for t in trials}) == len(trials)
    done_by = [{int(line.split()[1]) for line in out.splitlines() if " complete: " in line} for out, _ in outputs]
    assert not done_by[0] & done_by[1] and done_by[0] | done_by[1] == set(range(len(trials)))

    # MLflow: one parent run; every trial exactly one run, nested under it, finished, the one Optuna recorded
    client = MlflowClient(mlflow_url)
    experiment = client.get_experiment_by_name("tiny")
    found = client.search_runs([experiment.experiment_id])
    parents = [r for r in found if r.data.tags.get("fruitlab.role") == "sweep"]
    assert len(parents) == 1
    trial_runs = [r for r in found if "fruitlab.trial_number" in r.data.tags]
    assert sorted(int(r.data.tags["fruitlab.trial_number"]) for r in trial_runs) == list(range(len(trials)))
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parents[0].info.run_id}
    assert {r.info.status for r in trial_runs} == {"FINISHED"}
    assert {r.info.run_id for r in trial_runs} == {t.user_attrs["fruitlab.run_id"] for t in trials}

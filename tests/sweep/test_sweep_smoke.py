"""A real sweep: tiny fits on real fruit photos, SQLite study storage, a real MLflow store in a temp dir.

Four trials, three of them fixed in advance (`sweep.enqueue`) so that each state shows up for sure: a sensible
learning rate (completes), an absurd one (diverges, pruned after its first epoch by an eager median pruner) and
one that runs out of memory in its first training step (simulated; recorded as failed while the study goes on).
Then: the same study resumed with a larger budget, and promote + predict on real photos in fresh processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from fruitlab.config import load_experiment
from fruitlab.sweep.study import run_sweep
from fruitlab.training.module import ClassifierModule
from tests.conftest import SMOKE_EXPERIMENT, write_experiment
from tests.test_cli import FRUITLAB

OOM_LR = 5.0e-4  # the enqueued trial whose first training step runs out of memory
SWEEP = (
    SMOKE_EXPERIMENT
    + """
sweep:
  metric: val/loss
  direction: minimize
  trials: 4
  pruner: {name: median, startup_trials: 1, warmup_epochs: 0}
  params:
    finetune.phases.0.optimizer.lr: {type: float, low: 1.0e-4, high: 100.0, log: true}
  enqueue:
    - {finetune.phases.0.optimizer.lr: 3.0e-3}
    - {finetune.phases.0.optimizer.lr: 50.0}
    - {finetune.phases.0.optimizer.lr: 5.0e-4}
"""
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, fruit_data_dir):
    work = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        original = ClassifierModule.training_step

        def training_step(self, batch, batch_idx):
            if self.plan.phases[0].optimizer.lr == OOM_LR:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return original(self, batch, batch_idx)

        mp.setattr(ClassifierModule, "training_step", training_step)
        exp = load_experiment(str(write_experiment(work / "tiny.yaml", SWEEP)))
        lines: list[str] = []
        result = run_sweep(exp, data_dir=str(fruit_data_dir), echo=lines.append)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{work / 'optuna.db'}")
    states = [t.state for t in study.trials]
    return SimpleNamespace(
        work=work, uri=uri, exp=exp, result=result, study=study, states=states, lines=lines, data=fruit_data_dir
    )


def trial_runs(client: MlflowClient) -> dict[int, object]:
    experiment = client.get_experiment_by_name("tiny")
    found = client.search_runs([experiment.experiment_id], "tags.`fruitlab.study` = 'tiny'")
    trials = [r for r in found if "fruitlab.trial_number" in r.data.tags]
    numbers = [int(r.data.tags["fruitlab.trial_number"]) for r in trials]
    assert len(numbers) == len(set(numbers)), "a trial has two MLflow runs"
    return {int(r.data.tags["fruitlab.trial_number"]): r for r in trials}


def test_trials_complete_prune_and_fail_and_the_study_goes_on(swept):
    states = swept.states
    assert len(states) == 4
    assert states[:3] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert states[3] in (TrialState.COMPLETE, TrialState.PRUNED)
    assert swept.study.trials[1].user_attrs["fruitlab.epochs"] == 1  # stopped after its first epoch of two
    text = "\n".join(swept.lines)
    assert "trial 1 pruned after epoch 1" in text
    assert "trial 2 failed: torch.OutOfMemoryError: CUDA out of memory" in text
    assert "4 trials:" in text and "pruning saved" in text
    # one line per trial, when it ends, with what it tried; no per-epoch lines, no per-class tables
    per_trial = [line for line in swept.lines if line.startswith("trial ")]
    assert [line.split()[1] for line in per_trial] == ["0", "1", "2", "3"]
    assert all("p0.lr=" in line for line in per_trial) and "epoch 1:" not in text
    assert swept.result.table.splitlines()[0].split()[:3] == ["rank", "trial", "val/loss"]


def test_every_trial_is_one_nested_mlflow_run_with_its_state(swept):
    client = MlflowClient(swept.uri)
    parent = client.get_run(swept.result.parent_run_id)
    assert parent.data.tags["fruitlab.role"] == "sweep"
    runs = trial_runs(client)
    assert sorted(runs) == [0, 1, 2, 3]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    expected = {0: ("FINISHED", "complete"), 1: ("KILLED", "pruned"), 2: ("FAILED", "failed")}
    for number, (status, state) in expected.items():
        assert (runs[number].info.status, runs[number].data.tags["fruitlab.trial_state"]) == (status, state)
    assert "out of memory" in runs[2].data.tags["fruitlab.trial_error"]
    assert "error.txt" in {a.path for a in client.list_artifacts(runs[2].info.run_id)}  # with the traceback
    # per-epoch curves: two epochs for the complete trial, one for the pruned one
    assert len(client.get_metric_history(runs[0].info.run_id, "val/loss")) == 2
    assert len(client.get_metric_history(runs[1].info.run_id, "val/loss")) == 1
    # a trial keeps the checkpoint of its best epoch by the sweep's metric, and logs that model
    assert runs[0].data.params["checkpoint.monitor"] == "val/loss" and runs[0].data.params["checkpoint.mode"] == "min"
    assert runs[0].data.params["finetune.phases.0.optimizer.lr"] == "0.003"
    assert "fruitlab.model_uri" in runs[0].data.tags


def test_the_parent_run_has_the_best_trial_and_the_plots(swept):
    client = MlflowClient(swept.uri)
    parent = client.get_run(swept.result.parent_run_id)
    best = swept.study.best_trial
    assert parent.data.tags["fruitlab.best_trial"] == str(best.number)
    lr = best.params["finetune.phases.0.optimizer.lr"]
    assert float(parent.data.tags["best.finetune.phases.0.optimizer.lr"]) == pytest.approx(lr)
    assert parent.data.metrics["val_best/loss"] == pytest.approx(best.value)
    assert parent.data.metrics["trials_pruned"] >= 1 and parent.data.metrics["trials_failed"] == 1
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert "sweep/trials.csv" in names and {n for n in names if n.endswith(".html")} == {"sweep/report.html"}
    html = Path(client.download_artifacts(parent.info.run_id, "sweep/report.html", str(swept.work))).read_text()
    assert html.count("window.PlotlyConfig") == 1 and html.count('class="plotly-graph-div"') >= 2  # plotly.js once


def test_the_same_study_resumes_without_repeating_finished_trials(swept):
    client = MlflowClient(swept.uri)
    before = {n: r.info.run_id for n, r in trial_runs(client).items()}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(swept.work)
        mp.setenv("MLFLOW_TRACKING_URI", swept.uri)
        lines: list[str] = []
        again = run_sweep(swept.exp, trials=5, data_dir=str(swept.data), echo=lines.append)
    assert again.parent_run_id == swept.result.parent_run_id
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{swept.work / 'optuna.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert [t.state for t in study.trials[:4]] == swept.states
    after = {n: r.info.run_id for n, r in trial_runs(client).items()}
    assert {n: after[n] for n in before} == before and sorted(after) == [0, 1, 2, 3, 4]
    assert [line.split()[:2] for line in lines if line.startswith("trial ")] == [["trial", "4"]]


def test_promote_then_predict_real_photos_in_fresh_processes(swept, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": swept.uri}
    promoted = subprocess.run(
        [FRUITLAB, "promote", "-e", str(swept.work / "tiny.yaml"), "--metric", "val_best/class/acc"],
        cwd=swept.work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert promoted.stdout.startswith("models:/tiny/1") and "champion" in promoted.stdout

    photos = tmp_path / "photos"
    photos.mkdir()
    source = next(swept.data.rglob("fruits-fresh-rotten"))
    for cls in ("freshapples", "rottenbanana", "freshoranges"):
        for photo in sorted((source / "test" / cls).iterdir())[:2]:
            shutil.copy(photo, photos / f"{cls}-{photo.name}")  # JPEG bytes named .png, as in the archive
    good = next(photos.iterdir()).read_bytes()
    (photos / "broken.png").write_bytes(good[: len(good) // 3])  # a truncated JPEG
    out = tmp_path / "predictions.json"
    predicted = subprocess.run(
        [FRUITLAB, "predict", "--model", "models:/tiny@champion", str(photos), "--top-k", "2", "-o", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert "broken.png  error:" in predicted.stderr
    assert "6 images labelled by models:/tiny@champion (models:/tiny/1), 1 unreadable" in predicted.stderr
    assert len(predicted.stdout.splitlines()) == 6
    rows = json.loads(out.read_text())
    assert len(rows) == 7 and sum("error" in r for r in rows) == 1
    classes = set(trial_runs(MlflowClient(swept.uri))[0].data.tags["fruitlab.classes"].split(","))
    for row in rows:
        if "error" in row:
            continue
        top = row["tasks"]["class"]
        assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"] > 0
        assert {t["label"] for t in top} <= classes

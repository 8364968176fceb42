"""The study report on the parent run: one HTML file, plotly.js inside once, short parameter names, a warning
when importances come from too few trials. A real Optuna study (no fits: a quadratic) and a real MLflow store."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from fruitlab.sweep import report
from fruitlab.tracking import runs

LR = "finetune.phases.1.optimizer.lr"
EPOCHS = "finetune.phases.0.epochs"


def study_of(trials: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: (t.suggest_float(LR, 1e-4, 1e-2, log=True) - 3e-3) ** 2 + t.suggest_int(EPOCHS, 1, 3), trials
    )
    return study


def report_page(mlflow_uri: str, tmp_path: Path, study: optuna.Study) -> str:
    client = runs.client_for(mlflow_uri)
    run_id = client.create_run(runs.ensure_experiment(client, "s", mlflow_uri)).info.run_id
    assert report.log_plots(client, run_id, study) == [report.REPORT]
    assert [a.path for a in client.list_artifacts(run_id, "sweep")] == [report.REPORT]
    return Path(MlflowClient(mlflow_uri).download_artifacts(run_id, report.REPORT, str(tmp_path))).read_text()


def test_one_report_with_plotly_once_and_short_names(mlflow_uri, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fruitlab"):
        page = report_page(mlflow_uri, tmp_path, study_of(4))
    assert page.count("window.PlotlyConfig") == 1  # plotly.js inlined once for the three plots
    assert 4e6 < len(page) < 5.5e6  # one copy of plotly.min.js (4.6 MB), not three
    assert page.count('class="plotly-graph-div"') == 3
    assert '"ticktext":["Objective Value","p0.epochs","p1.lr"]' in page  # parallel-coordinate axes
    assert '"y":["p0.epochs","p1.lr"]' in page or '"y":["p1.lr","p0.epochs"]' in page  # importances' bars
    assert "finetune.phases" not in page
    assert "parameter importances from 4 complete trials (fewer than 10)" in page
    assert "fewer than 10" in caplog.text


def test_no_importance_warning_from_ten_trials(mlflow_uri, tmp_path):
    assert "fewer than 10" not in report_page(mlflow_uri, tmp_path, study_of(10))

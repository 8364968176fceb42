"""A real fit: real fruit photos, a tiny timm backbone, a real MLflow store in a temp dir."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from fruitlab.config import load_experiment
from fruitlab.training.fit import fit
from tests.conftest import SMOKE_EXPERIMENT, write_experiment


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, fruit_data_dir):
    work = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        exp = load_experiment(str(write_experiment(work / "smoke.yaml", SMOKE_EXPERIMENT)))
        result = fit(exp, data_dir=str(fruit_data_dir))
    return result, uri, work


@pytest.mark.smoke
def test_fit_logs_run_metrics_artifacts_and_model(smoke_run):
    result, uri, work = smoke_run
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.batch_size"] == "8"
    assert run.data.params["finetune.phases.1.optimizer.name"] == "sgd"
    tags = run.data.tags
    assert tags["fruitlab.backbone"] == "test_efficientnet" and tags["fruitlab.dataset_fingerprint"]
    assert tags["mlflow.source.git.commit"]
    # per-epoch curves, two epochs (one per phase), and the phase marker moving from 0 to 1
    assert len(client.get_metric_history(result.run_id, "val/loss")) == 2
    assert [m.value for m in client.get_metric_history(result.run_id, "phase")] == [0.0, 1.0]
    assert client.get_metric_history(result.run_id, "lr/backbone")[-1].value == pytest.approx(1e-3)
    assert 0.0 <= run.data.metrics["best/val/class/acc"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/val_confusion.png", "evaluation/val_per_class.csv", "evaluation/val_report.json"} <= artifacts
    assert client.list_artifacts(result.run_id, "config")[0].path == "config/experiment.yaml"
    assert (work / "mlruns").is_dir()  # artifacts next to the store, not in MLflow's own default
    assert result.reports["val"]["n"] == 36  # 6 per class x 6 classes, leak-free val split


@pytest.mark.smoke
def test_logged_model_predicts_the_same_in_a_fresh_process(smoke_run, tmp_path):
    result, uri, _ = smoke_run
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(result.model_uri)
    assert model.classes == [
        "freshapples",
        "freshbanana",
        "freshoranges",
        "rottenapples",
        "rottenbanana",
        "rottenoranges",
    ]
    assert model.preprocess["input_size"] == 64
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.save(images, tmp_path / "x.pt")
    with torch.inference_mode():
        expected = model.eval()(images)
    code = (
        "import sys, json, torch, mlflow\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        f"m = mlflow.pytorch.load_model({result.model_uri!r}).eval()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.inference_mode(): y = m(x)\n"
        f"torch.save(y, {str(tmp_path / 'y.pt')!r})\n"
        "print(json.dumps(m.classes))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "freshapples" in out.stdout
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, atol=1e-6)

"""A real fit: real fruit photos, a tiny timm backbone, a real MLflow store in a temp dir."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from fruitlab.config import load_experiment
from fruitlab.inference.predict import load_predictor
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
    # which figures can be trusted: the split scheme and its leak status (data/leaks.py; no data check run here)
    scheme = tags["fruitlab.split"]
    if scheme == "grouped":
        assert (tags["fruitlab.split.leak_free"], tags["fruitlab.split.copies_across"]) == ("true", "0")
    else:  # dli or folder: documented as leaky
        assert tags["fruitlab.split.leak_free"] == "false", tags
        assert f"documented leak of split '{scheme}'" in tags["fruitlab.split.leak_source"]
    # per-epoch curves, two epochs (one per phase), and the phase marker moving from 0 to 1
    assert len(client.get_metric_history(result.run_id, "val/loss")) == 2
    assert [m.value for m in client.get_metric_history(result.run_id, "phase")] == [0.0, 1.0]
    assert client.get_metric_history(result.run_id, "lr/backbone")[-1].value == pytest.approx(1e-3)
    assert 0.0 <= run.data.metrics["val_best/class/acc"] <= 1.0
    # the fixed cost before training, logged once: after fit() started, before it ended
    assert len(client.get_metric_history(result.run_id, "first_step_seconds")) == 1
    assert 0.0 < run.data.metrics["first_step_seconds"] < run.data.metrics["fit_seconds"]
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/val_confusion.png", "evaluation/val_per_class.csv", "evaluation/val_report.json"} <= artifacts
    assert client.list_artifacts(result.run_id, "config")[0].path == "config/experiment.yaml"
    assert (work / "mlruns").is_dir()  # artifacts next to the store, not in MLflow's own default
    assert result.reports["val"]["n"] == 36  # 6 per class x 6 classes, leak-free val split


@pytest.mark.smoke
def test_run_page_shows_epochs_phases_data_and_a_description(smoke_run):
    """What the MLflow UI shows: model-training experiment, curves at step = epoch, phases, dataset, note."""
    result, uri, _ = smoke_run
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_name == f"smoke-{result.run_id[:8]}"  # not MLflow's generator, which fit's seed fixes
    for key in ("val/loss", "train/loss", "val/class/acc", "phase", "lr/head"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [1, 2], key
    assert client.get_metric_history(result.run_id, "epoch") == []  # the step says it
    tags = run.data.tags
    assert tags["fruitlab.phases"] == "head: epochs 1-1; top: epochs 2-2" and tags["fruitlab.phase"] == "top"
    note = tags["mlflow.note.content"]
    fingerprint = tags["fruitlab.dataset_fingerprint"]
    assert f"`{fingerprint}`" in note and "split `dli`: 36 train / 36 val images" in note
    assert "| 1 top | 2-2 (of 1 planned) | last_stages: 2 | sgd | 0.01 / 0.001 | constant |" in note
    acc = run.data.metrics["val_best/class/acc"]
    assert f"| `val_best/class/acc` | {acc:.4f} |" in note
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.digest == fingerprint and data.dataset.name == "fruits_fresh_rotten (dli)"
    assert "fruits-fresh-rotten" in data.dataset.source
    model = client.get_logged_model(result.model_uri.removeprefix("models:/"))
    linked = {m.key: m for m in model.metrics if m.key.startswith("val_best/")}
    assert linked["val_best/class/acc"].dataset_digest == fingerprint and linked["val_best/class/acc"].value == acc
    assert [m.value for m in client.get_metric_history(result.run_id, "val_best/class/acc")] == [acc]  # logged once
    assert "learning_curves.png" in {a.path for a in client.list_artifacts(result.run_id)}


@pytest.mark.smoke
def test_logged_model_predicts_the_same_in_a_fresh_process(smoke_run, tmp_path):
    """The logged model through mlflow.pyfunc in a new process: the format (safetensors + spec.json), not a pickle."""
    result, uri, _ = smoke_run
    assert result.model_uri.startswith("models:/m-")
    predictor = load_predictor(result.model_uri, device="cpu", uri=uri)
    assert predictor.labels == {
        "class": ["freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana", "rottenoranges"]
    }
    assert predictor.preprocess["input_size"] == 64
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", images.numpy())
    expected = predictor.logits(images)["class"]
    code = (
        "import sys, numpy as np, mlflow\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        f"m = mlflow.pyfunc.load_model({result.model_uri!r})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('lightning', 'pytorch_lightning')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["[]"]  # neither fruitlab's loader nor MLflow's pyfunc imported Lightning
    assert torch.allclose(torch.from_numpy(np.load(tmp_path / "y.npy")), expected, atol=1e-6)

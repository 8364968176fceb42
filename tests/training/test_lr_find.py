"""`fruitlab lr-find`: Lightning's range test of one phase on real photos, logged to a real MLflow store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fruitlab.config import load_experiment
from fruitlab.errors import ConfigError
from fruitlab.training.lr_find import lr_find
from tests.conftest import SMOKE_EXPERIMENT, write_experiment
from tests.test_cli import assert_clean_error, run


@pytest.mark.smoke
def test_lr_find_plots_suggests_and_logs_a_phase(tmp_path, fruit_data_dir, mlflow_uri):
    path = write_experiment(tmp_path / "smoke.yaml", SMOKE_EXPERIMENT)
    result = run(
        "lr-find",
        "-e",
        str(path),
        "--phase",
        "1",
        "--steps",
        "30",
        "--data-dir",
        str(fruit_data_dir),
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # the test's progress is a Rich bar like fit's (Lightning's finder draws tqdm's, left open, otherwise)
    assert "lr range test (finding best initial lr)" in out and "30/30" in out
    assert "it/s]" not in out + result.stderr and "s/it]" not in out + result.stderr
    assert "Restoring states" not in out + result.stderr  # Lightning's notes on its own checkpoint of the test
    assert "finetune.phases.1 ('top'): suggested lr" in out and "the recipe has 0.01" in out
    # phase 1 sets backbone_lr (1e-3 beside lr 1e-2): both keys printed, the ratio kept
    assert "--set finetune.phases.1.optimizer.lr=" in out and "--set finetune.phases.1.optimizer.backbone_lr=" in out
    figure = tmp_path / "reports" / "lr-find-smoke-phase1.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(mlflow_uri)
    (run_info,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run_info.data.tags["fruitlab.run_kind"] == "lr_find" and run_info.info.status == "FINISHED"
    suggestion = run_info.data.metrics["lr_find/suggestion"]
    assert math.isfinite(suggestion) and 1e-7 <= suggestion <= 1.0
    lrs = [m.value for m in client.get_metric_history(run_info.info.run_id, "lr_find/lr")]
    assert len(lrs) >= 12 and lrs == sorted(lrs)  # exponential sweep, one point per step
    artifacts = {a.path for a in client.list_artifacts(run_info.info.run_id, "lr_find")}
    assert {"lr_find/lr-find-smoke-phase1.png", "lr_find/phase1.json"} <= artifacts
    (tmp_path / "download").mkdir()
    local = client.download_artifacts(run_info.info.run_id, "lr_find/phase1.json", str(tmp_path / "download"))
    report = json.loads(Path(local).read_text())
    assert report["suggestion"] == pytest.approx(suggestion)
    assert report["overrides"][0] == f"finetune.phases.1.optimizer.lr={suggestion:.3g}"


def test_lr_find_names_the_phases_when_the_index_is_wrong(tmp_path):
    exp = load_experiment(str(write_experiment(tmp_path / "smoke.yaml", SMOKE_EXPERIMENT)))
    with pytest.raises(
        ConfigError, match=r"--phase 2: .*smoke.yaml has 2 phase\(s\) in finetune.phases: 0 \(head\), 1 \(top\)"
    ):
        lr_find(exp, 2)


def test_cli_lr_find_with_a_bad_phase_exits_cleanly(tmp_path):
    path = write_experiment(tmp_path / "smoke.yaml", SMOKE_EXPERIMENT)
    assert_clean_error(run("lr-find", "-e", str(path), "--phase", "5"), "--phase 5", "has 2 phase(s)")

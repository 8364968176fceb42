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
    assert "LeafSpec" not in result.stderr  # nor its pytree deprecation warning (fit filters it too)
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


def test_the_suggestion_is_the_steepest_fall_per_decade_not_a_low_lr_wiggle():
    """A plateau with a small wiggle near 1e-5 and the real fall between 1e-3 and 1e-1 (the shape of quickstart's
    head phase): the slope per decade finds the fall; Lightning's slope per unit of lr finds the wiggle."""
    import torch

    from fruitlab.training.lr_find import steepest_descent

    lrs = torch.logspace(-7, 0, 100, dtype=torch.float64)
    decades = torch.log10(lrs)
    plateau = 1.7 - 0.01 * torch.exp(-(((decades + 5) / 0.2) ** 2))  # a 0.01 dip around 1e-5
    fall = 0.5 * torch.sigmoid(-(decades + 2) * 3)  # 1.7 -> 1.2 centred on 1e-2, steepest there
    losses = (plateau - 0.5 + fall).tolist()
    suggestion = steepest_descent(lrs.tolist(), losses)
    assert 3e-3 < suggestion < 3e-2, suggestion
    lightning = torch.gradient(torch.tensor(losses[10:-1]), spacing=[lrs[10:-1]])[0]
    assert float(lrs[10 + int(torch.argmin(lightning))]) < 1e-4  # what Lightning's suggestion() would have said
    assert steepest_descent(lrs.tolist()[:5], losses[:5]) is None  # too few points after the skips
    nan_at_end = losses[:-20] + [float("nan")] * 20
    assert steepest_descent(lrs.tolist(), nan_at_end) is not None  # a diverged tail is skipped

"""`fruitlab sweep` on bad input: one line, exit status 2, before any trial or storage is touched."""

from __future__ import annotations

from tests.test_cli import assert_clean_error, run


def test_bad_sweep_input_fails_before_any_trial(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # the packaged experiments, from tmp_path

    def sweep(*args: str):
        return run("sweep", *args, cwd=tmp_path, env=env)

    assert_clean_error(sweep("-e", "quikstart"), "did you mean 'quickstart'")
    assert_clean_error(
        sweep("-e", "quickstart", "--set", "sweep.metric=val/class/accuracy"),
        "sweep.metric: 'val/class/accuracy' is not a per-epoch metric",
        "did you mean 'val/class/acc'",
    )
    assert_clean_error(sweep("-e", "quickstart", "--storage", "postgres//db"), "is not a database URL")
    assert_clean_error(sweep("-e", "cifar10_resnet18"), "no `sweep:` section")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no study, no checkpoints

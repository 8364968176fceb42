"""`fruitlab serve` as a user starts it: bad options end in one line, without a traceback or a leftover log file."""

from __future__ import annotations

import pytest

from fruitlab.errors import FruitlabError
from fruitlab.serving.settings import ServeSettings, parse_seconds
from tests.test_cli import assert_clean_error, run


def test_bad_options_are_one_line_and_leave_nothing_behind(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cases = [
        (["--model", "nope"], "unknown model 'nope': expected models:/NAME@ALIAS"),
        (["--model", "models:/x@champion", "--poll", "5 parsecs"], "--poll '5 parsecs': expected a duration"),
        (["--model", "models:/x@champion", "--db", "://x"], "--db '://x' is not a database URL"),
        (["--model", "models:/x@champion", "--max-files", "0"], "--max-files 0: must be at least 1"),
    ]
    for args, message in cases:
        assert_clean_error(run("serve", *args, cwd=tmp_path, env=env), message)
    assert not (tmp_path / "predictions.db").exists()


def test_durations():
    assert [parse_seconds(t) for t in ("30s", "2m", "1h", "500ms", "45", "0", "off", "1.5s")] == [
        30,
        120,
        3600,
        0.5,
        45,
        0,
        0,
        1.5,
    ]
    with pytest.raises(FruitlabError, match="expected a duration"):
        parse_seconds("-3s")


def test_settings_bound_the_request_body():
    settings = ServeSettings(model="m", max_bytes=1000, max_files=3)
    assert settings.max_body_bytes == 3000 + 2**20
    with pytest.raises(FruitlabError, match="--queue and --poll cannot be negative"):
        ServeSettings(model="m", queue=-1)


def test_a_weak_or_doubled_admin_token_is_refused_at_start(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "FRUITLAB_ADMIN_TOKEN": "hunter2"}
    model = ["--model", "models:/x@champion"]
    assert_clean_error(run("serve", *model, cwd=tmp_path, env=env), "FRUITLAB_ADMIN_TOKEN is 7 characters")
    env["FRUITLAB_ADMIN_TOKEN"] = "a" * 32
    assert_clean_error(
        run("serve", *model, "--insecure-admin", cwd=tmp_path, env=env), "--insecure-admin with an admin token"
    )
    assert not (tmp_path / "predictions.db").exists()

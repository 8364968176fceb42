"""promote: the better run takes `champion`, a worse or incomparable candidate does not; aliases, not stages."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from fruitlab.errors import FruitlabError, TrackingError
from fruitlab.names import best_key
from fruitlab.tracking.registry import promote
from tests.test_cli import assert_clean_error, run
from tests.tracking.helpers import logged_run

ACC = best_key("val/class/acc")
LEGACY_ACC = "best/val/class/acc"  # what runs logged before val_best/... carry

pytestmark = pytest.mark.smoke


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_the_better_run_is_champion_and_a_worse_candidate_does_not_take_it(mlflow_uri):
    good = logged_run(mlflow_uri, "reg", {ACC: 0.80})
    worse = logged_run(mlflow_uri, "reg", {ACC: 0.60})
    client = MlflowClient(mlflow_uri)

    first = promote("reg")  # an MLflow experiment name (no experiments/reg.yaml): the best run, by the default metric
    assert (first.run_id, first.version, first.champion) == (good, "1", True)
    assert "no champion yet" in first.reason
    assert aliases(client, "reg") == {"candidate": "1", "champion": "1"}

    second = promote("reg", run_id=worse)
    assert (second.version, second.champion) == ("2", False)
    assert "0.6000 does not beat the champion (version 1)'s 0.8000" in second.reason
    assert aliases(client, "reg") == {"candidate": "2", "champion": "1"}
    tags = client.get_model_version("reg", "2").tags
    assert tags["fruitlab.decision"] == "kept champion"
    assert (tags["fruitlab.candidate_score"], tags["fruitlab.champion_score"]) == ("0.6", "0.8")
    assert tags["fruitlab.metric"] == ACC and tags["fruitlab.champion_version"] == "1"

    better = logged_run(mlflow_uri, "reg", {ACC: 0.90})
    third = promote("reg")
    assert (third.run_id, third.version, third.champion) == (better, "3", True)
    assert "0.9000 beats the champion (version 1)'s 0.8000" in third.reason
    assert client.get_model_version("reg", "3").tags["fruitlab.decision"] == "champion"
    again = promote("reg")  # same best run: the same version, no new registration
    assert (again.version, again.champion) == ("3", True) and "already" in again.reason
    assert aliases(client, "reg") == {"candidate": "3", "champion": "3"}


def test_scores_on_other_data_are_not_compared(mlflow_uri):
    logged_run(mlflow_uri, "data", {ACC: 0.70}, fingerprint="fp-1")
    promote("data")
    other = logged_run(mlflow_uri, "data", {ACC: 0.99}, fingerprint="fp-2")  # e.g. a different max_per_class
    result = promote("data")
    assert result.run_id == other and not result.champion
    assert "evaluated on other data (dataset fingerprint fp-1 vs fp-2)" in result.reason
    assert aliases(MlflowClient(mlflow_uri), "data") == {"candidate": "2", "champion": "1"}


def test_a_loss_metric_ranks_low_first_and_model_name_is_free(mlflow_uri):
    logged_run(mlflow_uri, "loss", {ACC: 0.5, "val_best/loss": 0.9})
    low = logged_run(mlflow_uri, "loss", {ACC: 0.4, "val_best/loss": 0.3})
    result = promote("loss", metric="val_best/loss", model_name="fruits")
    assert result.run_id == low and result.model_name == "fruits"


def test_runs_logged_with_the_old_names_rank_and_defend_the_champion(mlflow_uri):
    """A store from before val_best/...: its runs carry best/val/...; promote reads them under the new name."""
    old = logged_run(mlflow_uri, "legacy", {LEGACY_ACC: 0.80, "best/val/loss": 0.4})
    older = logged_run(mlflow_uri, "legacy", {LEGACY_ACC: 0.75, "best/val/loss": 0.2})
    client = MlflowClient(mlflow_uri)
    first = promote("legacy")  # the default metric, val_best/class/acc, found under its old name
    assert (first.run_id, first.metric, first.score, first.champion) == (old, ACC, 0.80, True)

    worse = logged_run(mlflow_uri, "legacy", {ACC: 0.70})  # a run of today's fruitlab, worse than the old champion
    assert promote("legacy").run_id == old  # ranked together: 0.80 (old name) beats 0.70 (new name)
    second = promote("legacy", run_id=worse)
    assert not second.champion and second.previous_score == 0.80
    assert "0.7000 does not beat the champion (version 1)'s 0.8000 on the same data" in second.reason
    assert client.get_model_version("legacy", "2").tags["fruitlab.champion_score"] == "0.8"

    better = logged_run(mlflow_uri, "legacy", {ACC: 0.90})
    third = promote("legacy")
    assert (third.run_id, third.champion) == (better, True)
    assert "0.9000 beats the champion (version 1)'s 0.8000" in third.reason
    assert aliases(client, "legacy") == {"candidate": "3", "champion": "3"}

    by_old_name = promote("legacy", metric=LEGACY_ACC)  # an old script's --metric means today's name
    assert (by_old_name.run_id, by_old_name.metric) == (better, ACC)
    loss = promote("legacy", metric="val_best/loss", model_name="by-loss")  # only old runs have it: the lower one
    assert (loss.run_id, loss.score) == (older, 0.2)


def test_bad_input_names_what_exists(mlflow_uri):
    logged_run(mlflow_uri, "errs", {ACC: 0.5})
    with pytest.raises(TrackingError, match="did you mean 'val_best/class/acc'"):
        promote("errs", metric="val_best/class/accuracy")
    with pytest.raises(FruitlabError, match="did you mean 'errs'"):
        promote("erss")
    with pytest.raises(TrackingError, match=r"no run '0000.* in the tracking store"):
        promote("errs", run_id="0" * 32)
    MlflowClient(mlflow_uri).create_experiment("empty")
    with pytest.raises(TrackingError, match="no finished run with a logged model"):
        promote("empty")


def test_cli_promote_errors_are_one_line(tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    assert_clean_error(run("promote", "-e", "quikstart", env=env), "unknown experiment 'quikstart'", "quickstart")
    assert_clean_error(run("promote", "-e", "quickstart", env=env), "no MLflow experiment 'quickstart'")

"""The model registry with aliases (MLflow 3; stages are deprecated): `candidate` and `champion`.

`promote` registers the best run of an experiment (sweep trials included) and points `candidate` at it; `champion`
moves only when the candidate beats the current champion on the same metric of the same evaluation data (the
dataset fingerprint fit records with every run). Scores differ in meaning when the data differ, so then the
champion stays and the reason says so. Each version carries the decision and both scores as tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fruitlab.config import load_experiment, resolve_experiment_path
from fruitlab.errors import ConfigError, TrackingError, did_you_mean
from fruitlab.names import JOINT, SINGLE_TASK, best_key, metric_key
from fruitlab.tracking import metric_names, refs, runs, tags

CANDIDATE, CHAMPION = "candidate", "champion"
SINGLE_METRIC = best_key(metric_key("val", SINGLE_TASK, "acc"))  # the default metric: val_best/class/acc
MULTI_METRIC = best_key(metric_key("val", JOINT, "acc"))  # a multi-task experiment's: val_best/joint/acc
FINGERPRINT = tags.DATASET_FINGERPRINT
MODEL_URI_TAG = tags.MODEL_URI


@dataclass
class Promotion:
    model_name: str
    version: str
    run_id: str
    metric: str
    score: float
    champion: bool  # is this version the champion now
    reason: str
    previous_version: str | None = None  # the champion before
    previous_score: float | None = None

    def summary(self) -> str:
        decision = "champion" if self.champion else "candidate only"
        return (
            f"models:/{self.model_name}/{self.version} (run {self.run_id}) {self.metric} {self.score:.4f}: "
            f"{decision} - {self.reason}"
        )


def promote(
    experiment: str,
    *,
    metric: str | None = None,
    model_name: str | None = None,
    run_id: str | None = None,
    uri: str | None = None,
) -> Promotion:
    """Register the best run of `experiment` by `metric` (or `run_id`), set `candidate`, maybe move `champion`.

    Scores are read through tracking/metric_names.py: a run logged with the legacy `best/val/...` names ranks, and is
    compared as champion, under today's `val_best/...`; a legacy `metric` means today's name.
    """
    uri = runs.tracking_uri(uri)
    client = runs.client_for(uri)
    name, default_metric = _mlflow_experiment(experiment, client)
    metric = metric_names.current_name(metric or default_metric)
    run = _chosen_run(client, name, metric, run_id, uri)
    model_name = model_name or name
    version = _register(client, model_name, run)
    client.set_registered_model_alias(model_name, CANDIDATE, version.version)
    result = _decide(client, model_name, version, run, metric)
    if result.champion:
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
    version_tags = {
        tags.METRIC: metric,
        tags.CANDIDATE_SCORE: f"{result.score:.6g}",
        tags.CHAMPION_SCORE: "none" if result.previous_score is None else f"{result.previous_score:.6g}",
        tags.CHAMPION_VERSION: result.previous_version or "none",
        tags.DECISION: CHAMPION if result.champion else "kept champion",
        tags.DECISION_REASON: result.reason,
        FINGERPRINT: run.data.tags.get(FINGERPRINT, "unknown"),
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, version.version, key, value)
    return result


def maximize(metric: str) -> bool:
    return not metric.rsplit("/", 1)[-1].endswith("loss")


def best_run(client: MlflowClient, experiment_id: str, metric: str) -> Run | None:
    """The finished run with a logged model and the best `metric` (or its legacy name); None when no run has both."""
    order = "DESC" if maximize(metric) else "ASC"
    found = {}
    for name in metric_names.names(metric):  # the best 5000 under each name
        for run in client.search_runs(
            [experiment_id], "attributes.status = 'FINISHED'", order_by=[f"metrics.`{name}` {order}"], max_results=5000
        ):
            found[run.info.run_id] = run
    scored = [(score, r) for r in found.values() if (score := metric_names.metric(r, metric)) is not None]
    usable = [(score, r) for score, r in scored if MODEL_URI_TAG in r.data.tags]
    if not usable:
        return None
    pick = max if maximize(metric) else min
    return pick(usable, key=lambda pair: pair[0])[1]


# ------------------------------------------------------------------------------------------------ internals
def _mlflow_experiment(experiment: str, client: MlflowClient) -> tuple[str, str]:
    """(MLflow experiment name, default metric) of an experiment file, or of an MLflow experiment by name."""
    try:
        resolve_experiment_path(experiment)
    except ConfigError as missing:
        if client.get_experiment_by_name(experiment) is not None:
            return experiment, SINGLE_METRIC
        known = [e.name for e in client.search_experiments()]
        hint, listing = did_you_mean(experiment, known), ", ".join(known) or "none"
        raise TrackingError(f"{missing}; nor is it an MLflow experiment{hint} (MLflow has: {listing})") from None
    exp = load_experiment(experiment)
    metric = MULTI_METRIC if exp.model.heads else SINGLE_METRIC
    return exp.tracking.experiment or exp.name, metric


def _chosen_run(client: MlflowClient, name: str, metric: str, run_id: str | None, uri: str) -> Run:
    found = client.get_experiment_by_name(name)
    if found is None:
        raise TrackingError(f"no MLflow experiment {name!r} in {uri}: nothing was fitted for it yet")
    if run_id:
        run = refs.resolve_run(client, run_id, uri)  # any form a model reference takes, prefixes included
        if MODEL_URI_TAG not in run.data.tags or metric_names.metric(run, metric) is None:
            raise TrackingError(f"run {run_id} has no logged model or no {metric!r} metric: it cannot be promoted")
        return run
    run = best_run(client, found.experiment_id, metric)
    if run is not None:
        return run
    finished = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    with_model = [r for r in finished if MODEL_URI_TAG in r.data.tags]
    if not with_model:
        raise TrackingError(
            f"experiment {name!r} has no finished run with a logged model in {uri}; run `fruitlab fit` or "
            "`fruitlab sweep` first"
        )
    known = sorted({k for r in with_model for k in metric_names.metrics(r)})
    raise TrackingError(
        f"no run of experiment {name!r} has the metric {metric!r}{did_you_mean(metric, known)} "
        f"(its runs have: {', '.join(known)})"
    )


def _register(client: MlflowClient, model_name: str, run: Run) -> ModelVersion:
    """The run's model as a version of `model_name`; the existing version when this model was registered before.

    A run's model is the one its MODEL_URI tag names: after `convert-model`, the converted one, not the old pickle.
    """
    run_id = run.info.run_id
    source = run.data.tags.get(MODEL_URI_TAG) or f"runs:/{run_id}/model"
    try:
        existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    except MlflowException:
        existing = []
    same = [v for v in existing if v.source == source]
    if same:
        return same[0]
    return mlflow.register_model(source, model_name)


def _decide(client: MlflowClient, model_name: str, version: ModelVersion, run: Run, metric: str) -> Promotion:
    score = metric_names.metric(run, metric)
    assert score is not None  # _chosen_run picks only runs with the metric
    result = Promotion(model_name, str(version.version), run.info.run_id, metric, score, champion=True, reason="")
    champion = _by_alias(client, model_name, CHAMPION)
    if champion is None:
        result.reason = "there was no champion yet"
        return result
    result.previous_version = str(champion.version)
    if result.previous_version == result.version:
        result.reason = f"version {result.version} is the champion already"
        result.previous_score = score
        return result
    result.champion = False
    champion_run = _run_or_none(client, champion.run_id)
    theirs = metric_names.metric(champion_run, metric) if champion_run else None
    result.previous_score = theirs
    mine_fp = run.data.tags.get(FINGERPRINT)
    their_fp = champion_run.data.tags.get(FINGERPRINT) if champion_run else None
    vs = f"champion (version {champion.version})"
    if theirs is None:
        result.reason = f"the {vs} has no {metric!r}, so the two cannot be compared; the champion stays"
    elif not mine_fp or mine_fp != their_fp:
        result.reason = (
            f"the {vs} was evaluated on other data (dataset fingerprint {their_fp} vs {mine_fp}), so "
            f"{score:.4f} vs {theirs:.4f} says nothing; the champion stays"
        )
    elif (score > theirs) if maximize(metric) else (score < theirs):
        result.champion = True
        result.reason = f"{score:.4f} beats the {vs}'s {theirs:.4f} on the same data"
    else:
        result.reason = f"{score:.4f} does not beat the {vs}'s {theirs:.4f} on the same data; the champion stays"
    return result


def _by_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def _run_or_none(client: MlflowClient, run_id: Any) -> Run | None:
    try:
        return client.get_run(run_id) if run_id else None
    except MlflowException:
        return None

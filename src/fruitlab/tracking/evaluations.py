"""Evaluation runs linked to the model they evaluate, and a model's fitted temperature.

MLflow 3 makes the logged model (`models:/m-...`) an entity of its own, with tags, that a registered version, a
run id and `runs:/ID/model` all resolve to. So:
- an evaluation is its own run in the model's experiment, linked the way `mlflow.evaluate` links it: the logged
  model and the evaluation dataset as the run's inputs, every metric carrying the model id and dataset digest
  (so they show on the model's page), plus plain tags naming the source run and the model URI;
- a fitted temperature is a tag of the logged model (`fruitlab.temperature`, JSON {task: T}), beside the evaluation
  run that fitted it. The weights' artifacts are immutable, but the temperature belongs to exactly those weights,
  so whichever way a model is referenced, predict and evaluate find the same value. A model loaded from a plain
  folder has no tracking entity and no temperature.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput, Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from fruitlab.errors import TrackingError
from fruitlab.tracking import refs, runs

TEMPERATURE_TAG = "fruitlab.temperature"  # on the logged model: JSON {task: T}
TEMPERATURE_RUN_TAG = "fruitlab.temperature_run_id"  # the evaluation run that fitted it
TEMPERATURE_DATA_TAG = "fruitlab.temperature_data"  # what it was fitted on
SOURCE_RUN_TAG = "fruitlab.source_run_id"  # on an evaluation run: the run that trained the model
EVALUATED_MODEL_TAG = "fruitlab.evaluated_model"  # the model URI as the user gave it
KIND_TAG = "fruitlab.run_kind"  # 'evaluation'; fit runs carry no such tag
LAST_EVALUATION_TAG = "fruitlab.last_evaluation_run_id"  # on the source run: the latest evaluation of it
FALLBACK_EXPERIMENT = "fruitlab-evaluate"  # evaluations of models with no run (a plain folder)


@dataclass
class ModelRef:
    """Where a model came from in the tracking store; all None for a plain folder."""

    model_id: str | None = None  # the logged model, m-...
    run_id: str | None = None  # the run that logged it
    experiment_id: str | None = None


def model_ref(client: MlflowClient, source: str) -> ModelRef:
    """The logged model and run behind a resolved model reference (see serving.predict.resolve_model_uri)."""
    if Path(source).is_dir() or not source.startswith(("models:/", "runs:/")):
        return ModelRef()
    try:
        if source.startswith("runs:/"):
            run_id, _, name = source.removeprefix("runs:/").partition("/")
            return _ref_of(client, _model_id_of_run(client, run_id, name or "model"), run_id)
        ref = source.removeprefix("models:/")
        if ref.startswith("m-"):
            return _ref_of(client, ref, None)
        version = refs.model_version(client, source)
        model_id = getattr(version, "model_id", None) or _m_id(version.source)
        return _ref_of(client, model_id, version.run_id)
    except (MlflowException, TrackingError):
        return ModelRef()  # the model loads from the URI anyway; it just has no links to record


def load_temperature(client: MlflowClient, model_id: str | None) -> dict[str, Any] | None:
    """{'values': {task: T}, 'run_id': the evaluation run that fitted it, 'data': what on}; None if never fitted."""
    if not model_id:
        return None
    try:
        tags = client.get_logged_model(model_id).tags
    except MlflowException:
        return None
    raw = tags.get(TEMPERATURE_TAG)
    if not raw:
        return None
    values = {task: float(t) for task, t in json.loads(raw).items()}
    return {"values": values, "run_id": tags.get(TEMPERATURE_RUN_TAG), "data": tags.get(TEMPERATURE_DATA_TAG)}


def store_temperature(
    client: MlflowClient, model_id: str, temperature: dict[str, float], eval_run_id: str, data: str
) -> None:
    client.set_logged_model_tags(
        model_id,
        {
            TEMPERATURE_TAG: json.dumps({t: round(v, 6) for t, v in temperature.items()}),
            TEMPERATURE_RUN_TAG: eval_run_id,
            TEMPERATURE_DATA_TAG: data,
        },
    )


def start_evaluation_run(client: MlflowClient, uri: str, ref: ModelRef, model: str, name: str) -> str:
    """A run in the model's experiment (or `fruitlab-evaluate`), tagged with what it evaluates."""
    experiment_id = ref.experiment_id or runs.ensure_experiment(client, FALLBACK_EXPERIMENT, uri)
    tags = {
        KIND_TAG: "evaluation",
        EVALUATED_MODEL_TAG: model,
        "mlflow.source.git.commit": runs.git_commit(),
        **({SOURCE_RUN_TAG: ref.run_id} if ref.run_id else {}),
        **({"fruitlab.logged_model_id": ref.model_id} if ref.model_id else {}),
    }
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def link_inputs(client: MlflowClient, run_id: str, ref: ModelRef, name: str, digest: str, source: str) -> None:
    """The evaluated model and the evaluation data as the run's inputs (MLflow's own lineage, shown in its UI)."""
    dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}))
    inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "evaluation")])]
    models = [LoggedModelInput(ref.model_id)] if ref.model_id else None
    client.log_inputs(run_id, inputs, models=models)


def log_linked_metrics(
    client: MlflowClient, run_id: str, metrics: dict[str, float], ref: ModelRef, dataset: tuple[str, str]
) -> None:
    """Metrics of the run that also appear on the logged model's page, for this dataset (name, digest)."""
    now = int(time.time() * 1000)
    link = {"model_id": ref.model_id, "dataset_name": dataset[0], "dataset_digest": dataset[1]} if ref.model_id else {}
    batch = [Metric(k, float(v), now, 0, **link) for k, v in metrics.items()]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])


def mark_source_run(client: MlflowClient, ref: ModelRef, eval_run_id: str) -> None:
    """Point the training run at its latest evaluation (the other direction of the link)."""
    if ref.run_id:
        client.log_batch(ref.run_id, tags=[RunTag(LAST_EVALUATION_TAG, eval_run_id)])


# ------------------------------------------------------------------------------------------------ internals
def _ref_of(client: MlflowClient, model_id: str | None, run_id: str | None) -> ModelRef:
    if model_id and not run_id:
        run_id = client.get_logged_model(model_id).source_run_id
    experiment_id = client.get_run(run_id).info.experiment_id if run_id else None
    return ModelRef(model_id, run_id, experiment_id)


def _model_id_of_run(client: MlflowClient, run_id: str, name: str) -> str | None:
    tagged = client.get_run(run_id).data.tags.get("fruitlab.model_uri", "")
    if tagged.startswith("models:/m-"):
        return tagged.removeprefix("models:/")
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'"
    )
    return found[0].model_id if found else None


def _m_id(source: str | None) -> str | None:
    return source.removeprefix("models:/") if source and source.startswith("models:/m-") else None

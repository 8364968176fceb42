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
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput, Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from fruitlab.tracking import runs, tags
from fruitlab.tracking.refs import ResolvedModel

FALLBACK_EXPERIMENT = "fruitlab-evaluate"  # evaluations of models with no run (a plain folder)


def load_temperature(client: MlflowClient, model_id: str | None) -> dict[str, Any] | None:
    """{'values': {task: T}, 'run_id': the evaluation run that fitted it, 'data': what on}; None if never fitted."""
    if not model_id:
        return None
    try:
        found = client.get_logged_model(model_id).tags
    except MlflowException:
        return None
    raw = found.get(tags.TEMPERATURE)
    if not raw:
        return None
    values = {task: float(t) for task, t in json.loads(raw).items()}
    return {"values": values, "run_id": found.get(tags.TEMPERATURE_RUN), "data": found.get(tags.TEMPERATURE_DATA)}


def store_temperature(
    client: MlflowClient, model_id: str, temperature: dict[str, float], eval_run_id: str, data: str
) -> None:
    client.set_logged_model_tags(
        model_id,
        {
            tags.TEMPERATURE: json.dumps({t: round(v, 6) for t, v in temperature.items()}),
            tags.TEMPERATURE_RUN: eval_run_id,
            tags.TEMPERATURE_DATA: data,
        },
    )


def start_evaluation_run(client: MlflowClient, uri: str, ref: ResolvedModel, model: str, name: str) -> str:
    """A run in the model's experiment (or `fruitlab-evaluate`), tagged with what it evaluates."""
    if ref.run_id:
        experiment_id = client.get_run(ref.run_id).info.experiment_id
    else:
        experiment_id = runs.ensure_experiment(client, FALLBACK_EXPERIMENT, uri)
    run_tags = {
        tags.RUN_KIND: "evaluation",
        tags.EVALUATED_MODEL: model,
        "mlflow.source.git.commit": runs.git_commit(),
        **({tags.SOURCE_RUN: ref.run_id} if ref.run_id else {}),
        **({tags.LOGGED_MODEL_ID: ref.model_id} if ref.model_id else {}),
    }
    return client.create_run(experiment_id, run_name=name, tags=run_tags).info.run_id


def link_inputs(client: MlflowClient, run_id: str, ref: ResolvedModel, name: str, digest: str, source: str) -> None:
    """The evaluated model and the evaluation data as the run's inputs (MLflow's own lineage, shown in its UI)."""
    dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}))
    inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "evaluation")])]
    models = [LoggedModelInput(ref.model_id)] if ref.model_id else None
    client.log_inputs(run_id, inputs, models=models)


def log_linked_metrics(
    client: MlflowClient, run_id: str, metrics: dict[str, float], ref: ResolvedModel, dataset: tuple[str, str]
) -> None:
    """Metrics of the run that also appear on the logged model's page, for this dataset (name, digest)."""
    now = int(time.time() * 1000)
    link = {"model_id": ref.model_id, "dataset_name": dataset[0], "dataset_digest": dataset[1]} if ref.model_id else {}
    batch = [Metric(k, float(v), now, 0, **link) for k, v in metrics.items()]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])


def mark_source_run(client: MlflowClient, ref: ResolvedModel, eval_run_id: str) -> None:
    """Point the training run at its latest evaluation (the other direction of the link)."""
    if ref.run_id:
        client.log_batch(ref.run_id, tags=[RunTag(tags.LAST_EVALUATION, eval_run_id)])

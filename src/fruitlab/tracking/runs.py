"""MLflow runs: one explicit tracking URI, an experiment per experiment file, a run per fit.

Lightning's MLFlowLogger defaults to ./mlruns while MLflow 3 defaults to sqlite:///mlflow.db; fruitlab resolves
the URI once here and hands the same one to both, so the UI, the logger and the registry always agree.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fruitlab import __version__
from fruitlab.config import Experiment, dump_yaml
from fruitlab.errors import TrackingError
from fruitlab.tracking import tags
from fruitlab.tracking.uri import DEFAULT_URI, is_local_store, tracking_uri

__all__ = ["DEFAULT_URI", "is_local_store", "tracking_uri"]  # defined in uri.py (no MLflow import), used from here

ARTIFACT_DIR = "mlruns"
CONFIG_ARTIFACT = "config/experiment.yaml"


def client_for(uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The MLflow experiment's id, created if new; either way marked as model training (tags.EXPERIMENT_KIND),
    unless someone chose another kind for it in the UI."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if tags.EXPERIMENT_KIND not in existing.tags:
            client.set_experiment_tag(existing.experiment_id, tags.EXPERIMENT_KIND, tags.MODEL_TRAINING)
        return existing.experiment_id
    # With a local store, artifacts go to ./mlruns next to mlflow.db (explicitly: MLflow's own default moved).
    location = Path(ARTIFACT_DIR).resolve().as_uri() if is_local_store(uri) else None
    try:
        return client.create_experiment(
            name, artifact_location=location, tags={tags.EXPERIMENT_KIND: tags.MODEL_TRAINING}
        )
    except MlflowException:
        # Another process (a second sweep worker) created it between our look-up and our create.
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


UI_START_PATH = "/fruitlab"  # served by tracking/ui_app.py


def ui_url(base: str) -> str:
    """The page of fruitlab's MLflow server (tracking/ui_app.py) that switches the browser's MLflow UI to its
    model-training mode, for good (MLflow 3 opens in GenAI mode otherwise), and opens the experiment list."""
    return f"{base.rstrip('/')}{UI_START_PATH}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def start_run(exp: Experiment, uri: str, extra_tags: dict[str, str]) -> str:
    """A new run of `exp` (its experiment created if new); TrackingError when the store cannot be reached."""
    try:
        return _start_run(exp, uri, extra_tags)
    except MlflowException as error:
        reason = " ".join(str(error).split())
        reason = reason if len(reason) <= 300 else reason[:300] + "..."
        raise TrackingError(
            f"could not open a run in the tracking store {uri!r}: {reason}; check --tracking-uri or "
            "$MLFLOW_TRACKING_URI (is the server up?)"
        ) from None


def _start_run(exp: Experiment, uri: str, extra_tags: dict[str, str]) -> str:
    client = client_for(uri)
    experiment_id = ensure_experiment(client, exp.tracking.experiment or exp.name, uri)
    all_tags = {
        tags.VERSION: __version__,
        tags.EXPERIMENT_FILE: exp.source,
        "mlflow.source.git.commit": git_commit(),
        **exp.tracking.tags,
        **extra_tags,
    }
    run = client.create_run(experiment_id, run_name=exp.tracking.run_name, tags=all_tags)
    run_id = run.info.run_id
    if not exp.tracking.run_name:
        # MLflow's generated names come from `random`, which fit has just seeded: every fit with the same seed
        # would be called the same. The run id is random whatever the seed.
        client.update_run(run_id, name=f"{exp.name}-{run_id[:8]}")
    log_config(client, run_id, exp)
    return run_id


def reopen_run(uri: str, run_id: str) -> MlflowClient:
    client = client_for(uri)
    try:
        client.get_run(run_id)
    except Exception:
        raise TrackingError(
            f"run {run_id!r} is not in the tracking store {uri!r}; check the id and --tracking-uri"
        ) from None
    client.update_run(run_id, status="RUNNING")
    return client


def check_resumable(uri: str, run_id: str) -> str:
    """The run's MLflow experiment name; TrackingError for an unknown run or one that already FINISHED.

    `fit --resume` continues an interrupted run (KILLED by Ctrl+C, FAILED, or still RUNNING after a kill -9);
    resuming a finished one would train it again and log a second model and every `val_best/*` metric twice.
    """
    client = client_for(uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise TrackingError(
            f"run {run_id!r} is not in the tracking store {uri!r}; check the id and --tracking-uri"
        ) from None
    experiment = client.get_experiment(run.info.experiment_id).name
    if run.info.status == "FINISHED":
        source = run.data.tags.get("fruitlab.experiment_file") or experiment
        raise TrackingError(
            f"run {run_id} (experiment {experiment!r}) is FINISHED: it trained to the end, so there is nothing to "
            "resume (--resume continues an interrupted run: KILLED, FAILED or RUNNING). To train again, start a "
            f"new run: fruitlab fit -e {source}"
        )
    return experiment


def load_run_config(uri: str, run_id: str) -> str:
    """The resolved experiment YAML a run was started with."""
    client = client_for(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        except Exception:
            raise TrackingError(
                f"run {run_id!r} has no {CONFIG_ARTIFACT} artifact: was it started by fruitlab fit?"
            ) from None
        return Path(path).read_text()


def log_config(client: MlflowClient, run_id: str, exp: Experiment) -> None:
    """Every resolved value as a param (batched: 100 per call), and the resolved YAML as an artifact."""
    params = [Param(k, "None" if v is None else str(v)[:6000]) for k, v in exp.flat().items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    client.log_text(run_id, dump_yaml(exp), CONFIG_ARTIFACT)


def log_metrics(
    client: MlflowClient,
    run_id: str,
    metrics: dict[str, float],
    step: int = 0,
    model_id: str | None = None,
    dataset: tuple[str, str] | None = None,
) -> None:
    """`model_id`, `dataset` (name, digest): scores of a logged model on a dataset, shown with both in MLflow."""
    import time

    now = int(time.time() * 1000)
    name, digest = dataset or (None, None)
    batch = [Metric(k, float(v), now, step, model_id, name, digest) for k, v in metrics.items()]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])


def log_batch(
    client: MlflowClient, run_id: str, metrics: dict[str, float], tags: dict[str, Any], at_ms: int | None = None
) -> None:
    """Metrics (step 0, stamped `at_ms` or now) and tags in one call."""
    import time

    now = at_ms if at_ms is not None else int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    client.log_batch(run_id, metrics=batch, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_series(client: MlflowClient, run_id: str, series: dict[str, list[float]]) -> None:
    """Curves whose step is the position in the list (an lr range test's lr and loss), in batches."""
    import time

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, values in series.items() for step, v in enumerate(values)]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_json(client: MlflowClient, run_id: str, data: Any, artifact_file: str) -> None:
    client.log_text(run_id, json.dumps(data, indent=2), artifact_file)


def finish_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status=status)

"""Real MLflow runs with a real (tiny, untrained) logged model, without training: for registry and serving tests."""

from __future__ import annotations

import torch

from fruitlab.config import ModelConfig, PreprocessConfig
from fruitlab.inference.model_format import log_classifier
from fruitlab.models.classifier import build_classifier
from fruitlab.tracking import runs

CLASSES = ["cat", "coffee"]
TASKS = {"fruit": ["apple", "banana", "orange"], "freshness": ["fresh", "rotten"]}


def tiny_model(
    tasks: dict[str, list[str]] | None = None, seed: int = 0, classes: list[str] | None = None
) -> torch.nn.Module:
    torch.manual_seed(seed)
    heads = {task: {} for task in tasks} if tasks else None
    cfg = ModelConfig(backbone="test_efficientnet", pretrained=False, heads=heads)
    model, _ = build_classifier(cfg, PreprocessConfig(input_size=64), tasks or {"class": classes or CLASSES})
    return model


def logged_run(
    uri: str,
    experiment: str,
    metrics: dict[str, float],
    fingerprint: str = "fp-1",
    tasks: dict[str, list[str]] | None = None,
    classes: list[str] | None = None,
    seed: int = 0,
) -> str:
    """A FINISHED run as fit leaves it: metrics, dataset fingerprint tag, the model and its URI tag."""
    client = runs.client_for(uri)
    experiment_id = runs.ensure_experiment(client, experiment, uri)
    run_id = client.create_run(experiment_id, tags={"fruitlab.dataset_fingerprint": fingerprint}).info.run_id
    model_uri = log_classifier(tiny_model(tasks, seed, classes), run_id, torch.randn(1, 3, 64, 64))
    runs.set_tags(client, run_id, {"fruitlab.model_uri": model_uri})
    runs.log_metrics(client, run_id, metrics)
    runs.finish_run(client, run_id)
    return run_id

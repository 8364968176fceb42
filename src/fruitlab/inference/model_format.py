"""Logging a trained model so it can be used without the experiment file (or fruitlab's training code)."""

from __future__ import annotations

import json
import logging
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from torch import nn

PIP_PACKAGES = ("fruitlab", "torch", "torchvision", "timm", "numpy", "pillow")


def pip_requirements() -> list[str]:
    """Pinned explicitly: MLflow's own inference re-imports the model in a subprocess, which costs seconds."""
    reqs = []
    for name in PIP_PACKAGES:
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def log_classifier(model: nn.Module, run_id: str, example: torch.Tensor, name: str = "model") -> str:
    """Log `model` (a plain nn.Module with .classes and .preprocess) to the run; returns its model URI.

    labels.json and preprocessing.json travel inside the model's own directory, so whoever loads the model
    (predict, serve, another team) gets class names and input handling from the same place as the weights.
    """
    model = model.eval().cpu()
    example = example[:1].cpu()
    with torch.inference_mode():
        output = model(example)
    signature = infer_signature(example.numpy(), _to_numpy(output))
    with tempfile.TemporaryDirectory() as tmp:
        extra = []
        for filename, data in (("labels.json", model.classes), ("preprocessing.json", model.preprocess)):
            path = Path(tmp) / filename
            path.write_text(json.dumps(data, indent=2))
            extra.append(str(path))
        # MLflow logs a warning about pickle on every save; the choice is deliberate (see below).
        pickle_warning = logging.getLogger("mlflow.pytorch")
        level = pickle_warning.level
        pickle_warning.setLevel(logging.ERROR)
        try:
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pytorch.log_model(
                    model,
                    name=name,
                    signature=signature,
                    # MLflow's pyfunc check of the example accepts one output tensor only; a multi-task model
                    # returns {task: logits}, so it is logged with its signature and without the example.
                    input_example=None if isinstance(output, dict) else example.numpy(),
                    extra_files=extra,
                    pip_requirements=pip_requirements(),
                    # MLflow 3's default is pt2 (torch.export): it specialises on the example's batch size and
                    # drops the module's attributes (classes, preprocess). Pickle keeps the plain module as is.
                    serialization_format="pickle",
                )
        finally:
            pickle_warning.setLevel(level)
    return info.model_uri


def _to_numpy(output: Any) -> Any:
    if isinstance(output, dict):
        return {k: v.numpy() for k, v in output.items()}
    return output.numpy().astype(np.float32)

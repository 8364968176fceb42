"""`mlflow.pyfunc.load_model` on a fruitlab model: MLflow calls `_load_pyfunc` with the model's data folder.

MLmodel names this module as the python_function flavor's loader (inference/model_format.py), so MLflow imports the
installed fruitlab and runs nothing stored with the model: no pickle, no code file from the artifact store.
Input: preprocessed images, float32 (B, 3, S, S) as preprocessing in spec.json describes; output: logits (B, n),
or {task: (B, n_task)} for a multi-task model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fruitlab.inference.model_format import read_model_files
from fruitlab.models.classifier import Classifier


class PyfuncClassifier:
    """What `mlflow.pyfunc.load_model(...)` wraps: predict(images) -> logits as numpy."""

    def __init__(self, model: Classifier):
        self.model = model.eval()

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))  # (B, 3, S, S)
        with torch.inference_mode():
            output = self.model(x)  # (B, n) or {task: (B, n_task)}
        if isinstance(output, dict):
            return {task: logits.float().numpy() for task, logits in output.items()}
        return output.float().numpy()


def _load_pyfunc(data_path: str) -> PyfuncClassifier:
    return PyfuncClassifier(read_model_files(Path(data_path), data_path))

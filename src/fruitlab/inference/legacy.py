"""Models logged by fruitlab before the safetensors format: a pickled nn.Module (MLflow's pytorch flavor).

Unpickling runs whatever code the file names, so such a model is code from whoever could write to the tracking
store. fruitlab loads one only when the user says so (`--trust-pickle`), and `fruitlab convert-model` turns it into
the current format once (inference/convert.py). This module is the only place fruitlab unpickles a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from fruitlab.errors import ModelError
from fruitlab.names import SINGLE_TASK

PICKLE_FILE = "model.pth"


def is_pickled(folder: Path) -> bool:
    """Is this MLflow model folder the old format (MLflow's pytorch flavor, data/model.pth)?"""
    mlmodel = folder / "MLmodel"
    return mlmodel.is_file() and "pytorch" in (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})


def refusal(source: str) -> str:
    return (
        f"model {source!r} was logged by an older fruitlab as a pickled nn.Module (MLflow's pytorch flavor). "
        "Unpickling runs whatever code the file contains, so anyone who can write to the tracking store could run "
        "code here; fruitlab loads it only when asked. If you trust that store, pass --trust-pickle, or better "
        f"convert it once: `fruitlab convert-model --model {source} --trust-pickle` (weights as safetensors + a "
        "JSON spec, nothing pickled)"
    )


def load_pickled(
    folder: Path, source: str, trust_pickle: bool
) -> tuple[nn.Module, dict[str, list[str]], dict[str, Any]]:
    """(module, {task: labels}, preprocessing) of an old-format model; ModelError unless `trust_pickle`."""
    if not trust_pickle:
        raise ModelError(refusal(source))
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["pytorch"]
    path = folder / flavor.get("model_data", "data") / PICKLE_FILE
    if not path.is_file():
        raise ModelError(f"model {source!r}: an MLflow pytorch model without {PICKLE_FILE} is not one fruitlab wrote")
    try:
        # Read with torch.load rather than mlflow.pytorch.load_model: importing mlflow.pytorch imports Lightning.
        module = torch.load(path, map_location="cpu", weights_only=False)  # the opt-in unpickling
    except Exception as exc:  # unpickling fails in many ways: a moved class, a missing package...
        raise ModelError(f"cannot unpickle the model {source!r}: {type(exc).__name__}: {_first_line(exc)}") from None
    labels = _read_json(folder, "labels.json", source)
    preprocess = _read_json(folder, "preprocessing.json", source)
    tasks = labels if isinstance(labels, dict) else {SINGLE_TASK: list(labels)}
    return module.eval(), tasks, preprocess


def _read_json(folder: Path, name: str, source: str) -> Any:
    for path in (folder / "extra_files" / name, folder / name):
        if path.is_file():
            return json.loads(path.read_text())
    raise ModelError(f"model {source!r} has no {name}: was it logged by fruitlab (fit or sweep)?")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

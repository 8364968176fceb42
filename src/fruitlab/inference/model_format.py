"""The logged model: an MLflow model whose data are a safetensors file and a JSON spec; nothing in it is pickled.

    MLmodel                             MLflow's metadata: the python_function flavor (loader module
                                        fruitlab.inference.pyfunc, data data/fruitlab), signature, model id
    requirements.txt python_env.yaml conda.yaml    pinned requirements
    data/fruitlab/model.safetensors     the classifier's state_dict(): backbone.* (timm's names) and head.*
    data/fruitlab/spec.json             what builds the architecture again (models/spec.py): timm model and
                                        kwargs, head layers, tasks and labels, preprocessing, versions

Loading builds the module from spec.json (timm, pretrained=False) and loads the weights into it: no code from the
model store runs. `mlflow.pyfunc.load_model` works too (inference/pyfunc.py). Models logged by fruitlab before this
format (a pickled nn.Module, MLflow's pytorch flavor) load only when asked (inference/legacy.py). The README's
"Model format" section documents the files for readers without fruitlab.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fruitlab.errors import ModelError
from fruitlab.inference import legacy
from fruitlab.models.classifier import Classifier
from fruitlab.models.spec import build_from_spec, classifier_spec

PIP_PACKAGES = ("fruitlab", "torch", "torchvision", "timm", "safetensors", "numpy", "pillow")
DATA_DIR = "fruitlab"  # MLflow stores it as data/fruitlab in the model folder
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "spec.json"
PYFUNC_LOADER = "fruitlab.inference.pyfunc"


def pip_requirements() -> list[str]:
    """Pinned explicitly: MLflow's own inference re-imports the model in a subprocess, which costs seconds."""
    reqs = []
    for name in PIP_PACKAGES:
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


def save_model_files(model: Classifier, folder: Path) -> Path:
    """spec.json and model.safetensors of `model` in `folder` (created); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}  # no shared storage
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / SPEC_FILE).write_text(json.dumps(classifier_spec(model), indent=2) + "\n")
    return folder


def read_model_files(folder: Path, source: str) -> Classifier:
    """The classifier in `folder` (spec.json + model.safetensors), in eval mode on the CPU."""
    spec_path, weights_path = folder / SPEC_FILE, folder / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise ModelError(f"model {source!r} has no {path.relative_to(folder.parent.parent)}: it is incomplete")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"model {source!r}: {SPEC_FILE} is not JSON ({exc})") from None
    model = build_from_spec(spec, f"model {source!r}")
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"model {source!r}: {WEIGHTS_FILE} is not a readable safetensors file ({exc})") from None
    missing, unexpected = sorted(set(model.state_dict()) - set(state)), sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise ModelError(
            f"model {source!r}: the weights do not fit the architecture in {SPEC_FILE} (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # a shape mismatch
        raise ModelError(f"model {source!r}: the weights do not fit {SPEC_FILE}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def load_model_dir(
    folder: Path, source: str, trust_pickle: bool = False
) -> tuple[nn.Module, dict[str, list[str]], dict[str, Any]]:
    """(module, {task: labels}, preprocessing) of a downloaded MLflow model folder, in either format."""
    data = fruitlab_data_dir(folder)
    if data is not None:
        model = read_model_files(data, source)
        return model, model.tasks, model.preprocess
    if legacy.is_pickled(folder):
        return legacy.load_pickled(folder, source, trust_pickle)
    raise ModelError(f"model {source!r} was not logged by fruitlab (no {DATA_DIR}/{SPEC_FILE}, no pytorch flavor)")


def fruitlab_data_dir(folder: Path) -> Path | None:
    """The folder holding spec.json and the weights, per MLmodel's python_function flavor; None if not this format."""
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise ModelError(f"{folder}: not a logged model folder (it has no MLmodel file)")
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
    if flavor.get("loader_module") != PYFUNC_LOADER or not flavor.get("data"):
        return None
    return folder / flavor["data"]


def log_classifier(model: Classifier, run_id: str, example: torch.Tensor, name: str = "model") -> str:
    """Log `model` to the run in this format (see the module docstring); returns its model URI (models:/m-...)."""
    import mlflow

    with _pyfunc_arguments(model, example) as arguments, mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(name=name, **arguments).model_uri


def save_model_dir(model: Classifier, path: Path, example: torch.Tensor) -> Path:
    """The same MLflow model folder, written to `path` instead of a run (convert-model --out, test fixtures)."""
    import mlflow

    if path.exists() and any(path.iterdir()):
        raise ModelError(f"{path} exists and is not empty; give a new folder for the model")
    with _pyfunc_arguments(model, example) as arguments:
        mlflow.pyfunc.save_model(path=str(path), **arguments)
    return path


@contextmanager
def _pyfunc_arguments(model: Classifier, example: torch.Tensor) -> Iterator[dict[str, Any]]:
    """What mlflow.pyfunc's log_model and save_model are given: the two files, the loader, signature, pins."""
    from mlflow.models import infer_signature

    model = model.eval().cpu()
    example = example[:1].cpu().float()
    # The output's shape is known without running the model: (1, n) or {task: (1, n_task)} of float32
    shapes = {task: np.zeros((1, len(labels)), np.float32) for task, labels in model.tasks.items()}
    output = shapes if getattr(model, "multitask", False) else next(iter(shapes.values()))
    signature = infer_signature(example.numpy(), output)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _pins_from_this_environment():
        # The signature describes the input; an input example would make MLflow load the model once more.
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        folder = save_model_files(model, Path(tmp) / DATA_DIR)
        yield {
            "loader_module": PYFUNC_LOADER,
            "data_path": str(folder),
            "signature": signature,
            "pip_requirements": pip_requirements(),
        }


@contextmanager
def _pins_from_this_environment() -> Iterator[None]:
    """MLflow checks given pins against the installed packages, mapping every module of the environment to its
    distribution first (importlib.metadata.packages_distributions: about 1 s CPU per model logged, the largest part
    of logging one). pip_requirements() reads the pins from this very environment, so that check cannot find a
    mismatch: it is skipped while the model is saved. If MLflow renames the function, it simply runs again."""
    from mlflow.utils import environment

    name = "warn_dependency_requirement_mismatches"
    if not hasattr(environment, name):
        yield
        return
    with mock.patch.object(environment, name, lambda *args, **kwargs: None):
        yield

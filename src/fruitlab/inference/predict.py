"""Predict with a logged or registered model: no Lightning, no training code.

The model folder MLflow stores holds everything needed besides the weights: `labels.json` (a list of class names,
or {task: [labels]} for a multi-task model) and `preprocessing.json` (input size, mean, std, interpolation, crop),
written by tracking/models.py. Images are decoded by content (the fruit photos are JPEGs named .png) and framed
exactly like validation images in training (data/transforms.py); unreadable files are reported, not fatal.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fruitlab.data.images import EXTENSION_FORMATS, open_rgb
from fruitlab.data.transforms import build_transform, eval_resize
from fruitlab.errors import DataError, FruitlabError, ModelError, TrackingError
from fruitlab.evaluation.confidence import UNKNOWN
from fruitlab.tracking import evaluations, refs

RUN_ID = re.compile(r"[0-9a-f]{32}")
TASK = "class"  # single-task models: one task, named as in the metric names
DECODE_THREADS = 2  # PIL releases the GIL while decoding


@dataclass
class Prediction:
    path: str
    tasks: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # task -> [(label, prob)], best first
    error: str | None = None
    answers: dict[str, str] = field(default_factory=dict)  # task -> top label, or `unknown` below the threshold


@dataclass
class Predictor:
    model: torch.nn.Module
    labels: dict[str, list[str]]  # task -> label names (single-task: {"class": [...]})
    preprocess: dict[str, Any]
    source: str  # the URI or folder it came from
    device: str = "cpu"
    temperature: dict[str, float] | None = None  # task -> T, fitted by `fruitlab evaluate --fit-temperature`

    def __post_init__(self) -> None:
        self.model = self.model.eval().to(self.device)
        self.transform = build_transform(self.preprocess, None, self.preprocess.get("backend", "albumentations"))
        self.min_side = eval_resize(self.preprocess)

    @property
    def multitask(self) -> bool:
        return list(self.labels) != [TASK]

    def predict(
        self, paths: Iterable[str], top_k: int = 1, batch_size: int = 32, threshold: float | None = None
    ) -> Iterator[Prediction]:
        """One Prediction per path, in order; a file that cannot be decoded gets `error` and no labels.

        `threshold`: a task whose top probability is below it answers `unknown` (Prediction.answers).
        """
        paths = list(paths)
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                decoded = list(pool.map(self._load, chunk))
                good = [(p, x) for p, x in zip(chunk, decoded, strict=True) if isinstance(x, torch.Tensor)]
                probs = self._forward(torch.stack([x for _, x in good])) if good else {}
                row = {p: i for i, (p, _) in enumerate(good)}
                for path, item in zip(chunk, decoded, strict=True):
                    if path not in row:
                        yield Prediction(path, error=str(item))
                        continue
                    tops = {t: self._top(t, p[row[path]], top_k) for t, p in probs.items()}
                    yield Prediction(path, tops, answers=_answers(tops, threshold))

    def predict_images(self, images: list[Any], top_k: int = 1) -> list[dict[str, list[tuple[str, float]]]]:
        """{task: [(label, prob)], best first} per decoded RGB image (PIL or HxWx3 uint8), in order, one batch.

        For callers that decode and check the bytes themselves (the web app); framing and labels as predict().
        """
        if not images:
            return []
        batch = torch.stack([self.transform(np.asarray(image)) for image in images])  # (B, 3, size, size)
        probs = self._forward(batch)
        return [{task: self._top(task, p[i], top_k) for task, p in probs.items()} for i in range(len(images))]

    def _load(self, path: str) -> torch.Tensor | str:
        try:
            return self.transform(np.asarray(open_rgb(path, self.min_side)))  # (3, size, size)
        except DataError as exc:
            return str(exc).removeprefix(f"cannot read image {path}: ").removesuffix("; replace or delete the file")

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{task: (B, n_task)} raw logits on the CPU, whatever the model returns (a tensor or a dict)."""
        output = self.model(images.to(self.device))  # (B, n) or {task: (B, n_task)}
        output = output if isinstance(output, dict) else {TASK: output}
        return {task: logits.float().cpu() for task, logits in output.items()}

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        temperature = self.temperature or {}
        return {task: (z / temperature.get(task, 1.0)).softmax(-1) for task, z in self.logits(images).items()}

    def _top(self, task: str, probs: torch.Tensor, k: int) -> list[tuple[str, float]]:
        values, indices = probs.topk(min(k, probs.numel()))
        return [(self.labels[task][i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]


def load_predictor(model: str, device: str = "auto", uri: str | None = None, use_temperature: bool = True) -> Predictor:
    """A model by `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/ID/model`, a run id or a model folder.

    With `use_temperature`, a temperature stored with the model (see tracking/evaluations.py) scales its logits.
    """
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    source = resolve_model_uri(model, uri)
    if Path(source).is_dir():
        return _from_folder(Path(source), source, device)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
        except MlflowException as exc:
            raise ModelError(f"cannot download model {source!r}: {_first_line(exc)}") from None
        predictor = _from_folder(Path(local), source, device)
    if use_temperature:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri) if uri else MlflowClient()
        stored = evaluations.load_temperature(client, evaluations.model_ref(client, source).model_id)
        predictor.temperature = stored["values"] if stored else None
    return predictor


def resolve_model_uri(model: str, uri: str | None = None) -> str:
    """Check the reference and turn a run id into its model's URI; errors list what exists."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri) if uri else MlflowClient()
    if model.startswith("models:/"):
        _check_registered(client, model)
        return model
    if model.startswith("runs:/"):
        return model
    path = Path(model)
    if path.exists():
        if not (path / "MLmodel").is_file():
            raise ModelError(f"{model}: not a logged model folder (it has no MLmodel file)")
        return str(path.resolve())
    if RUN_ID.fullmatch(model):
        try:
            run = client.get_run(model)
        except MlflowException:
            raise ModelError(f"run {model!r} is not in the tracking store {mlflow.get_tracking_uri()}") from None
        return run.data.tags.get("fruitlab.model_uri") or f"runs:/{model}/model"
    raise ModelError(
        f"unknown model {model!r}: expected models:/NAME@ALIAS (e.g. models:/quickstart@champion), "
        "models:/NAME/VERSION, runs:/RUN_ID/model, a run id (32 hex digits) or a folder with an MLmodel file"
    )


def find_images(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files as given (whatever their name: content decides), and the image files under each folder, sorted."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in EXTENSION_FORMATS and not p.name.startswith(".")
            )
        else:
            found.append(str(path))  # a missing file is reported like an unreadable one
    return found


def format_prediction(pred: Prediction) -> str:
    if pred.error:
        return f"{pred.path}  error: {pred.error}"
    multi = list(pred.tasks) != [TASK]
    parts = []
    for task, top in pred.tasks.items():
        labels = ", ".join(f"{label} {prob:.3f}" for label, prob in top)
        if pred.answers.get(task) == UNKNOWN:
            labels = f"{UNKNOWN} (best: {labels})"
        parts.append(f"{task}: {labels}" if multi else labels)
    return f"{pred.path}  " + "  ".join(parts)


def write_predictions(predictions: list[Prediction], output: Path) -> None:
    """CSV (one row per path, task and rank; unreadable files: one row with `error`) or JSON, by the suffix."""
    suffix = output.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise FruitlabError(f"--output {output}: write .csv or .json (got {suffix or 'no suffix'!r})")
    output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        rows = [
            {"path": p.path, "error": p.error}
            if p.error
            else {
                "path": p.path,
                "tasks": {t: [{"label": lb, "probability": pr} for lb, pr in top] for t, top in p.tasks.items()},
                "answers": p.answers,
            }
            for p in predictions
        ]
        output.write_text(json.dumps(rows, indent=2) + "\n")
        return
    with output.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "task", "rank", "label", "probability", "error", "answer"])
        for p in predictions:
            if p.error:
                writer.writerow([p.path, "", "", "", "", p.error, ""])
            for task, top in p.tasks.items():
                for rank, (label, prob) in enumerate(top, 1):
                    writer.writerow([p.path, task, rank, label, f"{prob:.6f}", "", p.answers.get(task, label)])


# ------------------------------------------------------------------------------------------------ internals
def _answers(tops: dict[str, list[tuple[str, float]]], threshold: float | None) -> dict[str, str]:
    """The top label per task, or `unknown` when its probability is below the threshold."""
    return {t: top[0][0] if threshold is None or top[0][1] >= threshold else UNKNOWN for t, top in tops.items()}


def _from_folder(folder: Path, source: str, device: str) -> Predictor:
    labels = _read_json(folder, "labels.json", source)
    preprocess = _read_json(folder, "preprocessing.json", source)
    try:
        model = _load_module(folder, device)
    except Exception as exc:  # unpickling can fail in many ways: another fruitlab version, a missing package...
        raise ModelError(f"cannot load the model {source!r}: {type(exc).__name__}: {_first_line(exc)}") from None
    tasks = labels if isinstance(labels, dict) else {TASK: list(labels)}
    return Predictor(model, tasks, preprocess, source, device)


def _load_module(folder: Path, device: str) -> torch.nn.Module:
    """The pickled nn.Module of an MLflow pytorch model folder (fruitlab logs pickles, see tracking/models.py).

    Read with torch.load rather than mlflow.pytorch.load_model: importing mlflow.pytorch imports its Lightning
    autolog module, i.e. the whole `pytorch_lightning` package (seconds, and a package serving does not need).
    Like MLflow's loader, this unpickles: load only models from your own tracking store.
    """
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["pytorch"]
    path = folder / flavor.get("model_data", "data") / "model.pth"
    if not path.is_file():  # another serialisation (e.g. MLflow's pt2 export): MLflow's own loader
        return mlflow.pytorch.load_model(str(folder), map_location=device)
    return torch.load(path, map_location=device, weights_only=False)


def _read_json(folder: Path, name: str, source: str) -> Any:
    for path in (folder / "extra_files" / name, folder / name):
        if path.is_file():
            return json.loads(path.read_text())
    raise ModelError(f"model {source!r} has no {name}: was it logged by fruitlab (fit or sweep)?")


def _check_registered(client: MlflowClient, uri: str) -> None:
    """models:/NAME@ALIAS and models:/NAME/VERSION: the name, alias or version exists, else say what does."""
    if uri.removeprefix("models:/").startswith("m-"):
        return  # a logged model id (MLflow 3): the download says if it is wrong
    try:
        refs.model_version(client, uri)
    except TrackingError as exc:
        raise ModelError(str(exc)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

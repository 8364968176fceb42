"""Predict with a logged or registered model: no Lightning, no training code.

The model folder MLflow stores holds the weights and everything needed besides them (labels per task,
preprocessing: input size, mean, std, interpolation, crop), in the format of inference/model_format.py. Images are
decoded by content (the fruit photos are JPEGs named .png) and framed exactly like validation images in training
(data/transforms.py); unreadable files are reported, not fatal.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fruitlab.data.images import EXTENSION_FORMATS, open_rgb
from fruitlab.data.transforms import build_transform, eval_resize
from fruitlab.errors import DataError, FruitlabError, ModelError
from fruitlab.evaluation.confidence import UNKNOWN
from fruitlab.inference.model_format import load_model_dir
from fruitlab.names import SINGLE_TASK
from fruitlab.tracking import evaluations, refs
from fruitlab.tracking.refs import ModelRef, ResolvedModel

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
    labels: dict[str, list[str]]  # task -> label names (single-task: {SINGLE_TASK: [...]})
    preprocess: dict[str, Any]
    source: str  # the URI or folder it came from
    device: str = "cpu"
    temperature: dict[str, float] | None = None  # task -> T, fitted by `fruitlab evaluate --fit-temperature`
    resolved: ResolvedModel | None = None  # what the reference named in the tracking store

    def __post_init__(self) -> None:
        self.model = self.model.eval().to(self.device)
        self.transform = build_transform(self.preprocess, None, self.preprocess.get("backend", "albumentations"))
        self.min_side = eval_resize(self.preprocess)

    @property
    def multitask(self) -> bool:
        return list(self.labels) != [SINGLE_TASK]

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
        output = output if isinstance(output, dict) else {SINGLE_TASK: output}
        return {task: logits.float().cpu() for task, logits in output.items()}

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        temperature = self.temperature or {}
        return {task: (z / temperature.get(task, 1.0)).softmax(-1) for task, z in self.logits(images).items()}

    def _top(self, task: str, probs: torch.Tensor, k: int) -> list[tuple[str, float]]:
        values, indices = probs.topk(min(k, probs.numel()))
        return [(self.labels[task][i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]


def load_predictor(
    model: str | ResolvedModel,
    device: str = "auto",
    uri: str | None = None,
    use_temperature: bool = True,
    trust_pickle: bool = False,
) -> Predictor:
    """A model by any reference tracking/refs.py accepts (or one resolved already), ready to predict.

    With `use_temperature`, a temperature stored with the model (see tracking/evaluations.py) scales its logits.
    `trust_pickle`: also load a model an older fruitlab logged as a pickle (inference/legacy.py says why not).
    """
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model, uri)
    if resolved.ref.kind == "folder":
        return _from_folder(Path(resolved.uri), resolved.uri, device, resolved, trust_pickle)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=resolved.uri, dst_path=tmp)
        except MlflowException as exc:
            raise ModelError(f"cannot download model {resolved.uri!r}: {_first_line(exc)}") from None
        predictor = _from_folder(Path(local), resolved.uri, device, resolved, trust_pickle)
    if use_temperature:
        stored = evaluations.load_temperature(_client(uri), resolved.model_id)
        predictor.temperature = stored["values"] if stored else None
    return predictor


def resolve_model(model: str, uri: str | None = None) -> ResolvedModel:
    """`model` looked up in the tracking store (tracking/refs.py: one parser, one set of errors)."""
    ref = ModelRef.parse(model)
    client = None if ref.kind == "folder" else _client(uri)  # a folder needs no store (none is created)
    return refs.resolve(client, ref, uri or mlflow.get_tracking_uri())


def find_images(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files as given (whatever their name: content decides), and the image files under each folder, sorted.

    A named path that does not exist is a DataError (a typo must not end in 'nothing labelled', exit 0).
    """
    missing = [str(item) for item in inputs if not Path(item).exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"no such file or folder: {shown}; name existing image files or folders")
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
            found.append(str(path))
    return found


def format_prediction(pred: Prediction) -> str:
    if pred.error:
        return f"{pred.path}  error: {pred.error}"
    multi = list(pred.tasks) != [SINGLE_TASK]
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


def _from_folder(
    folder: Path, source: str, device: str, resolved: ResolvedModel, trust_pickle: bool = False
) -> Predictor:
    model, tasks, preprocess = load_model_dir(folder, source, trust_pickle)
    return Predictor(model, tasks, preprocess, source, device, resolved=resolved)


def _client(uri: str | None) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri) if uri else MlflowClient()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

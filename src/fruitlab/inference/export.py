"""Export a logged or registered model to ONNX or TorchScript and check it against PyTorch on real images.

The file goes into a folder with labels.json and preprocessing.json beside it (as in the MLflow model), so it can
be used without fruitlab. The batch size is dynamic; a multi-task model has one named output per task.

- ONNX: `torch.onnx.export(dynamo=True)`, the torch.export-based exporter, torch's default and maintained path
  since 2.9. The legacy TorchScript-based exporter (`dynamo=False`) still works on torch 2.14 and is faster to
  export (measured 0.1-7 s against 4-12 s for efficientnet_lite0/b0, resnet50, vgg16 and the multi-task model,
  with the same agreement, 1e-8 to 3e-6), but warns on every call that it will be removed.
- TorchScript: `torch.jit.script` (keeps Python control flow, e.g. timm's VGG head checks the feature-map size;
  works for timm's CNNs and the dict output of the multi-task model), falling back to `torch.jit.trace(strict=False)`
  for a model that cannot be scripted. labels.json and preprocessing.json are also stored inside the .pt file
  (read them with `torch.jit.load(path, _extra_files={"labels.json": ""})`).

The check runs the same preprocessed images through the PyTorch model and the exported file (onnxruntime, or
torch.jit.load), in batches of a size other than the export example's, and compares logits and probabilities.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fruitlab.data.images import load_rgb_array
from fruitlab.errors import DataError, FruitlabError, ModelError, did_you_mean
from fruitlab.inference.predict import Predictor, find_images, load_predictor
from fruitlab.names import SINGLE_TASK

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
INPUT_NAME = "image"
SINGLE_OUTPUT = "logits"
CHECK_BATCH = 7  # not the export example's batch (2): the check exercises the dynamic batch size
EXPORT_ROOT = Path("exports")


@dataclass
class ExportResult:
    path: Path
    format: str
    method: str  # how it was made: torch.export (dynamo), torch.jit.script, torch.jit.trace
    outputs: list[str]
    images: int  # how many images the check ran on
    sample: str  # where they came from
    unreadable: int
    logits_diff: float  # max abs difference from the PyTorch model
    probs_diff: float
    tolerance: float
    export_seconds: float
    check_seconds: float

    def summary(self) -> list[str]:
        skipped = f", {self.unreadable} unreadable left out" if self.unreadable else ""
        return [
            f"exported {self.path} ({self.format} via {self.method}; outputs {', '.join(self.outputs)}; dynamic "
            f"batch) with labels.json and preprocessing.json beside it in {self.export_seconds:.1f} s",
            f"checked on {self.images} images of {self.sample}{skipped}: max abs difference from PyTorch: logits "
            f"{self.logits_diff:.2e}, probabilities {self.probs_diff:.2e} (tolerance {self.tolerance:g}) - ok, "
            f"in {self.check_seconds:.1f} s",
        ]


def export_model(
    model: str,
    fmt: str,
    out: str | Path | None = None,
    *,
    check_dir: str | Path | None = None,
    check_data: str | None = None,
    samples: int = 32,
    tolerance: float = 1e-4,
    data_dir: str | None = None,
    trust_pickle: bool = False,
) -> ExportResult:
    """Write `model` as `fmt` (onnx | torchscript) into `out`, then check it on real images (see module doc)."""
    if fmt not in FORMATS:
        raise FruitlabError(
            f"--format {fmt!r} is not a format{did_you_mean(fmt, FORMATS)}; allowed: {', '.join(FORMATS)}"
        )
    if check_dir is not None and check_data is not None:
        raise FruitlabError("give --check DIR or --check-data NAME, not both")
    path = _output_path(model, fmt, out)
    predictor = load_predictor(model, device="cpu", trust_pickle=trust_pickle)
    images, sample, unreadable = _check_images(predictor, model, check_dir, check_data, samples, data_dir)
    module = predictor.model.eval()
    example = images[:2] if len(images) > 1 else images.repeat(2, 1, 1, 1)  # torch.export specialises a batch of 1
    names = list(_outputs(module, example))

    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = _metadata(predictor)
    with _quiet():
        if fmt == "onnx":
            method = _to_onnx(module, example, names, path)
        else:
            method = _to_torchscript(module, example, path, metadata)
    for name, data in metadata.items():
        (path.parent / name).write_text(json.dumps(data, indent=2) + "\n")
    export_seconds = time.perf_counter() - started

    started = time.perf_counter()
    logits_diff, probs_diff = _check(module, path, fmt, images)
    result = ExportResult(
        path=path,
        format=fmt,
        method=method,
        outputs=names,
        images=len(images),
        sample=sample,
        unreadable=unreadable,
        logits_diff=logits_diff,
        probs_diff=probs_diff,
        tolerance=tolerance,
        export_seconds=export_seconds,
        check_seconds=time.perf_counter() - started,
    )
    if max(logits_diff, probs_diff) > tolerance:
        path.unlink()
        raise ModelError(
            f"the {fmt} export of {model} differs from the PyTorch model by up to {logits_diff:.2e} (logits) / "
            f"{probs_diff:.2e} (probabilities) on {len(images)} images of {sample}, above the tolerance "
            f"{tolerance:g}; {path} was removed (--tolerance sets a looser limit)"
        )
    return result


# ------------------------------------------------------------------------------------------------ export
def _to_onnx(module: torch.nn.Module, example: torch.Tensor, names: list[str], path: Path) -> str:
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=names,  # a dict output is flattened in its own order, which `names` follows
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    if program is None:
        raise ModelError(f"torch.onnx.export returned nothing for {path}")
    program.save(str(path))  # weights inside the file (external data only beyond protobuf's 2 GB)
    return "torch.onnx.export(dynamo=True)"


def _to_torchscript(module: torch.nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any]) -> str:
    try:
        scripted, method = torch.jit.script(module), "torch.jit.script"
    except Exception:  # TorchScript's compiler rejects some Python (many error types); tracing records one run
        scripted, method = torch.jit.trace(module, example, strict=False), "torch.jit.trace"
    extra = {name: json.dumps(data, indent=2) for name, data in metadata.items()}
    torch.jit.save(scripted, str(path), _extra_files=extra)
    return method


def _metadata(predictor: Predictor) -> dict[str, Any]:
    """labels.json as the logged model has it: a list of classes, or {task: [labels]} for a multi-task model."""
    labels = predictor.labels if predictor.multitask else predictor.labels[SINGLE_TASK]
    return {"labels.json": labels, "preprocessing.json": predictor.preprocess}


def _output_path(model: str, fmt: str, out: str | Path | None) -> Path:
    filename = FORMATS[fmt]
    if out is None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name if Path(model).is_dir() else model)
        return EXPORT_ROOT / slug.removeprefix("models-").removeprefix("runs-").strip("-") / filename
    out = Path(out)
    if out.suffix in (".onnx", ".pt"):
        if out.suffix != Path(filename).suffix:
            raise FruitlabError(f"--out {out}: a {fmt} export is a {Path(filename).suffix} file")
        return out
    return out / filename


# ------------------------------------------------------------------------------------------------ check
def _check(module: torch.nn.Module, path: Path, fmt: str, images: torch.Tensor) -> tuple[float, float]:
    """(logits, probabilities) max abs difference between the exported file and the PyTorch model on `images`."""
    with _quiet():
        exported = _run_onnx(path, images) if fmt == "onnx" else _run_torchscript(path, images)
    return _differences(_outputs(module, images), exported)


def _check_images(
    predictor: Predictor, model: str, check_dir: Any, check_data: str | None, samples: int, data_dir: str | None
) -> tuple[torch.Tensor, str, int]:
    """(images (N, 3, size, size) framed as in training, what they are, how many could not be read)."""
    if check_dir is not None:
        folder = Path(check_dir)
        if not folder.is_dir():
            raise DataError(f"--check {folder}: no such folder; give a folder of images")
        items, sample = _spread(find_images([folder]), samples), str(folder)
    else:
        name, split = (check_data, None) if check_data else _dataset_of(model)
        items, sample = _dataset_items(name, split, samples, data_dir)
    tensors, unreadable = [], 0
    for item in items:
        try:
            tensors.append(predictor.transform(np.asarray(load_rgb_array(item, predictor.min_side))))
        except DataError:
            unreadable += 1
    if not tensors:
        raise DataError(f"no readable image in {sample} to check the export on; give --check DIR with images")
    return torch.stack(tensors), sample, unreadable


def _dataset_of(model: str) -> tuple[str, str | None]:
    """The dataset (and split scheme) the model's run was trained on: the default sample to check on."""
    from fruitlab.tracking import refs, runs, tags

    no_data = (
        f"model {model} does not say which data it was trained on; give --check DIR (a folder of images) or "
        "--check-data NAME (fruitlab data list)"
    )
    if Path(model).is_dir():
        raise DataError(no_data)
    uri = runs.tracking_uri()
    run = refs.resolve_run(runs.client_for(uri), model, uri)
    dataset = run.data.tags.get(tags.DATASET)
    if not dataset:
        raise DataError(no_data)
    split = run.data.params.get("data.split")
    return dataset, None if split in (None, "None") else split


def _dataset_items(name: str, split: str | None, samples: int, data_dir: str | None) -> tuple[list[Any], str]:
    from fruitlab.config import DataConfig
    from fruitlab.data.registry import get_source, load_dataset

    get_source(name, "(--check-data)")  # 'did you mean' before anything is read
    loaded = load_dataset(DataConfig(dataset=name, split=split), seed=42, data_dir=data_dir)
    part = "test" if "test" in loaded.splits and "val" not in loaded.splits else "val"
    items = _spread(loaded.splits[part].items, samples)
    return items, f"{loaded.name} {part} ({loaded.scheme})"


def _spread(items: list[Any], n: int) -> list[Any]:
    """n items evenly spaced through the list: splits are ordered by class, so every class is sampled."""
    if len(items) <= n:
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


@torch.inference_mode()
def _outputs(module: Any, images: torch.Tensor) -> dict[str, np.ndarray]:
    """{output name: logits (N, n)} in batches of CHECK_BATCH."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), CHECK_BATCH):
        output = module(images[start : start + CHECK_BATCH])  # (B, n) or {task: (B, n_task)}
        for key, value in (output if isinstance(output, dict) else {SINGLE_OUTPUT: output}).items():
            parts.setdefault(key, []).append(value.float().numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def _run_onnx(path: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(images), CHECK_BATCH):
        batch = images[start : start + CHECK_BATCH].numpy()
        for name, value in zip(names, session.run(names, {INPUT_NAME: batch}), strict=True):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def _run_torchscript(path: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    return _outputs(torch.jit.load(str(path), map_location="cpu").eval(), images)


def _differences(reference: dict[str, np.ndarray], exported: dict[str, np.ndarray]) -> tuple[float, float]:
    """Max abs difference of logits and of softmax probabilities over every output; a missing output is an error."""
    if sorted(reference) != sorted(exported):
        raise ModelError(f"the export's outputs {sorted(exported)} are not the model's {sorted(reference)}")
    logits = max(float(np.abs(reference[k] - exported[k]).max()) for k in reference)
    probs = max(float(np.abs(_softmax(reference[k]) - _softmax(exported[k])).max()) for k in reference)
    return logits, probs


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@contextmanager
def _quiet() -> Iterator[None]:
    """torch marks TorchScript deprecated on every jit call; the README says which format to prefer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield

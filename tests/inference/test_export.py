"""export: ONNX and TorchScript files of a logged model agree with PyTorch on real photos; bad input fails cleanly."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from fruitlab.errors import FruitlabError, ModelError
from fruitlab.inference import export as export_module
from fruitlab.inference.export import export_model
from fruitlab.inference.predict import find_images, load_predictor
from tests.conftest import real_photo_crops
from tests.test_cli import assert_clean_error, run
from tests.tracking.helpers import CLASSES, TASKS, logged_run

pytestmark = pytest.mark.smoke

N_PHOTOS = 24


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> SimpleNamespace:
    """A single-task and a multi-task run, each with a real (tiny, untrained) logged model."""
    work = tmp_path_factory.mktemp("export")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        single = logged_run(uri, "export", {"val_best/class/acc": 0.5})
        multi = logged_run(uri, "export", {"val_best/joint/acc": 0.5}, tasks=TASKS)
    return SimpleNamespace(work=work, uri=uri, runs={"single": single, "multi": multi})


@pytest.fixture
def tracking(store, monkeypatch) -> SimpleNamespace:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    return store


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """24 real photo crops (scikit-image's cat and coffee), as PNG files."""
    folder = tmp_path_factory.mktemp("photos")
    crops = real_photo_crops(n_per_class=N_PHOTOS // 4)
    items = [item for split in crops.splits.values() for item in split.items]
    for i, item in enumerate(items):
        Image.fromarray(item).save(folder / f"{i:02d}.png")
    assert len(items) == N_PHOTOS
    return folder


@pytest.fixture(scope="module")
def reference(store, photos) -> dict[str, SimpleNamespace]:
    """Per model: its own logits on the photos, framed by its own transform (the reference, computed here)."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store.uri)
        for kind, run_id in store.runs.items():
            predictor = load_predictor(run_id, device="cpu")
            frame = predictor.transform
            images = torch.stack([frame(np.asarray(Image.open(p).convert("RGB"))) for p in find_images([photos])])
            with torch.inference_mode():
                output = predictor.model.eval()(images)  # (N, n) or {task: (N, n_task)}
            output = output if isinstance(output, dict) else {"logits": output}
            logits = {k: v.numpy() for k, v in output.items()}
            out[kind] = SimpleNamespace(logits=logits, images=images, preprocess=predictor.preprocess)
    return out


def check_files(folder: Path, kind: str, preprocess: dict) -> None:
    labels = json.loads((folder / "labels.json").read_text())
    assert labels == (CLASSES if kind == "single" else TASKS)
    assert json.loads((folder / "preprocessing.json").read_text()) == preprocess
    assert preprocess["input_size"] == 64 and len(preprocess["mean"]) == len(preprocess["std"]) == 3


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_onnx_export_agrees_with_pytorch_on_real_photos(tracking, photos, reference, tmp_path, kind):
    run_id = tracking.runs[kind]
    result = export_model(run_id, "onnx", tmp_path / "out", check_dir=photos, samples=N_PHOTOS)
    assert result.path == tmp_path / "out" / "model.onnx" and result.images == N_PHOTOS
    assert result.logits_diff <= 1e-4 and result.probs_diff <= 1e-4

    images, expected = reference[kind].images, reference[kind].logits
    names = ["logits"] if kind == "single" else list(TASKS)
    graph = onnx.load(str(result.path)).graph
    assert [o.name for o in graph.output] == names and [i.name for i in graph.input] == ["image"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch size is symbolic
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    outputs = {name: [] for name in names}
    for batch in (images[:5], images[5:]):  # two batch sizes (5, 19), neither the export example's (2)
        for name, value in zip(names, session.run(names, {"image": batch.numpy()}), strict=True):
            outputs[name].append(value)
    for name in names:
        got = np.concatenate(outputs[name])
        assert got.shape == expected[name].shape == (N_PHOTOS, len(CLASSES if kind == "single" else TASKS[name]))
        assert np.abs(got - expected[name]).max() <= 1e-4
    check_files(result.path.parent, kind, reference[kind].preprocess)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # our own load, below
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_torchscript_export_agrees_with_pytorch_on_real_photos(tracking, photos, reference, tmp_path, kind):
    run_id = tracking.runs[kind]
    result = export_model(run_id, "torchscript", tmp_path / "model.pt", check_dir=photos, samples=N_PHOTOS)
    assert result.path == tmp_path / "model.pt" and result.images == N_PHOTOS
    assert result.method == "torch.jit.script" and result.logits_diff <= 1e-4

    images, expected, preprocess = reference[kind].images, reference[kind].logits, reference[kind].preprocess
    extra = {"labels.json": "", "preprocessing.json": ""}
    loaded = torch.jit.load(str(result.path), _extra_files=extra)
    with torch.inference_mode():
        output = loaded(images)
    output = output if isinstance(output, dict) else {"logits": output}
    assert sorted(output) == sorted(expected)
    for name, value in output.items():
        assert value.shape[0] == N_PHOTOS and np.abs(value.numpy() - expected[name]).max() <= 1e-4
    check_files(tmp_path, kind, preprocess)
    assert json.loads(extra["labels.json"]) == json.loads((tmp_path / "labels.json").read_text())
    assert json.loads(extra["preprocessing.json"]) == preprocess


def test_an_export_that_disagrees_is_refused_and_removed(tracking, photos, tmp_path, monkeypatch):
    real = export_module._run_torchscript
    monkeypatch.setattr(export_module, "_run_torchscript", lambda *a: {k: v + 1e-3 for k, v in real(*a).items()})
    with pytest.raises(ModelError, match=r"differs from the PyTorch model by up to 1\.00e-03 \(logits\).*on 24 images"):
        export_model(tracking.runs["single"], "torchscript", tmp_path, check_dir=photos, samples=N_PHOTOS)
    assert not (tmp_path / "model.pt").exists()


def test_bad_input_fails_before_exporting(tracking, photos, tmp_path):
    single = tracking.runs["single"]
    with pytest.raises(FruitlabError, match="did you mean 'onnx'"):
        export_model(single, "onxx", tmp_path)
    with pytest.raises(FruitlabError, match=r"a torchscript export is a \.pt file"):
        export_model(single, "torchscript", tmp_path / "model.onnx")
    with pytest.raises(FruitlabError, match="does not say which data it was trained on"):
        export_model(single, "onnx", tmp_path)  # no --check: the run names no dataset
    with pytest.raises(FruitlabError, match="did you mean 'fruits_fresh_rotten'"):
        export_model(single, "onnx", tmp_path, check_data="fruits_fresh_roten")
    with pytest.raises(FruitlabError, match="no such folder"):
        export_model(single, "onnx", tmp_path, check_dir=photos / "missing")
    with pytest.raises(FruitlabError, match="not both"):
        export_model(single, "onnx", tmp_path, check_dir=photos, check_data="fruits_fresh_rotten")
    assert not list(tmp_path.iterdir())


def test_cli_errors_are_one_line(store, photos):
    env = {"MLFLOW_TRACKING_URI": store.uri}
    unknown = run("export", "--model", "models:/nope@champion", "--check", str(photos), env=env)
    assert_clean_error(unknown, "no registered model 'nope'")
    bad_format = run("export", "--model", store.runs["single"], "--format", "tflite", env=env)
    assert_clean_error(bad_format, "--format 'tflite' is not a format", "allowed: onnx, torchscript")
    assert len(unknown.stderr.strip().splitlines()) == len(bad_format.stderr.strip().splitlines()) == 1

"""The model format is a contract: a model logged today loads, and predicts the same, in every later fruitlab.

tests/fixtures/model_v1/ is a model saved by fruitlab 0.1.0 in format version 1 (tests/fixtures/make_model_v1.py);
these tests must keep passing unchanged. A model logged by an older fruitlab as a pickle is refused unless the
user opts in, and converted with the opt-in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from fruitlab.config import ModelConfig, PreprocessConfig
from fruitlab.errors import ModelError
from fruitlab.inference.convert import convert_model
from fruitlab.inference.model_format import read_model_files, save_model_files
from fruitlab.inference.predict import load_predictor
from fruitlab.models.classifier import build_classifier
from fruitlab.tracking import runs
from fruitlab.tracking.registry import promote
from tests.conftest import REPO
from tests.fixtures.make_model_v1 import LABELS, fixture_inputs, fixture_photos
from tests.test_cli import assert_clean_error, run
from tests.tracking.helpers import TASKS, tiny_model

FIXTURE = REPO / "tests" / "fixtures" / "model_v1"
EXPECTED = json.loads((REPO / "tests" / "fixtures" / "model_v1_expected.json").read_text())

# The README's "Model format" recipe: the weights with timm + safetensors alone, no fruitlab.
TIMM_ONLY = """
import json, sys
import numpy as np, timm, torch
from safetensors.torch import load_file

folder = sys.argv[1] + "/data/fruitlab"
spec = json.load(open(folder + "/spec.json"))
weights = load_file(folder + "/model.safetensors")
backbone = timm.create_model(spec["backbone"]["timm_model"], pretrained=False, **spec["backbone"]["kwargs"])
backbone.load_state_dict({k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")})
backbone.eval()
F = torch.nn.functional
act = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[spec["head"]["activation"]]
linears = sorted({int(k.split(".")[1]) for k in weights if k.startswith("head.")})
x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
with torch.inference_mode():
    h = backbone(x)  # head.pool == "model": timm's own pooling -> (B, F)
    for n, i in enumerate(linears):
        h = F.linear(h, weights[f"head.{i}.weight"], weights[f"head.{i}.bias"])
        h = act(h) if n < len(linears) - 1 else h
fruitlab = sorted(m for m in sys.modules if m.split(".")[0] == "fruitlab")
print(json.dumps({"logits": h.tolist(), "labels": spec["tasks"]["class"], "fruitlab": fruitlab}))
"""

FRESH_LOAD = """
import json, pickle, sys, time
import torch
def refuse(*args, **kwargs):
    raise AssertionError("something was unpickled")
pickle.load = pickle.loads = torch.load = refuse
started = time.perf_counter()
from fruitlab.inference.predict import load_predictor
p = load_predictor(sys.argv[1], device="cpu")
seconds = time.perf_counter() - started
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")
             or m.startswith("fruitlab.training"))
print(json.dumps({"labels": p.labels, "bad": bad, "seconds": seconds}))
"""


def test_the_committed_v1_model_predicts_as_it_did(tmp_path):
    predictor = load_predictor(str(FIXTURE), device="cpu")
    assert predictor.labels == {"class": LABELS} and predictor.preprocess["input_size"] == 64
    logits = predictor.logits(torch.from_numpy(fixture_inputs()))["class"]
    torch.testing.assert_close(logits, torch.tensor(EXPECTED["logits"]), atol=1e-4, rtol=0)
    for prediction in predictor.predict(fixture_photos(tmp_path), top_k=3):  # decoding and framing included
        expected = EXPECTED["photos"][Path(prediction.path).name]
        assert [label for label, _ in prediction.tasks["class"]] == list(expected)
        # The weights are checked exactly above; photo probabilities also include decoding, which may change within
        # a few thousandths (open_rgb's box reduce of large images, issue 15, moved them by 0.0025).
        assert dict(prediction.tasks["class"]) == pytest.approx(expected, abs=5e-3)


def test_timm_and_safetensors_alone_load_the_weights_as_the_readme_says():
    out = subprocess.run(
        [sys.executable, "-c", TIMM_ONLY, str(FIXTURE)], capture_output=True, text=True, timeout=300, check=True
    )
    result = json.loads(out.stdout)
    assert result["fruitlab"] == [] and result["labels"] == LABELS
    np.testing.assert_allclose(result["logits"], EXPECTED["logits"], atol=1e-4)


def test_mlflow_pyfunc_loads_it():
    model = mlflow.pyfunc.load_model(str(FIXTURE))
    np.testing.assert_allclose(model.predict(fixture_inputs()), EXPECTED["logits"], atol=1e-4)


def test_a_fresh_process_loads_it_without_lightning_training_or_any_unpickling():
    out = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(FIXTURE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["labels"] == {"class": LABELS} and result["bad"] == []


@pytest.mark.parametrize(
    ("model", "tasks"),
    [
        ({}, {"class": ["a", "b"]}),
        ({"head": {"pool": "avg", "hidden": [8], "dropout": 0.1, "activation": "silu"}}, {"class": ["a", "b", "c"]}),
        (
            {"heads": {"fruit": {"hidden": [4]}, "freshness": {}}, "shared": {"hidden": [16], "activation": "gelu"}},
            TASKS,
        ),
    ],
    ids=["default", "pooled-mlp-head", "multi-task"],
)
def test_a_saved_model_is_rebuilt_exactly(tmp_path, model, tasks):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="test_efficientnet", pretrained=False, **model)
    original, _ = build_classifier(cfg, PreprocessConfig(input_size=64), tasks)
    save_model_files(original.eval(), tmp_path / "files")
    again = read_model_files(tmp_path / "files", "test")
    assert again.tasks == tasks and again.preprocess == json.loads(json.dumps(original.preprocess))
    assert original.state_dict().keys() == again.state_dict().keys()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in original.state_dict().items())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        a, b = original(x), again(x)
    assert all(torch.equal(a[t], b[t]) for t in tasks) if isinstance(a, dict) else torch.equal(a, b)


def test_a_newer_or_broken_spec_is_a_clear_error(tmp_path):
    save_model_files(tiny_model(), tmp_path / "files")
    spec_path = tmp_path / "files" / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps({**spec, "format_version": 99}))
    with pytest.raises(ModelError, match=r"format version 99 .* is newer than this fruitlab reads"):
        read_model_files(tmp_path / "files", "m")
    spec_path.write_text(json.dumps({**spec, "backbone": {"timm_model": "test_efficientnetz", "kwargs": {}}}))
    with pytest.raises(ModelError, match="cannot build its backbone 'test_efficientnetz'"):
        read_model_files(tmp_path / "files", "m")
    (tmp_path / "files" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"has no \S*files/model\.safetensors: it is incomplete"):
        read_model_files(tmp_path / "files", "m")


def log_pickled_model(uri: str, experiment: str) -> str:
    """A run whose model is logged as fruitlab 0.1.0 logged models: a pickled nn.Module, MLflow's pytorch flavor."""
    import mlflow.pytorch

    model = tiny_model().eval()
    for new in ("timm_kwargs", "head_cfg", "shared_cfg", "heads_cfg"):  # attributes the old Classifier did not have
        delattr(model, new)
    client = runs.client_for(uri)
    run_id = client.create_run(runs.ensure_experiment(client, experiment, uri)).info.run_id
    extra = []
    for name, data in (("labels.json", model.classes), ("preprocessing.json", model.preprocess)):
        path = Path(name).absolute()
        path.write_text(json.dumps(data))
        extra.append(str(path))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model, name="model", extra_files=extra, pip_requirements=["torch"], serialization_format="pickle"
        )
    runs.set_tags(client, run_id, {"fruitlab.model_uri": info.model_uri, "fruitlab.dataset_fingerprint": "fp"})
    runs.log_metrics(client, run_id, {"val_best/class/acc": 0.5})
    runs.finish_run(client, run_id)
    return run_id


@pytest.mark.smoke
def test_a_pickled_model_is_refused_without_the_flag_and_converted_with_it(mlflow_uri, tmp_path):
    run_id = log_pickled_model(mlflow_uri, "old")
    assert promote("old").version == "1"
    with pytest.raises(ModelError, match=r"pickled nn\.Module.*runs whatever code.*--trust-pickle"):
        load_predictor("models:/old@champion")
    x = torch.randn(3, 3, 64, 64)
    before = load_predictor("models:/old@champion", trust_pickle=True).logits(x)["class"]
    env = {"MLFLOW_TRACKING_URI": mlflow_uri}
    (tmp_path / "photos").mkdir()
    photos = fixture_photos(tmp_path / "photos")
    assert_clean_error(run("predict", "-m", "models:/old@champion", *photos, env=env), "--trust-pickle")
    assert_clean_error(run("convert-model", "-m", "models:/old@champion", env=env), "pass --trust-pickle")

    converted = run("convert-model", "-m", "models:/old@champion", "--trust-pickle", env=env, cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    assert "registered as models:/old/2; aliases candidate, champion moved to it" in converted.stdout
    after = load_predictor("models:/old@champion")  # no flag: the champion is the converted model now
    assert after.source == "models:/old/2"
    torch.testing.assert_close(after.logits(x)["class"], before, atol=1e-6, rtol=0)
    torch.testing.assert_close(load_predictor(run_id[:10]).logits(x)["class"], before, atol=1e-6, rtol=0)
    assert promote("old").version == "2"  # the run's model is the converted one

    folder = convert_model("models:/old/1", out=tmp_path / "converted", trust_pickle=True).target
    torch.testing.assert_close(load_predictor(folder).logits(x)["class"], before, atol=1e-6, rtol=0)
    with pytest.raises(ModelError, match="in the current format already"):
        convert_model("models:/old/2", out=tmp_path / "again", trust_pickle=True)

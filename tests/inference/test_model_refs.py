"""Every command that takes --model accepts the same forms (tracking/refs.py), on a real registry."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest
import torch

from fruitlab.errors import ModelRefError
from fruitlab.inference.predict import load_predictor
from fruitlab.serving.model_slot import ModelSlot
from fruitlab.tracking import refs, runs
from fruitlab.tracking.registry import promote
from tests.fixtures.make_model_v1 import fixture_photos
from tests.test_cli import run
from tests.tracking.helpers import logged_run

pytestmark = pytest.mark.smoke

FORMS = [
    "models:/refs@champion",
    "models:/refs/1",
    "models:/{model_id}",
    "{model_id}",
    "runs:/{run_id}/model",
    "runs:/{prefix}/model",
    "{run_id}",
    "{prefix}",
    "{folder}",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> SimpleNamespace:
    work = tmp_path_factory.mktemp("refs")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        run_id = logged_run(uri, "refs", {"val_best/class/acc": 0.5})
        promote("refs")
        model_uri = runs.client_for(uri).get_run(run_id).data.tags["fruitlab.model_uri"]
        folder = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(work / "folder"))
    (work / "photos").mkdir()
    values = {"run_id": run_id, "prefix": run_id[:10], "model_id": model_uri.removeprefix("models:/"), "folder": folder}
    return SimpleNamespace(work=work, uri=uri, run_id=run_id, values=values, photos=fixture_photos(work / "photos"))


@pytest.fixture
def tracking(store, monkeypatch) -> SimpleNamespace:
    monkeypatch.chdir(store.work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    runs.client_for(store.uri)
    return store


@pytest.mark.parametrize("form", FORMS)
def test_predict_evaluate_export_serve_and_compare_accept_every_form(tracking, form):
    model = form.format(**tracking.values)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = load_predictor(tracking.values["folder"], device="cpu").logits(x)["class"]
    # predict, evaluate and export load through load_predictor with the text as given
    predictor = load_predictor(model, device="cpu", uri=tracking.uri)
    torch.testing.assert_close(predictor.logits(x)["class"], reference, atol=0, rtol=0)
    assert predictor.resolved is not None and predictor.resolved.ref.text == model
    # serve: the model slot resolves it the same way
    slot = ModelSlot(model, tracking.uri)
    assert slot.reload().changed and slot.follows_alias == model.endswith("@champion")
    # compare: the run behind it (a folder has none: one clear error)
    client = runs.client_for(tracking.uri)
    if form == "{folder}":
        with pytest.raises(ModelRefError, match="a model folder has no run"):
            refs.resolve_run(client, model, tracking.uri)
    else:
        assert refs.resolve_run(client, model, tracking.uri).info.run_id == tracking.run_id
    # the command as a user runs it
    result = run("predict", "--model", model, *tracking.photos, env={"MLFLOW_TRACKING_URI": tracking.uri})
    assert result.returncode == 0, result.stderr
    assert "2 images labelled by" in result.stderr

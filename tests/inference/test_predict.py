"""predict: a logged or registered model on real photos, by content, with its own labels and preprocessing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fruitlab.errors import ModelError
from fruitlab.inference.predict import find_images, format_prediction, load_predictor, write_predictions
from fruitlab.tracking import runs
from fruitlab.tracking.registry import promote
from tests.test_cli import assert_clean_error, run
from tests.tracking.helpers import CLASSES, TASKS, logged_run

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One registered single-task model (models:/photos@champion) and one multi-task run."""
    work = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        logged_run(uri, "photos", {"val_best/class/acc": 0.5})
        promote("photos")
        multi = logged_run(uri, "multi", {"val_best/joint/acc": 0.5}, tasks=TASKS)
    return SimpleNamespace(work=work, uri=uri, multi=multi)


@pytest.fixture
def tracking(store, monkeypatch):
    monkeypatch.chdir(store.work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    runs.client_for(store.uri)
    return store


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos (scikit-image's cat and coffee) as JPEGs named .png, in nested folders, plus two bad files."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    (root / "more").mkdir()
    rng = np.random.default_rng(0)
    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee())):
        for i in range(3):
            y, x = rng.integers(0, 100, size=2)
            Image.fromarray(image[y : y + 200, x : x + 200]).save(root / f"{name}{i}.png", format="JPEG")
    Image.fromarray(data.astronaut()).save(root / "more" / "astronaut.jpg")
    good = (root / "cat0.png").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "notes.jpg").write_text("not an image")
    (root / "README.txt").write_text("not listed: a folder yields image files only")
    return root


def test_a_folder_of_real_photos_with_bad_files(tracking, photos, tmp_path):
    paths = find_images([photos])
    assert len(paths) == 9 and not any(p.endswith("README.txt") for p in paths)
    predictor = load_predictor("models:/photos@champion", device="cpu")
    assert predictor.labels == {"class": CLASSES} and predictor.preprocess["input_size"] == 64
    predictions = list(predictor.predict(paths, top_k=2, batch_size=4))  # batches cut across the bad files
    assert [p.path for p in predictions] == paths
    bad = {Path(p.path).name: p.error for p in predictions if p.error}
    assert set(bad) == {"truncated.jpg", "notes.jpg"}
    assert "not an image PIL can read" in bad["notes.jpg"]
    for p in predictions:
        if not p.error:
            (first, p1), (second, p2) = p.tasks["class"]
            assert {first, second} == set(CLASSES) and p1 >= p2 and p1 + p2 == pytest.approx(1, abs=1e-5)
    line = format_prediction(predictions[0])
    assert line.startswith(paths[0]) and ("cat 0." in line or "coffee 0." in line)

    write_predictions(predictions, tmp_path / "out.csv")
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(rows) == 7 * 2 + 2 and {r["rank"] for r in rows if not r["error"]} == {"1", "2"}
    write_predictions(predictions, tmp_path / "out.json")
    assert len(json.loads((tmp_path / "out.json").read_text())) == 9


def test_the_same_predictions_by_run_id_and_by_folder(tracking, photos):
    by_alias = load_predictor("models:/photos@champion", device="cpu")
    from mlflow.tracking import MlflowClient

    version = MlflowClient(tracking.uri).get_model_version_by_alias("photos", "champion")
    by_run = load_predictor(version.run_id, device="cpu")
    paths = find_images([photos])[:3]
    assert [p.tasks for p in by_alias.predict(paths)] == [p.tasks for p in by_run.predict(paths)]


def test_a_multi_task_model_prints_every_task(tracking, photos):
    predictor = load_predictor(tracking.multi, device="cpu")
    assert predictor.multitask and predictor.labels == TASKS
    (pred,) = predictor.predict([str(photos / "cat0.png")], top_k=1)
    assert set(pred.tasks) == {"fruit", "freshness"}
    line = format_prediction(pred)
    assert "fruit: " in line and "freshness: " in line


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("champion", "unknown model 'champion': expected models:/NAME@ALIAS"),
        ("models:/photoz@champion", "did you mean 'photos'"),
        ("models:/photos@champ", "did you mean 'champion'"),
        ("models:/photos/7", "has no version '7'"),
        ("0" * 32, "no run '0000"),
    ],
)
def test_unknown_models_say_what_exists(tracking, model, fragment):
    with pytest.raises(ModelError, match=fragment):
        load_predictor(model)


def test_predict_in_a_fresh_process_imports_no_lightning(store, photos):
    code = (
        "import sys\n"
        "from fruitlab.inference.predict import find_images, load_predictor\n"
        f"p = load_predictor('models:/photos@champion', device='cpu')\n"
        f"print(sum(1 for x in p.predict(find_images([{str(photos)!r}])) if not x.error))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')\n"
        "             or m.startswith('fruitlab.training'))\n"
        "print(bad)\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["7", "[]"]


def test_cli_errors_are_one_line(store, photos, tmp_path):
    env = {"MLFLOW_TRACKING_URI": store.uri}
    assert_clean_error(run("predict", "--model", "nope", str(photos), env=env), "unknown model 'nope'")
    assert_clean_error(
        run("predict", "--model", "models:/photos@champion", str(photos), "-o", "x.txt", env=env), ".csv or .json"
    )
    assert_clean_error(run("predict", "--model", "models:/photos@champion", str(tmp_path), env=env), "no image files")


def test_a_16_bit_photo_is_predicted_like_its_8_bit_copy(tracking, tmp_path):
    """PIL clips 16-bit greyscale at 255 (an all-white image); predict must see the photo (data/images.py)."""
    from skimage import data

    grey = np.asarray(Image.fromarray(data.coffee()).convert("L"))
    Image.fromarray(grey).save(tmp_path / "coffee-8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "coffee-16.png")
    Image.new("L", grey.shape[::-1], 255).save(tmp_path / "white.png")
    predictor = load_predictor("models:/photos@champion", device="cpu")
    names = ("coffee-8.png", "coffee-16.png", "white.png")
    eight, sixteen, white = predictor.predict([str(tmp_path / n) for n in names])
    assert not (eight.error or sixteen.error)
    assert dict(sixteen.tasks["class"]) == pytest.approx(dict(eight.tasks["class"]), abs=1e-4)
    assert dict(white.tasks["class"]) != pytest.approx(dict(eight.tasks["class"]), abs=1e-4)


def test_a_named_path_that_does_not_exist_is_an_error(store, photos, tmp_path):
    env = {"MLFLOW_TRACKING_URI": store.uri}
    missing = tmp_path / "missing.jpg"
    result = run("predict", "--model", "models:/photos@champion", str(photos / "cat0.png"), str(missing), env=env)
    assert_clean_error(result, f"no such file or folder: {missing}")
    assert "labelled" not in result.stderr  # refused before anything is predicted

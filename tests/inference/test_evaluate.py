"""fruitlab evaluate: a logged tiny model on real photo crops, through the CLI as a user runs it.

The report's numbers are checked against an independent numpy recomputation from the raw predictions the
evaluation run stores; the run's links to the model, the stored temperature, thresholds in predict, Grad-CAM
layers of several backbone families and one-line errors are checked too.
"""

from __future__ import annotations

import csv
import io
import re
from html import unescape
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from fruitlab.evaluation.html import SECTIONS
from fruitlab.inference.predict import find_images, load_predictor
from fruitlab.tracking import evaluations, runs, tags
from tests.browser import chromium
from tests.conftest import real_photo_crops
from tests.test_cli import assert_clean_error, run
from tests.tracking.helpers import TASKS, logged_run

pytestmark = pytest.mark.smoke

MULTI_CONFIG = """
data:
  dataset: image_folder
  labels: {source: class_name, pattern: '^(?P<freshness>fresh|rotten)(?P<fruit>.+)$'}
model: {backbone: test_efficientnet, pretrained: false, heads: {fruit: {}, freshness: {}}}
"""


def _write_folder(root: Path, names: dict[str, str]) -> Path:
    """train/ val/ test/ of real photo crops (JPEGs named .png, as in the fruit data); `names`: cat/coffee -> folder."""
    crops, extra = real_photo_crops(n_per_class=6, seed=0), real_photo_crops(n_per_class=5, seed=1)
    parts = {"train": crops.splits["train"], "val": crops.splits["val"], "test": extra.splits["val"]}
    for split, part in parts.items():
        for i, (image, label) in enumerate(zip(part.items, part.labels, strict=True)):
            folder = root / split / names[crops.classes[label]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{split}{i}.png", format="JPEG")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A single- and a multi-task logged model, folders of real photos, and one CLI evaluation with all options."""
    work = tmp_path_factory.mktemp("evaluate")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        single = logged_run(uri, "photos", {"val_best/class/acc": 0.5})
        multi = logged_run(uri, "multi", {"val_best/joint/acc": 0.5}, tasks=TASKS)
        runs.client_for(uri).log_text(multi, MULTI_CONFIG, runs.CONFIG_ARTIFACT)
    photos = _write_folder(work / "photos", {"cat": "cat", "coffee": "coffee"})
    fruit = _write_folder(work / "fruit", {"cat": "freshapple", "coffee": "rottenbanana"})
    args = ["--model", single, "--data", str(photos), "--split", "test", "--tta", "--threshold", "0.6"]
    result = run(
        "evaluate", *args, "--fit-temperature", "--out", str(work / "out"), cwd=work, env={"MLFLOW_TRACKING_URI": uri}
    )
    return SimpleNamespace(work=work, uri=uri, single=single, multi=multi, photos=photos, fruit=fruit, cli=result)


@pytest.fixture
def client(store, monkeypatch) -> MlflowClient:
    monkeypatch.chdir(store.work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    return runs.client_for(store.uri)


def _summary(store) -> tuple[str, Path]:
    assert store.cli.returncode == 0, store.cli.stderr[-3000:]
    line = store.cli.stdout.strip().splitlines()[-1]
    match = re.search(r"report (\S+)  eval run ([0-9a-f]{32})", line)
    assert match and line.startswith("accuracy ") and " ECE " in line, line
    return match.group(2), Path(match.group(1))


def _csv_artifact(client: MlflowClient, run_id: str, task: str, folder: Path) -> list[dict[str, str]]:
    """The raw predictions of one task, as the evaluation run stored them."""
    path = client.download_artifacts(run_id, f"evaluation/predictions_{task}.csv", str(folder))
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


def _page_values(html: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"data-metric='([^']+)' data-value='([^']+)'", html)}


def test_the_report_has_every_section_and_is_self_contained(store):
    _, path = _summary(store)
    html = path.read_text()
    for key, heading in SECTIONS.items():
        assert f'<section id="{key}"><h2>{heading}</h2>' in html
    sections = dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>', html, re.S))
    assert "Not run" not in sections["tta"] and "No temperature" not in sections["calibration"]  # both have content
    assert "Not run" in sections["shift"] and "Not run" in sections["robustness"]  # not asked for here
    assert "no training run with an experiment config" in sections["summary"]  # the copy check explains its skip
    assert html.count('class="wrong"') >= 1 and html.count('class="right"') >= 1  # Grad-CAM of both kinds
    assert html.count("data:image/png;base64,") == 3 and html.count("data:image/jpeg;base64,") >= 10
    assert not re.search(r"(src|href)=\"(https?:|//)", html) and "<script" not in html and "<link" not in html
    assert "layer 'bn2'" in unescape(html)  # test_efficientnet's last feature map


def test_the_numbers_match_a_recomputation_from_the_raw_predictions(store, client):
    run_id, path = _summary(store)
    rows = _csv_artifact(client, run_id, "class", store.work / "download")
    classes = [k.removeprefix("p:") for k in rows[0] if k.startswith("p:")]
    probs = np.array([[float(r[f"p:{c}"]) for c in classes] for r in rows])
    y = np.array([classes.index(r["true"]) for r in rows])
    assert len(rows) == 10 and classes == ["cat", "coffee"]  # the test split: 5 crops per class

    # numpy, independently of fruitlab and torchmetrics
    pred, conf = probs.argmax(1), probs.max(1)
    right = pred == y
    confusion = np.zeros((2, 2), int)
    np.add.at(confusion, (y, pred), 1)
    precision = np.diag(confusion) / np.maximum(confusion.sum(0), 1)
    recall = np.diag(confusion) / confusion.sum(1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    bins = np.minimum((conf * 15).astype(int), 14)
    ece = sum(abs(right[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum() for b in set(bins)) / len(y)
    nll = -np.log(probs[np.arange(len(y)), y]).mean()
    answered = conf >= 0.6
    expected = {
        "class/acc": right.mean(),
        "class/precision_macro": precision.mean(),
        "class/recall_macro": recall.mean(),
        "class/f1_macro": f1.mean(),
        "class/f1_weighted": (f1 * confusion.sum(1)).sum() / len(y),
        "class/ece": ece,
        "class/nll": nll,
        "class/threshold_0.6/coverage": answered.mean(),
        **{f"class/{c}/f1": f1[i] for i, c in enumerate(classes)},
        **{f"class/{c}/recall": recall[i] for i, c in enumerate(classes)},
    }
    page = _page_values(path.read_text())
    logged = client.get_run(run_id).data.metrics
    for key, value in expected.items():
        assert page[key] == pytest.approx(value, abs=1e-6), key
        if key.count("/") == 1:
            assert logged[f"test/{key}"] == pytest.approx(value, abs=1e-6), key
    if answered.any():
        assert page["class/threshold_0.6/accuracy"] == pytest.approx(right[answered].mean(), abs=1e-6)
    assert [r["answer"] for r in rows] == [
        r["predicted"] if a else "unknown" for r, a in zip(rows, answered, strict=True)
    ]
    supports = re.findall(r"data-metric='class/(\w+)/support'>(\d+)<", path.read_text())
    assert {c: int(n) for c, n in supports} == {c: int((y == i).sum()) for i, c in enumerate(classes)}


def test_the_evaluation_run_is_linked_to_the_model_and_stores_its_temperature(store, client):
    run_id, _ = _summary(store)
    evaluation, source = client.get_run(run_id), client.get_run(store.single)
    assert evaluation.info.experiment_id == source.info.experiment_id
    assert evaluation.data.tags[tags.SOURCE_RUN] == store.single
    assert evaluation.data.tags[tags.RUN_KIND] == "evaluation"
    assert source.data.tags[tags.LAST_EVALUATION] == run_id
    model_id = source.data.tags["fruitlab.model_uri"].removeprefix("models:/")
    assert [m.model_id for m in evaluation.inputs.model_inputs] == [model_id]
    assert {m.key for m in client.get_logged_model(model_id).metrics} >= {"test/class/acc", "test/class/ece"}
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/predictions_class.csv", "evaluation/metrics.json"} <= artifacts

    stored = evaluations.load_temperature(client, model_id)
    assert stored["run_id"] == run_id and "val (n=12)" in stored["data"]  # fitted on val, not on the test split
    assert evaluation.data.metrics["test/class/temperature"] == pytest.approx(stored["values"]["class"], rel=1e-5)
    predictor = load_predictor(store.single, device="cpu")  # predict picks the stored temperature up
    assert predictor.temperature == stored["values"]
    assert load_predictor(store.single, device="cpu", use_temperature=False).temperature is None


def test_predict_answers_unknown_below_the_threshold(store, client):
    paths = find_images([store.photos / "test"])
    predictor = load_predictor(store.single, device="cpu")
    tops = [p.tasks["class"][0] for p in predictor.predict(paths)]
    for threshold in (0.0, 0.5, 0.51, 1.0):
        answers = [p.answers["class"] for p in predictor.predict(paths, threshold=threshold)]
        assert answers == [label if prob >= threshold else "unknown" for label, prob in tops]
    result = run(
        "predict",
        "--model",
        store.single,
        str(store.photos / "test"),
        "--threshold",
        "1",
        cwd=store.work,
        env={"MLFLOW_TRACKING_URI": store.uri},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("unknown (best: ") == 10 and "10 unknown below 1" in result.stderr


def test_a_multi_task_model_gets_every_task_and_the_joint_accuracy(store, client, tmp_path):
    from fruitlab.inference.evaluate import evaluate

    result = evaluate(store.multi, str(store.fruit), split="val", out=tmp_path, device="cpu")
    tasks = result.evaluation["tasks"]
    assert set(tasks) == {"fruit", "freshness"} and result.evaluation["n"] == 12
    assert tasks["fruit"]["classes"] == TASKS["fruit"]  # the model's labels; the data has 2 of the 3 fruits
    assert [c["support"] for c in tasks["fruit"]["per_class"]] == [6, 6, 0]
    csvs = {t: _csv_artifact(client, result.run_id, t, tmp_path) for t in tasks}
    joint = np.mean([all(csvs[t][i]["true"] == csvs[t][i]["predicted"] for t in tasks) for i in range(12)])
    assert result.evaluation["joint_acc"] == pytest.approx(joint)
    page = _page_values(result.report_path.read_text())
    assert page["joint/acc"] == pytest.approx(joint) and "fruit/acc" in page and "freshness/acc" in page
    assert "joint accuracy" in result.summary() and "fruit accuracy" in result.summary()


@pytest.mark.parametrize(
    ("backbone", "head", "layer"),
    [
        ("test_efficientnet", {}, "bn2"),
        ("efficientnet_lite0", {}, "bn2"),
        ("resnet18", {}, "layer4"),
        ("vgg16", {"pool": "avg"}, "features"),  # as in experiments/finetune_vgg16.yaml
    ],
)
def test_grad_cam_finds_the_last_feature_map_of_each_family(backbone, head, layer):
    from fruitlab.config import ModelConfig, PreprocessConfig
    from fruitlab.inference.saliency import find_target_layer, gradcam_maps
    from fruitlab.models.classifier import build_classifier

    torch.manual_seed(0)
    model, _ = build_classifier(
        ModelConfig(backbone=backbone, pretrained=False, head=head), PreprocessConfig(input_size=64), ["a", "b"]
    )
    model.backbone.requires_grad_(False)  # as after a frozen-backbone phase: the map still gets gradients
    name, module = find_target_layer(model, 64)
    assert name == layer
    maps = gradcam_maps(model, module, torch.randn(2, 3, 64, 64), "class", [0, 1])
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.max() > maps.min()


def test_bad_input_gives_one_line_errors(store, tmp_path):
    env = {"MLFLOW_TRACKING_URI": store.uri}
    data = ["--data", str(store.photos)]
    assert_clean_error(run("evaluate", "--model", "nope", *data, env=env), "unknown model 'nope'")
    assert_clean_error(
        run("evaluate", "--model", store.single, "--data", str(tmp_path / "missing"), env=env), "no such folder"
    )
    assert_clean_error(
        run("evaluate", "--model", store.single, "--data", "fruits_fresh_roten", env=env),
        "did you mean 'fruits_fresh_rotten'",
    )
    assert_clean_error(
        run("evaluate", "--model", store.single, *data, "--split", "tset", env=env),
        "--split 'tset'",
        "did you mean 'test'",
    )
    assert_clean_error(
        run("evaluate", "--model", store.single, *data, "--threshold", "1.5", env=env),
        "--threshold 1.5 is not a probability",
    )
    assert_clean_error(
        run("predict", "--model", store.single, str(store.photos), "--threshold", "-0.2", env=env),
        "--threshold -0.2 is not a probability",
    )


def screenshot(html: Path, png: Path) -> dict[str, object]:
    """Open the report in headless Chromium (file://, no server), check it, save a full-page PNG; what it saw."""
    from selenium.webdriver.common.by import By

    with chromium(width=1280, height=900) as driver:
        driver.get(html.resolve().as_uri())
        seen = {}
        for key in SECTIONS:
            section = driver.find_element(By.ID, key)
            driver.execute_script("arguments[0].scrollIntoView();", section)
            seen[key] = (section.is_displayed(), section.find_element(By.TAG_NAME, "h2").text, section.size["height"])
        images = driver.execute_script(
            "return [...document.images].map(i => [i.complete && i.naturalWidth > 0, i.closest('section').id])"
        )
        height = driver.execute_script("return document.documentElement.scrollHeight")
        # The whole page in one picture: make the viewport as tall as the page (Chrome DevTools protocol).
        metrics = {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        driver.save_screenshot(str(png))
    return {"sections": seen, "images": images, "height": height}


def test_the_report_renders_in_headless_chromium(store, tmp_path):
    _, path = _summary(store)
    seen = screenshot(path, tmp_path / "report.png")
    for key, heading in SECTIONS.items():
        displayed, title, height = seen["sections"][key]
        assert displayed and title == heading and height > 40, key
    loaded = [ok for ok, _ in seen["images"]]
    assert all(loaded) and len(loaded) >= 13  # 3 plots + wrong grid + Grad-CAM tiles, every one decoded
    assert {"confusion", "calibration", "thresholds", "wrong", "gradcam"} <= {s for _, s in seen["images"]}
    shot = np.asarray(Image.open(tmp_path / "report.png").convert("RGB"))
    assert shot.shape[:2] == (seen["height"], 1280)
    assert shot.std() > 20  # a page of text, tables and pictures, not a blank or an error page

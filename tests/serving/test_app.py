"""The web app's API on real fruit photos: answers, the log behind them, paging and filters, pages and docs."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fruitlab.serving.app import create_app
from fruitlab.serving.log import PredictionLog
from tests.serving.conftest import ADMIN, FRUITS, settings_for


@pytest.fixture(scope="module")
def client(registry, tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('log') / 'predictions.db'}"
    app = create_app(settings_for(registry, db))
    with TestClient(app, headers=ADMIN) as test_client:  # the admin token: the log routes need it (test_auth.py)
        yield test_client


def upload(*paths, name=None):
    return [("files", (name or p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def test_one_photo_is_answered_and_logged(client, fruit_photos):
    photo = fruit_photos[0]
    tag = f"t-{uuid.uuid4().hex[:8]}"
    answer = client.post("/predict", files=upload(photo), data={"tag": tag})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"]["name"] == "fruits" and body["model"]["version"] == "1"
    assert body["model"]["uri"] == "models:/fruits/1" and body["tag"] == tag and body["latency_ms"] > 0
    (pred,) = body["predictions"]
    top = pred["tasks"]["class"]
    assert len(top) == 3 and [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    assert pred["label"] == top[0]["label"] and pred["label"] in FRUITS
    assert pred["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert pred["format"] == "JPEG" and (pred["width"], pred["height"]) == Image.open(photo).size  # a .png name

    page = client.get("/predictions", params={"tag": tag}).json()
    assert page["total"] == 1
    (row,) = page["items"]
    assert row["request_id"] == body["request_id"] and row["item"] == 0
    assert (row["model_name"], row["model_version"], row["client_tag"]) == ("fruits", "1", tag)
    assert row["sha256"] == pred["sha256"] and row["bytes"] == len(photo.read_bytes())
    assert row["label"] == pred["label"] and row["labels"] == {"class": pred["label"]}
    logged = row["probabilities"]["class"]
    assert len(logged) == 5 and logged[pred["label"]] == pytest.approx(top[0]["probability"], abs=1e-6)
    assert row["created_at"].endswith("Z")


def test_several_photos_in_one_request_keep_their_order(client, fruit_photos):
    tag = f"t-{uuid.uuid4().hex[:8]}"
    answer = client.post("/predict", files=upload(*fruit_photos[:5]), data={"tag": tag}, params={"top_k": 1})
    assert answer.status_code == 200, answer.text
    preds = answer.json()["predictions"]
    assert [p["filename"] for p in preds] == [p.name for p in fruit_photos[:5]]
    assert all(len(p["tasks"]["class"]) == 1 for p in preds)
    rows = client.get("/predictions", params={"tag": tag}).json()["items"]
    assert sorted(r["item"] for r in rows) == [0, 1, 2, 3, 4]
    assert {r["request_id"] for r in rows} == {answer.json()["request_id"]}
    # the same photo alone gets the same answer as within a batch
    alone = client.post("/predict", files=upload(fruit_photos[3]), params={"top_k": 1}).json()["predictions"][0]
    assert alone["tasks"]["class"][0]["label"] == preds[3]["tasks"]["class"][0]["label"]
    assert alone["tasks"]["class"][0]["probability"] == pytest.approx(preds[3]["tasks"]["class"][0]["probability"])


def test_the_log_pages_and_filters(client, fruit_photos):
    tag = f"t-{uuid.uuid4().hex[:8]}"
    for photo in fruit_photos[:7]:
        assert client.post("/predict", files=upload(photo), data={"tag": tag}).status_code == 200
    first = client.get("/predictions", params={"tag": tag, "per_page": 3}).json()
    second = client.get("/predictions", params={"tag": tag, "per_page": 3, "page": 3}).json()
    assert first["total"] == 7 and len(first["items"]) == 3 and len(second["items"]) == 1
    ids = [r["id"] for r in first["items"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    everything = client.get("/predictions", params={"tag": tag, "per_page": 10}).json()["items"]
    label = everything[0]["label"]
    by_label = client.get("/predictions", params={"tag": tag, "label": label}).json()
    assert by_label["total"] == sum(r["label"] == label for r in everything) >= 1
    assert client.get("/predictions", params={"tag": tag, "model_version": "2"}).json()["total"] == 0
    assert client.get("/predictions", params={"tag": tag, "model_version": "1"}).json()["total"] == 7
    oldest = min(r["created_at"] for r in everything)
    later = client.get("/predictions", params={"tag": tag, "since": "2999-01-01T00:00:00Z"}).json()
    assert later["total"] == 0
    assert client.get("/predictions", params={"tag": tag, "since": oldest}).json()["total"] == 7
    assert client.get("/predictions", params={"tag": tag, "until": oldest}).json()["total"] == 0

    stats = client.get("/predictions/stats", params={"tag": tag, "since": "2000-01-01T00:00:00Z"}).json()
    assert stats["total"] == 7 and stats["bucket"] == "day"
    assert sum(b["count"] for b in stats["by_label"]) == 7 == sum(b["count"] for b in stats["over_time"])
    assert stats["by_version"] == [{"model": "fruits", "version": "1", "count": 7}]
    assert 0 < stats["latency_ms"]["p50"] <= stats["latency_ms"]["p95"] <= stats["latency_ms"]["p99"]
    minute = client.get("/predictions/stats", params={"tag": tag, "bucket": "minute"}).json()
    assert all(b["time"].endswith(":00Z") for b in minute["over_time"])


def test_health_ready_docs_and_pages(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["model"]["version"] == "1"
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/predictions", "/predictions/stats", "/health", "/ready", "/admin/reload"} <= set(
        schema["paths"]
    )
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "swagger" in client.get("/docs").text.lower()
    page = client.get("/")
    assert page.status_code == 200 and "/static/upload.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    dashboard = client.get("/dashboard").text
    assert "/static/plotly.min.js" in dashboard and "cdn" not in dashboard.lower()
    plotly = client.get("/static/plotly.min.js")
    assert plotly.status_code == 200 and plotly.headers["content-encoding"] == "gzip"
    assert len(plotly.content) > 1_000_000 and b"plotly" in plotly.content[:2000].lower()
    for name in ("style.css", "upload.js", "dashboard.js"):
        assert client.get(f"/static/{name}").status_code == 200


@pytest.mark.parametrize("path", ["/static/index.html", "/static/..%2Fapp.py", "/static/%2e%2e/log.py", "/nope"])
def test_unknown_paths_are_404_json_and_touch_no_file(client, path):
    answer = client.get(path)
    assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}


def test_a_bad_tag_or_top_k_is_422_with_a_message(client, fruit_photos):
    bad_tag = client.post("/predict", files=upload(fruit_photos[0]), data={"tag": "x" * 65})
    assert bad_tag.status_code == 422 and "tag" in bad_tag.json()["detail"]
    bad_k = client.post("/predict", files=upload(fruit_photos[0]), params={"top_k": 0})
    assert bad_k.status_code == 422 and "top_k" in bad_k.json()["detail"]
    no_files = client.post("/predict", data={"tag": "a"}, files=[("other", ("a.txt", b"x", "text/plain"))])
    assert no_files.status_code == 422 and "files" in no_files.json()["detail"]


def test_the_log_is_the_same_database_the_app_writes(client, fruit_photos):
    log: PredictionLog = client.app.state.log
    before = log.count()
    assert client.post("/predict", files=upload(*fruit_photos[:2])).status_code == 200
    assert log.count() == before + 2


def test_a_client_file_name_is_only_echoed(client, fruit_photos, tmp_path):
    name = "../../" + str(tmp_path / "written.jpg")
    answer = client.post("/predict", files=upload(fruit_photos[0], name=name))
    assert answer.status_code == 200
    assert answer.json()["predictions"][0]["filename"] == "written.jpg"  # the last component, for display
    assert not (tmp_path / "written.jpg").exists()
    bad = client.post("/predict", files=[("files", (name, b"not an image", "image/jpeg"))])
    assert bad.status_code == 415 and bad.json()["detail"].startswith("'written.jpg' is not an image")


def test_a_file_name_too_long_for_the_parser_is_a_400_that_says_so(client, fruit_photos):
    photo = fruit_photos[0]
    long_name = "a" * 5000 + ".jpg"
    refused = client.post("/predict", files=upload(photo, name=long_name))
    assert refused.status_code == 400
    detail = refused.json()["detail"]
    assert "header longer than 4,224 bytes" in detail and "send the file under a shorter name" in detail
    fits = client.post("/predict", files=upload(photo, name="b" * 1000 + ".jpg"))  # under the parser's limit
    assert fits.status_code == 200 and len(fits.json()["predictions"][0]["filename"]) == 120  # shown shortened
    assert client.get("/nope").json() == {"detail": "Not Found"}  # other errors keep FastAPI's answer


def test_a_16_bit_png_is_answered_like_its_8_bit_copy(client, fruit_photos):
    import io

    import numpy as np

    grey = np.asarray(Image.open(fruit_photos[0]).convert("L"))
    answers = []
    for name, pixels in (("8.png", grey), ("16.png", grey.astype(np.uint16) * 257)):
        data = io.BytesIO()
        Image.fromarray(pixels).save(data, format="PNG")
        answer = client.post("/predict", files=[("files", (name, data.getvalue(), "image/png"))], params={"top_k": 6})
        assert answer.status_code == 200, answer.text
        answers.append({t["label"]: t["probability"] for t in answer.json()["predictions"][0]["tasks"]["class"]})
    assert answers[1] == pytest.approx(answers[0], abs=1e-4)


def test_security_headers(client, fruit_photos):
    for path in ("/", "/dashboard"):  # pages that run only their own scripts
        page = client.get(path)
        policy = dict(p.strip().split(" ", 1) for p in page.headers["content-security-policy"].split(";"))
        assert policy["script-src"] == "'self'" and policy["object-src"] == "'none'"
        assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'self'"
        assert page.headers["x-content-type-options"] == "nosniff"
        scripts = [line for line in page.text.splitlines() if "<script" in line]
        assert scripts and all('src="/static/' in line for line in scripts)  # no inline script the policy blocks
    answers = [
        client.get("/static/upload.js"),
        client.get("/health"),
        client.get("/nope"),
        client.post("/predict", files=upload(fruit_photos[0])),
        client.post("/predict", json={}),  # refused by the upload middleware itself
    ]
    assert [a.status_code for a in answers] == [200, 200, 404, 200, 415]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"

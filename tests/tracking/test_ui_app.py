"""fruitlab's MLflow server app: `/fruitlab` stores the model-training mode in the browser, the rest is MLflow's.
The real server and a real browser: tests/tracking/test_mlflow_ui.py."""

from __future__ import annotations

import asyncio
import re
from importlib.metadata import entry_points
from pathlib import Path

import mlflow.server

from fruitlab.tracking import ui_app


def call(app, method: str, path: str) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path, "headers": []}, receive, send))
    return sent


def test_the_start_page_stores_model_training_and_opens_the_experiment_list():
    for path in ("/fruitlab", "/fruitlab/"):
        start, body = call(ui_app.WithStartPage(None), "GET", path)
        assert start["status"] == 200 and (b"content-type", b"text/html; charset=utf-8") in start["headers"]
        page = body["body"].decode()
        assert 'localStorage.setItem("mlflow.workflowType_v1", JSON.stringify("machine_learning"))' in page
        assert 'location.replace("./#/experiments?workflowType=machine_learning")' in page
        # the GenAI assistant does not open by itself on a first visit (a browser's own state is kept)
        key = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"
        assert f'if (localStorage.getItem("{key}") === null) localStorage.setItem("{key}", "true")' in page


def test_every_other_request_goes_to_mlflows_app_untouched():
    seen = []

    async def mlflow_app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})

    assert call(ui_app.WithStartPage(mlflow_app), "GET", "/ajax-api/2.0/mlflow/runs/get") == [
        {"type": "http.response.start", "status": 204, "headers": []}
    ]
    assert call(ui_app.WithStartPage(mlflow_app), "GET", "/fruitlab-not") and seen == [
        "/ajax-api/2.0/mlflow/runs/get",
        "/fruitlab-not",
    ]


def test_the_app_is_mlflows_registered_app_and_the_key_is_the_one_mlflows_ui_reads():
    # `mlflow ui --app-name fruitlab` finds it (pyproject's mlflow.app entry point); not a function: MLflow's CLI
    # would call a function as a factory.
    (found,) = [e for e in entry_points(group="mlflow.app") if e.name == "fruitlab"]
    assert found.value == "fruitlab.tracking.ui_app:app" and isinstance(ui_app.app, ui_app.WithStartPage)
    # The UI bundle of the installed MLflow keeps its mode under that key: a later MLflow that renames it fails here.
    bundle = Path(mlflow.server.__file__).parent / "js" / "build" / "static" / "js"
    keys = ('key:"mlflow.workflowType",version:1', 'key:"mlflow.assistant.fab.autoOpenedOnFirstLoad",version:1')
    reads = [p.name for p in bundle.glob("main.*.js") if all(key in p.read_text() for key in keys)]
    assert reads, "MLflow's UI no longer keeps its mode (or its assistant's first opening) under those keys"
    assert re.search(r"`\$\{e\}_v\$\{t\}`", (bundle / reads[0]).read_text())  # localStorage key = `${key}_v${version}`

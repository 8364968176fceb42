"""The MLflow server fruitlab starts (`fruitlab ui`, docker-compose): MLflow's own app plus one page, `/fruitlab`,
that switches the browser's MLflow UI to its model-training mode and opens the experiment list.

Why by hand: MLflow 3.17's UI opens in its GenAI mode (Traces, Judges, Prompts, an assistant pane). Its switch
reads the URL's `workflowType` or, failing that, the browser's localStorage key `mlflow.workflowType_v1`; the
experiment tag `mlflow.experimentKind` is not consulted while that switch exists. A `?workflowType=` link does not
reach an experiment's own address (a bookmark, a shared link), and a server cannot set localStorage, so the page
does it in the browser, on the server's own origin. The sidebar's switch still changes it back.

Served through MLflow's `mlflow.app` entry point (pyproject: `mlflow ui --app-name fruitlab`), the way MLflow's
own basic-auth app is: every other path goes to MLflow's app untouched. The page holds no data.
"""

from __future__ import annotations

from typing import Any

from mlflow.server.fastapi_app import app as mlflow_app

from fruitlab.tracking.runs import UI_START_PATH as START_PATH

WORKFLOW_KEY = "mlflow.workflowType_v1"  # MLflow's useLocalStorage({key: 'mlflow.workflowType', version: 1})
MODEL_TRAINING = "machine_learning"
# MLflow opens its GenAI assistant over a third of the screen on a browser's first visit, unless this says it did
# already; a browser that has been through that keeps its own state, and the assistant's button stays.
ASSISTANT_KEY = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fruitlab: MLflow</title></head>
<body>
<p>Opening MLflow in its Model training mode&hellip; <a href="./#/experiments?workflowType={MODEL_TRAINING}">
experiments</a></p>
<script>
try {{
  localStorage.setItem("{WORKFLOW_KEY}", JSON.stringify("{MODEL_TRAINING}"));
  if (localStorage.getItem("{ASSISTANT_KEY}") === null) localStorage.setItem("{ASSISTANT_KEY}", "true");
}} catch (e) {{}}
location.replace("./#/experiments?workflowType={MODEL_TRAINING}");
</script>
</body></html>
""".encode()


class WithStartPage:
    """An ASGI app: `/fruitlab` answered here, everything else (lifespan included) by MLflow's app.
    A class, not a function: MLflow's CLI treats a plain function as an app factory."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == START_PATH:
            headers = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": PAGE if scope["method"] != "HEAD" else b""})
            return
        await self.app(scope, receive, send)


app = WithStartPage(mlflow_app)

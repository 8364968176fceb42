"""Deployment: docker-compose.yml names the commands in stack.py, and that topology runs as plain processes.

Docker cannot run here, so the slow test starts what the compose file starts: `mlflow server` on a fresh PostgreSQL
database with a temp artifacts folder, `fruitlab fit` of a tiny model logging to it over HTTP, `fruitlab promote`,
and `fruitlab serve` (waiting for the champion, prediction log on PostgreSQL); then real photos are posted.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from fruitlab.config import PACKAGED_EXPERIMENTS
from fruitlab.serving.log import Filters, PredictionLog
from fruitlab.serving.settings import TOKEN_ENV, read_admin_token
from tests.conftest import PG_SERVER, REPO, SMOKE_EXPERIMENT, fresh_pg_databases
from tests.serving import stack
from tests.serving.conftest import free_port

BIN = Path(sys.executable).parent
TOKEN = "stack-admin-token-5b1e90c3d7"


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_names_the_stack_commands():
    services = compose()["services"]
    values = stack.COMPOSE
    assert services["mlflow"]["command"] == stack.mlflow_server(
        values["mlflow_db"], stack.ARTIFACTS, "0.0.0.0", stack.MLFLOW_PORT, values["allowed_hosts"]
    )
    assert f"mlartifacts:{stack.ARTIFACTS}" in services["mlflow"]["volumes"]
    app = services["app"]
    assert app["command"] == stack.serve(values["log_db"], "0.0.0.0", stack.APP_PORT, values["poll"])
    assert app["environment"] == stack.app_env(values["tracking_uri"])
    assert f"{stack.APP_PORT}:{stack.APP_PORT}" in app["ports"]
    train = services["train"]
    assert train["command"] == ["sh", "-c", stack.train_script(values["experiment"])]
    assert train["environment"]["MLFLOW_TRACKING_URI"] == values["tracking_uri"]
    assert (PACKAGED_EXPERIMENTS / f"{values['experiment']}.yaml").is_file()

    # the databases the URLs name exist: POSTGRES_DB for MLflow, the init script for the log
    pg = services["postgres"]["environment"]
    assert values["mlflow_db"].endswith(f"@postgres:5432/{pg['POSTGRES_DB']}")
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres" in values["log_db"]
    initdb = services["postgres"]["volumes"][1].split(":")[0]
    init_sql = "".join(p.read_text() for p in sorted((REPO / initdb).glob("*.sql")))
    assert f"CREATE DATABASE {values['log_db'].rsplit('/', 1)[1]} " in init_sql
    assert set(services["app"]["depends_on"]) == {"postgres", "mlflow"}


def test_compose_passes_the_admin_token_from_an_env_file_kept_out_of_git_and_the_image():
    app = compose()["services"]["app"]
    assert app["env_file"] == [{"path": stack.ADMIN_ENV_FILE, "required": True}]  # `up` fails without it
    assert not any("TOKEN" in key for key in app["environment"])  # not written into the compose file
    assert "--insecure-admin" not in app["command"]
    ignored = subprocess.run(["git", "check-ignore", "-q", stack.ADMIN_ENV_FILE], cwd=REPO, check=False)
    assert ignored.returncode == 0, f"{stack.ADMIN_ENV_FILE} is not git-ignored"
    assert stack.ADMIN_ENV_FILE in (REPO / ".dockerignore").read_text().splitlines()  # never baked into the image
    # the example to copy names the variable serve reads and leaves it empty: routes off, never a shared default
    example = REPO / f"{stack.ADMIN_ENV_FILE}.example"
    entries = dict(
        line.split("=", 1) for line in example.read_text().splitlines() if line.strip() and not line.startswith("#")
    )
    assert entries == {TOKEN_ENV: ""} and read_admin_token(entries) is None
    # what the file gives the container is what `fruitlab serve` reads: a token there protects the routes
    assert read_admin_token({TOKEN_ENV: "0123456789abcdef" * 4}) == "0123456789abcdef" * 4


def test_the_dockerfile_installs_with_the_constraints_and_runs_serve():
    lines = (REPO / "Dockerfile").read_text().splitlines()  # instructions start at column 0
    assert next(line for line in lines if line.startswith("FROM ")).startswith("FROM python:3.11-slim")
    install = next(line for line in lines if line.startswith("RUN pip install"))
    assert "-c constraints.txt ." in install
    cmd = json.loads(next(line for line in lines if line.startswith("CMD ")).removeprefix("CMD "))
    assert cmd[:4] == ["fruitlab", "serve", "--model", stack.MODEL]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert compose()["services"]["mlflow"]["build"] == "."


@pytest.fixture
def pg_databases():
    with fresh_pg_databases("mlflow", "predictions") as (mlflow_db, log_db):
        yield (
            f"postgresql+psycopg2://{PG_SERVER}/{mlflow_db}",  # as compose gives MLflow (driver named)
            f"postgresql://{PG_SERVER}/{log_db}",  # as compose gives the app
        )


def local(cmd: list[str]) -> list[str]:
    return [str(BIN / cmd[0]), *cmd[1:]]


def wait_for(url: str, process: subprocess.Popen, seconds: float) -> requests.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args[:3]} exited: {process.stderr.read()[-3000:]}"
        try:
            answer = requests.get(url, timeout=5)
            if answer.status_code == 200:
                return answer
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer 200 within {seconds} s")


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.stderr.read()


@pytest.mark.slow
def test_the_stack_as_processes(tmp_path, fruit_data_dir, fruit_photos, pg_databases):
    mlflow_db, log_db = pg_databases
    mlflow_port, app_port = free_port(), free_port()
    tracking = f"http://127.0.0.1:{mlflow_port}"
    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "tinyfruit.yaml").write_text(SMOKE_EXPERIMENT)
    env = {
        # MLflow's set_tracking_uri/set_registry_uri export MLFLOW_* to the environment: earlier tests' stores must
        # not leak into these processes (a registry URI from another test would win over the tracking server)
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        **stack.app_env(tracking),
        TOKEN_ENV: TOKEN,  # as deploy/serve.env gives it to the app
        "FRUITLAB_DATA_DIR": str(fruit_data_dir),
        "FRUITLAB_EXPERIMENTS": str(experiments),
    }
    artifacts = tmp_path / "mlartifacts"
    allowed = f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}"
    server_cmd = stack.mlflow_server(mlflow_db, str(artifacts), "127.0.0.1", mlflow_port, allowed)

    def start(cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            local(cmd), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    server = start(server_cmd)
    app = start(stack.serve(log_db, "127.0.0.1", app_port, "1s"))  # before any model exists, as in compose
    try:
        wait_for(f"{tracking}/health", server, 120)
        wait_for(f"http://127.0.0.1:{app_port}/health", app, 120)
        assert requests.get(f"http://127.0.0.1:{app_port}/ready", timeout=5).status_code == 503

        for cmd in (stack.fit("tinyfruit"), stack.promote("tinyfruit")):  # the train service's two steps
            done = subprocess.run(local(cmd), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
            assert done.returncode == 0, done.stderr[-3000:]
        assert "champion" in done.stdout and f"models:/{stack.MODEL_NAME}/1" in done.stdout
        model_files = {p.name for p in artifacts.rglob("*") if p.is_file()}
        assert {"MLmodel", "spec.json", "model.safetensors"} <= model_files  # stored via HTTP

        ready = wait_for(f"http://127.0.0.1:{app_port}/ready", app, 120).json()  # the poller found the champion
        assert ready["model"]["name"] == stack.MODEL_NAME and ready["model"]["version"] == "1"
        url = f"http://127.0.0.1:{app_port}/predict"
        batch = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in fruit_photos[:3]]
        answers = [requests.post(url, files=batch, data={"tag": "stack"}, timeout=60)]
        for photo in fruit_photos[3:6]:
            single = [("files", (photo.name, photo.read_bytes(), "image/jpeg"))]
            answers.append(requests.post(url, files=single, data={"tag": "stack"}, timeout=60))
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        labels = [p["label"] for a in answers for p in a.json()["predictions"]]
        log_url = f"http://127.0.0.1:{app_port}/predictions"
        assert requests.get(log_url, timeout=10).status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert requests.get(log_url, params={"tag": "stack"}, headers=bearer, timeout=10).json()["total"] == 6
    finally:
        app_log = stop(app)
        stop(server)
    assert "Traceback" not in app_log

    log = PredictionLog(log_db)
    try:
        total, rows = log.page(Filters(tag="stack"))
    finally:
        log.close()
    assert total == 6
    assert {(r["model_name"], r["model_version"]) for r in rows} == {(stack.MODEL_NAME, "1")}
    assert sorted(r["label"] for r in rows) == sorted(labels)
    assert {r["sha256"] for r in rows} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in fruit_photos[:6]}

"""kill -9 of `fruitlab serve` while requests stream: every answered prediction is in the log, none twice, the SQLite
file is intact, and a restarted server on the same log goes on serving.

A request is answered only after its rows are committed (app.py), so a kill can lose only requests that were never
answered; the client sees those as a dropped connection.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from fruitlab.serving.log import Filters, PredictionLog
from tests.serving.conftest import free_port

FRUITLAB = str(Path(sys.executable).with_name("fruitlab"))


def start(registry, db: str, port: int) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = registry.uri
    cmd = [FRUITLAB, "serve", "--model", registry.model, "--db", db, "--port", str(port), "--no-access-log"]
    server = subprocess.Popen(cmd, cwd=registry.work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read().decode()[-3000:]
        try:
            if requests.get(f"{url}/ready", timeout=5).status_code == 200:
                return server, url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    server.kill()
    raise AssertionError("the server did not get ready")


@pytest.mark.smoke
def test_kill_9_under_load_loses_no_answered_prediction(registry, fruit_photos, tmp_path):
    path = tmp_path / "predictions.db"
    db = f"sqlite:///{path}"
    server, url = start(registry, db, free_port())
    answered: list[str] = []
    dropped: list[str] = []  # requests the kill cut off (connection reset or refused)
    stop = threading.Event()

    def client(offset: int) -> None:
        session, i = requests.Session(), offset
        while not stop.is_set():
            photo = fruit_photos[i % len(fruit_photos)]
            files = [("files", (photo.name, photo.read_bytes(), "image/jpeg"))]
            try:
                answer = session.post(f"{url}/predict", files=files, data={"tag": "kill"}, timeout=30)
            except requests.RequestException as exc:
                dropped.append(type(exc).__name__)
                if server.poll() is not None:
                    return
                continue
            assert answer.status_code == 200, answer.text
            answered.append(answer.json()["request_id"])
            i += 1

    clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in clients:
        thread.start()
    try:
        deadline = time.monotonic() + 120
        while len(answered) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)  # mid-stream: requests are being decoded, predicted and written
        server.wait(30)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    assert len(answered) >= 40 and dropped  # the kill cut requests off

    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    log = PredictionLog(db)
    try:
        total, rows = log.page(Filters(tag="kill"), per_page=10_000)
    finally:
        log.close()
    logged = Counter(r["request_id"] for r in rows)
    assert set(answered) <= set(logged)  # every answer was logged before it was sent
    assert all(n == 1 for n in logged.values())  # one image per request: one row, never two
    assert total - len(answered) <= 4  # at most the requests in flight were logged without reaching the client

    again, url = start(registry, db, free_port())  # the same log file, after the kill
    try:
        photo = fruit_photos[0]
        files = [("files", (photo.name, photo.read_bytes(), "image/jpeg"))]
        answer = requests.post(f"{url}/predict", files=files, timeout=60)
        assert answer.status_code == 200
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(30)
    assert "Traceback" not in again.stderr.read().decode()

"""Serving fixtures: a registry with a real (tiny, untrained) fruit model, real fruit photos, a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from fruitlab.tracking import runs
from fruitlab.tracking.registry import promote
from tests.tracking.helpers import logged_run

FRUITS = ["freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana", "rottenoranges"]
ACC = "val_best/class/acc"
ADMIN_TOKEN = "test-admin-token-4f9c2a7e"  # the servers tests start are given this admin token unless told otherwise
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def fruit_photos(fruit_data_dir) -> list[Path]:
    """Two real photos per class from the fruit test split (JPEG bytes, named .png)."""
    root = fruit_data_dir / "fruits_fresh_rotten" / "fruits-fresh-rotten" / "test"
    return [path for cls in FRUITS for path in sorted((root / cls).iterdir())[:2]]


def make_registry(work: Path) -> SimpleNamespace:
    """models:/fruits@champion = version 1, a tiny test_efficientnet with the six fruit classes, in `work`."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:  # only while logging: artifacts land in work/mlruns
        mp.chdir(work)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        logged_run(uri, "fruits", {ACC: 0.5}, classes=FRUITS)
        promote("fruits")
    return SimpleNamespace(work=work, uri=uri, model="models:/fruits@champion")


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> SimpleNamespace:
    """One registry for the tests that only read it."""
    return make_registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def own_registry(tmp_path_factory) -> SimpleNamespace:
    """A registry of the module's own, for tests that promote new versions into it."""
    return make_registry(tmp_path_factory.mktemp("own_registry"))


def add_champion(registry: SimpleNamespace, score: float, seed: int) -> str:
    """Log another tiny fruit model with a better score and promote it: the alias moves to the new version."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(registry.work)
        logged_run(registry.uri, "fruits", {ACC: score}, classes=FRUITS, seed=seed)
        result = promote("fruits", uri=registry.uri)
    assert result.champion, result.reason
    return result.version


def settings_for(registry: SimpleNamespace, db: str, **overrides):
    from fruitlab.serving.settings import ServeSettings

    runs.client_for(registry.uri)  # MLflow's global URIs: the model download reads them
    return ServeSettings(
        model=registry.model, db=db, tracking_uri=registry.uri, **{"admin_token": ADMIN_TOKEN, **overrides}
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(app) -> Iterator[str]:
    """The app under a real uvicorn server in a thread, on a free port; stopped (gracefully) afterwards."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

# Read before any test runs: the autouse fixture below hides it from every test but the real-mirror one.
REAL_MIRROR = os.environ.get("FRUITLAB_DATA_MIRROR")


@pytest.fixture(autouse=True)
def _isolated_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to ~/.cache or finds the real mirror by accident."""
    monkeypatch.setenv("FRUITLAB_DATA_DIR", str(tmp_path / "default-data-dir"))
    monkeypatch.delenv("FRUITLAB_DATA_MIRROR", raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder): a real HTTP server on 127.0.0.1 in a thread."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def real_mirror() -> Path:
    """The real dataset mirror ($FRUITLAB_DATA_MIRROR when pytest started; CI sets ../shared/datasets)."""
    if not REAL_MIRROR:
        pytest.skip("FRUITLAB_DATA_MIRROR is not set: no real dataset mirror to test against")
    return Path(REAL_MIRROR)

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to ~/.cache or finds the real mirror by accident."""
    monkeypatch.setenv("FRUITLAB_DATA_DIR", str(tmp_path / "default-data-dir"))
    monkeypatch.delenv("FRUITLAB_DATA_MIRROR", raising=False)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small tensors: a second thread only waits for a core on a shared 2-core machine (30x slower, measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
def real_mirror(mirror: Path) -> Path:
    """The real dataset mirror (tests/conftest.py's `mirror`: fails with a clear message when it is missing)."""
    return mirror

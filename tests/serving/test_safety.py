"""Bad uploads against a real server: each gets its status and a JSON message, and the server keeps serving.

Real bad files: a truncated JPEG, a text file named .jpg, PNG decompression bombs written here (a huge 1-bit
image of zeros compresses to a few KB), uploads over the size limits; plus a busy server and a failing log.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib

import numpy as np
import pytest
import requests
from PIL import Image
from sqlalchemy import text

from fruitlab.serving.app import create_app
from tests.serving.conftest import live_server, settings_for

MAX_BYTES = 300_000
MAX_FILES = 3


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of zeros: kilobytes on disk, width x height pixels once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def noise_jpeg(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('log') / 'predictions.db'}"
    settings = settings_for(registry, db, max_bytes=MAX_BYTES, max_files=MAX_FILES, concurrency=1, queue=0)
    app = create_app(settings)
    with live_server(app) as url:
        yield url, app


def post(url: str, files: list[tuple[str, bytes, str]], **kwargs) -> requests.Response:
    return requests.post(f"{url}/predict", files=[("files", f) for f in files], timeout=60, **kwargs)


def assert_refused(answer: requests.Response, status: int, *fragments: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str)
    for fragment in fragments:
        assert fragment in detail, detail


def assert_still_serving(url: str, photo) -> None:
    answer = post(url, [(photo.name, photo.read_bytes(), "image/jpeg")])
    assert answer.status_code == 200, answer.text


def test_bad_files_get_their_status_and_message(server, fruit_photos):
    url, app = server
    photo = fruit_photos[0]
    good = photo.read_bytes()
    rows_before = app.state.log.count()
    cases = [
        (("cut.jpg", good[: len(good) // 2], "image/jpeg"), 422, ["'cut.jpg' is a JPEG image that cannot be decoded"]),
        (("notes.jpg", b"shopping list: apples, bananas\n" * 20, "image/jpeg"), 415, ["'notes.jpg' is not an image"]),
        (("notes.txt", b"hello", "text/plain"), 415, ["sent as 'text/plain', not as an image"]),
        (("empty.jpg", b"", "image/jpeg"), 422, ["is empty"]),
        (("bomb.png", png_bomb(30_000, 30_000), "image/png"), 413, ["decompression bomb"]),
        (("big.png", png_bomb(8_000, 8_000), "image/png"), 413, ["8000 x 8000 = 64,000,000 pixels", "40,000,000"]),
        (("large.jpg", noise_jpeg(600), "image/jpeg"), 413, ["'large.jpg' is", f"limit is {MAX_BYTES:,} bytes"]),
    ]
    for file, status, fragments in cases:
        assert_refused(post(url, [file]), status, *fragments)
        # one bad file refuses the whole request: nothing of it is answered or logged
        assert_refused(post(url, [(photo.name, good, "image/jpeg"), file]), status, *fragments)
        assert_still_serving(url, photo)
    assert app.state.log.count() == rows_before + len(cases)  # only the good requests


def test_too_much_in_one_request(server, fruit_photos):
    url, app = server
    photo = fruit_photos[0]
    file = (photo.name, photo.read_bytes(), "image/jpeg")
    assert_refused(post(url, [file] * (MAX_FILES + 1)), 413, f"{MAX_FILES + 1} files in one request; the limit is 3")
    body_limit = app.state.settings.max_body_bytes
    huge = ("huge.jpg", b"\xff\xd8" + bytes(body_limit), "image/jpeg")  # refused by its Content-Length, unread
    assert_refused(post(url, [huge]), 413, f"larger than the limit of {body_limit:,} bytes")

    def chunks():  # no Content-Length: counted as it arrives
        boundary = b"--b0undary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="x.jpg"\r\n\r\n'
        for _ in range(body_limit // 65536 + 2):
            yield bytes(65536)
        yield b"\r\n" + boundary + b"--\r\n"

    streamed = requests.post(
        f"{url}/predict", data=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b0undary"}, timeout=60
    )
    assert_refused(streamed, 413, "larger than the limit")
    assert_still_serving(url, photo)


def test_not_multipart_is_415(server, fruit_photos):
    url, _ = server
    as_json = requests.post(f"{url}/predict", json={"files": ["/etc/passwd"]}, timeout=30)
    assert_refused(as_json, 415, "takes multipart/form-data", "not application/json")
    raw = requests.post(f"{url}/predict", data=fruit_photos[0].read_bytes(), timeout=30)
    assert_refused(raw, 415, "takes multipart/form-data")
    assert_still_serving(url, fruit_photos[0])


def test_a_busy_server_says_when_to_retry(server, fruit_photos):
    """concurrency 1, queue 0: while one request is being predicted, the next gets 503 with Retry-After."""
    url, app = server
    predictor = app.state.slot.current.predictor
    entered, release = threading.Event(), threading.Event()
    original = predictor.predict_images

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return original(*args, **kwargs)

    photo = (fruit_photos[0].name, fruit_photos[0].read_bytes(), "image/jpeg")
    first: list[requests.Response] = []
    predictor.predict_images = held
    try:
        worker = threading.Thread(target=lambda: first.append(post(url, [photo])))
        worker.start()
        assert entered.wait(30)
        busy = post(url, [photo])
        assert_refused(busy, 503, "busy", "retry in 1 s")
        assert busy.headers["retry-after"] == "1"
        assert requests.get(f"{url}/health", timeout=10).status_code == 200  # other routes still answer
    finally:
        release.set()
        predictor.predict_images = original
        worker.join(60)
    assert first[0].status_code == 200
    assert_still_serving(url, fruit_photos[0])


def test_a_failing_log_means_no_answer(server, fruit_photos):
    """The database refuses the insert (a trigger): 503, nothing answered, nothing half-written; then it recovers."""
    url, app = server
    log = app.state.log
    photo = (fruit_photos[0].name, fruit_photos[0].read_bytes(), "image/jpeg")
    before = log.count()
    with log.engine.begin() as conn:
        conn.execute(
            text("CREATE TRIGGER refuse BEFORE INSERT ON predictions BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        )
    try:
        failed = post(url, [photo, photo])
        assert_refused(failed, 503, "could not be logged, so it is not answered")
        assert failed.headers["retry-after"] == "1"
        assert log.count() == before
    finally:
        with log.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse"))
    assert post(url, [photo, photo]).status_code == 200
    assert log.count() == before + 2

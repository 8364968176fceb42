"""Model updates: a new champion is loaded beside the old one and swapped in while requests stream; none fails."""

from __future__ import annotations

import threading
import time

import requests

from fruitlab.serving.app import create_app
from fruitlab.serving.log import Filters
from tests.serving.conftest import ADMIN, add_champion, live_server, settings_for


def post(url: str, photo) -> requests.Response:
    return requests.post(
        f"{url}/predict", files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))], timeout=120
    )


def test_a_new_champion_is_swapped_in_while_requests_stream(own_registry, fruit_photos, tmp_path):
    app = create_app(settings_for(own_registry, f"sqlite:///{tmp_path / 'log.db'}", concurrency=2, queue=64))
    answers: list[tuple[float, float, requests.Response]] = []  # (sent, received, answer)
    stop = threading.Event()

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            sent = time.monotonic()
            answer = post(url, fruit_photos[i % len(fruit_photos)])
            answers.append((sent, time.monotonic(), answer))
            i += 1

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 120
        while len(answers) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    with live_server(app) as url:
        clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for thread in clients:
            thread.start()
        try:
            wait_for(10)
            new_version = add_champion(own_registry, 0.9, seed=1)  # promote while requests stream
            reloaded = requests.post(f"{url}/admin/reload", headers=ADMIN, timeout=120)
            swapped = time.monotonic()
            wait_for(len(answers) + 10)
        finally:
            stop.set()
            for thread in clients:
                thread.join(120)
        again = requests.post(f"{url}/admin/reload", headers=ADMIN, timeout=120).json()
        ready = requests.get(f"{url}/ready", timeout=10).json()

    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["changed"] and reloaded.json()["previous_version"] == "1"
    assert reloaded.json()["model"]["version"] == new_version == "2"
    assert again["changed"] is False and ready["model"]["version"] == "2"
    assert [a.status_code for _, _, a in answers] == [200] * len(answers)  # no request failed
    versions = [a.json()["model"]["version"] for _, _, a in answers]
    assert {"1", "2"} <= set(versions)
    assert all(a.json()["model"]["version"] == "2" for sent, _, a in answers if sent > swapped)
    assert all(a.json()["model"]["version"] == "1" for _, received, a in answers if received < swapped - 5)

    # the log: one row per answer, naming the version that answered it
    total, rows = app.state.log.page(Filters(), per_page=500)
    assert total == len(answers)
    by_request = {row["request_id"]: row["model_version"] for row in rows}
    assert by_request == {a.json()["request_id"]: a.json()["model"]["version"] for _, _, a in answers}
    assert set(by_request.values()) == {"1", "2"}


def test_a_request_in_flight_finishes_on_the_old_version(own_registry, fruit_photos, tmp_path):
    """Held inside the old model's forward pass while the poller swaps in the new one: answered (and logged) by
    the old version; a request that starts after the swap gets the new one."""
    settings = settings_for(own_registry, f"sqlite:///{tmp_path / 'log.db'}", poll_seconds=0.3)
    app = create_app(settings)
    old = app.state.slot.current
    entered, release = threading.Event(), threading.Event()
    original = old.predictor.predict_images

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return original(*args, **kwargs)

    old.predictor.predict_images = held
    held_answer: list[requests.Response] = []
    with live_server(app) as url:
        worker = threading.Thread(target=lambda: held_answer.append(post(url, fruit_photos[0])))
        worker.start()
        try:
            assert entered.wait(60)
            new_version = add_champion(own_registry, 0.95, seed=2)
            deadline = time.monotonic() + 60
            while app.state.slot.current.version != new_version and time.monotonic() < deadline:
                time.sleep(0.1)  # the poller's doing
            assert app.state.slot.current.version == new_version
            fresh = post(url, fruit_photos[1])
        finally:
            release.set()
            worker.join(60)
    assert fresh.status_code == 200 and fresh.json()["model"]["version"] == new_version
    assert held_answer[0].status_code == 200 and held_answer[0].json()["model"]["version"] == old.version
    rows = {r["request_id"]: r["model_version"] for r in app.state.log.page(Filters())[1]}
    assert rows == {held_answer[0].json()["request_id"]: old.version, fresh.json()["request_id"]: new_version}


def test_a_failed_reload_keeps_the_model(own_registry, tmp_path):
    app = create_app(settings_for(own_registry, f"sqlite:///{tmp_path / 'log.db'}"))
    slot = app.state.slot
    slot.reference = "models:/fruits@gone"  # as if someone deleted the alias
    with live_server(app) as url:
        answer = requests.post(f"{url}/admin/reload", headers=ADMIN, timeout=60)
        assert answer.status_code == 503
        assert "reload failed, still serving version" in answer.json()["detail"]
        assert "has no alias 'gone'" in answer.json()["detail"]
        assert requests.get(f"{url}/ready", timeout=10).status_code == 200

"""The admin and log routes behind the admin bearer token, against a real server; the token from env or a file."""

from __future__ import annotations

import pytest
import requests

from fruitlab.errors import FruitlabError
from fruitlab.serving.app import create_app
from fruitlab.serving.settings import ServeSettings, read_admin_token
from tests.serving.conftest import ADMIN, ADMIN_TOKEN, live_server, settings_for

GUARDED = [("POST", "/admin/reload"), ("GET", "/predictions"), ("GET", "/predictions/stats")]


@pytest.fixture(scope="module")
def servers(registry, tmp_path_factory):
    """Three servers on one log: with a token, without one (routes off), and --insecure-admin."""
    db = f"sqlite:///{tmp_path_factory.mktemp('log') / 'predictions.db'}"
    apps = {
        "token": create_app(settings_for(registry, db)),
        "off": create_app(settings_for(registry, db, admin_token=None)),
        "insecure": create_app(settings_for(registry, db, admin_token=None, insecure_admin=True)),
    }
    with live_server(apps["token"]) as token, live_server(apps["off"]) as off, live_server(apps["insecure"]) as open_:
        yield {"token": token, "off": off, "insecure": open_}


def call(url: str, method: str, path: str, headers: dict | None = None) -> requests.Response:
    return requests.request(method, f"{url}{path}", headers=headers or {}, timeout=60)


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_each_admin_route_needs_the_token(servers, method, path):
    url = servers["token"]
    missing = call(url, method, path)
    assert missing.status_code == 401, missing.text
    assert missing.json()["detail"] == "this route needs the admin token: send `Authorization: Bearer <token>`"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong_tokens = [ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", "x" * len(ADMIN_TOKEN), ADMIN_TOKEN.upper(), "é" * 8]
    for wrong in wrong_tokens:
        answer = call(url, method, path, {"Authorization": f"Bearer {wrong}"})
        assert answer.status_code == 401 and answer.json()["detail"] == "the admin token is wrong", wrong
    basic = call(url, method, path, {"Authorization": f"Basic {ADMIN_TOKEN}"})  # not a bearer token
    assert basic.status_code == 401
    right = call(url, method, path, ADMIN)
    assert right.status_code == 200, right.text


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_without_a_token_the_admin_routes_are_off_unless_insecure(servers, method, path):
    off = call(servers["off"], method, path, ADMIN)  # a token the server does not have opens nothing
    assert off.status_code == 403
    assert "this route is off: the server has no admin token. Set FRUITLAB_ADMIN_TOKEN" in off.json()["detail"]
    assert "--insecure-admin" in off.json()["detail"]
    assert call(servers["insecure"], method, path).status_code == 200


def test_prediction_pages_and_probes_stay_open(servers, fruit_photos):
    photo = fruit_photos[0]
    for url in servers.values():
        files = [("files", (photo.name, photo.read_bytes(), "image/jpeg"))]
        assert requests.post(f"{url}/predict", files=files, timeout=60).status_code == 200
        for path in ("/", "/dashboard", "/health", "/ready", "/static/dashboard.js"):
            assert requests.get(f"{url}{path}", timeout=30).status_code == 200, path
    schema = requests.get(f"{servers['token']}/openapi.json", timeout=30).json()
    assert schema["paths"]["/predictions"]["get"]["security"] == [{"admin token": []}]
    assert "security" not in schema["paths"]["/predict"]["post"]


def test_the_token_comes_from_the_environment_or_a_file(tmp_path):
    assert read_admin_token({}) is None
    assert read_admin_token({"FRUITLAB_ADMIN_TOKEN": "  "}) is None  # an empty value in an env file: off
    assert read_admin_token({"FRUITLAB_ADMIN_TOKEN": ADMIN_TOKEN}) == ADMIN_TOKEN
    secret = tmp_path / "token"
    secret.write_text(ADMIN_TOKEN + "\n")
    assert read_admin_token({}, str(secret)) == ADMIN_TOKEN
    assert read_admin_token({"FRUITLAB_ADMIN_TOKEN_FILE": str(secret)}) == ADMIN_TOKEN
    settings = ServeSettings(model="m", admin_token=ADMIN_TOKEN)
    assert ADMIN_TOKEN not in repr(settings)  # settings get logged; the token does not

    errors = [
        (({"FRUITLAB_ADMIN_TOKEN": "short"},), "is 5 characters; use at least 16 characters"),
        (({"FRUITLAB_ADMIN_TOKEN": "a long token with spaces"},), "with spaces"),
        (({}, str(tmp_path / "nope")), "cannot read the admin token file"),
        (({"FRUITLAB_ADMIN_TOKEN": ADMIN_TOKEN}, str(secret)), "give the admin token one way"),
    ]
    for args, message in errors:
        with pytest.raises(FruitlabError, match=message):
            read_admin_token(*args)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(FruitlabError, match="is empty; write the token into it"):
        read_admin_token({}, str(tmp_path / "empty"))
    with pytest.raises(FruitlabError, match="--insecure-admin with an admin token"):
        ServeSettings(model="m", admin_token=ADMIN_TOKEN, insecure_admin=True)

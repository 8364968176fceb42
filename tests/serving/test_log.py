"""The prediction log: concurrent requests give exactly one row each (SQLite and PostgreSQL); export reads back."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import requests

from fruitlab.errors import FruitlabError
from fruitlab.serving.app import create_app
from fruitlab.serving.log import Filters, LogError, PredictionLog, normalize_url
from tests.conftest import fresh_pg_databases
from tests.serving.conftest import live_server, settings_for
from tests.test_cli import assert_clean_error, run

PG = "postgresql://postgres@127.0.0.1:5432"
REQUESTS, CLIENTS = 40, 8


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test, dropped afterwards (the URL as a user writes it)."""
    with fresh_pg_databases("log") as (name,):
        yield f"{PG}/{name}"


def concurrent_requests(url: str, photos, tag: str) -> list[requests.Response]:
    def one(i: int) -> requests.Response:
        photo = photos[i % len(photos)]
        files = [("files", (photo.name, photo.read_bytes(), "image/jpeg"))]
        return requests.post(f"{url}/predict", files=files, data={"tag": tag}, timeout=120)

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(REQUESTS)))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_requests_give_exactly_one_row_each(backend, registry, fruit_photos, tmp_path, request):
    db = f"sqlite:///{tmp_path / 'log.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    app = create_app(settings_for(registry, db, concurrency=2, queue=REQUESTS))
    tag = f"c-{uuid.uuid4().hex[:8]}"
    with live_server(app) as url:
        answers = concurrent_requests(url, fruit_photos, tag)
    assert [a.status_code for a in answers] == [200] * REQUESTS, [a.text for a in answers if a.status_code != 200]
    answered = {a.json()["request_id"] for a in answers}
    log = PredictionLog(db)
    try:
        total, rows = log.page(Filters(tag=tag), per_page=500)
        assert total == REQUESTS == len(rows) == log.count()
        assert {r["request_id"] for r in rows} == answered  # one row per answer, none twice
        assert len({r["id"] for r in rows}) == REQUESTS
        by_request = {a.json()["request_id"]: a.json()["predictions"][0] for a in answers}
        for row in rows:
            assert row["label"] == by_request[row["request_id"]]["label"]
            assert row["sha256"] == by_request[row["request_id"]]["sha256"]
        # the unique (request_id, item) key refuses a second copy of a row
        again = {k: v for k, v in rows[0].items() if k != "id"}
        with pytest.raises(LogError, match="cannot write to the prediction log"):
            log.write([again])
        assert log.count() == REQUESTS
    finally:
        log.close()


def logged_rows(db: str, n: int) -> None:
    """n rows as the app writes them, two tasks each, a minute apart, ending now."""
    log = PredictionLog(db)
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {
            "request_id": uuid.uuid4().hex,
            "item": 0,
            "created_at": now - timedelta(minutes=n - i),
            "sha256": f"{i:064x}",
            "bytes": 1000 + i,
            "width": 300,
            "height": 200,
            "format": "JPEG",
            "model_name": "multi",
            "model_version": str(1 + i % 2),
            "label": ["apple / fresh", "banana / rotten", "apple / rotten"][i % 3],
            "labels": {"fruit": ["apple", "banana", "apple"][i % 3], "freshness": ["fresh", "rotten", "rotten"][i % 3]},
            "probabilities": {"fruit": {"apple": 0.9, "banana": 0.1}, "freshness": {"fresh": 0.6, "rotten": 0.4}},
            "latency_ms": 10.0 + i,
            "client_tag": "a" if i % 2 else None,
        }
        for i in range(n)
    ]
    log.write(rows)
    log.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_filters_and_stats_on_both_databases(backend, tmp_path, request):
    db = f"sqlite:///{tmp_path / 'log.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    logged_rows(db, 9)
    log = PredictionLog(db)
    try:
        assert log.page(Filters(label="apple"))[0] == 6  # a top label of any task
        assert log.page(Filters(label="rotten"))[0] == 6
        assert log.page(Filters(label="apple / rotten"))[0] == 3
        assert log.page(Filters(label="appl"))[0] == 0  # whole labels only
        assert log.page(Filters(label="%"))[0] == 0  # LIKE wildcards are matched literally
        assert log.page(Filters(model_version="2", tag="a"))[0] == 4
        stats = log.stats(Filters(), "minute")
        assert stats["total"] == 9 and {b["label"]: b["count"] for b in stats["by_label"]}["apple / fresh"] == 3
        assert len({b["time"] for b in stats["over_time"]}) == 9  # one row per minute
        assert {(v["version"], v["count"]) for v in stats["by_version"]} == {("1", 5), ("2", 4)}
        assert stats["latency_ms"]["p50"] == 14.0
        hourly = log.stats(Filters(since=datetime.now(UTC) - timedelta(minutes=4, seconds=30)), "hour")
        assert sum(b["count"] for b in hourly["over_time"]) == 4 and hourly["total"] == 4
    finally:
        log.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_export_csv_and_parquet_read_back(backend, tmp_path, request):
    db = f"sqlite:///{tmp_path / 'log.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    logged_rows(db, 7)
    for fmt in ("csv", "parquet"):
        out = tmp_path / f"export.{fmt}"
        result = run("predictions", "export", "--db", db, "--format", fmt, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("7 predictions from ") and str(out) in result.stdout
        frame = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
        assert len(frame) == 7 and list(frame["id"]) == sorted(frame["id"])
        assert list(frame.columns[:4]) == ["id", "request_id", "item", "created_at"]
        assert json.loads(frame["labels"].iloc[1]) == {"fruit": "banana", "freshness": "rotten"}
        assert json.loads(frame["probabilities"].iloc[0])["fruit"] == {"apple": 0.9, "banana": 0.1}
        assert frame["bytes"].sum() == sum(1000 + i for i in range(7))
        times = pd.to_datetime(frame["created_at"], utc=True)
        assert times.is_monotonic_increasing and times.iloc[-1] > pd.Timestamp.now(tz="UTC") - pd.Timedelta("1h")
        assert frame["client_tag"].isna().sum() == 4


def test_export_errors_are_one_line(tmp_path):
    missing = tmp_path / "nope.db"
    assert_clean_error(
        run("predictions", "export", "--db", f"sqlite:///{missing}", "--out", str(tmp_path / "x.csv")),
        "no such SQLite file",
    )
    assert not missing.exists()  # a typo does not create an empty log
    logged_rows(str(tmp_path / "log.db"), 1)
    assert_clean_error(
        run("predictions", "export", "--db", str(tmp_path / "log.db"), "--format", "xlsx", "--out", "x.xlsx"),
        "--format 'xlsx': choose csv or parquet",
    )
    assert_clean_error(
        run("predictions", "export", "--db", "postgresql://postgres@127.0.0.1:1/none", "--out", "x.csv"),
        "cannot open the prediction log postgresql",
    )


def test_urls():
    assert normalize_url("preds.db") == "sqlite:///preds.db"
    assert normalize_url("postgresql://u:secret@h/db") == "postgresql+psycopg2://u:secret@h/db"
    for bad in ("://x", "postgresql://u@h:port/db"):
        with pytest.raises(FruitlabError, match="is not a database URL"):
            normalize_url(bad)
    with pytest.raises(FruitlabError, match="cannot use the database URL 'nosuchdb://x'"):
        PredictionLog("nosuchdb://x")
    log = PredictionLog("sqlite://")  # in memory, shared by the threads
    assert log.count() == 0
    log.close()

"""The prediction log: one row per answered image, in SQLite (default) or any SQLAlchemy database.

Rows are written in one transaction per request, before the answer leaves: a request whose rows cannot be written
gets 503 instead of an answer, so nothing answered is missing from the log. `(request_id, item)` is unique, so a
row cannot be written twice. Times are UTC, stored without a zone (SQLite has none). SQLAlchemy Core only: no ORM,
no torch, so `fruitlab predictions export` starts in a second.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from fruitlab.errors import FruitlabError

LOG_TOP_K = 5  # probabilities kept per task and image
TAG_LENGTH = 64
LABEL_JOIN = " / "  # multi-task rows: the tasks' top labels in task order, e.g. "apple / fresh"
EXPORT_FORMATS = ("csv", "parquet")
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}

metadata = MetaData()
predictions = Table(
    "predictions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(32), nullable=False),  # one per request; its images are items 0, 1, ...
    Column("item", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False, index=True),  # UTC
    Column("sha256", String(64), nullable=False, index=True),  # of the uploaded bytes
    Column("bytes", Integer, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("format", String(8), nullable=False),  # what the content is (JPEG, PNG, ...), whatever the name said
    Column("model_name", String(200), nullable=False),
    Column("model_version", String(64), nullable=False, index=True),
    Column("label", String(300), nullable=False, index=True),  # top label (several tasks: joined by " / ")
    Column("labels", JSON, nullable=False),  # {task: top label}
    Column("probabilities", JSON, nullable=False),  # {task: {label: probability}}, top LOG_TOP_K, best first
    Column("latency_ms", Float, nullable=False),  # the request's decode + queue + predict time
    Column("client_tag", String(TAG_LENGTH), index=True),
    UniqueConstraint("request_id", "item", name="uq_predictions_request_item"),
)
COLUMNS = [c.name for c in predictions.columns]
JSON_COLUMNS = ("labels", "probabilities")


class LogError(FruitlabError):
    """The prediction log cannot be opened or written."""


@dataclass
class Filters:
    label: str | None = None  # a top label of any task
    model_version: str | None = None
    tag: str | None = None
    since: datetime | None = None  # naive UTC or aware
    until: datetime | None = None


class PredictionLog:
    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.shown_url = make_url(self.url).render_as_string(hide_password=True)
        self.engine = _engine(self.url)
        try:
            metadata.create_all(self.engine)  # idempotent: tables that exist are left as they are
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise LogError(f"cannot open the prediction log {self.shown_url}: {_first_line(exc)}") from None

    def write(self, rows: list[dict[str, Any]]) -> None:
        """All rows of one request, in one transaction: all are written or none."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(predictions), rows)
        except SQLAlchemyError as exc:
            raise LogError(f"cannot write to the prediction log {self.shown_url}: {_first_line(exc)}") from None

    def page(self, filters: Filters, page: int = 1, per_page: int = 50) -> tuple[int, list[dict[str, Any]]]:
        """(rows matching, the page's rows newest first)."""
        where = _where(filters)
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(predictions).where(*where)).scalar_one()
            query = select(predictions).where(*where).order_by(predictions.c.id.desc())
            found = conn.execute(query.limit(per_page).offset((page - 1) * per_page)).mappings().all()
        return total, [dict(r) for r in found]

    def stats(self, filters: Filters, bucket: str) -> dict[str, Any]:
        """Counts by label, by model version and per time bucket (and label), latency percentiles."""
        where = _where(filters)
        c = predictions.c
        with self.engine.connect() as conn:
            by_label = conn.execute(
                select(c.label, func.count()).where(*where).group_by(c.label).order_by(func.count().desc())
            ).all()
            by_version = conn.execute(
                select(c.model_name, c.model_version, func.count())
                .where(*where)
                .group_by(c.model_name, c.model_version)
                .order_by(c.model_name, c.model_version)
            ).all()
            over_time = self._over_time(conn, where, bucket)
            recent = conn.execute(select(c.latency_ms).where(*where).order_by(c.id.desc()).limit(5000)).scalars()
            latencies = sorted(recent)
        return {
            "total": sum(n for _, n in by_label),
            "by_label": [{"label": label, "count": n} for label, n in by_label],
            "by_version": [{"model": name, "version": v, "count": n} for name, v, n in by_version],
            "over_time": over_time,
            "bucket": bucket,
            "latency_ms": {p: _percentile(latencies, q) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))},
        }

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(predictions)).scalar_one()

    def export(self, out: Path, fmt: str, filters: Filters | None = None, chunk: int = 10_000) -> int:
        """Every matching row, oldest first, to CSV or Parquet (JSON columns as JSON text); returns the count."""
        if fmt not in EXPORT_FORMATS:
            raise LogError(f"--format {fmt!r}: choose {' or '.join(EXPORT_FORMATS)}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            written = (_write_csv if fmt == "csv" else _write_parquet)(tmp, self._chunks(filters or Filters(), chunk))
            os.replace(tmp, out)  # a reader never sees half a file
        finally:
            tmp.unlink(missing_ok=True)
        return written

    def close(self) -> None:
        self.engine.dispose()

    # -------------------------------------------------------------------------------------------- internals
    def _chunks(self, filters: Filters, size: int) -> Iterator[list[dict[str, Any]]]:
        query = select(predictions).where(*_where(filters)).order_by(predictions.c.id)
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=size).execute(query)
                for part in result.mappings().partitions(size):
                    yield [_flat(dict(r)) for r in part]
        except SQLAlchemyError as exc:
            raise LogError(f"cannot read the prediction log {self.shown_url}: {_first_line(exc)}") from None

    def _over_time(self, conn: Any, where: list[Any], bucket: str) -> list[dict[str, Any]]:
        """[{time, label, count}] with `time` the start of each bucket, ISO UTC; empty buckets left out."""
        c = predictions.c
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            fmt = {"minute": "%Y-%m-%dT%H:%M:00", "hour": "%Y-%m-%dT%H:00:00", "day": "%Y-%m-%dT00:00:00"}[bucket]
            key = func.strftime(fmt, c.created_at)
        elif dialect == "postgresql":
            key = func.to_char(func.date_trunc(bucket, c.created_at), 'YYYY-MM-DD"T"HH24:MI:SS')
        else:  # any other database: bucket in Python
            rows = conn.execute(select(c.created_at, c.label).where(*where)).all()
            counts: dict[tuple[str, str], int] = {}
            for created, label in rows:
                start = int(created.replace(tzinfo=UTC).timestamp()) // BUCKETS[bucket] * BUCKETS[bucket]
                stamp = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                counts[stamp, label] = counts.get((stamp, label), 0) + 1
            return [{"time": t + "Z", "label": lb, "count": n} for (t, lb), n in sorted(counts.items())]
        found = conn.execute(
            select(key.label("t"), c.label, func.count()).where(*where).group_by(key, c.label).order_by(key)
        ).all()
        return [{"time": t + "Z", "label": label, "count": n} for t, label, n in found]


def normalize_url(url: str) -> str:
    """A plain path is a SQLite file; postgresql:// uses psycopg2 when psycopg (3) is not installed."""
    if "://" not in url:
        url = f"sqlite:///{url}"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise LogError(
            f"--db {url!r} is not a database URL: give e.g. sqlite:///predictions.db, a file path, or "
            "postgresql://user:password@host:5432/dbname"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        import importlib.util

        driver = "postgresql" if importlib.util.find_spec("psycopg") else "postgresql+psycopg2"
        parsed = parsed.set(drivername=driver)
    return parsed.render_as_string(hide_password=False)


def utc_naive(when: datetime | None) -> datetime | None:
    if when is None or when.tzinfo is None:
        return when
    return when.astimezone(UTC).replace(tzinfo=None)


def open_log(url: str) -> PredictionLog:
    return PredictionLog(url)


# ------------------------------------------------------------------------------------------------ internals
def _engine(url: str) -> Engine:
    parsed = make_url(url)
    try:
        if parsed.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
        if parsed.database in (None, "", ":memory:"):  # one shared in-memory database for every thread
            args = {"check_same_thread": False}
            return create_engine(url, connect_args=args, poolclass=StaticPool)
        Path(parsed.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise LogError(f"cannot use the database URL {url!r}: {_first_line(exc)}") from None
    except OSError as exc:
        raise LogError(f"cannot create the folder of {url!r}: {exc}") from None

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # WAL: the dashboard reads while requests write; busy_timeout: concurrent writers wait instead of failing.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine


def _where(f: Filters) -> list[Any]:
    c = predictions.c
    where = []
    if f.label:
        where.append(
            or_(
                c.label == f.label,
                c.label.startswith(f.label + LABEL_JOIN, autoescape=True),
                c.label.endswith(LABEL_JOIN + f.label, autoescape=True),
                c.label.contains(LABEL_JOIN + f.label + LABEL_JOIN, autoescape=True),
            )
        )
    if f.model_version:
        where.append(c.model_version == f.model_version)
    if f.tag:
        where.append(c.client_tag == f.tag)
    if f.since:
        where.append(c.created_at >= utc_naive(f.since))
    if f.until:
        where.append(c.created_at < utc_naive(f.until))
    return where


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    for name in JSON_COLUMNS:
        row[name] = json.dumps(row[name])
    return row


def _write_csv(path: Path, chunks: Iterator[list[dict[str, Any]]]) -> int:
    written = 0
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for rows in chunks:
            for row in rows:
                row["created_at"] = row["created_at"].isoformat() + "Z"
            writer.writerows(rows)
            written += len(rows)
    return written


def _write_parquet(path: Path, chunks: Iterator[list[dict[str, Any]]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "id": pa.int64(),
        "item": pa.int32(),
        "created_at": pa.timestamp("us", tz="UTC"),
        "latency_ms": pa.float64(),
    }
    types |= {name: pa.int64() for name in ("bytes", "width", "height")}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in COLUMNS])
    written = 0
    with pq.ParquetWriter(path, schema) as writer:
        for rows in chunks:
            for row in rows:
                row["created_at"] = row["created_at"].replace(tzinfo=UTC)
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            written += len(rows)
    return written


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    rank = (len(values) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

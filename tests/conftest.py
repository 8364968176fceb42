"""Shared fixtures: small sets of real photos, a temp MLflow store, the dataset mirror."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def real_photo_crops(n_per_class: int = 6, size: int = 48, seed: int = 0) -> SimpleNamespace:
    """Two classes of real photos (scikit-image's cat and coffee), random crops: enough to train on for a test."""
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = {"cat": data.chelsea(), "coffee": data.coffee()}
    splits = {}
    for split in ("train", "val"):
        items, labels = [], []
        for label, image in enumerate(sources.values()):
            h, w = image.shape[:2]
            for _ in range(n_per_class):
                y, x = rng.integers(0, h - 160), rng.integers(0, w - 160)
                items.append(np.ascontiguousarray(image[y : y + 160, x : x + 160]))
                labels.append(label)
        splits[split] = SimpleNamespace(items=items, labels=labels)
    return SimpleNamespace(name="photos", classes=list(sources), splits=splits, fingerprint="test", root="", skipped=[])


@pytest.fixture
def photo_splits() -> SimpleNamespace:
    return real_photo_crops()


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A real MLflow store (SQLite + artifacts) in a temp dir; the test runs from that dir."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The local dataset mirror CI points FRUITLAB_DATA_MIRROR at (../shared/datasets)."""
    path = os.environ.get("FRUITLAB_DATA_MIRROR") or str(REPO.parent / "shared" / "datasets")
    if not Path(path, "fruits-fresh-rotten.tar.gz").exists():
        pytest.fail(f"dataset mirror not found at {path}: set FRUITLAB_DATA_MIRROR (see README)")
    return Path(path)


@pytest.fixture(scope="session")
def fruit_data_dir(tmp_path_factory, mirror) -> Path:
    """The real fruit photos, fetched once per session through fruitlab's own fetch code from the mirror."""
    from fruitlab.data.fetch import fetch

    data_dir = tmp_path_factory.mktemp("datasets")
    fetch("fruits_fresh_rotten", data_dir=str(data_dir), mirror=str(mirror))
    return data_dir


def write_experiment(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SMOKE_EXPERIMENT = """
description: smoke - a tiny timm model on a few dozen real fruit photos
data:
  dataset: fruits_fresh_rotten
  split: dli  # the default (grouped) searches all 3,395 photos for copies first: minutes, for a smoke test
  max_per_class: 6
  batch_size: 8
  num_workers: 0
  augment: {hflip: 0.5}
preprocess: {input_size: 64}
model: {backbone: test_efficientnet, pretrained: false}
finetune:
  phases:
    - {name: head, epochs: 1, train: none, optimizer: {lr: 3.0e-3}}
    - {name: top, epochs: 1, train: {last_stages: 2}, optimizer: {name: sgd, lr: 1.0e-2, backbone_lr: 1.0e-3}}
trainer: {enable_progress_bar: false}
"""


def sigint_default() -> None:
    """Popen preexec_fn: a child that Ctrl+C can stop, whatever the test process does with SIGINT.

    An ignored SIGINT (SIG_IGN) is inherited across exec, and Lightning's graceful shutdown ignores SIGINT in the
    process it runs in; a test that sends SIGINT to a child must not depend on what ran before it.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


PG_SERVER = "postgres@127.0.0.1:5432"


@contextmanager
def fresh_pg_databases(*kinds: str) -> Iterator[list[str]]:
    """One new PostgreSQL database per kind (fruitlab_test_<kind>_<random>), dropped afterwards; yields the names.

    The machine's PostgreSQL (trust auth): an unreachable server fails the test with how to start it.
    """
    import uuid

    import psycopg2

    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at 127.0.0.1:5432 ({str(exc).strip()}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        )
    conn.autocommit = True
    names = [f"fruitlab_test_{kind}_{uuid.uuid4().hex[:12]}" for kind in kinds]
    with conn.cursor() as cur:
        for name in names:
            cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()

"""Where a study lives: an Optuna RDB storage (SQLite beside the MLflow store by default, or any SQLAlchemy URL).

One study, many worker processes: every worker opens the same storage and study name. What makes that safe:
- the study row is created exactly once (the database refuses a second study of the same name); the worker that
  created it creates the MLflow parent run, the others wait for its id;
- a worker killed in the middle of a trial leaves the trial RUNNING; a restart on the same host sees that the
  worker's process is gone and fails the trial at once, and for workers on other hosts Optuna's heartbeat does it
  after `GRACE_S`; either way the trial is recorded as failed (`fruitlab.interrupted`) and retried with the same
  parameters (`fruitlab.retry_of`), never lost silently.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from fruitlab.errors import SweepError

HEARTBEAT_S = 30  # a running trial records that it is alive this often
GRACE_S = 120  # ... and a trial silent for this long belongs to a dead worker
MAX_RETRIES = 2  # an interrupted trial is retried (same parameters) at most this many times in a row
DIALECTS = ("sqlite", "postgresql", "mysql")
WORKER_ATTR = "fruitlab.worker"  # "host:pid" of the process running a trial
INTERRUPTED_ATTR = "fruitlab.interrupted"  # why a trial did not finish: "interrupted" (Ctrl+C), "worker died"
RETRY_ATTR = "fruitlab.retry_of"  # number of the interrupted trial this one repeats


def default_storage(tracking_uri: str) -> str:
    """sqlite:///<dir>/optuna.db next to a local MLflow store (mlflow.db or a file store), else in the cwd."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        folder = Path(tracking_uri.removeprefix("file://").removeprefix("file:")).resolve()
    else:  # a tracking server or database: the study file stays with the user
        folder = Path.cwd()
    return f"sqlite:///{folder / 'optuna.db'}"


def redact(url: str) -> str:
    """The URL without its password, for messages and tags."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def check_url(url: str) -> str:
    """The storage URL, checked (and given a PostgreSQL driver that is installed), or a SweepError."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SweepError(
            f"--storage {url!r} is not a database URL; expected e.g. sqlite:///optuna.db or "
            "postgresql://user:password@host:5432/dbname"
        ) from None
    dialect = parsed.get_backend_name()
    if dialect not in DIALECTS:
        allowed = ", ".join(DIALECTS)
        raise SweepError(f"--storage {redact(url)!r}: unsupported database {dialect!r} (allowed: {allowed})")
    if dialect == "sqlite" and parsed.database and not Path(parsed.database).resolve().parent.is_dir():
        raise SweepError(f"--storage {url!r}: the folder {Path(parsed.database).parent} does not exist")
    if parsed.drivername == "postgresql" and not find_spec("psycopg") and find_spec("psycopg2"):
        # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3; fruitlab's dev extra installs psycopg2.
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def open_storage(url: str, on_stale: Callable[[optuna.Study, FrozenTrial], None]) -> optuna.storages.RDBStorage:
    """An RDBStorage with heartbeats, or a SweepError naming what is wrong with the URL or the database."""
    url = check_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # wait for a lock rather than fail ("database is locked")
    last: Exception | None = None
    for attempt in range(3):  # two workers creating the tables of a fresh database at once: one loses, retries
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat arguments
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except SQLAlchemyError as exc:
            last = exc
            time.sleep(1 + attempt)
        except (ImportError, ModuleNotFoundError) as exc:
            raise SweepError(
                f"--storage {redact(url)!r}: no database driver for it is installed ({exc}); for PostgreSQL: "
                "pip install psycopg2-binary"
            ) from None
    reason = str(getattr(last, "orig", None) or last).strip().splitlines()[0]
    raise SweepError(f"cannot open the study storage {redact(url)!r}: {reason}")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_dead_workers(storage: optuna.storages.BaseStorage, study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials whose worker process on this host is gone: failed now, rather than after the grace period."""
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
        name, _, pid = worker.rpartition(":")
        if name != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, "worker died")
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(storage.get_trial(trial._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker got there first
    return failed


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Queue interrupted trials again with their parameters; returns the numbers of those queued now."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return [t.number for t in trials if t.user_attrs.get(INTERRUPTED_ATTR) and queue_retry(study, t)]


def queue_retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """A WAITING copy of `trial` (same parameters), unless one exists or it was retried MAX_RETRIES times in a row."""
    if any(t.user_attrs.get(RETRY_ATTR) == trial.number for t in study.get_trials(deepcopy=False)):
        return False
    depth = int(trial.user_attrs.get("fruitlab.retry_depth", 0))
    if depth >= MAX_RETRIES or not trial.params:
        return False
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={RETRY_ATTR: trial.number, "fruitlab.retry_depth": depth + 1},
        )
    )
    return True


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own pid on a trial we are not running: a previous process with a recycled pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet still answers signals: a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True

"""Which tracking store: resolved once, handed to MLflow, Lightning's logger and the registry alike (runs.py).

No MLflow import here: fit resolves the URI before its first training step and imports MLflow's client code only
after it (training/fit.py), so that the import is not on the path to the first step."""

from __future__ import annotations

import os

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri(configured: str | None = None) -> str:
    """The experiment's `tracking.uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri

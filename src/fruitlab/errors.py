"""Errors a user can act on.

Every error names what failed, where (file, dotted key or path), what was given and what is allowed, so the
CLI can print it without a traceback. Code raises these for bad *input*; bugs stay ordinary exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FruitlabError(Exception):
    """Base class: the message is meant for the user as is."""


class ConfigError(FruitlabError):
    """An experiment file or --set override is invalid."""


class DataError(FruitlabError):
    """A dataset is missing, empty, malformed or cannot be fetched."""


class ModelError(FruitlabError):
    """A backbone, weights file or logged model cannot be built or loaded."""


class TrackingError(FruitlabError):
    """MLflow store, run or registry problem."""


class ModelRefError(ModelError, TrackingError):
    """A model reference (tracking/refs.py) is malformed or names nothing in the tracking store."""


class SweepError(FruitlabError):
    """An Optuna study or its storage cannot be used as asked."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' - did you mean 'x'?' for the closest choices, or '' when nothing is close."""
    matches = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.6)
    if not matches:
        return ""
    return " - did you mean " + " or ".join(repr(m) for m in matches) + "?"

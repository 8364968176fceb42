"""A run's metrics by today's names, whichever fruitlab version logged them.

The best checkpoint's val scores are `val_best/{task}/{metric}` (names.VAL_BEST; a study's parent run:
`val_best/<sweep metric>`). Runs logged before that name carry `best/val/...` instead: everything that reads these
scores back from MLflow (compare's ranking and table, promote and the champion comparison, the benchmarks) reads
them here, so an old run counts under the new name wherever the new one is absent.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlflow.entities import Run

from fruitlab.names import VAL_BEST

LEGACY_VAL_BEST = "best/val"  # the stage's name before: `best/val/class/acc` is today's `val_best/class/acc`


def current_name(key: str) -> str:
    """Today's name of a metric: current_name('best/val/class/acc') == 'val_best/class/acc'; others unchanged."""
    rest = key.removeprefix(LEGACY_VAL_BEST + "/")
    return f"{VAL_BEST}/{rest}" if rest != key and rest else key


def legacy_name(key: str) -> str | None:
    """The name older runs logged a metric under (legacy_name('val_best/loss') == 'best/val/loss'), else None."""
    rest = key.removeprefix(VAL_BEST + "/")
    return f"{LEGACY_VAL_BEST}/{rest}" if rest != key and rest else None


def names(key: str) -> tuple[str, ...]:
    """Every name a metric may be logged under, today's first: what to search MLflow for."""
    key = current_name(key)
    old = legacy_name(key)
    return (key, old) if old else (key,)


def metrics(logged: Run | Mapping[str, float]) -> dict[str, float]:
    """A run's metrics (or a run's metrics dict) under today's names; where a run has both names, today's wins."""
    found = logged.data.metrics if isinstance(logged, Run) else logged
    out = {current_name(k): v for k, v in found.items() if k != current_name(k)}
    out.update({k: v for k, v in found.items() if k == current_name(k)})
    return out


def metric(logged: Run | Mapping[str, float], key: str) -> float | None:
    """A run's `key` (today's name or the legacy one), or None when the run has it under neither name."""
    found = logged.data.metrics if isinstance(logged, Run) else logged
    return next((found[name] for name in names(key) if name in found), None)

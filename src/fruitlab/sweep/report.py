"""What a study leaves behind: the parent run's summary (best trial, counts, plots, trials.csv), the trial table."""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from fruitlab.config import short_key
from fruitlab.names import best_key
from fruitlab.sweep.storage import INTERRUPTED_ATTR, RETRY_ATTR
from fruitlab.tracking import runs

log = logging.getLogger(__name__)

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")
REPORT = "sweep/report.html"
MIN_TRIALS_FOR_IMPORTANCE = 10  # below this, fANOVA importances mostly reflect which values the sampler tried
REPORT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 1rem; }} .warning {{ color: #a15c00; }}</style>
</head><body><h1>{title}</h1>
{body}
</body></html>
"""
TABLE_ROWS = 5


@dataclass
class StudySummary:
    """Counts and cost of a study, from its trials (all workers)."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    interrupted: int = 0  # failed because their worker stopped (they are run again), not because of their values
    epochs_run: int = 0  # epochs the trials trained
    epochs_planned: int = 0  # epochs they would have trained without pruning
    seconds: float = 0.0  # wall time of every trial, summed
    best: FrozenTrial | None = None
    plots: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def epochs_saved(self) -> int:
        return self.epochs_planned - self.epochs_run

    def line(self) -> str:
        saved = self.epochs_saved / self.epochs_planned if self.epochs_planned else 0.0
        return (
            f"{self.finished} trials: {self.complete} complete, {self.pruned} pruned, {self.failed} failed"
            f"{f' ({self.interrupted} of them interrupted)' if self.interrupted else ''}; "
            f"{self.epochs_run} of {self.epochs_planned} epochs trained (pruning saved {self.epochs_saved}, "
            f"{saved:.0%}); {self.seconds:.0f} s of training"
        )


def summarise(study: optuna.Study) -> StudySummary:
    summary = StudySummary()
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            summary.complete += 1
        elif trial.state == TrialState.PRUNED:
            summary.pruned += 1
        elif trial.state == TrialState.FAIL:
            summary.failed += 1
            summary.interrupted += bool(trial.user_attrs.get(INTERRUPTED_ATTR))
        elif trial.state == TrialState.RUNNING:
            summary.running += 1
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            summary.epochs_run += int(trial.user_attrs.get("fruitlab.epochs", 0))
            summary.epochs_planned += int(trial.user_attrs.get("fruitlab.max_epochs", 0))
        summary.seconds += float(trial.user_attrs.get("fruitlab.seconds", 0.0))
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if complete:
        summary.best = study.best_trial
    return summary


def log_summary(client: MlflowClient, run_id: str, study: optuna.Study, summary: StudySummary, metric: str) -> None:
    """Best params and value (tags, and the metric names.best_key(metric), e.g. `val_best/class/acc`: params are
    immutable, and a resumed study's best moves on), counts, every trial as CSV, and the study plots as HTML, on the
    parent run."""
    metrics = {
        "trials_complete": summary.complete,
        "trials_pruned": summary.pruned,
        "trials_failed": summary.failed,
        "epochs_trained": summary.epochs_run,
        "epochs_saved_by_pruning": summary.epochs_saved,
    }
    tags: dict[str, Any] = {}
    if summary.best is not None:
        best = summary.best
        metrics[best_key(metric)] = float(best.value)  # type: ignore[arg-type]
        tags |= {"fruitlab.best_trial": best.number, "fruitlab.best_run_id": best.user_attrs.get("fruitlab.run_id")}
        tags |= {f"best.{key}": value for key, value in best.params.items()}
        best_json = {"value": best.value, "trial": best.number, "params": best.params}
        runs.log_json(client, run_id, best_json, "sweep/best.json")
    runs.log_metrics(client, run_id, metrics, step=summary.finished)
    runs.set_tags(client, run_id, tags)
    frame = study.trials_dataframe()
    client.log_text(run_id, frame.to_csv(index=False), "sweep/trials.csv")
    summary.plots = log_plots(client, run_id, study) if summary.complete else []


def log_plots(client: MlflowClient, run_id: str, study: optuna.Study) -> list[str]:
    """Optuna's plots in one self-contained HTML file, `sweep/report.html`: plotly.js inside once (4.6 MB, not once
    per plot), so it opens offline and in the MLflow UI's artifact view, which shows an HTML artifact alone (a
    script beside it would not load there). Parameters carry short names (p1.lr, as in the trial table)."""
    parts, complete = [], len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    for name in PLOTS:
        try:
            figure = _plot(study, name)
        except Exception as exc:  # e.g. importances need two complete trials with different values
            log.info("no %s plot: %s", name, exc)
            continue
        note = ""
        if name == "param_importances" and complete < MIN_TRIALS_FOR_IMPORTANCE:
            note = importance_warning(complete)
            log.warning("%s", note)
        first = not parts
        html = figure.to_html(include_plotlyjs=first, full_html=False)
        parts.append((f'<p class="warning">{note}</p>' if note else "") + html)
    if not parts:
        return []
    page = REPORT_PAGE.format(title=f"study {study.study_name}", body="\n".join(parts))
    client.log_text(run_id, page, REPORT)
    return [REPORT]


def importance_warning(complete: int) -> str:
    return (
        f"parameter importances from {complete} complete trials (fewer than {MIN_TRIALS_FOR_IMPORTANCE}): "
        "too few to tell which parameter matters; run more trials before trusting them"
    )


def _plot(study: optuna.Study, name: str) -> Any:
    """One of Optuna's plots, its parameter names shortened (finetune.phases.1.optimizer.lr -> p1.lr)."""
    import optuna.visualization as vis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's own "too few trials" warnings: importance_warning says it once
        figure = getattr(vis, f"plot_{name}")(study)
    if name == "parallel_coordinate":
        _shorten_axes(figure, study)
    elif name == "param_importances":
        for bar in figure.data:
            bar.y = tuple(short_key(str(label)) for label in bar.y)
            bar.hovertemplate = tuple(_shorten_names(str(text)) for text in bar.hovertemplate)
    return figure


def _shorten_names(text: str) -> str:
    return re.sub(r"[\w.]+", lambda match: short_key(match.group(0)), text)


def _shorten_axes(figure: Any, study: optuna.Study) -> None:
    """Optuna draws the axes as ticks named by the objective, then the parameters sorted by name, each cut to 17
    characters ("finetune.phases.1..."): name them again, in full and short, on the axis and in the hover text."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    keys = sorted({key for trial in complete for key in trial.params})
    ticks = list(figure.layout.xaxis.ticktext or [])
    if len(ticks) != len(keys) + 1:  # another layout than the one described: leave Optuna's names
        return
    labels = [ticks[0], *(short_key(key) for key in keys)]
    figure.layout.xaxis.ticktext = labels
    for trace in figure.data:
        if trace.customdata is not None and len(trace.customdata) == len(labels):
            trace.customdata = [[label, value] for label, (_, value) in zip(labels, trace.customdata, strict=True)]


def best_table(study: optuna.Study, metric: str, rows: int = TABLE_ROWS) -> str:
    """The best complete trials, best first, one line each: value, epochs, time, parameters, run."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _finite(t.value)]
    done.sort(key=lambda t: t.value or 0.0, reverse=maximize)
    if not done:
        return "no complete trial yet"
    keys = list(done[0].params)
    header = ["rank", "trial", metric, "epochs", "s", *(short_key(k) for k in keys), "run"]
    table = [header]
    for rank, t in enumerate(done[:rows], 1):
        retry = f" (retry of {t.user_attrs[RETRY_ATTR]})" if RETRY_ATTR in t.user_attrs else ""
        table.append(
            [
                str(rank),
                f"{t.number}{retry}",
                f"{t.value:.4f}",
                str(t.user_attrs.get("fruitlab.epochs", "")),
                f"{float(t.user_attrs.get('fruitlab.seconds', 0)):.0f}",
                *(format_value(t.params.get(k)) for k in keys),
                str(t.user_attrs.get("fruitlab.run_id", ""))[:12],
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{short_key(k)}={format_value(v)}" for k, v in params.items())


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)

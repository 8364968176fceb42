"""Runs side by side: metrics, key params, durations and status, and their per-epoch learning curves.

Everything comes from MLflow. fit logs each epoch's metrics at step = epochs trained (1, 2, ...); runs of older fruitlab
versions logged them at Lightning's global step with an `epoch` metric at the same step, whose history turns those
steps into epochs. `phase` marks where a fine-tuning phase begins. The runs
are named (see tracking/refs.py) or the top K of an experiment by a metric. Summary metrics are read by today's names
(tracking/metric_names.py): a run logged as `best/val/...` ranks and shows beside new runs as `val_best/...`.
Rendering (terminal table, PNG, HTML) is in tracking/compare_report.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fruitlab.config import short_key
from fruitlab.errors import TrackingError, did_you_mean
from fruitlab.names import VAL_BEST
from fruitlab.tracking import metric_names, refs, runs, tags
from fruitlab.tracking.registry import MULTI_METRIC, SINGLE_METRIC, maximize

DEFAULT_METRICS = (MULTI_METRIC, SINGLE_METRIC)  # ranking: multi-task runs first, then single-task
SUMMARY_PREFIXES = (f"{VAL_BEST}/", "test/")  # metrics of the evaluated best checkpoint
# Shown whatever their values; every other param only where the runs differ.
KEY_PARAMS = re.compile(
    r"model\.backbone|model\.pretrained|data\.(dataset|split|batch_size)|preprocess\.input_size|seed|"
    r"finetune\.phases\.\d+\.(epochs|train(\..+)?|optimizer\.(name|lr|backbone_lr))"
)
PARAM_ORDER = ("model.", "preprocess.", "data.", "loss.", "finetune.")
SKIPPED_PARAMS = {"description", "tracking.uri", "trainer.enable_progress_bar"}
SWEEP_PARENT = (tags.ROLE, "sweep")  # a study's parent run repeats its best trial's metrics: not ranked


@dataclass
class RunSummary:
    run_id: str
    name: str
    experiment: str
    status: str
    start_ms: int
    end_ms: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(epoch, value)], 1-based
    phase_starts: list[int] = field(default_factory=list)  # epochs where a later phase begins

    @property
    def short_id(self) -> str:
        return self.run_id[:8]

    @property
    def label(self) -> str:
        return f"{self.short_id} {self.name}".strip()

    @property
    def seconds(self) -> float | None:
        return (self.end_ms - self.start_ms) / 1000 if self.end_ms else None

    @property
    def epochs(self) -> int:
        return max((e for points in self.curves.values() for e, _ in points), default=0)


@dataclass
class Row:
    section: str  # run | metrics | params
    name: str
    cells: list[str]
    best: int | None = None  # index of the best run (metrics), when they differ


@dataclass
class Comparison:
    runs: list[RunSummary]
    title: str
    slug: str  # for file names
    uri: str

    def curve_keys(self) -> list[str]:
        """train/loss, val/loss, then val/<task>/acc for every task any run logged."""
        keys = {k for run in self.runs for k in run.curves}
        tasks = sorted(k for k in keys if re.fullmatch(r"val/[^/]+/acc", k))
        return [k for k in ("train/loss", "val/loss") if k in keys] + tasks

    def rows(self) -> list[Row]:
        rows = [
            Row("run", "experiment", [r.experiment for r in self.runs]),
            Row("run", "status", [r.status.lower() for r in self.runs]),
            Row("run", "started", [_time(r.start_ms) for r in self.runs]),
            Row("run", "duration", [_duration(r) for r in self.runs]),
            Row("run", "epochs", [str(r.epochs) for r in self.runs]),
        ]
        for key in sorted({k for r in self.runs for k in r.metrics if k.startswith(SUMMARY_PREFIXES)}):
            values = [r.metrics.get(key) for r in self.runs]
            rows.append(Row("metrics", key, [_number(v) for v in values], _best(values, maximize(key))))
        for key in self.param_keys():
            rows.append(Row("params", short_key(key), [param_text(r.params.get(key, "-")) for r in self.runs]))
        return rows

    def param_keys(self) -> list[str]:
        keys = {k for r in self.runs for k in r.params} - SKIPPED_PARAMS
        shown = []
        for key in sorted(keys, key=_param_order):
            values = [r.params.get(key) for r in self.runs]
            if all(v in (None, "None") for v in values):
                continue
            if KEY_PARAMS.fullmatch(key) or len(set(values)) > 1:
                shown.append(key)
        return shown


def compare_runs(
    uri: str,
    run_refs: list[str] | None = None,
    experiment: str | None = None,
    top: int = 3,
    metric: str | None = None,
) -> Comparison:
    """The runs named in `run_refs`, or the `top` finished runs of `experiment` by `metric`, with their curves."""
    if bool(run_refs) == bool(experiment):
        raise TrackingError("give run ids / model URIs, or --experiment NAME (with --top K), not both or neither")
    _check_store(uri)
    client = runs.client_for(uri)
    if run_refs:
        found = [refs.resolve_run(client, ref, uri) for ref in run_refs]
        title = f"{len(found)} runs" if len(found) > 1 else "1 run"
        slug = "-".join(r.info.run_id[:8] for r in found)
    else:
        name = experiment or ""
        found, metric = top_runs(client, name, top, metric, uri)
        title = f"top {len(found)} of {name} by {metric}"
        slug = f"{_safe(name)}-top{top}"
    names = {e.experiment_id: e.name for e in client.search_experiments()}
    summaries = [run_summary(client, run, names.get(run.info.experiment_id, "?")) for run in found]
    return Comparison(summaries, title, slug, uri)


def top_runs(client: MlflowClient, experiment: str, k: int, metric: str | None, uri: str) -> tuple[list[Run], str]:
    """The k best FINISHED runs of an MLflow experiment (sweep trials included, study parents not)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        known = [e.name for e in client.search_experiments()]
        raise TrackingError(
            f"no MLflow experiment {experiment!r} in {uri}{did_you_mean(experiment, known)} "
            f"(experiments: {', '.join(known) or 'none'})"
        )
    finished = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'", max_results=50000)
    finished = [r for r in finished if r.data.tags.get(SWEEP_PARENT[0]) != SWEEP_PARENT[1]]
    if not finished:
        raise TrackingError(f"experiment {experiment!r} has no finished run in {uri}")
    logged = sorted({k for r in finished for k in metric_names.metrics(r)})
    metric = metric_names.current_name(metric) if metric else next((m for m in DEFAULT_METRICS if m in logged), None)
    if metric is None or metric not in logged:
        asked = metric or DEFAULT_METRICS[1]
        summary = [m for m in logged if m.startswith(SUMMARY_PREFIXES)] or logged
        raise TrackingError(
            f"no finished run of {experiment!r} has the metric {asked!r}{did_you_mean(asked, logged)}; "
            f"give --metric one of: {', '.join(summary) or 'none (its runs logged no metrics)'}"
        )
    scored = [(score, r) for r in finished if (score := metric_names.metric(r, metric)) is not None]
    ranked = sorted(scored, key=lambda pair: pair[0], reverse=maximize(metric))
    return [r for _, r in ranked[:k]], metric


# ------------------------------------------------------------------------------------------------ internals
def _check_store(uri: str) -> None:
    """Reading must not create an empty SQLite store where a typo points (MLflow would)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if str(path) != ":memory:" and not path.is_file():
            raise TrackingError(f"no MLflow store at {uri} ({path.resolve()} does not exist); check --tracking-uri")


def run_summary(client: MlflowClient, run: Run, experiment: str) -> RunSummary:
    """A run's metrics, params and curves per epoch (also `phase`, the fine-tuning phase of each epoch)."""
    info, data = run.info, run.data
    summary = RunSummary(
        run_id=info.run_id,
        name=info.run_name or "",
        experiment=experiment,
        status=info.status,
        start_ms=info.start_time,
        end_ms=info.end_time,
        params=dict(data.params),
        metrics=metric_names.metrics(run),
    )
    wanted = [k for k in data.metrics if k in ("train/loss", "val/loss") or re.fullmatch(r"val/[^/]+/acc", k)]
    epoch_at = {m.step: int(m.value) + 1 for m in client.get_metric_history(info.run_id, "epoch")}
    for key in wanted:
        summary.curves[key] = _per_epoch(client.get_metric_history(info.run_id, key), epoch_at)
    if "phase" in data.metrics:
        phases = summary.curves["phase"] = _per_epoch(client.get_metric_history(info.run_id, "phase"), epoch_at)
        summary.phase_starts = [e for (e, p), (_, before) in zip(phases[1:], phases, strict=False) if p != before]
    return summary


def _per_epoch(history: list[Any], epoch_at: dict[int, int]) -> list[tuple[int, float]]:
    """[(epoch, value)] sorted by epoch; a value logged twice for one epoch (a resumed run) keeps the later one."""
    points: dict[int, tuple[int, float]] = {}
    for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
        epoch = epoch_at.get(m.step, m.step)  # without an `epoch` metric the step is the epoch
        if epoch not in points or m.timestamp >= points[epoch][0]:
            points[epoch] = (m.timestamp, float(m.value))
    return [(e, v) for e, (_, v) in sorted(points.items())]


def _best(values: list[float | None], high: bool) -> int | None:
    present = [(v, i) for i, v in enumerate(values) if v is not None]
    if len(present) < 2 or len({v for v, _ in present}) == 1:
        return None
    return (max if high else min)(present)[1]


def _number(value: float | None) -> str:
    """A metric to 4 significant digits, trailing zeros kept so a column lines up: 0.9000, 0.2292, 12.35."""
    return "-" if value is None else f"{value:#.4g}"


def param_text(value: str) -> str:
    """A param as MLflow stores it (a string), a float cut to 4 significant digits where it has more
    (0.0003162277660168379 -> 0.0003162); anything else as it is."""
    try:
        number = float(value)
    except ValueError:
        return value
    short = f"{number:.4g}"
    return value if float(short) == number else short


def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M") if ms else "-"


def _duration(run: RunSummary) -> str:
    if run.seconds is None:
        return "running" if run.status == "RUNNING" else "-"
    minutes, seconds = divmod(round(run.seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _param_order(key: str) -> tuple[int, list[Any]]:
    """Model, data, then the phases in order (phases.2 before phases.10), then the rest."""
    group = next((i for i, prefix in enumerate(PARAM_ORDER) if key.startswith(prefix)), len(PARAM_ORDER))
    return group, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "experiment"

"""run_sweep(): an Optuna study over one experiment, every trial an ordinary fit() as a nested MLflow run.

The recipe: check the search space and names (a typo fails before any trial), open the storage and the study
(created once, joined by any number of workers), fail and requeue trials of dead workers, then run trials until
the study holds `sweep.trials` of them, and write the summary (best trial, counts, plots) on the parent run.

Trial states in MLflow (tag `fruitlab.trial_state`): complete (status FINISHED), pruned (status KILLED: stopped
on purpose, not an error, but not a finished training either - its model was never logged), failed (status
FAILED, with `fruitlab.trial_error` and the traceback as `error.txt`; an interrupted trial also has
`fruitlab.interrupted`). Each trial's result is the best epoch of `sweep.metric`; its checkpoint watches the same
metric, so the model a trial logs is the one its result describes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from fruitlab.config import Experiment, SweepConfig, dump_yaml
from fruitlab.data.registry import get_source, resolve_split
from fruitlab.errors import SweepError
from fruitlab.models.names import check_backbone_name
from fruitlab.sweep import report
from fruitlab.sweep.samplers import build_pruner, build_sampler
from fruitlab.sweep.space import check_space, config_hash
from fruitlab.sweep.storage import (
    RETRY_ATTR,
    default_storage,
    fail_dead_workers,
    open_storage,
    redact,
    retry_interrupted,
)
from fruitlab.sweep.trials import TrialRunner
from fruitlab.tracking import runs

log = logging.getLogger(__name__)

PARENT_ATTR = "fruitlab.parent_run_id"
HASH_ATTR = "fruitlab.config_hash"
PARENT_WAIT_S = 60  # a worker joining a new study waits this long for its creator's parent run
# Per-trial chatter. Lightning's banners go through `pytorch_lightning.utilities` once mlflow.pytorch (logging a
# model) has imported that package: both point lightning_utilities' rank-zero logger at their own, and importing
# it resets the level of `pytorch_lightning` itself, hence the child loggers here.
QUIET = (
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning.utilities",
    "lightning_fabric.utilities",
    "fruitlab.training",
    "fruitlab.data",
    "fruitlab.models",
)


@dataclass
class SweepResult:
    study_name: str
    storage: str  # without password
    parent_run_id: str
    tracking_uri: str
    summary: report.StudySummary
    table: str


def run_sweep(
    exp: Experiment,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    data_dir: str | None = None,
    echo: Callable[[str], None] = print,
) -> SweepResult:
    # 1. Everything that can be checked before a trial: search space, metric, names.
    sweep = check_space(exp)
    updates = {k: v for k, v in (("trials", trials), ("timeout", timeout)) if v is not None}
    sweep = sweep.model_copy(update=updates)
    check_backbone_name(exp.model.backbone, exp.where("model.backbone"))
    resolve_split(get_source(exp.data.dataset, exp.where("data.dataset")), exp.data.split, exp.where("data.dataset"))

    # Optuna's INFO lines (a study created, each trial finished) and per-trial chatter off; warnings stay.
    with _quiet():
        # 2. Storage and study; the study's parent run in MLflow.
        uri = runs.tracking_uri(exp.tracking.uri)
        url = storage or default_storage(uri)
        name = study_name or exp.name
        ctx = TrialRunner(exp, sweep, name, uri, data_dir, echo)
        backend = open_storage(url, on_stale=ctx.on_stale)
        study, ctx.parent_run_id = _open_study(exp, sweep, name, backend, url, uri)
        echo(f"study {name!r} in {redact(url)}: parent run {ctx.parent_run_id}, MLflow experiment {ctx.experiment!r}")

        # 3. Trials a killed worker left behind: failed, with their MLflow runs, and queued again.
        for trial in fail_dead_workers(backend, study):
            ctx.record(trial.number, "failed", None, "its worker process died", interrupted="worker died")
        for number in retry_interrupted(study):
            echo(f"trial {number} was interrupted: queued again with the same parameters")

        # 4. Trials until the study holds `sweep.trials` (all workers together) or this worker's time is up.
        deadline = time.monotonic() + sweep.timeout if sweep.timeout else None
        status = "FINISHED"
        try:
            while _more_trials(study, sweep.trials):
                if deadline is not None and time.monotonic() >= deadline:
                    echo(f"timeout: {sweep.timeout:.0f} s are up ({len(study.trials)} trials in the study)")
                    break
                study.optimize(ctx.objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        except KeyboardInterrupt:
            status = "KILLED"
            retry_interrupted(study)
            raise
        except BaseException:  # the storage or the tracking store went away: trials themselves never get here
            status = "FAILED"
            raise
        finally:
            result = _finish(study, ctx, status, url)
            echo(result.summary.line())
            echo(result.table)
        return result


def _open_study(
    exp: Experiment, sweep: SweepConfig, name: str, backend: Any, url: str, uri: str
) -> tuple[optuna.Study, str]:
    """Create the study (exactly one worker succeeds: study names are unique in the database) or join it."""
    sampler, pruner = build_sampler(sweep), build_pruner(sweep)
    digest = config_hash(exp)
    try:
        study = optuna.create_study(
            storage=backend, study_name=name, direction=sweep.direction, sampler=sampler, pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=backend, sampler=sampler, pruner=pruner)
        return study, _join_study(study, exp, sweep, digest, url, uri)
    study.set_user_attr(HASH_ATTR, digest)
    study.set_user_attr("fruitlab.experiment", exp.name)
    for values in sweep.enqueue:  # only here, when the study is new: a resumed study has them already
        study.enqueue_trial(values)
    parent = _start_parent(exp, sweep, name, url, uri)
    study.set_user_attr(PARENT_ATTR, parent)
    return study, parent


def _join_study(study: optuna.Study, exp: Experiment, sweep: SweepConfig, digest: str, url: str, uri: str) -> str:
    deadline = time.monotonic() + PARENT_WAIT_S
    while PARENT_ATTR not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(1)  # the creator is a moment behind: it writes the hash, then the parent run
    attrs = study.user_attrs
    if attrs.get(HASH_ATTR) not in (None, digest):
        raise SweepError(
            f"study {study.study_name!r} in {redact(url)} searches another version of this experiment (its "
            "settings or search space differ); give a new --study NAME, or the same file and --set as before"
        )
    if study.direction.name.lower() != sweep.direction:
        raise SweepError(f"study {study.study_name!r} is set to {study.direction.name.lower()}, not {sweep.direction}")
    parent = attrs.get(PARENT_ATTR)
    if parent is None:  # its creator died before starting the parent run
        parent = _start_parent(exp, sweep, study.study_name, url, uri)
        study.set_user_attr(PARENT_ATTR, parent)
    else:
        runs.reopen_run(uri, parent)
    return parent


def _start_parent(exp: Experiment, sweep: SweepConfig, name: str, url: str, uri: str) -> str:
    tags = {"fruitlab.role": "sweep", "fruitlab.study": name, "fruitlab.storage": redact(url)}
    run_id = runs.start_run(exp, uri, tags)
    client = runs.client_for(uri)
    runs.set_tags(client, run_id, {"mlflow.runName": f"sweep {name}"})
    client.log_text(run_id, dump_yaml(exp), "sweep/experiment.yaml")
    runs.log_json(client, run_id, sweep.model_dump(mode="json"), "sweep/space.json")
    return run_id


def _more_trials(study: optuna.Study, budget: int) -> bool:
    """Queued trials (retries, `sweep.enqueue`) always run; new ones while the study holds fewer than `budget`.

    Every trial counts (finished, running - perhaps on another worker - or queued) except one replaced by a retry.
    Two workers checking at the same moment may both start the last trial: one extra trial per extra worker, at most.
    """
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    replaced = {t.user_attrs.get(RETRY_ATTR) for t in trials}
    return sum(1 for t in trials if t.number not in replaced) < budget


def _finish(study: optuna.Study, ctx: TrialRunner, status: str, url: str) -> SweepResult:
    summary = report.summarise(study)
    client = runs.client_for(ctx.uri)
    report.log_summary(client, ctx.parent_run_id, study, summary, ctx.sweep.metric)
    if summary.running == 0 or status == "KILLED":  # another worker still running: it finishes the parent
        runs.finish_run(client, ctx.parent_run_id, status)
    table = report.best_table(study, ctx.sweep.metric)
    return SweepResult(study.study_name, redact(url), ctx.parent_run_id, ctx.uri, summary, table)


@contextmanager
def _quiet() -> Iterator[None]:
    """Per-trial chatter (Lightning's banners and summaries, Optuna's per-trial lines) off; warnings stay."""
    loggers = [logging.getLogger(n) for n in QUIET]
    levels = [lg.level for lg in loggers]
    optuna_level = optuna.logging.get_verbosity()
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    no_fail_lines = _DropFailedTrialLines()
    handlers = logging.getLogger("optuna").handlers  # a logger's own filters do not see its children's records
    for handler in handlers:
        handler.addFilter(no_fail_lines)
    # fit's "continue with fit --resume" hint: a sweep trial resumes by rerunning the sweep (see run_sweep).
    fit_log = logging.getLogger("fruitlab.training.fit")
    no_resume_hint = _DropResumeHint()
    fit_log.addFilter(no_resume_hint)
    # mlflow.pytorch calls logging.basicConfig when it is first imported: fruitlab's own lines would print twice.
    ours = logging.getLogger("fruitlab")
    propagate = ours.propagate
    ours.propagate = propagate and not ours.handlers
    try:
        yield
    finally:
        ours.propagate = propagate
        fit_log.removeFilter(no_resume_hint)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        optuna.logging.set_verbosity(optuna_level)
        for handler in handlers:
            handler.removeFilter(no_fail_lines)


class _DropResumeHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "fruitlab fit --resume" not in str(record.msg)


class _DropFailedTrialLines(logging.Filter):
    """Optuna logs each failed trial with its traceback; ours prints one line and keeps the traceback in MLflow."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Trial ") and " failed " in message)

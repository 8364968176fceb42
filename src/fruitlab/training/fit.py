"""fit(): one experiment, start to finish. Reads top to bottom as the recipe it is."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, RichProgressBar

from fruitlab.config import Experiment
from fruitlab.data.balance import class_weights
from fruitlab.data.registry import DatasetSplits, load_dataset
from fruitlab.errors import TrackingError
from fruitlab.inference.model_format import log_classifier
from fruitlab.models.classifier import build_classifier
from fruitlab.models.names import check_backbone_name
from fruitlab.names import FIT_SECONDS
from fruitlab.tracking import tags
from fruitlab.tracking.uri import tracking_uri
from fruitlab.training.cached_data import PhasedDataModule
from fruitlab.training.featurecache import FeatureCache
from fruitlab.training.final_evaluation import LastValidation, evaluate_best, summary_metrics
from fruitlab.training.first_step import FirstStepTimer
from fruitlab.training.logger import DeferredMLFlowLogger
from fruitlab.training.module import ClassifierModule
from fruitlab.training.phases import PhaseEarlyStopping, PhasePlan, PhaseSchedule
from fruitlab.training.run_start import RUN_ID_ENV, EarlyRun, run_tags

log = logging.getLogger(__name__)

CHECKPOINT_ROOT = Path("checkpoints")


@dataclass
class FitResult:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def fit(
    exp: Experiment,
    *,
    resume_run_id: str | None = None,
    data_dir: str | None = None,
    callbacks: list[Any] | None = None,
    tags: dict[str, str] | None = None,
    splits: DatasetSplits | None = None,
    early_run: EarlyRun | None = None,
) -> FitResult:
    """`callbacks`: extra Lightning callbacks (a sweep's pruning); `tags`: extra run tags (`mlflow.parentRunId`...);
    `splits`: the data when the caller loaded it already (the CLI does, before it imports Lightning);
    `early_run`: the run being opened in a child process (the CLI starts it before it imports Lightning)."""
    with warnings.catch_warnings():
        # Frozen BatchNorm layers are in eval mode on purpose (see phases.py); Lightning warns about any.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=DeprecationWarning)
        # Curves are logged per epoch; Lightning's step-logging interval does not apply.
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
        return _fit(
            exp,
            resume_run_id=resume_run_id,
            data_dir=data_dir,
            extra_callbacks=callbacks,
            extra_tags=tags,
            splits=splits,
            early_run=early_run,
        )


def _fit(
    exp: Experiment,
    *,
    resume_run_id: str | None,
    data_dir: str | None,
    extra_callbacks: list[Any] | None = None,
    extra_tags: dict[str, str] | None = None,
    splits: DatasetSplits | None = None,
    early_run: EarlyRun | None = None,
) -> FitResult:
    started = time.perf_counter()
    # 1. Names first: a typo fails in a second, before any download or weight load.
    check_backbone_name(exp.model.backbone, exp.where("model.backbone"))
    L.seed_everything(exp.seed, workers=True, verbose=False)

    # 2. Data: classes come from the data, never from the config.
    splits = splits or load_dataset(exp.data, seed=exp.seed, data_dir=data_dir, where=exp.where("data.dataset"))

    # 3. Model, phase plan, LightningModule.
    model, weights, module, datamodule = build_parts(exp, splits)

    # 4. Tracking: one run per fit (the same run again on --resume), unless the CLI's child opened it already;
    # then the weights' source, known only now, is logged with the first step's facts (late_tags).
    uri = tracking_uri(exp.tracking.uri)
    run_id = early_run.run_id() if early_run and not resume_run_id else None
    late_tags = {tags.WEIGHTS: weights} if run_id else {}
    if run_id is None:
        start_tags = {tags.WEIGHTS: weights, **(extra_tags or {})}
        run_id = _open_run(exp, uri, resume_run_id, lambda: {**run_tags(exp, splits, data_dir), **start_tags})
    os.environ[RUN_ID_ENV] = run_id
    if rank_zero_only.rank == 0:
        log.info("MLflow run %s, experiment %r, tracking %s", run_id, exp.tracking.experiment or exp.name, uri)
    checkpoint_dir = CHECKPOINT_ROOT / run_id

    # 5. Callbacks and trainer; the trainer settings pass straight through to Lightning.
    last_validation = LastValidation()  # the final evaluation reuses it when the last epoch is the best
    own = [FirstStepTimer(started, late_tags), last_validation, *(extra_callbacks or [])]
    trainer, checkpoint = _trainer(exp, uri, run_id, checkpoint_dir, own)

    # 6. Train (or continue training).
    _train(trainer, module, datamodule, _resume_checkpoint(checkpoint_dir) if resume_run_id else None, uri, run_id)
    if trainer.global_rank != 0:
        return FitResult(run_id=run_id, tracking_uri=uri)

    # 7. Evaluate the best checkpoint on val (and test); log the model, its scores (linked to it and the data).
    # MLflow's client code is imported here, not at the top: the first training step does not wait for it (the
    # logger imports it when the first epoch ends; training/logger.py).
    from fruitlab.tracking import run_page, runs

    client = runs.client_for(uri)
    best, reports, scores = evaluate_best(client, run_id, module, checkpoint, datamodule, last_validation)
    result = FitResult(run_id=run_id, tracking_uri=uri, metrics=summary_metrics(reports), reports=reports)
    final_tags = {tags.CHECKPOINT_DIR: str(checkpoint_dir.resolve()), tags.BEST_CHECKPOINT: best}
    data = _data_used(exp, splits)
    run_page.log_dataset(client, run_id, data)
    model_id = None
    if exp.tracking.log_model:
        example = datamodule.dataset("val")[0][0].unsqueeze(0)
        result.model_uri = final_tags[tags.MODEL_URI] = log_classifier(model, run_id, example)
        model_id = result.model_uri.removeprefix("models:/")
    runs.log_metrics(client, run_id, scores, model_id=model_id, dataset=(data.name, data.fingerprint))

    # 8. The run page: phases, learning curves, a description; then the run is done.
    run_page.describe(client, run_id, exp, data, result.metrics, weights)
    result.seconds = time.perf_counter() - started
    runs.log_batch(client, run_id, {FIT_SECONDS: result.seconds}, final_tags)  # one write for the run's last facts
    runs.finish_run(client, run_id, "FINISHED")
    return result


def build_parts(exp: Experiment, splits: Any) -> tuple[Any, str, ClassifierModule, PhasedDataModule]:
    """(classifier, where its weights came from, LightningModule, data module): one feature cache shared.
    Also what `fruitlab lr-find` builds, so its range test trains a phase exactly as fit would."""
    model, weights = build_classifier(exp.model, exp.preprocess, splits.tasks, exp.where("model.backbone"))
    plan = PhasePlan(exp.finetune.phases)
    cache = FeatureCache(model, plan, exp.performance, exp.data.augment)
    module = ClassifierModule(
        model,
        plan,
        channels_last=exp.performance.channels_last,
        loss=exp.loss,
        class_weights=_class_weights(splits) if exp.data.balance == "weights" else None,
        augment=exp.data.augment,
        feature_cache=cache,
    )
    datamodule = PhasedDataModule(
        splits,
        exp.data,
        model.preprocess,
        seed=exp.seed,
        image_cache=exp.performance.image_cache,
        feature_cache=cache,
        plan=plan,
    )
    return model, weights, module, datamodule


def _data_used(exp: Experiment, splits: Any) -> Any:
    from fruitlab.tracking import run_page

    return run_page.DataUsed(
        dataset=exp.data.dataset,
        split=splits.scheme or str(exp.data.split),
        root=splits.root,
        fingerprint=splits.fingerprint,
        counts=splits.counts(),
        classes=splits.num_classes,
    )


def _trainer(
    exp: Experiment, uri: str, run_id: str, checkpoint_dir: Path, extra_callbacks: list[Any] | None
) -> tuple[L.Trainer, ModelCheckpoint]:
    logger = DeferredMLFlowLogger(exp.tracking.experiment or exp.name, uri, run_id)

    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best-{epoch}",
        monitor=exp.checkpoint.monitor,
        mode=exp.checkpoint.mode,
        save_last=exp.checkpoint.save_last,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    callbacks: list[Any] = [PhaseSchedule(), checkpoint, *(extra_callbacks or [])]
    if exp.finetune.ema is not None:
        # Swaps the averaged weights in for validation, writes them as the checkpoints' state_dict (the current
        # ones under current_model_state, for --resume) and copies them into the model when training ends.
        ema = exp.finetune.ema
        callbacks.append(EMAWeightAveraging(decay=ema.decay, update_starting_at_step=ema.start_step))
    if exp.trainer.enable_progress_bar:
        callbacks.append(ProgressBar())
    if exp.early_stopping.enabled:
        es = exp.early_stopping
        callbacks.append(
            PhaseEarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta)
        )
    trainer = L.Trainer(
        max_epochs=exp.total_epochs,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(checkpoint_dir),
        # Each epoch asks the data module for its loaders: a phase served from the feature cache gets cached
        # tensors, the others images (the image loaders are kept, so persistent workers stay up).
        reload_dataloaders_every_n_epochs=1 if exp.performance.feature_cache != "off" else 0,
        # Lightning's layer table (with a FLOPs column of zeros: it has no example input); each phase says how
        # many parameters train instead (ClassifierModule.announce_phase).
        enable_model_summary=False,
        **_trainer_kwargs(exp),
    )

    return trainer, checkpoint


def _train(trainer: L.Trainer, module: Any, datamodule: Any, ckpt_path: str | None, uri: str, run_id: str) -> None:
    """trainer.fit; a run that does not finish is marked KILLED or FAILED (rank 0), Ctrl+C works again after."""
    status = "FAILED"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        status = "KILLED" if trainer.interrupted else "FINISHED"
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl+C into a graceful shutdown + sys.exit(1)
        status = "KILLED"
        _restore_ctrl_c()
        if trainer.global_rank == 0:
            log.warning("interrupted; continue this run with: fruitlab fit --resume %s", run_id)
        raise
    finally:
        if trainer.global_rank == 0 and status != "FINISHED":
            from fruitlab.tracking import runs

            runs.finish_run(runs.client_for(uri), run_id, status)


def _restore_ctrl_c() -> None:
    """Lightning's graceful shutdown sets SIGINT to 'ignore' for good; a caller that goes on (a sweep, a notebook,
    a test) and every process it starts would then ignore Ctrl+C. Put Python's own handler back."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


class ProgressBar(RichProgressBar):
    """Lightning's Rich bar without `v_num` (the MLflow run id is printed at the start and the end instead). Not
    asked for at all: the logger's version is the run id, and asking opens the tracking store before the first
    step (the bar is drawn at the first batch)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return dict(trainer.progress_bar_metrics)


def _open_run(exp: Experiment, uri: str, resume_run_id: str | None, start_tags: Callable[[], dict[str, str]]) -> str:
    if rank_zero_only.rank != 0:  # a DDP worker re-launched by Lightning: join the parent's run
        return os.environ[RUN_ID_ENV]
    from fruitlab.tracking import runs

    if resume_run_id:
        runs.check_resumable(uri, resume_run_id)
        runs.reopen_run(uri, resume_run_id)
        return resume_run_id
    return runs.start_run(exp, uri, start_tags())


def _resume_checkpoint(checkpoint_dir: Path) -> str:
    last = checkpoint_dir / "last.ckpt"
    if not last.exists():
        raise TrackingError(
            f"cannot resume: {last} does not exist (checkpoints are kept in ./{CHECKPOINT_ROOT}/<run id>/ "
            "of the directory the run was started in)"
        )
    return str(last)


def _trainer_kwargs(exp: Experiment) -> dict[str, Any]:
    t = exp.trainer
    kwargs = t.model_dump()
    return {k: v for k, v in kwargs.items() if v is not None}


def _class_weights(splits: Any) -> dict[str, list[float]]:
    """Inverse-frequency weights per task over the train split (mean 1), for data.balance: weights."""
    train = splits.splits["train"]
    return {task: class_weights(train.targets[task], len(names)) for task, names in splits.tasks.items()}

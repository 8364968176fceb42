"""The learning-rate range test of one fine-tuning phase (fastai's lr_find, Lightning's Tuner.lr_find).

Lightning's own `Tuner(trainer).lr_find` runs it: the phase is set up as fit sets it up (the same model, PhasePlan
and data module, so the same trainable parameters, frozen BatchNorm and feature cache), the learning rate grows
exponentially over `num_training` optimizer steps. The suggestion is the steepest descent of Lightning's smoothed
loss per decade of lr (steepest_descent(): not Lightning's own `suggestion()`, which measures the slope per unit of
lr and so lands on low-lr plateaus; not fastai's 'valley'). Two consequences of using Lightning's finder as it is:
- it sets every parameter group to the same learning rate, so in a phase with `backbone_lr` (or `layer_decay`) the
  head and the backbone are swept together; the suggestion is for `optimizer.lr`, and the printed `backbone_lr`
  keeps the recipe's backbone/head ratio (a rule of thumb, not something the test measured);
- the phase starts from the model's starting weights: the earlier phases are not trained first, so a phase after
  a head-only one sees a fresh head.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
from lightning.pytorch.tuner import Tuner

from fruitlab.config import Experiment
from fruitlab.data.registry import load_dataset
from fruitlab.errors import ConfigError
from fruitlab.models.names import check_backbone_name
from fruitlab.tracking import runs, tags
from fruitlab.training.fit import build_parts

log = logging.getLogger(__name__)

RUN_KIND = "lr_find"


@dataclass
class LrFindResult:
    phase: int
    suggestion: float | None
    lrs: list[float]
    losses: list[float]  # Lightning's smoothed training loss at each lr
    figure: Path
    run_id: str
    tracking_uri: str
    overrides: list[str] = field(default_factory=list)  # the --set arguments that use the suggestion
    seconds: float = 0.0


def lr_find(
    exp: Experiment,
    phase: int,
    *,
    num_training: int = 100,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    out_dir: Path = Path("reports"),
    data_dir: str | None = None,
) -> LrFindResult:
    """Range-test phase `phase` of `exp`, plot loss against lr, log plot and suggestion to a new MLflow run."""
    started = time.perf_counter()
    _check_arguments(exp, phase, num_training, min_lr, max_lr)
    check_backbone_name(exp.model.backbone, exp.where("model.backbone"))
    L.seed_everything(exp.seed, workers=True, verbose=False)

    splits = load_dataset(exp.data, seed=exp.seed, data_dir=data_dir, where=exp.where("data.dataset"))
    _, weights, module, datamodule = build_parts(exp, splits)
    # module.setup('fit') freezes and unfreezes for this phase, as fit does. Made the plan's last phase, so that
    # it never hands over to the next one (nor does the data module serve the next one's cache), however many
    # epochs of a small train split the test spans.
    plan = module.plan
    plan.phases, plan.index = plan.phases[: phase + 1], phase

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        warnings.filterwarnings("ignore", message=r".*weights_only. was not set")  # its own checkpoint, restored
        for category in (FutureWarning, DeprecationWarning):  # Lightning's own use of torch's pytree (as in fit)
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=category)
        with _rich_bar():
            finder = Tuner(_trainer(exp, tmp)).lr_find(
                module,
                datamodule=datamodule,
                min_lr=min_lr,
                max_lr=max_lr,
                num_training=num_training,
                update_attr=False,  # nothing to update: the result goes into the experiment file by --set
            )
    assert finder is not None  # None only under fast_dev_run, which fruitlab's trainer never sets
    suggestion = steepest_descent(finder.results["lr"], finder.results["loss"])
    figure = _save_figure(finder, exp, phase, suggestion, out_dir)

    uri = runs.tracking_uri(exp.tracking.uri)
    result = LrFindResult(
        phase=phase,
        suggestion=suggestion,
        lrs=[float(x) for x in finder.results["lr"]],
        losses=[float(x) for x in finder.results["loss"]],
        figure=figure,
        run_id="",
        tracking_uri=uri,
        overrides=suggested_overrides(exp, phase, suggestion),
    )
    result.seconds = time.perf_counter() - started
    result.run_id = _log_run(exp, uri, result, {tags.BACKBONE: exp.model.backbone, tags.WEIGHTS: weights})
    return result


def steepest_descent(lrs: list[float], losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """The lr where the smoothed loss falls fastest per decade of lr: the slope of the curve as it is plotted.

    Why by hand: Lightning's LRFinder.suggestion() takes the slope with respect to the lr itself. On the test's
    exponential grid the steps near 1e-7 are 10^6 times narrower than those near 1, so a flat stretch's wiggle at
    low lr outweighs the real descent: on quickstart's head phase it suggested 1.48e-05, on a plateau, while the
    loss falls fastest per decade at 7.9e-03 (benchmarks/training_tools.md). The skips are Lightning's defaults."""
    import torch

    kept = [(lr, loss) for lr, loss in zip(lrs, losses, strict=True)][skip_begin : len(lrs) - skip_end]
    kept = [(lr, loss) for lr, loss in kept if math.isfinite(loss) and lr > 0]
    if len(kept) < 2:
        return None
    decades = torch.log10(torch.tensor([lr for lr, _ in kept], dtype=torch.float64))
    slopes = torch.gradient(torch.tensor([loss for _, loss in kept], dtype=torch.float64), spacing=[decades])[0]
    return kept[int(torch.argmin(slopes))][0]


def suggested_overrides(exp: Experiment, phase: int, suggestion: float | None) -> list[str]:
    """`--set` arguments for the suggestion; backbone_lr keeps the recipe's ratio to lr when the phase sets one."""
    if suggestion is None:
        return []
    opt = exp.finetune.phases[phase].optimizer
    key = f"finetune.phases.{phase}.optimizer"
    out = [f"{key}.lr={suggestion:.3g}"]
    if opt.backbone_lr is not None:
        out.append(f"{key}.backbone_lr={suggestion * opt.backbone_lr / opt.lr:.3g}")
    return out


def _check_arguments(exp: Experiment, phase: int, num_training: int, min_lr: float, max_lr: float) -> None:
    n = len(exp.finetune.phases)
    if not 0 <= phase < n:
        names = ", ".join(f"{i} ({p.name or f'phase{i}'})" for i, p in enumerate(exp.finetune.phases))
        raise ConfigError(f"--phase {phase}: {exp.source} has {n} phase(s) in finetune.phases: {names}")
    if num_training < 2:
        raise ConfigError(f"--steps {num_training}: the range test needs at least 2 steps (about 100 is usual)")
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"--min-lr {min_lr:g} / --max-lr {max_lr:g}: need 0 < min-lr < max-lr")


def _trainer(exp: Experiment, root: str) -> L.Trainer:
    """A trainer like fit's (device, precision, loaders per epoch for the feature cache), without its callbacks
    (no phase changes, checkpoints or early stopping), logger and validation (the test reads the training loss)."""
    skip = {"limit_val_batches", "log_every_n_steps", "enable_progress_bar", "num_sanity_val_steps"}
    kwargs = exp.trainer.model_dump(exclude=skip)
    return L.Trainer(
        **{k: v for k, v in kwargs.items() if v is not None},
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,  # the finder draws its own bar
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10**6,  # the range test needs no validation; without this it would run every epoch
        max_epochs=10**6,  # a small train split is cycled until num_training steps are done
        reload_dataloaders_every_n_epochs=1 if exp.performance.feature_cache != "off" else 0,
        default_root_dir=root,
    )


class _RichBar:
    """What Lightning's lr-finder callback asks of tqdm (desc, total, update, close), drawn with Rich as fit's bars
    are. Why by hand: Lightning's _LRCallback always draws a tqdm bar and leaves it open when the test runs to its
    end, so a terminal showed tqdm's lines beside fit's Rich bars; Tuner.lr_find offers no switch."""

    open: ClassVar[list[_RichBar]] = []

    def __init__(self, desc: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        self.task = self.progress.add_task(f"lr range test ({desc.lower()})", total=total)
        self.progress.start()
        _RichBar.open.append(self)

    def update(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def close(self) -> None:
        self.progress.stop()


@contextmanager
def _rich_bar() -> Iterator[None]:
    from lightning.pytorch.tuner import lr_finder

    drawn_by, lr_finder.tqdm = lr_finder.tqdm, _RichBar  # type: ignore[attr-defined]
    # Lightning's INFO lines about its own checkpoint of the test ("Restoring states from ...", "`Trainer.fit`
    # stopped ...") would land inside the bar's line; the result is printed after it.
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        lightning_log.setLevel(level)
        lr_finder.tqdm = drawn_by  # type: ignore[attr-defined]
        while _RichBar.open:
            _RichBar.open.pop().close()  # a test that ran all its steps leaves its bar open


def _save_figure(finder: Any, exp: Experiment, phase: int, suggestion: float | None, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = finder.plot(suggest=False)
    ax = fig.axes[0]
    recipe_lr = exp.finetune.phases[phase].optimizer.lr
    ax.axvline(recipe_lr, color="grey", linestyle="--", label=f"recipe lr {recipe_lr:.3g}")
    if suggestion is not None:
        ax.axvline(suggestion, color="red", linestyle=":", label=f"suggestion {suggestion:.3g} (steepest descent)")
        at = finder.results["lr"].index(suggestion)
        ax.plot(suggestion, finder.results["loss"][at], markersize=10, marker="o", color="red")
    label = exp.finetune.phases[phase].name or f"phase{phase}"
    ax.set_title(f"{exp.name}: lr range test of finetune.phases.{phase} '{label}'")
    ax.set_ylabel("training loss (smoothed)")
    ax.legend()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"lr-find-{exp.name}-phase{phase}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _log_run(exp: Experiment, uri: str, result: LrFindResult, extra_tags: dict[str, str]) -> str:
    """A run of its own (run kind lr_find): the plot, the curve, the suggestion and the test's settings."""
    run_id = runs.start_run(exp, uri, {tags.RUN_KIND: RUN_KIND, **extra_tags})
    client = runs.client_for(uri)
    client.log_param(run_id, "lr_find.phase", result.phase)
    client.log_param(run_id, "lr_find.steps", len(result.lrs))
    finite = [i for i, loss in enumerate(result.losses) if math.isfinite(loss)]  # a diverged step logs no point
    runs.log_series(
        client,
        run_id,
        {"lr_find/lr": [result.lrs[i] for i in finite], "lr_find/loss": [result.losses[i] for i in finite]},
    )
    if result.suggestion is not None:
        runs.log_metrics(client, run_id, {"lr_find/suggestion": result.suggestion})
    client.log_artifact(run_id, str(result.figure), "lr_find")
    runs.log_json(client, run_id, _report(result), f"lr_find/phase{result.phase}.json")
    runs.finish_run(client, run_id, "FINISHED")
    return run_id


def _report(result: LrFindResult) -> dict[str, Any]:
    return {
        "phase": result.phase,
        "suggestion": result.suggestion,
        "method": "steepest descent of the smoothed loss per decade of lr (Lightning's Tuner.lr_find runs the test)",
        "overrides": result.overrides,
        "lr": result.lrs,
        "loss": [x if math.isfinite(x) else None for x in result.losses],
        "seconds": result.seconds,
    }

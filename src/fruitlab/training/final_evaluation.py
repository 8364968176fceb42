"""The last step of fit: the best checkpoint evaluated on val (and test), logged to the run.

The numbers come from the same pipeline as `fruitlab evaluate` (evaluation/metrics.py: evaluate_probabilities) and
carry the same names, `{stage}/{task}/{metric}` with stage `val_best` or `test` (names.metric_key); fit adds a
per-class CSV, a confusion matrix image and the report JSON per split under `evaluation/`.

When the best checkpoint is the one saved after the last validation pass (training kept improving to the end),
the val numbers come from that pass's predictions (LastValidation): the same weights on the same images, so
running the model over val once more would only repeat it.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from fruitlab.evaluation.metrics import evaluate_probabilities, headline
from fruitlab.evaluation.report import confusion_figure, predict_batches
from fruitlab.names import JOINT, SINGLE_TASK, VAL_BEST, metric_key

SPLITS = ("val", "test")
SUMMARY = ("acc", "f1_macro")  # what fit returns and prints per task (every metric is logged)


class LastValidation(Callback):
    """Softmax probabilities and labels of the last validation pass (one process), and the step it ran at."""

    def __init__(self) -> None:
        self.probs: dict[str, list[torch.Tensor]] = {}
        self.labels: dict[str, list[torch.Tensor]] = {}
        self.global_step: int | None = None  # set when a complete pass was kept

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.probs, self.labels, self.global_step = {}, {}, None

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.sanity_checking or trainer.world_size != 1 or not isinstance(outputs, dict):
            return
        target = batch[1] if isinstance(batch[1], dict) else {SINGLE_TASK: batch[1]}
        for task, logits in outputs.items():
            self.probs.setdefault(task, []).append(logits.detach().float().softmax(-1).cpu())
            self.labels.setdefault(task, []).append(torch.as_tensor(target[task]).cpu())

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking and self.probs:
            self.global_step = trainer.global_step

    def predictions(self, global_step: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """({task: probs}, {task: labels}) if the last pass ran at `global_step` (the weights of that step)."""
        if self.global_step is None or self.global_step != global_step:
            return None
        return {t: torch.cat(v) for t, v in self.probs.items()}, {t: torch.cat(v) for t, v in self.labels.items()}


def evaluate_best(
    client: Any,
    run_id: str,
    module: Any,
    checkpoint: ModelCheckpoint,
    datamodule: Any,
    last_validation: LastValidation | None = None,
) -> tuple[str, dict[str, dict[str, Any]], dict[str, float]]:
    """(the best checkpoint's path, {split: evaluation}, its scores) after loading the best weights into `module`.

    The reports and figures are logged here; the scores are left to the caller, who logs them once the model is,
    linked to it (runs.log_metrics' model_id)."""
    best = checkpoint.best_model_path or checkpoint.last_model_path
    best_phase, best_step = module.plan.index, None
    if best:
        # fit's own checkpoint: tensors and plain containers only, so no unpickling of arbitrary objects
        state = torch.load(best, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
        best_phase = int(state.get("fruitlab_phase", {}).get("index", module.plan.index))
        best_step = state.get("global_step")
    reports, scores = {}, {}
    for split in SPLITS:
        if datamodule.has_split(split):
            known = last_validation.predictions(best_step) if split == "val" and last_validation else None
            # From the feature cache when the best epoch's phase cached this split (the frozen part is the same)
            cached = datamodule.cached_evaluation(split, best_phase) if known is None else None
            reports[split], split_scores = _evaluate_and_log(
                client, run_id, module.model, datamodule, split, cached, known
            )
            scores |= split_scores
    return best, reports, scores


def summary_metrics(reports: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    for split, evaluation in reports.items():
        for task, report in evaluation["tasks"].items():
            out.update({metric_key(stage(split), task, k): report[k] for k in SUMMARY})
        if evaluation["joint_acc"] is not None:
            out[metric_key(stage(split), JOINT, "acc")] = evaluation["joint_acc"]
    return out


def stage(split: str) -> str:
    return VAL_BEST if split == "val" else "test"


def _evaluate_and_log(
    client: Any, run_id: str, model: Any, datamodule: Any, split: str, cached: Any = None, known: Any = None
) -> tuple[dict[str, Any], dict[str, float]]:
    """(evaluation, scores) of the best model on one split; its report JSON, per-class CSV and confusion matrix
    per task are logged.

    `known`: (probs, labels) of these weights on this split already (LastValidation); `cached`: (loader of cached
    tensors, the model's forward from them); else the images go through the model.
    """
    model.eval()
    with torch.inference_mode():
        if known is not None:
            probs, labels = known
        elif cached is not None:
            probs, labels = predict_batches(cached[1], cached[0])
        else:
            probs, labels = predict_batches(model, datamodule._loader(split, train=False))
    evaluation = evaluate_probabilities(
        {t: p.numpy() for t, p in probs.items()}, {t: y.numpy() for t, y in labels.items()}, model.tasks
    )
    metrics = {}
    multi = len(evaluation["tasks"]) > 1
    for task, report in evaluation["tasks"].items():
        metrics |= {metric_key(stage(split), task, k): v for k, v in headline(report).items()}
        name = f"{split}_{task}" if multi else split
        client.log_text(run_id, _per_class_csv(report), f"evaluation/{name}_per_class.csv")
        title = f"{split} {task + ' ' if multi else ''}confusion matrix (n={report['n']})"
        client.log_figure(run_id, confusion_figure(report, title), f"evaluation/{name}_confusion.png")
    if evaluation["joint_acc"] is not None:
        metrics[metric_key(stage(split), JOINT, "acc")] = evaluation["joint_acc"]
    from fruitlab.tracking import runs  # MLflow's client code: imported after training (training/fit.py)

    runs.log_json(client, run_id, evaluation, f"evaluation/{split}_report.json")
    return evaluation, metrics


def _per_class_csv(report: dict[str, Any]) -> str:
    rows = ["class,precision,recall,f1,support"]
    rows += [
        f"{r['class']},{r['precision']:.6f},{r['recall']:.6f},{r['f1']:.6f},{r['support']}" for r in report["per_class"]
    ]
    return "\n".join(rows) + "\n"

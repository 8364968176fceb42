"""What a fit run shows on its MLflow page beyond metrics and params: the data it used (a dataset input, linked to
the logged model's scores), where its fine-tuning phases began and ended (tags and a learning-curve figure with
the phase boundaries), and a description (MLflow's markdown note) with the recipe, the split and the scores.

Everything here is written once, at the end of fit, from what the run itself logged: the per-epoch `phase` metric
gives the phases as they ran (early stopping can end a phase before its planned epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from fruitlab.config import Experiment, PhaseConfig
from fruitlab.tracking import compare, compare_report, runs, tags

CURVES_ARTIFACT = "learning_curves.png"


@dataclass(frozen=True)
class DataUsed:
    """The dataset a run trained on, as MLflow's dataset input names it: its digest is fruitlab's fingerprint."""

    dataset: str
    split: str  # the split scheme (dli, grouped, ...)
    root: str  # where its files are
    fingerprint: str
    counts: dict[str, int]  # images per split
    classes: int

    @property
    def name(self) -> str:
        return f"{self.dataset} ({self.split})"


def log_dataset(client: MlflowClient, run_id: str, data: DataUsed) -> None:
    """The dataset as the run's input (the runs table's Datasets column): source = its folder, digest = fingerprint."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]

    dataset = MetaDataset(LocalArtifactDatasetSource(data.root), name=data.name, digest=data.fingerprint)
    context = InputTag("mlflow.data.context", "training")
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[context])])


def phase_spans(client: MlflowClient, run_id: str) -> list[tuple[int, int, int]]:
    """[(phase index, first epoch, last epoch)] as the run went (epochs from 1), from its `phase` metric."""
    points = compare.run_summary(client, client.get_run(run_id), "").curves.get("phase", [])
    spans: list[tuple[int, int, int]] = []
    for epoch, value in points:
        phase = int(value)
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], epoch)
        else:
            spans.append((phase, epoch, epoch))
    return spans


def describe(
    client: MlflowClient,
    run_id: str,
    exp: Experiment,
    data: DataUsed,
    scores: dict[str, float],
    weights: str,
) -> None:
    """Phase tags, the learning-curve figure and the run description, from what the run logged."""
    spans = phase_spans(client, run_id)
    phases = exp.finetune.phases
    ran = "; ".join(f"{_label(phases, i)}: epochs {a}-{b}" for i, a, b in spans)
    run_tags = {tags.PHASES: ran} if ran else {}
    if spans:
        run_tags[tags.PHASE] = _label(phases, spans[-1][0])
    run_tags[tags.NOTE] = note(exp, data, scores, spans, weights)
    runs.set_tags(client, run_id, run_tags)
    log_learning_curves(client, run_id)


def log_learning_curves(client: MlflowClient, run_id: str) -> None:
    """The run's loss and accuracy per epoch with dotted lines where a phase begins: compare's figure, one run."""
    summary = compare.run_summary(client, client.get_run(run_id), "")
    if not summary.curves:
        return
    figure = compare_report.curves_figure(compare.Comparison([summary], summary.name, run_id[:8], ""))
    client.log_figure(run_id, figure, CURVES_ARTIFACT)


def note(
    exp: Experiment, data: DataUsed, scores: dict[str, float], spans: list[tuple[int, int, int]], weights: str
) -> str:
    """The run description in markdown: what was trained on what, the recipe as it ran, the scores."""
    counts = " / ".join(f"{n:,} {split}" for split, n in data.counts.items())
    lines = [
        f"**{exp.name}**" + (f": {exp.description}" if exp.description else ""),
        "",
        f"- model: `{exp.model.backbone}` (weights: {weights})",
        f"- data: `{data.dataset}`, split `{data.split}`: {counts} images, {data.classes} classes",
        f"- data fingerprint: `{data.fingerprint}` (the dataset input's digest)",
        f"- seed: {exp.seed}; learning curves: `{CURVES_ARTIFACT}` (MLflow's step = epoch)",
        "",
        "| phase | epochs run | trains | optimizer | lr head / backbone | schedule |",
        "|---|---|---|---|---|---|",
    ]
    ran = {i: f"{a}-{b}" for i, a, b in spans}
    for i, phase in enumerate(exp.finetune.phases):
        lines.append(_phase_row(exp.finetune.phases, i, phase, ran.get(i, "not reached")))
    if scores:
        lines += ["", "| score of the best checkpoint | value |", "|---|---|"]
        lines += [f"| `{key}` | {value:.4f} |" for key, value in scores.items()]
    return "\n".join(lines) + "\n"


def _phase_row(phases: list[PhaseConfig], i: int, phase: PhaseConfig, ran: str) -> str:
    opt = phase.optimizer
    spec = {} if isinstance(phase.train, str) else phase.train.model_dump(exclude_none=True)
    train = phase.train if isinstance(phase.train, str) else ", ".join(f"{k}: {v}" for k, v in spec.items())
    lr = f"{opt.lr:g}" + (f" / {opt.backbone_lr:g}" if opt.backbone_lr else "")
    planned = f"{ran} (of {phase.epochs} planned)"
    return f"| {i} {_label(phases, i)} | {planned} | {train} | {opt.name} | {lr} | {phase.schedule.name} |"


def _label(phases: list[PhaseConfig], index: int) -> str:
    return phases[index].name or f"phase{index}" if index < len(phases) else f"phase{index}"

"""`fruitlab evaluate`: a logged model on a dataset split, as an MLflow evaluation run and one HTML report.

The recipe: check the cheap inputs, load the model and find its run (and the experiment it was fitted with), load
the data as that experiment split it, one pass over the images (two with flip TTA) keeping logits, a temperature
(fitted now on the validation split, or the one stored with the model), the metrics from the probabilities; then
what they are worth: how many images copy a training image (train_copies.py), the model's own val split beside
them (--shift), accuracy under common corruptions (--corruptions, robustness.py); the images (most confidently
wrong, Grad-CAM); then log and write (evalrun.py). No Lightning, no training code.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from fruitlab.errors import FruitlabError
from fruitlab.evaluation.confidence import check_threshold, fit_temperature, nll_at
from fruitlab.evaluation.corruptions import DEFAULT_SEVERITIES
from fruitlab.evaluation.html import render_report
from fruitlab.evaluation.metrics import evaluate_probabilities
from fruitlab.evaluation.records import predictions_csv
from fruitlab.inference import evalreport, evalrun
from fruitlab.inference.evaldata import (
    EvalData,
    check_data,
    check_split,
    load_eval_data,
    load_model_data,
    load_run_experiment,
)
from fruitlab.inference.predict import Predictor, load_predictor
from fruitlab.inference.robustness import score_corruptions
from fruitlab.inference.scoring import Scores, probabilities, score
from fruitlab.inference.train_copies import find_train_copies
from fruitlab.names import SINGLE_TASK
from fruitlab.tracking import evaluations, runs
from fruitlab.tracking.refs import ModelRef, ResolvedModel

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    run_id: str
    report_path: Path
    evaluation: dict[str, Any]
    temperature: dict[str, float] | None
    tracking_uri: str
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)  # robustness, shift, copies: see evaluate()

    def summary(self) -> str:
        parts = []
        for task, r in self.evaluation["tasks"].items():
            name = "" if task == SINGLE_TASK else f"{task} "
            parts.append(f"{name}accuracy {r['acc']:.4f}  {name}ECE {r['ece']:.4f}")
        if self.evaluation.get("joint_acc") is not None:
            parts.append(f"joint accuracy {self.evaluation['joint_acc']:.4f}")
        parts.append(f"(n={self.evaluation['n']})")
        parts += _extra_summary(self.report)
        return f"{'  '.join(parts)}  report {self.report_path}  eval run {self.run_id}"


def _extra_summary(report: dict[str, Any]) -> list[str]:
    """One phrase each for the corruptions, the distribution shift and the training copies, when there are any."""
    out = []
    if report.get("robustness"):
        r = report["robustness"]
        out.append(f"mean corruption accuracy {r['mean']['acc']:.4f} (clean {r['clean']['acc']:.4f})")
    if report.get("shift"):
        own, shifted = report["shift"]["in_distribution"], report["shift"]["shifted"]
        task = next(iter(own["tasks"]))
        key = "joint_acc" if own["joint_acc"] is not None else None
        a, b = (own[key], shifted[key]) if key else (own["tasks"][task]["acc"], shifted["tasks"][task]["acc"])
        out.append(f"distribution shift: accuracy {b:.4f} (n={shifted['n']}) vs in-distribution {a:.4f} (n={own['n']})")
    copies = report.get("copies")
    if copies and copies["count"]:
        out.append(f"LEAKY: {copies['count']} of {copies['n']} images copy a training image")
    return out


def evaluate(
    model: str,
    data: str,
    *,
    split: str | None = None,
    tta: bool = False,
    threshold: float | None = None,
    fit_temp: bool = False,
    out: str | Path | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    uri: str | None = None,
    trust_pickle: bool = False,
    corruptions: list[str] | None = None,
    severities: list[int] | None = None,
    corruption_sample: int | None = None,
    shift: bool = False,
    copy_check: bool = True,
) -> EvaluationResult:
    """`corruptions`: score under these (evaluation/corruptions.py) at `severities` (on a sample of
    `corruption_sample` images); `shift`: `data` is shifted data, reported beside the model's own val split;
    `copy_check`: count the images that copy a training image."""
    lap = _Laps()
    # 1. Cheap input checks: a typo fails before the model or any image is loaded.
    check_threshold(threshold)
    split = check_split(split)
    uri = runs.tracking_uri(uri)
    client = runs.client_for(uri)

    # 2. The model, the run that logged it, and the experiment that run was fitted with.
    predictor = load_predictor(model, device=device, uri=uri, use_temperature=False, trust_pickle=trust_pickle)
    ref = predictor.resolved or ResolvedModel(ModelRef.parse(model), predictor.source)
    exp = load_run_experiment(uri, ref.run_id)
    _check_options(model, uri, ref, exp, fit_temp, shift, data)
    lap("model")

    # 3. The data, labelled as the model labels; one pass (two with TTA) keeps the logits.
    target = load_eval_data(data, split, predictor.labels, exp, data_dir)
    lap("data")
    scores = score(predictor, target.items, tta, batch_size)
    lap("predictions")

    # 4. Temperature, then every metric from the probabilities it gives.
    temperature = _temperature(client, ref, predictor, data, target, scores, fit_temp, exp, data_dir, batch_size)
    probs, report = _metrics(predictor, target, scores, temperature, tta, threshold)
    lap("temperature + metrics")

    # 5. What the figures are worth: copies of training images among them, the model's own data beside them, and
    #    the same images under common corruptions.
    copies = find_train_copies(client, ref, exp, target, data_dir) if copy_check else None
    if copies and copies.warning:
        log.warning("%s", copies.warning)
    report["copies"] = copies.to_dict() if copies else None
    report["shift"] = (
        _shift(predictor, target, report["evaluation"], exp, data_dir, batch_size, tta, temperature) if shift else None
    )
    lap("copies + shift")
    levels = severities or list(DEFAULT_SEVERITIES)
    report["robustness"] = (
        score_corruptions(predictor, target, scores, corruptions, levels, batch_size, corruption_sample)
        if corruptions
        else None
    )
    lap("corruptions")

    # 6. Plots and images: most confidently wrong, Grad-CAM.
    figures = evalreport.report_figures(report["evaluation"], probs, target, threshold)
    galleries = {f"wrong/{t}": evalreport.wrong_tiles(predictor, target, t, p) for t, p in probs.items()}
    cams, report["gradcam_note"] = evalreport.gradcam_tiles(predictor, target, probs)
    galleries.update(cams)
    lap("plots, images + Grad-CAM")
    report["seconds"] = lap.laps

    # 7. The evaluation run, linked to the model; the report on disk and as its artifact.
    run_id, path = _write(client, uri, model, predictor, ref, target, report, probs, figures, galleries, out, lap)
    values = temperature["values"] if temperature else None
    return EvaluationResult(run_id, path, report["evaluation"], values, uri, lap.total(), report)


def _check_options(model, uri, ref, exp, fit_temp: bool, shift: bool, data: str) -> None:
    if fit_temp and ref.model_id is None:
        raise FruitlabError(
            f"--fit-temperature stores the temperature with a logged model; {model} is not one in {uri} "
            "(give models:/NAME@ALIAS, a run id or runs:/ID/model)"
        )
    if shift and exp is None:
        raise FruitlabError(
            f"--shift puts the figures beside those on the model's own val split, but {model} has no training run "
            "with an experiment config to find that split in; evaluate it on its own data separately"
        )
    if shift and _is_model_data(data, exp):
        raise FruitlabError(
            f"--shift: --data {data} is the model's own dataset; give a folder (or dataset) of other photos of the "
            "same classes to compare with it"
        )


def _is_model_data(data: str, exp: Any) -> bool:
    """Does `data` (a dataset name or a folder) name the data the model was fitted on?"""
    folder = check_data(data)
    if folder is None:
        return data == exp.data.dataset
    return exp.data.dataset == "image_folder" and Path(exp.data.root or "").resolve() == folder.resolve()


def _metrics(predictor, target, scores, temperature, tta, threshold) -> tuple[dict[str, Any], dict[str, Any]]:
    """(probabilities per task, the report's metric parts): headline, per class, thresholds, TTA effect."""
    values = temperature["values"] if temperature else None
    probs = probabilities(scores, values, tta)
    evaluation = evaluate_probabilities(probs, target.targets, predictor.labels)
    if temperature:
        raw = evaluate_probabilities(probabilities(scores, None, tta), target.targets, predictor.labels)["tasks"]
        temperature["before"] = {t: {"nll": r["nll"], "ece": r["ece"]} for t, r in raw.items()}
        temperature["after"] = {t: {"nll": r["nll"], "ece": r["ece"]} for t, r in evaluation["tasks"].items()}
    without_tta = probabilities(scores, values)
    report: dict[str, Any] = {
        "evaluation": evaluation,
        "tta": tta,
        "threshold": threshold,
        "thresholds": evalreport.thresholds(probs, target, threshold),
        "temperature": temperature,
        "tta_effect": evalreport.tta_effect(probs, without_tta, target, predictor.labels) if tta else None,
    }
    return probs, report


def _shift(predictor, target, evaluation, exp, data_dir, batch_size, tta, temperature) -> dict[str, Any]:
    """With --shift: the model's own val split scored like `target`, for the side-by-side table."""
    own = load_model_data(exp, "val", predictor.labels, data_dir)
    own_probs = probabilities(score(predictor, own.items, tta, batch_size), temperature and temperature["values"], tta)
    return evalreport.shift_figures(target, evaluation, own, own_probs, predictor.labels)


def _write(client, uri, model, predictor, ref, target, report, probs, figures, galleries, out, lap):
    """(evaluation run id, report path): the run, the HTML page on disk, both logged; the run FAILED on an error."""
    threshold = report["threshold"]
    run_id = evaluations.start_evaluation_run(client, uri, ref, model, f"evaluate {target.split} {_short(model)}")
    try:
        temperature = report["temperature"]
        if temperature and "fitted_on" in temperature:  # fitted now (--fit-temperature), not loaded
            evaluations.store_temperature(client, ref.model_id, temperature["values"], run_id, temperature["fitted_on"])
        csvs = {
            f"predictions_{t}.csv": predictions_csv(target.paths, target.targets[t], p, predictor.labels[t], threshold)
            for t, p in probs.items()
        }
        report["prediction_files"] = [f"evaluation/{name}" for name in csvs]
        report["title"] = f"Evaluation of {model} on {target.name}, {target.split} split"
        report["meta"] = evalrun.meta(model, predictor, ref, target, run_id, uri, report, lap)
        html = render_report(report, figures, galleries)
        path = Path(out or "reports") / f"{_slug(model, target)}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html)
        pngs = {f"figures/{key.replace('/', '_')}.png": png for key, png in figures.items()}
        evalrun.log_evaluation(client, run_id, ref, target, report, {"report.html": html, **csvs, **pngs})
        evaluations.mark_source_run(client, ref, run_id)
    except BaseException:
        runs.finish_run(client, run_id, "FAILED")
        raise
    runs.finish_run(client, run_id)
    return run_id, path


def _temperature(
    client: MlflowClient,
    ref: ResolvedModel,
    predictor: Predictor,
    data: str,
    target: EvalData,
    scores: Scores,
    fit: bool,
    exp: Any,
    data_dir: str | None,
    batch_size: int,
) -> dict[str, Any] | None:
    """{'values': {task: T}, 'source': a sentence for the report, 'fitted_on'}: fitted on val now, or stored."""
    if not fit:
        stored = evaluations.load_temperature(client, ref.model_id)
        if stored:
            stored["source"] = (
                f"Temperature stored with the model (logged model {ref.model_id}), fitted on {stored['data']} by "
                f"evaluation run {stored['run_id']}; applied to every probability in this report."
            )
        return stored
    # Fitted on validation data only: a temperature fitted on the test split would flatter the test ECE.
    val, val_scores = target, scores
    if target.split != "val":
        val = load_eval_data(data, "val", predictor.labels, exp, data_dir)
        val_scores = score(predictor, val.items, False, batch_size)
    values = {t: fit_temperature(z, val.targets[t]) for t, z in val_scores.logits.items()}
    nll = {t: (nll_at(z, val.targets[t]), nll_at(z, val.targets[t], values[t])) for t, z in val_scores.logits.items()}
    fitted_on = f"{val.name} val (n={len(val)})"
    change = "; ".join(f"{t}: T={values[t]:.3f}, NLL {a:.4f} -> {b:.4f}" for t, (a, b) in nll.items())
    same = " This report evaluates the same images, so its calibration figures are optimistic." if val is target else ""
    source = f"Fitted now on {fitted_on} ({change}) and stored with the model (logged model {ref.model_id}).{same}"
    return {"values": values, "source": source, "fitted_on": fitted_on}


class _Laps:
    """Seconds per stage of an evaluation, for the report (where the time goes on a slow machine)."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage], self.last = now - self.last, now

    def total(self) -> float:
        return time.perf_counter() - self.started


def _short(model: str) -> str:
    """models:/NAME@ALIAS -> NAME@ALIAS; a run id (or runs:/ID/...) -> its first 8 digits; a folder -> its name."""
    return ModelRef.parse(model).short


def _slug(model: str, target: EvalData) -> str:
    """A file name: evaluate-<model>-<data>-<split>."""
    data = Path(target.name).name if Path(target.name).is_absolute() else target.name.split(" ")[0]
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", f"evaluate-{_short(model)}-{data}-{target.split}").strip("_")

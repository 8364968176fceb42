"""`fruitlab evaluate`: a logged model on a dataset split, as an MLflow evaluation run and one HTML report.

The recipe: check the cheap inputs, load the model and find its run (and the experiment it was fitted with), load
the data as that experiment split it, one pass over the images (two with flip TTA) keeping logits, a temperature
(fitted now on the validation split, or the one stored with the model), the metrics from the probabilities, the
images (most confidently wrong, Grad-CAM), then log and write. No Lightning, no training code.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from fruitlab import __version__
from fruitlab.errors import FruitlabError
from fruitlab.evaluation.confidence import check_threshold, fit_temperature, nll_at
from fruitlab.evaluation.html import render_report
from fruitlab.evaluation.metrics import evaluate_probabilities, headline
from fruitlab.evaluation.records import predictions_csv
from fruitlab.inference import evalreport
from fruitlab.inference.evaldata import EvalData, check_split, load_eval_data, load_run_experiment
from fruitlab.inference.predict import Predictor, load_predictor
from fruitlab.inference.scoring import Scores, probabilities, score
from fruitlab.names import JOINT, SINGLE_TASK, metric_key
from fruitlab.tracking import evaluations, runs
from fruitlab.tracking.refs import ModelRef, ResolvedModel


@dataclass
class EvaluationResult:
    run_id: str
    report_path: Path
    evaluation: dict[str, Any]
    temperature: dict[str, float] | None
    tracking_uri: str
    seconds: float

    def summary(self) -> str:
        parts = []
        for task, r in self.evaluation["tasks"].items():
            name = "" if task == SINGLE_TASK else f"{task} "
            parts.append(f"{name}accuracy {r['acc']:.4f}  {name}ECE {r['ece']:.4f}")
        if self.evaluation.get("joint_acc") is not None:
            parts.append(f"joint accuracy {self.evaluation['joint_acc']:.4f}")
        return f"{'  '.join(parts)}  (n={self.evaluation['n']})  report {self.report_path}  eval run {self.run_id}"


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
) -> EvaluationResult:
    lap = _Laps()
    # 1. Cheap input checks: a typo fails before the model or any image is loaded.
    check_threshold(threshold)
    split = check_split(split)
    uri = runs.tracking_uri(uri)
    client = runs.client_for(uri)

    # 2. The model, the run that logged it, and the experiment that run was fitted with.
    predictor = load_predictor(model, device=device, uri=uri, use_temperature=False, trust_pickle=trust_pickle)
    ref = predictor.resolved or ResolvedModel(ModelRef.parse(model), predictor.source)
    if fit_temp and ref.model_id is None:
        raise FruitlabError(
            f"--fit-temperature stores the temperature with a logged model; {model} is not one in {uri} "
            "(give models:/NAME@ALIAS, a run id or runs:/ID/model)"
        )
    exp = load_run_experiment(uri, ref.run_id)
    lap("model")

    # 3. The data, labelled as the model labels; one pass (two with TTA) keeps the logits.
    target = load_eval_data(data, split, predictor.labels, exp, data_dir)
    lap("data")
    scores = score(predictor, target.items, tta, batch_size)
    lap("predictions")

    # 4. Temperature, then every metric from the probabilities it gives.
    temperature = _temperature(client, ref, predictor, data, target, scores, fit_temp, exp, data_dir, batch_size)
    values = temperature["values"] if temperature else None
    probs = probabilities(scores, values, tta)
    evaluation = evaluate_probabilities(probs, target.targets, predictor.labels)
    if temperature:
        raw = evaluate_probabilities(probabilities(scores, None, tta), target.targets, predictor.labels)["tasks"]
        temperature["before"] = {t: {"nll": r["nll"], "ece": r["ece"]} for t, r in raw.items()}
        temperature["after"] = {t: {"nll": r["nll"], "ece": r["ece"]} for t, r in evaluation["tasks"].items()}
    lap("temperature + metrics")

    report: dict[str, Any] = {
        "evaluation": evaluation,
        "threshold": threshold,
        "thresholds": evalreport.thresholds(probs, target, threshold),
        "temperature": temperature,
        "tta_effect": evalreport.tta_effect(probs, probabilities(scores, values), target, predictor.labels)
        if tta
        else None,
    }
    figures = evalreport.report_figures(evaluation, probs, target, threshold)
    lap("plots")
    galleries = {f"wrong/{t}": evalreport.wrong_tiles(predictor, target, t, p) for t, p in probs.items()}
    cams, report["gradcam_note"] = evalreport.gradcam_tiles(predictor, target, probs)
    galleries.update(cams)
    lap("images + Grad-CAM")
    report["seconds"] = lap.laps

    # 5. The evaluation run, linked to the model; the report on disk and as its artifact.
    run_id = evaluations.start_evaluation_run(client, uri, ref, model, f"evaluate {target.split} {_short(model)}")
    try:
        if temperature and fit_temp:
            evaluations.store_temperature(client, ref.model_id, values, run_id, temperature["fitted_on"])
        csvs = {
            f"predictions_{t}.csv": predictions_csv(target.paths, target.targets[t], p, predictor.labels[t], threshold)
            for t, p in probs.items()
        }
        report["prediction_files"] = [f"evaluation/{name}" for name in csvs]
        report["title"] = f"Evaluation of {model} on {target.name}, {target.split} split"
        report["meta"] = _meta(model, predictor, ref, target, run_id, uri, tta, threshold, values, lap)
        html = render_report(report, figures, galleries)
        path = Path(out or "reports") / f"{_slug(model, target)}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html)
        _log(client, run_id, ref, target, report, figures, csvs, html, tta)
        evaluations.mark_source_run(client, ref, run_id)
    except BaseException:
        runs.finish_run(client, run_id, "FAILED")
        raise
    runs.finish_run(client, run_id)
    return EvaluationResult(run_id, path, evaluation, values, uri, lap.total())


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


def _log(
    client: MlflowClient,
    run_id: str,
    ref: ResolvedModel,
    target: EvalData,
    report: dict[str, Any],
    figures: dict[str, bytes],
    csvs: dict[str, str],
    html: str,
    tta: bool,
) -> None:
    evaluations.link_inputs(client, run_id, ref, target.name, target.fingerprint, target.root)
    params = {
        "data": target.name,
        "split": target.split,
        "n": len(target),
        "tta": tta,
        "threshold": report["threshold"],
    }
    if report["temperature"]:
        params["temperature"] = json.dumps(report["temperature"]["values"])
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    evaluations.log_linked_metrics(
        client, run_id, _metrics(report, target.split), ref, (target.name, target.fingerprint)
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "report.html").write_text(html)
        for name, text in csvs.items():
            (folder / name).write_text(text)
        for key, png in figures.items():
            (folder / "figures").mkdir(exist_ok=True)
            (folder / "figures" / f"{key.replace('/', '_')}.png").write_bytes(png)
        keys = ("evaluation", "thresholds", "temperature", "tta_effect", "threshold", "seconds")
        summary = {k: report[k] for k in keys}
        (folder / "metrics.json").write_text(json.dumps(summary, indent=1))
        client.log_artifacts(run_id, tmp, "evaluation")


def _metrics(report: dict[str, Any], split: str) -> dict[str, float]:
    """`{split}/{task}/{metric}` like fit's names; TTA and calibration variants as suffixes."""
    out = {}
    evaluation = report["evaluation"]
    for task, r in evaluation["tasks"].items():
        out.update({f"{split}/{task}/{k}": v for k, v in headline(r).items()})
        if report["tta_effect"]:
            out.update({f"{split}/{task}/{k}_no_tta": v for k, v in report["tta_effect"][task]["without"].items()})
        if report["temperature"]:
            out[f"{split}/{task}/temperature"] = report["temperature"]["values"][task]
            out.update(
                {f"{split}/{task}/{k}_uncalibrated": v for k, v in report["temperature"]["before"][task].items()}
            )
        chosen = [row for row in report["thresholds"][task] if row["threshold"] == report["threshold"]]
        if chosen:
            out[f"{split}/{task}/coverage_at_threshold"] = chosen[0]["coverage"]
            if chosen[0]["accuracy"] is not None:
                out[f"{split}/{task}/acc_at_threshold"] = chosen[0]["accuracy"]
    if evaluation.get("joint_acc") is not None:
        out[metric_key(split, JOINT, "acc")] = evaluation["joint_acc"]
    return out


def _meta(model, predictor, ref, target, run_id, uri, tta, threshold, temperature, lap) -> dict[str, Any]:
    return {
        "model": model if model == predictor.source else f"{model} ({predictor.source})",
        "trained by run": ref.run_id,
        "logged model": ref.model_id,
        "data": f"{target.name}, {target.split} split, {len(target)} images (fingerprint {target.fingerprint})",
        "test-time augmentation": "horizontal flip averaging" if tta else "off",
        "threshold": "none" if threshold is None else f"{threshold:g} (below it the answer is unknown)",
        "temperature": ", ".join(f"{t}: T={v:.3f}" for t, v in temperature.items()) if temperature else None,
        "evaluation run": f"{run_id} in {uri}",
        "written": f"{datetime.now().isoformat(timespec='seconds')} by fruitlab {__version__}",
        "seconds": f"{lap.total():.0f} until this page: " + ", ".join(f"{k} {v:.1f}" for k, v in lap.laps.items()),
    }


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

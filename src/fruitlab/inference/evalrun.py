"""What an evaluation leaves in MLflow: the run's inputs, params, metrics, tags and artifacts (report, predictions)."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from fruitlab import __version__
from fruitlab.evaluation.metrics import headline
from fruitlab.inference.evaldata import EvalData
from fruitlab.inference.robustness import corruption_metrics
from fruitlab.names import IN_DISTRIBUTION, JOINT, SHIFT_DROP, TRAIN_COPIES, metric_key
from fruitlab.tracking import evaluations, runs, tags
from fruitlab.tracking.refs import ResolvedModel

SUMMARY_KEYS = ("evaluation", "thresholds", "temperature", "tta_effect", "threshold", "seconds")
SUMMARY_KEYS += ("robustness", "shift", "copies")


def log_evaluation(
    client: MlflowClient,
    run_id: str,
    ref: ResolvedModel,
    target: EvalData,
    report: dict[str, Any],
    files: dict[str, str | bytes],
) -> None:
    """Inputs, params, metrics and tags of the evaluation run; `files` (relative path -> content) as artifacts."""
    evaluations.link_inputs(client, run_id, ref, target.name, target.fingerprint, target.root)
    params = {
        "data": target.name,
        "split": target.split,
        "n": len(target),
        "tta": report["tta"],
        "threshold": report["threshold"],
    }
    if report["temperature"]:
        params["temperature"] = json.dumps(report["temperature"]["values"])
    if report["robustness"]:
        params["corruptions"] = ",".join(report["robustness"]["table"])
        params["corruption_severities"] = ",".join(str(s) for s in report["robustness"]["severities"])
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    evaluations.log_linked_metrics(
        client, run_id, metrics(report, target.split), ref, (target.name, target.fingerprint)
    )
    copies = report["copies"]
    run_tags = {tags.TRAIN_COPIES: "unchecked" if not copies or copies["count"] is None else str(copies["count"])}
    if report["shift"]:
        run_tags[tags.IN_DISTRIBUTION] = report["shift"]["in_distribution"]["data"]
    runs.set_tags(client, run_id, run_tags)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, content in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                (folder / name).write_bytes(content)
            else:
                (folder / name).write_text(content)
        (folder / "metrics.json").write_text(json.dumps({k: report[k] for k in SUMMARY_KEYS}, indent=1, default=str))
        client.log_artifacts(run_id, tmp, "evaluation")


def metrics(report: dict[str, Any], split: str) -> dict[str, float]:
    """`{split}/{task}/{metric}` like fit's names; TTA and calibration variants as suffixes; robustness, shift."""
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
    if report["robustness"]:
        out.update(corruption_metrics(report["robustness"]))
    if report["shift"]:
        own, shifted = report["shift"]["in_distribution"], report["shift"]["shifted"]
        out[f"{IN_DISTRIBUTION}/n"] = own["n"]
        for task, figures in own["tasks"].items():
            out.update({metric_key(IN_DISTRIBUTION, task, k): v for k, v in figures.items()})
            out[metric_key(SHIFT_DROP, task, "acc")] = figures["acc"] - shifted["tasks"][task]["acc"]
    copies = report["copies"]
    if copies and copies["count"] is not None:
        out[TRAIN_COPIES] = copies["count"]
        out[f"{TRAIN_COPIES}_share"] = copies["count"] / max(1, copies["n"])
    return out


def meta(model, predictor, ref, target, run_id, uri, report, laps) -> dict[str, Any]:
    temperature = report["temperature"]["values"] if report["temperature"] else None
    threshold = report["threshold"]
    return {
        "model": model if model == predictor.source else f"{model} ({predictor.source})",
        "trained by run": ref.run_id,
        "logged model": ref.model_id,
        "data": f"{target.name}, {target.split} split, {len(target)} images (fingerprint {target.fingerprint})",
        "test-time augmentation": "horizontal flip averaging" if report["tta"] else "off",
        "threshold": "none" if threshold is None else f"{threshold:g} (below it the answer is unknown)",
        "temperature": ", ".join(f"{t}: T={v:.3f}" for t, v in temperature.items()) if temperature else None,
        "evaluation run": f"{run_id} in {uri}",
        "written": f"{datetime.now().isoformat(timespec='seconds')} by fruitlab {__version__}",
        "seconds": f"{laps.total():.0f} until this page: " + ", ".join(f"{k} {v:.1f}" for k, v in laps.laps.items()),
    }

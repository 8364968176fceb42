"""What goes into an evaluation report besides the metrics: plots, the wrong-prediction grid, Grad-CAM overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fruitlab.evaluation import figures as plots
from fruitlab.evaluation.confidence import THRESHOLDS, threshold_curve, threshold_table
from fruitlab.evaluation.html import Tile
from fruitlab.evaluation.metrics import evaluate_probabilities, headline
from fruitlab.inference.evaldata import EvalData
from fruitlab.inference.predict import Predictor
from fruitlab.inference.saliency import find_target_layer, gradcam_maps, overlay_tiles
from fruitlab.inference.scoring import model_inputs, to_display

N_WRONG = 12  # tiles in the most-confidently-wrong grid, per task
N_CAM = 8  # Grad-CAM overlays per task: up to this many right and this many wrong predictions
SEED = 0  # which right/wrong images the Grad-CAM sample takes: the same on every run


def thresholds(probs: dict[str, np.ndarray], data: EvalData, chosen: float | None) -> dict[str, list[dict[str, Any]]]:
    rows = [*THRESHOLDS, *([chosen] if chosen is not None else [])]
    return {task: threshold_table(p, data.targets[task], rows) for task, p in probs.items()}


def tta_effect(
    with_tta: dict[str, np.ndarray], without: dict[str, np.ndarray], data: EvalData, tasks: dict[str, list[str]]
) -> dict[str, Any]:
    """Per task: headline metrics without and with flip averaging, and how many predictions it fixed or broke."""
    plain = evaluate_probabilities(without, data.targets, tasks)["tasks"]
    tta = evaluate_probabilities(with_tta, data.targets, tasks)["tasks"]
    effect = {}
    for task, y in data.targets.items():
        right_before, right_after = without[task].argmax(1) == y, with_tta[task].argmax(1) == y
        effect[task] = {
            "without": headline(plain[task]),
            "with": headline(tta[task]),
            "fixed": int((~right_before & right_after).sum()),
            "broken": int((right_before & ~right_after).sum()),
        }
    return effect


def report_figures(evaluation: dict[str, Any], probs: dict[str, np.ndarray], data: EvalData, chosen: float | None):
    """{'confusion/<task>' | 'reliability/<task>' | 'thresholds/<task>': PNG bytes}."""
    out = {}
    for task, r in evaluation["tasks"].items():
        out[f"confusion/{task}"] = plots.png_bytes(plots.confusion_pair(r, task))
        out[f"reliability/{task}"] = plots.png_bytes(plots.reliability_diagram(r["reliability"], r["ece"], task))
        curve = threshold_curve(probs[task], data.targets[task])
        out[f"thresholds/{task}"] = plots.png_bytes(plots.threshold_plot(curve, task, chosen))
    return out


def wrong_tiles(predictor: Predictor, data: EvalData, task: str, probs: np.ndarray) -> list[Tile]:
    """The most confidently wrong predictions, surest first, as the model saw them."""
    y, pred, confidence = data.targets[task], probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(pred != y)
    picked = wrong[np.argsort(-confidence[wrong], kind="stable")][:N_WRONG]
    if not len(picked):
        return []
    images = to_display(predictor, model_inputs(predictor, [data.items[i] for i in picked]))
    names = predictor.labels[task]
    return [
        Tile(
            image,
            [
                Path(data.paths[i]).name,
                f"true {names[y[i]]} ({probs[i, y[i]]:.3f})",
                f"pred {names[pred[i]]} ({probs[i, pred[i]]:.3f})",
            ],
            "wrong",
        )
        for image, i in zip(images, picked, strict=True)
    ]


def gradcam_tiles(predictor: Predictor, data: EvalData, probs: dict[str, np.ndarray]) -> tuple[dict, str]:
    """({'gradcam/<task>': tiles}, a note on the layer used): a seeded sample of right and wrong predictions.

    Each map explains the *predicted* class, so a wrong one shows what the model mistook for it.
    """
    found = find_target_layer(predictor.model, predictor.preprocess["input_size"])
    if found is None:
        return {}, "No Grad-CAM: this backbone has no spatial feature map (e.g. a vision transformer)."
    name, layer = found
    rng = np.random.default_rng(SEED)
    out = {}
    for task, p in probs.items():
        y, pred = data.targets[task], p.argmax(1)
        picks = []
        for kind, pool in (("right", np.flatnonzero(pred == y)), ("wrong", np.flatnonzero(pred != y))):
            chosen = rng.choice(pool, size=min(N_CAM, len(pool)), replace=False) if len(pool) else []
            picks += [(int(i), kind) for i in sorted(chosen)]
        if not picks:
            continue
        x = model_inputs(predictor, [data.items[i] for i, _ in picks])
        maps = gradcam_maps(predictor.model, layer, x, task, [pred[i] for i, _ in picks])
        names = predictor.labels[task]
        captions = [
            [Path(data.paths[i]).name, f"{kind}: pred {names[pred[i]]} ({p[i, pred[i]]:.3f})", f"true {names[y[i]]}"]
            for i, kind in picks
        ]
        out[f"gradcam/{task}"] = overlay_tiles(to_display(predictor, x), maps, captions, [k for _, k in picks])
    note = (
        f"Grad-CAM (pytorch-grad-cam) on the backbone's last spatial feature map, layer '{name}': red marks the "
        f"regions that raised the predicted class's score. A seeded sample of up to {N_CAM} right (green frame) and "
        f"{N_CAM} wrong (red frame) predictions per task."
    )
    return out, note


def shift_figures(
    shifted: EvalData,
    evaluation: dict[str, Any],
    own: EvalData,
    own_probs: dict[str, np.ndarray],
    tasks: dict[str, list[str]],
) -> dict[str, Any]:
    """The headline figures of the shifted data and of the model's own val split, side by side, with their n."""
    own_evaluation = evaluate_probabilities(own_probs, own.targets, tasks)

    def side(data: EvalData, e: dict[str, Any]) -> dict[str, Any]:
        figures = {t: headline(r) for t, r in e["tasks"].items()}
        return {"data": f"{data.name}, {data.split}", "n": len(data), "tasks": figures, "joint_acc": e["joint_acc"]}

    return {"in_distribution": side(own, own_evaluation), "shifted": side(shifted, evaluation)}

"""Accuracy under common image corruptions (evaluation/corruptions.py): one pass over the images per corruption
and severity, each image corrupted after decoding and before the model's preprocessing, seeded by its name.

No TTA and no threshold: every figure is plain top-1 accuracy, the clean one included, so the table compares like
with like. A multi-task model's headline figure is its joint accuracy (every task right).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Any

import numpy as np

from fruitlab.evaluation.corruptions import CORRUPTIONS, corrupt
from fruitlab.inference.evaldata import EvalData
from fruitlab.inference.predict import Predictor
from fruitlab.inference.scoring import Scores, score
from fruitlab.names import MEAN, corruption_key

log = logging.getLogger(__name__)


def score_corruptions(
    predictor: Predictor,
    data: EvalData,
    clean: Scores,
    names: list[str],
    severities: list[int],
    batch_size: int = 32,
    sample: int | None = None,
) -> dict[str, Any]:
    """{'clean', 'table': {name: {severity | MEAN: accuracies}}, MEAN: accuracies, 'severities', 'parameters', 'n'}.

    Accuracies are {'acc': headline, 'tasks': {task: acc}}; `clean` is the figure without any corruption, on the
    same images. `sample`: score a seeded, class-stratified sample of that many images instead of all (each pass
    costs a full forward pass over the images: about 90 s for 736 images with EfficientNet-Lite0 on 2 CPU cores).
    """
    if sample is not None and sample < len(data):
        keep = stratified_sample(data, sample)
        data, clean = subset(data, keep), Scores({t: z[keep] for t, z in clean.logits.items()})
    table: dict[str, dict[Any, dict[str, Any]]] = {}
    for name in names:
        started = time.perf_counter()
        table[name] = {}
        for severity in severities:

            def alter(image: np.ndarray, index: int, name: str = name, severity: int = severity) -> np.ndarray:
                return corrupt(image, name, severity, data.paths[index])

            table[name][severity] = accuracies(score(predictor, data.items, False, batch_size, alter), data)
        table[name][MEAN] = _mean(list(table[name].values()))
        shown = "  ".join(f"{s}: {table[name][s]['acc']:.4f}" for s in severities)
        log.info("corruption %-14s %s  (%.0f s)", name, shown, time.perf_counter() - started)
    every = [r for row in table.values() for s, r in row.items() if s != MEAN]
    return {
        "clean": accuracies(clean, data),
        "table": table,
        MEAN: _mean(every),
        "severities": severities,
        "n": len(data),
        "parameters": {
            n: {"meaning": CORRUPTIONS[n].meaning, "levels": [CORRUPTIONS[n].levels[s - 1] for s in severities]}
            for n in names
        },
    }


def accuracies(scores: Scores, data: EvalData) -> dict[str, Any]:
    """{'acc': headline top-1 accuracy, 'tasks': {task: acc}}: a multi-task model's headline is its joint one."""
    right = {t: z.argmax(1) == data.targets[t] for t, z in scores.logits.items()}
    tasks = {t: float(r.mean()) for t, r in right.items()}
    headline = float(np.stack(list(right.values())).all(0).mean())
    return {"acc": headline, "tasks": tasks}


def corruption_metrics(result: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics: corrupt/<name>/<severity>/acc, corrupt/<name>/mean/acc, corrupt/mean/acc (+ per task)."""
    multitask = len(result[MEAN]["tasks"]) > 1
    out = {}
    cells = [(name, severity, r) for name, row in result["table"].items() for severity, r in row.items()]
    for name, severity, r in [*cells, (MEAN, None, result[MEAN])]:
        out[corruption_key(name, severity)] = r["acc"]
        if multitask:
            out.update({corruption_key(name, severity, t): a for t, a in r["tasks"].items()})
    return out


def stratified_sample(data: EvalData, n: int) -> np.ndarray:
    """Indices of about `n` images, each class (of the first task) in its share; chosen by a hash of the image's
    name, so the same images whatever their order."""
    labels = next(iter(data.targets.values()))
    rank = np.argsort([hashlib.sha256(p.encode()).hexdigest() for p in data.paths], kind="stable")
    keep = []
    for label in np.unique(labels):
        members = rank[labels[rank] == label]
        keep.extend(members[: max(1, round(n * len(members) / len(data)))])
    return np.sort(np.array(keep, dtype=np.int64))


def subset(data: EvalData, keep: np.ndarray) -> EvalData:
    return dataclasses.replace(
        data,
        items=[data.items[i] for i in keep],
        paths=[data.paths[i] for i in keep],
        targets={t: y[keep] for t, y in data.targets.items()},
        fingerprint=f"{data.fingerprint}-sample{len(keep)}",
    )


def _mean(results: list[dict[str, Any]]) -> dict[str, Any]:
    tasks = results[0]["tasks"]
    return {
        "acc": float(np.mean([r["acc"] for r in results])),
        "tasks": {t: float(np.mean([r["tasks"][t] for r in results])) for t in tasks},
    }

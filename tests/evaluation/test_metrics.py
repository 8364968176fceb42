"""Evaluation metrics from raw predictions: hand-made examples and an independent numpy recomputation."""

from __future__ import annotations

import numpy as np
import pytest

from fruitlab.evaluation.metrics import evaluate_probabilities, reliability_bins, task_metrics


def test_ece_on_a_hand_made_example():
    # Top-1 confidences 0.95 (right), 0.62 (wrong), 0.68 (right), 0.85 (right); 10 bins of width 0.1:
    # bin 9: |1 - 0.95| = 0.05 (1 image); bin 6: |0.5 - 0.65| = 0.15 (2 images); bin 8: |1 - 0.85| = 0.15 (1 image)
    # ECE = (1 * 0.05 + 2 * 0.15 + 1 * 0.15) / 4 = 0.125
    probs = np.array([[0.95, 0.05], [0.38, 0.62], [0.32, 0.68], [0.15, 0.85]])
    labels = np.array([0, 0, 1, 1])
    report = task_metrics(probs, labels, ["a", "b"], n_bins=10)
    assert report["ece"] == pytest.approx(0.125, abs=1e-6)
    bins = {b["lo"]: b for b in report["reliability"] if b["count"]}
    assert sorted(bins) == pytest.approx([0.6, 0.8, 0.9])
    assert bins[0.6]["count"] == 2 and bins[0.6]["accuracy"] == 0.5 and bins[0.6]["confidence"] == pytest.approx(0.65)
    # the diagram's bins give the same ECE as torchmetrics
    gaps = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins.values()) / 4
    assert gaps == pytest.approx(report["ece"], abs=1e-6)
    assert report["acc"] == 0.75
    assert report["nll"] == pytest.approx(-np.mean(np.log([0.95, 0.38, 0.68, 0.85])))


def test_a_perfectly_confident_right_model_has_zero_ece():
    probs = np.eye(3)[[0, 1, 2, 1]]
    report = task_metrics(probs, np.array([0, 1, 2, 1]), ["a", "b", "c"])
    assert report["ece"] == pytest.approx(0.0, abs=1e-7) and report["acc"] == 1.0
    assert reliability_bins(probs, np.array([0, 1, 2, 1]))[-1]["count"] == 4  # confidence 1.0 is in the last bin


def test_metrics_match_numpy():
    rng = np.random.default_rng(0)
    n, classes = 200, ["a", "b", "c", "d", "e", "f"]
    labels = rng.integers(0, 6, n)
    logits = rng.normal(size=(n, 6)) + 2.0 * np.eye(6)[labels]  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    report = task_metrics(probs, labels, classes)

    pred = probs.argmax(1)
    confusion = np.zeros((6, 6), int)
    np.add.at(confusion, (labels, pred), 1)
    tp = np.diag(confusion)
    precision = tp / np.maximum(confusion.sum(0), 1)
    recall = tp / confusion.sum(1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    support = confusion.sum(1)
    top2 = np.mean([labels[i] in np.argsort(-probs[i])[:2] for i in range(n)])

    assert report["confusion"] == confusion.tolist()
    assert np.allclose(report["confusion_normalised"], confusion / support[:, None])
    assert report["acc"] == pytest.approx(tp.sum() / n)
    assert report["top2_acc"] == pytest.approx(top2) and report["top5_acc"] >= report["top2_acc"]
    assert report["precision_macro"] == pytest.approx(precision.mean(), abs=1e-6)
    assert report["f1_macro"] == pytest.approx(f1.mean(), abs=1e-6)
    assert report["f1_weighted"] == pytest.approx((f1 * support).sum() / n, abs=1e-6)
    assert report["recall_weighted"] == pytest.approx(report["acc"], abs=1e-6)  # weighted recall == accuracy
    assert [c["support"] for c in report["per_class"]] == support.tolist()
    assert np.allclose([c["f1"] for c in report["per_class"]], f1, atol=1e-6)


def test_multi_task_reports_every_task_and_the_joint_accuracy():
    fruit = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    fresh = np.array([[0.7, 0.3], [0.4, 0.6], [0.1, 0.9]])
    labels = {"fruit": np.array([0, 1, 1]), "freshness": np.array([0, 0, 1])}
    tasks = {"fruit": ["apple", "banana"], "freshness": ["fresh", "rotten"]}
    evaluation = evaluate_probabilities({"fruit": fruit, "freshness": fresh}, labels, tasks)
    assert set(evaluation["tasks"]) == {"fruit", "freshness"} and evaluation["n"] == 3
    assert evaluation["tasks"]["fruit"]["acc"] == pytest.approx(2 / 3)
    assert evaluation["tasks"]["freshness"]["acc"] == pytest.approx(2 / 3)
    assert evaluation["joint_acc"] == pytest.approx(1 / 3)  # only the first image has both right
    single = evaluate_probabilities({"class": fruit}, {"class": labels["fruit"]}, {"class": tasks["fruit"]})
    assert single["joint_acc"] is None

"""The HTML report from plain numbers: every section, values to full precision, nothing fetched from outside."""

from __future__ import annotations

import re

import numpy as np

from fruitlab.evaluation.confidence import threshold_table
from fruitlab.evaluation.html import SECTIONS, Tile, render_report
from fruitlab.evaluation.metrics import evaluate_probabilities


def test_a_multi_task_report_without_tta_or_temperature():
    rng = np.random.default_rng(0)
    tasks = {"fruit": ["apple", "banana", "orange"], "freshness": ["fresh", "rotten"]}
    labels = {t: rng.integers(0, len(n), 30) for t, n in tasks.items()}
    probs = {t: rng.dirichlet(np.ones(len(n)), 30) for t, n in tasks.items()}
    probs["freshness"] = np.eye(2)[labels["freshness"]] * 0.9 + 0.05  # every freshness answer right
    evaluation = evaluate_probabilities(probs, labels, tasks)
    report = {
        "title": "Evaluation of <m> on x",
        "meta": {"model": "models:/m@champion", "empty": None},
        "evaluation": evaluation,
        "threshold": None,
        "thresholds": {t: threshold_table(probs[t], labels[t]) for t in tasks},
        "temperature": None,
        "tta_effect": None,
        "gradcam_note": "no overlays here",
        "prediction_files": ["evaluation/predictions_fruit.csv"],
    }
    tile = Tile(np.zeros((8, 8, 3), np.uint8), ["a.jpg", "true apple"], "wrong")
    html = render_report(report, {}, {"wrong/fruit": [tile]})

    for key, heading in SECTIONS.items():
        assert f'<section id="{key}"><h2>{heading}</h2>' in html
    assert "Evaluation of &lt;m&gt; on x" in html  # names are escaped
    assert "Not run: <code>fruitlab evaluate --tta</code>" in html and "No temperature is stored" in html
    assert "No wrong predictions." in html  # freshness has none; fruit has its one tile
    assert html.count("data:image/jpeg;base64,") == 1 and "empty" not in html
    values = dict(re.findall(r"data-metric='([^']+)' data-value='([^']+)'", html))
    assert float(values["joint/acc"]) == evaluation["joint_acc"]  # full precision, not the 4 shown decimals
    assert float(values["fruit/f1_macro"]) == evaluation["tasks"]["fruit"]["f1_macro"]
    assert float(values["freshness/acc"]) == 1.0 and "fruit/top2_acc" in values and "freshness/top2_acc" not in values
    assert "<script" not in html and not re.search(r"(src|href)=\"(https?:|//)", html)

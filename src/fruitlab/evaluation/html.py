"""The evaluation report as one self-contained HTML file: inline CSS, images as base64, no script, no server.

It opens from disk (file://), from an MLflow artifact view or an e-mail attachment alike. Every number shown with
4 decimals carries its full value in `data-value` (and its name in `data-metric`), so a test can check the page
against a recomputation from the raw predictions.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SECTIONS = {  # id -> heading, in page order
    "summary": "Summary",
    "shift": "Distribution shift",
    "robustness": "Robustness to corruptions",
    "per-class": "Per-class precision, recall, F1",
    "confusion": "Confusion matrices",
    "calibration": "Calibration",
    "thresholds": "Confidence thresholds",
    "tta": "Test-time augmentation",
    "wrong": "Most confidently wrong",
    "gradcam": "Grad-CAM",
    "predictions": "Raw predictions",
}
HEADLINE = (  # (key, column heading) of the summary table
    ("acc", "accuracy"),
    ("top2_acc", "top-2"),
    ("top5_acc", "top-5"),
    ("precision_macro", "macro P"),
    ("recall_macro", "macro R"),
    ("f1_macro", "macro F1"),
    ("precision_weighted", "weighted P"),
    ("recall_weighted", "weighted R"),
    ("f1_weighted", "weighted F1"),
    ("ece", "ECE"),
    ("nll", "NLL"),
)
CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em} h3{margin-bottom:.3em}
nav a{margin-right:1em} table{border-collapse:collapse;margin:.5em 0} .meta td{padding:.1em .8em .1em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right} th:first-child,td:first-child{text-align:left}
.meta td{border:none;text-align:left} .note{color:#555;font-size:.92em;max-width:60em}
.grid{display:flex;flex-wrap:wrap;gap:10px} figure{margin:0;width:180px;font-size:.78em}
figure img{width:180px;height:180px;object-fit:cover;display:block}
figure.wrong{outline:3px solid #c33} figure.right{outline:3px solid #3a3} img.plot{max-width:100%}
tr.chosen{background:#fff3c4} .leak{background:#fde2e2;border:2px solid #c33;padding:.5em;font-weight:bold}
"""


@dataclass
class Tile:
    """One image of a gallery: RGB uint8 (H, W, 3) and caption lines; `kind` 'right' or 'wrong' frames it."""

    image: np.ndarray
    caption: list[str] = field(default_factory=list)
    kind: str = ""


def render_report(report: dict[str, Any], figures: dict[str, bytes], galleries: dict[str, list[Tile]]) -> str:
    """The page; `figures` maps 'confusion/<task>' etc. to PNG bytes, `galleries` 'wrong/<task>' to tiles."""
    tasks = list(report["evaluation"]["tasks"])
    body = [
        f"<h1>{_e(report['title'])}</h1>",
        _meta(report),
        "<nav>" + "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name in SECTIONS.items()) + "</nav>",
        _section("summary", _copies(report) + _summary(report)),
        _section("shift", _shift(report)),
        _section("robustness", _robustness(report)),
        _section("per-class", "".join(_per_class(t, report) for t in tasks)),
        _section("confusion", "".join(_figure(figures, f"confusion/{t}", t, tasks) for t in tasks)),
        _section("calibration", _calibration(report, figures, tasks)),
        _section("thresholds", _thresholds(report, figures, tasks)),
        _section("tta", _tta(report)),
        _section("wrong", _galleries(report, galleries, "wrong", tasks)),
        _section("gradcam", _gradcam(report, galleries, tasks)),
        _section("predictions", _predictions(report)),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(report['title'])}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ------------------------------------------------------------------------------------------------ sections
def _meta(report: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in report["meta"].items() if v not in (None, "")]
    return '<table class="meta">' + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _summary(report: dict[str, Any]) -> str:
    evaluation = report["evaluation"]
    reports = evaluation["tasks"]
    keys = [(k, name) for k, name in HEADLINE if any(k in r for r in reports.values())]
    head = "<tr><th>task</th><th>n</th>" + "".join(f"<th>{_e(name)}</th>" for _, name in keys) + "</tr>"
    rows = []
    for task, r in reports.items():
        cells = "".join(_num(f"{task}/{k}", r.get(k)) for k, _ in keys)
        rows.append(f"<tr><td>{_e(task)}</td><td>{r['n']}</td>{cells}</tr>")
    joint = ""
    if evaluation.get("joint_acc") is not None:
        joint = f"<p>Joint accuracy (every task right): {_span('joint/acc', evaluation['joint_acc'])}</p>"
    extra = "".join(f"<p class='note'>{_e(line)}</p>" for line in report.get("notes", []))
    return f"<table>{head}{''.join(rows)}</table>{joint}{extra}"


def _copies(report: dict[str, Any]) -> str:
    """A loud box when the images copy training images (the figures are leaky); otherwise what was checked."""
    copies = report.get("copies")
    if not copies:
        return "<p class='note'>Not checked for copies of training images (--no-copy-check).</p>"
    if not copies["count"]:
        found = "" if copies["count"] is None else "None of the images is a copy of a training image. "
        return f"<p class='note'>{_e(found + copies['note'])}</p>"
    pairs = "".join(f"<li>{_e(a)} copies {_e(b)}</li>" for a, b in copies["examples"])
    return (
        f"<div class='leak' data-metric='train_copies' data-value='{copies['count']}'>{_e(copies['warning'])}</div>"
        f"<p class='note'>{_e(copies['note'])} For example:</p><ul class='note'>{pairs}</ul>"
    )


def _shift(report: dict[str, Any]) -> str:
    shift = report.get("shift")
    if not shift:
        return (
            "<p class='note'>Not run: <code>fruitlab evaluate --data FOLDER --shift</code> puts the figures on photos "
            "from elsewhere (other cameras, backgrounds, light) beside those on the model's own val split.</p>"
        )
    sides = (("in-distribution", shift["in_distribution"]), ("distribution shift", shift["shifted"]))
    tasks = list(shift["in_distribution"]["tasks"])
    head = "<tr><th>data</th><th>n</th>" + "".join(
        f"<th>{_e(t)} {name}</th>" for t in tasks for name in ("accuracy", "macro F1")
    )
    joint = shift["in_distribution"]["joint_acc"] is not None
    head += ("<th>joint accuracy</th>" if joint else "") + "</tr>"
    rows = []
    for kind, side in sides:
        cells = "".join(_num(f"shift/{kind}/{t}/{k}", side["tasks"][t][k]) for t in tasks for k in ("acc", "f1_macro"))
        cells += _num(f"shift/{kind}/joint/acc", side["joint_acc"]) if joint else ""
        rows.append(f"<tr><td>{_e(kind)}: {_e(side['data'])}</td><td>{side['n']}</td>{cells}</tr>")
    note = (
        "In-distribution: the model's own val split, split as in training. Distribution shift: the evaluated data, "
        "which this whole report describes. The same model, TTA and temperature on both."
    )
    return f"<p class='note'>{note}</p><table>{head}{''.join(rows)}</table>"


def _robustness(report: dict[str, Any]) -> str:
    result = report.get("robustness")
    if not result:
        return (
            "<p class='note'>Not run: <code>fruitlab evaluate --corruptions</code> scores the model on the same "
            "images under noise, blur, JPEG, brightness, contrast, colour shift, rotation and crop.</p>"
        )
    severities = result["severities"]
    head = "<tr><th>corruption</th><th>parameter</th>" + "".join(f"<th>severity {s}</th>" for s in severities)
    head += "<th>mean</th></tr>"
    blank = f"<td colspan='{len(severities)}'></td>"
    rows = [f"<tr><td>clean</td><td></td>{blank}{_num('corrupt/clean/acc', result['clean']['acc'])}</tr>"]
    for name, row in result["table"].items():
        p = result["parameters"][name]
        levels = ", ".join(f"{v:g}" for v in p["levels"])
        cells = "".join(_num(f"corrupt/{name}/{s}/acc", row[s]["acc"]) for s in severities)
        cells += _num(f"corrupt/{name}/mean/acc", row["mean"]["acc"])
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(p['meaning'])}: {_e(levels)}</td>{cells}</tr>")
    span = len(severities) + 1
    mean = f"<tr><td>mean</td><td colspan='{span}'></td>{_num('corrupt/mean/acc', result['mean']['acc'])}</tr>"
    what = "joint accuracy (every task right)" if len(result["mean"]["tasks"]) > 1 else "top-1 accuracy"
    note = (
        f"The {what} on {result['n']} of the images, each corrupted after decoding and before the model's "
        "preprocessing, "
        "in the spirit of ImageNet-C (Hendrycks &amp; Dietterich 2019). Seeded by image, corruption and severity: "
        "the same pixels on every run. No TTA, no threshold."
    )
    return f"<p class='note'>{note}</p><table>{head}{''.join(rows)}{mean}</table>"


def _per_class(task: str, report: dict[str, Any]) -> str:
    r = report["evaluation"]["tasks"][task]
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    rows = "".join(
        f"<tr><td>{_e(c['class'])}</td>"
        + "".join(_num(f"{task}/{c['class']}/{k}", c[k]) for k in ("precision", "recall", "f1"))
        + f"<td data-metric='{_e(task)}/{_e(c['class'])}/support'>{c['support']}</td></tr>"
        for c in r["per_class"]
    )
    return f"<h3>{_e(task)}</h3><table>{head}{rows}</table>"


def _calibration(report: dict[str, Any], figures: dict[str, bytes], tasks: list[str]) -> str:
    parts = [
        "<p class='note'>Expected calibration error (ECE): the image-weighted mean gap between confidence (top-1 "
        "probability) and accuracy over 15 equal-width confidence bins; 0 = probabilities mean what they say.</p>"
    ]
    parts += [_figure(figures, f"reliability/{t}", t, tasks) for t in tasks]
    temp = report.get("temperature")
    if not temp:
        parts.append(
            "<h3>Temperature scaling</h3><p class='note'>No temperature is stored with this model: probabilities "
            "are the raw softmax. <code>fruitlab evaluate --fit-temperature</code> fits one on the validation "
            "split and stores it with the model.</p>"
        )
        return "".join(parts)
    head = "<tr><th>task</th><th>T</th><th>NLL before</th><th>NLL after</th><th>ECE before</th><th>ECE after</th></tr>"
    rows = "".join(
        f"<tr><td>{_e(t)}</td>{_num(f'{t}/temperature', temp['values'][t])}"
        + "".join(_num(f"{t}/{w}_{m}", temp[w][t][m]) for m in ("nll", "ece") for w in ("before", "after"))
        + "</tr>"
        for t in tasks
        if t in temp["values"]
    )
    return (
        "".join(parts)
        + f"<h3>Temperature scaling</h3><p class='note'>{_e(temp['source'])}</p><table>{head}{rows}</table>"
    )


def _thresholds(report: dict[str, Any], figures: dict[str, bytes], tasks: list[str]) -> str:
    parts = [
        "<p class='note'>Below the threshold the answer is <b>unknown</b>. Coverage = share of images answered; "
        "accuracy is over the answered images. Choose on validation data, use with <code>--threshold</code> in "
        "<code>fruitlab predict</code>.</p>"
    ]
    chosen = report.get("threshold")
    for task in tasks:
        head = "<tr><th>threshold</th><th>coverage</th><th>accuracy (answered)</th><th>answered</th>"
        head += "<th>unknown</th><th>errors</th></tr>"
        rows = []
        for row in report["thresholds"][task]:
            mark = " class='chosen'" if chosen is not None and row["threshold"] == chosen else ""
            t = f"{row['threshold']:g}"
            cells = _num(f"{task}/threshold_{t}/coverage", row["coverage"]) + _num(
                f"{task}/threshold_{t}/accuracy", row["accuracy"]
            )
            rows.append(
                f"<tr{mark}><td>{t}</td>{cells}<td>{row['answered']}</td><td>{row['unknown']}</td>"
                f"<td>{row['errors']}</td></tr>"
            )
        parts.append(f"<h3>{_e(task)}</h3><table>{head}{''.join(rows)}</table>")
        parts.append(_figure(figures, f"thresholds/{task}", None, tasks))
    return "".join(parts)


def _tta(report: dict[str, Any]) -> str:
    effect = report.get("tta_effect")
    if not effect:
        return (
            "<p class='note'>Not run: <code>fruitlab evaluate --tta</code> averages the probabilities of each "
            "image and its horizontal mirror image and reports the metrics with and without.</p>"
        )
    head = "<tr><th>task</th><th>metric</th><th>without TTA</th><th>with TTA (flip)</th><th>change</th></tr>"
    rows = []
    for task, e in effect.items():
        for key in ("acc", "f1_macro", "ece", "nll"):
            without, with_ = e["without"][key], e["with"][key]
            rows.append(
                f"<tr><td>{_e(task)}</td><td>{key}</td>{_num(f'{task}/{key}_no_tta', without)}"
                f"{_num(f'{task}/{key}_tta', with_)}<td>{with_ - without:+.4f}</td></tr>"
            )
    fixes = "; ".join(f"{t}: {e['fixed']} fixed, {e['broken']} broken" for t, e in effect.items())
    return f"<p class='note'>Predictions changed by TTA - {_e(fixes)}.</p><table>{head}{''.join(rows)}</table>"


def _galleries(report: dict[str, Any], galleries: dict[str, list[Tile]], kind: str, tasks: list[str]) -> str:
    parts = []
    for task in tasks:
        tiles = galleries.get(f"{kind}/{task}", [])
        title = f"<h3>{_e(task)}</h3>" if len(tasks) > 1 else ""
        if not tiles:
            parts.append(f"{title}<p class='note'>No wrong predictions.</p>")
            continue
        parts.append(title + _grid(tiles))
    return "".join(parts)


def _gradcam(report: dict[str, Any], galleries: dict[str, list[Tile]], tasks: list[str]) -> str:
    note = report.get("gradcam_note", "")
    parts = [f"<p class='note'>{_e(note)}</p>"]
    for task in tasks:
        tiles = galleries.get(f"gradcam/{task}", [])
        title = f"<h3>{_e(task)}</h3>" if len(tasks) > 1 else ""
        parts.append(title + (_grid(tiles) if tiles else "<p class='note'>No overlays.</p>"))
    return "".join(parts)


def _predictions(report: dict[str, Any]) -> str:
    files = ", ".join(f"<code>{_e(p)}</code>" for p in report.get("prediction_files", []))
    return (
        f"<p class='note'>Every prediction (path, true and predicted label, confidence, the answer at the "
        f"threshold, and each class's probability) is in the evaluation run's artifacts: {files}. Every number "
        "above can be recomputed from it.</p>"
    )


# ------------------------------------------------------------------------------------------------ pieces
def _section(key: str, content: str) -> str:
    return f'<section id="{key}"><h2>{_e(SECTIONS[key])}</h2>{content}</section>'


def _figure(figures: dict[str, bytes], key: str, task: str | None, tasks: list[str]) -> str:
    png = figures.get(key)
    if png is None:
        return ""
    title = f"<h3>{_e(task)}</h3>" if task and len(tasks) > 1 else ""
    data = base64.b64encode(png).decode()
    return f'{title}<img class="plot" alt="{_e(key)}" src="data:image/png;base64,{data}">'


def _grid(tiles: list[Tile]) -> str:
    figures = []
    for tile in tiles:
        caption = "<br>".join(_e(line) for line in tile.caption)
        figures.append(
            f'<figure class="{_e(tile.kind)}"><img alt="{_e(tile.caption[0] if tile.caption else "")}" '
            f'src="data:image/jpeg;base64,{_jpeg(tile.image)}"><figcaption>{caption}</figcaption></figure>'
        )
    return f'<div class="grid">{"".join(figures)}</div>'


def _jpeg(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode()


def _num(metric: str, value: float | None) -> str:
    if value is None:
        return f"<td data-metric='{_e(metric)}'>-</td>"
    value = float(value)  # numpy scalars would print their type in repr()
    return f"<td data-metric='{_e(metric)}' data-value='{value!r}'>{value:.4f}</td>"


def _span(metric: str, value: float) -> str:
    value = float(value)
    return f"<span data-metric='{_e(metric)}' data-value='{value!r}'>{value:.4f}</span>"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)

"""The evaluation report's plots (matplotlib, Agg), from the numbers in metrics.py and confidence.py."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: the figures go into files and the HTML report
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return buffer.getvalue()


def confusion_pair(report: dict[str, Any], title: str) -> Any:
    """Counts and row-normalised (recall per true class) matrices side by side; rows = true class."""
    plt = _plt()
    classes = report["classes"]
    side = max(3.5, 0.55 * len(classes) + 1.8)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 0.5, side))
    for ax, key, fmt, name in (
        (axes[0], "confusion", "{:d}", "counts"),
        (axes[1], "confusion_normalised", "{:.2f}", "normalised by true class"),
    ):
        matrix = np.asarray(report[key])
        ax.imshow(matrix, cmap="Blues", vmin=0)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
        peak = matrix.max() or 1
        for i in range(len(classes)):
            for j in range(len(classes)):
                value = matrix[i, j]
                colour = "white" if value > peak / 2 else "black"
                ax.text(j, i, fmt.format(value), ha="center", va="center", color=colour, fontsize=8)
    fig.tight_layout()
    return fig


def reliability_diagram(bins: list[dict[str, Any]], ece: float, title: str) -> Any:
    """Accuracy per confidence bin against the diagonal (perfect calibration), with the bin counts below."""
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.6, 5.2), height_ratios=(3, 1), sharex=True)
    width = bins[0]["hi"] - bins[0]["lo"]
    filled = [b for b in bins if b["count"]]
    lows = [b["lo"] for b in filled]
    top.bar(lows, [b["accuracy"] for b in filled], width=width, align="edge", edgecolor="navy", label="accuracy")
    # The gap as a hatched outline from accuracy to mean confidence: above the bar when over-confident, inside
    # it when under-confident, never hiding the accuracy bar itself.
    top.bar(
        lows,
        [b["confidence"] - b["accuracy"] for b in filled],
        bottom=[b["accuracy"] for b in filled],
        width=width,
        align="edge",
        fill=False,
        hatch="//",
        edgecolor="crimson",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title}: ECE {ece:.4f}")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([b["lo"] for b in bins], [b["count"] for b in bins], width=width, align="edge", color="grey")
    bottom.set_yscale("symlog")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("images")
    fig.tight_layout()
    return fig


def threshold_plot(curve: dict[str, list[Any]], title: str, chosen: float | None = None) -> Any:
    """Answered accuracy and coverage against the confidence threshold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    accuracy = [np.nan if a is None else a for a in curve["accuracy"]]
    ax.plot(curve["threshold"], accuracy, label="accuracy on answered images")
    ax.plot(curve["threshold"], curve["coverage"], label="coverage (share answered)")
    if chosen is not None:
        ax.axvline(chosen, color="k", linestyle=":", label=f"--threshold {chosen:g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(min(0.5, np.nanmin([*accuracy, 1.0]), min(curve["coverage"])) - 0.02, 1.01)
    ax.set_xlabel("confidence threshold")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig

"""A Comparison (tracking/compare.py) as a terminal table (rich), a PNG of the learning curves, and one HTML file.

The HTML holds the same table and the same figure as inline SVG (text drawn as paths), so it is a single file
that opens offline, with no script and no external asset. One matplotlib figure serves both files.
"""

from __future__ import annotations

import html
import io
from datetime import datetime
from pathlib import Path
from typing import Any

from fruitlab.tracking.compare import Comparison, Row

PANEL_SIZE = (5.0, 3.4)  # inches per panel
PANELS_PER_ROW = 3


def build_table(comparison: Comparison) -> Any:
    """A rich Table: one column per run, one row per field; the best value of each metric in bold green."""
    from rich.table import Table

    table = Table(title=f"compare: {comparison.title}", title_justify="left", header_style="bold")
    table.add_column("", style="dim", no_wrap=True)
    for run in comparison.runs:
        table.add_column(run.label, justify="right")
    section = None
    for row in comparison.rows():
        if section is not None and row.section != section:
            table.add_section()
        section = row.section
        table.add_row(row.name, *_cells(row, "[bold green]{}[/]"))
    return table


def curves_figure(comparison: Comparison) -> Any:
    """One panel for the losses (val solid, train dashed) and one per task's val accuracy; a colour per run."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    keys = comparison.curve_keys()
    losses = [k for k in keys if k.endswith("/loss")]
    panels = ([("loss", losses)] if losses else []) + [(k, [k]) for k in keys if k not in losses]
    cols = max(1, min(PANELS_PER_ROW, len(panels)))
    rows = max(1, -(-len(panels) // cols))
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = colormaps["tab10"]
    for ax, (title, series) in zip(axes, panels, strict=False):
        for i, run in enumerate(comparison.runs):
            drawn = [key for key in series if run.curves.get(key)]
            for key in drawn:
                style = "--" if key.startswith("train/") else "-"
                ax.plot(*zip(*run.curves[key], strict=True), style, color=colours(i % 10), marker="o", markersize=3)
            for epoch in run.phase_starts if drawn else []:  # a new fine-tuning phase begins before this epoch
                ax.axvline(epoch - 0.5, color=colours(i % 10), linestyle=":", linewidth=1, alpha=0.6)
        ax.set_title("loss (val solid, train dashed)" if title == "loss" else title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colours(i % 10), marker="o", label=r.label) for i, r in enumerate(comparison.runs)]
    if any(r.phase_starts for r in comparison.runs):
        handles.append(Line2D([], [], color="grey", linestyle=":", label="next fine-tuning phase"))
    fig.legend(handles=handles, loc="outside upper center", ncols=min(4, len(handles)), fontsize=9, frameon=False)
    return fig


def write_report(comparison: Comparison, folder: Path) -> tuple[Path, Path]:
    """compare-<slug>.png and compare-<slug>.html in `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    png, page = folder / f"compare-{comparison.slug}.png", folder / f"compare-{comparison.slug}.html"
    fig = curves_figure(comparison)
    fig.savefig(png, dpi=110)
    svg = io.StringIO()
    fig.savefig(svg, format="svg")
    page.write_text(_html(comparison, svg.getvalue()), encoding="utf-8")
    return png, page


# ------------------------------------------------------------------------------------------------ internals
def _cells(row: Row, best: str) -> list[str]:
    return [best.format(c) if i == row.best else c for i, c in enumerate(row.cells)]


def _html(comparison: Comparison, svg: str) -> str:
    svg = svg[svg.index("<svg") :]  # drop the XML declaration and doctype: the SVG sits inside the page
    head = "".join(f"<th>{html.escape(r.label)}</th>" for r in comparison.runs)
    body, section = [], None
    for row in comparison.rows():
        if row.section != section:
            section = row.section
            body.append(f'<tr class="section"><th colspan="{len(comparison.runs) + 1}">{section}</th></tr>')
        cells = "".join(
            f'<td class="best">{html.escape(c)}</td>' if i == row.best else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(row.cells)
        )
        body.append(f"<tr><th>{html.escape(row.name)}</th>{cells}</tr>")
    title = html.escape(f"compare: {comparison.title}")
    made = datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ padding: 3px 12px; border-bottom: 1px solid #ddd; text-align: right; }}
tbody th {{ text-align: left; font-weight: normal; color: #555; }}
tr.section th {{ text-align: left; font-weight: bold; color: #222; background: #f3f3f3; }}
td.best {{ font-weight: bold; color: #11772d; }}
svg {{ max-width: 100%; height: auto; }}
</style></head>
<body>
<h1>{title}</h1>
<p>tracking store {html.escape(comparison.uri)}; made {made} by fruitlab compare. Best metric values in bold.</p>
<table><thead><tr><th></th>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<h2>Learning curves</h2>
{svg}
</body></html>
"""

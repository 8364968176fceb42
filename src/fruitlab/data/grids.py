"""What `fruitlab data check` saves: the JSON report and two image grids (examples per class; duplicate pairs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from fruitlab.data.checks import CheckReport
from fruitlab.data.images import open_rgb

THUMB = 112  # px, the side of an example thumbnail
PAIR_THUMB = 160  # px, the side of each image of a duplicate pair
MAX_PAIRS = 48  # pairs drawn; the JSON lists all of them
CAPTION = 14  # px of text above each row
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
ALERT = (200, 0, 0)


def save_report(report: CheckReport, out: Path) -> dict[str, Path]:
    """report.json, examples.png and (when there are any) duplicates.png in `out`; {kind: path}."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"report": out / "report.json", "examples": out / "examples.png"}
    written["report"].write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    examples_grid(report).save(written["examples"])
    pairs = duplicate_pairs(report)
    stale = out / "duplicates.png"
    if pairs:
        written["duplicates"] = stale
        pairs_grid(report, pairs[:MAX_PAIRS]).save(stale)
    else:
        stale.unlink(missing_ok=True)  # a grid from an earlier check would describe other data
    return written


def duplicate_pairs(report: CheckReport) -> list[tuple[str, str, str]]:
    """(later image, earlier image, caption) across splits: exact copies first, then near ones, weakest first.

    Weakest first, because the borderline matches are the ones worth a look.
    """
    pairs = []
    for group in report.exact_duplicates:
        if len(group.splits) > 1:
            first = group.members[0]
            for split, name in group.members[1:]:
                if split != first[0]:
                    pairs.append((name, first[1], f"{split} = {first[0]}: identical bytes"))
    near = sorted(report.near_duplicates or [], key=lambda p: (p.inliers, p.item))
    for p in near:
        how = ", mirrored" if p.mirrored else ""
        pairs.append((p.item, p.other, f"{p.split} ~ {p.other_split}: {p.inliers} inliers{how}"))
    return pairs


def examples_grid(report: CheckReport) -> Image.Image:
    """One row per class: its name and counts, then its first train images."""
    per_row = max((len(v) for v in report.examples.values()), default=1) or 1
    rows = list(report.examples.items())
    grid = Image.new("RGB", (per_row * (THUMB + 4) + 4, len(rows) * (THUMB + CAPTION + 6) + 4), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for r, (cls, names) in enumerate(rows):
        y = 4 + r * (THUMB + CAPTION + 6)
        counts = ", ".join(f"{split} {per_class.get(cls, 0)}" for split, per_class in report.counts.items())
        draw.text((4, y), f"{cls}: {counts}", fill=INK)
        for c, name in enumerate(names):
            grid.paste(_thumbnail(report, name, THUMB), (4 + c * (THUMB + 4), y + CAPTION))
    return grid


def pairs_grid(report: CheckReport, pairs: list[tuple[str, str, str]]) -> Image.Image:
    """Two pairs per row, each side by side with its caption and file names."""
    cell_w, cell_h = 2 * PAIR_THUMB + 12, PAIR_THUMB + 3 * CAPTION + 6
    rows = (len(pairs) + 1) // 2
    grid = Image.new("RGB", (2 * cell_w + 4, rows * cell_h + 4), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for k, (later, earlier, caption) in enumerate(pairs):
        x, y = 4 + (k % 2) * cell_w, 4 + (k // 2) * cell_h
        draw.text((x, y), caption, fill=ALERT)
        draw.text((x, y + CAPTION), _short(later), fill=INK)
        draw.text((x, y + 2 * CAPTION), _short(earlier), fill=INK)
        for c, name in enumerate((later, earlier)):
            grid.paste(_thumbnail(report, name, PAIR_THUMB), (x + c * (PAIR_THUMB + 4), y + 3 * CAPTION))
    return grid


def _thumbnail(report: CheckReport, name: str, side: int) -> Image.Image:
    item: Any = report.arrays.get(name, name)
    try:
        image = Image.fromarray(item) if not isinstance(item, str) else open_rgb(item, min_side=side)
    except Exception:  # a file that vanished since the check: draw an empty cell rather than fail the report
        return Image.new("RGB", (side, side), (230, 230, 230))
    image.thumbnail((side, side))
    return image


def _short(name: str, width: int = 44) -> str:
    """The class folder and file name, cut in the middle to fit under a thumbnail."""
    parts = Path(name).parts
    text = os.path.join(*parts[-2:]) if len(parts) >= 2 else name
    return text if len(text) <= width else text[: width // 2 - 1] + "..." + text[-(width // 2 - 2) :]

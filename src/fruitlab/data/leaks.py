"""Can a split's validation figures be trusted? Its leak status, from what is already known, in well under a second.

Fit records it on every run (tracking/tags.py: fruitlab.split.*), so the MLflow UI shows which numbers are
inflated by copies of training photos in val/test. Nothing slow runs here; the answer comes from, in order:
1. the `grouped` scheme: no group of copies spans two splits, by construction (data/grouping.py);
2. the result `fruitlab data check` recorded for exactly this split (same fingerprint), when it has run;
3. a leak the dataset's registration documents for this scheme (e.g. fruits_fresh_rotten's `dli`);
4. identical files across splits, from the cached scan every load already makes (data/checks.py: quick_check);
otherwise unknown, with the command that finds out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fruitlab.data.checks import CheckReport, content_digests, split_aliases
from fruitlab.data.duplicates import store_json
from fruitlab.data.registry import GROUPED, DatasetSplits, get_source


@dataclass(frozen=True)
class LeakStatus:
    leak_free: bool | None  # None: unknown
    copies_across: int | None  # val/test images with a copy in an earlier split; None: not counted
    source: str  # how this is known, or how to find out

    @property
    def label(self) -> str:
        return {True: "true", False: "false", None: "unknown"}[self.leak_free]


def check_record_path(fingerprint: str, data_dir: Path) -> Path:
    """Where `fruitlab data check` leaves its verdict on one split (its fingerprint names the exact split)."""
    return data_dir / ".dup-cache" / f"check-{fingerprint}.json"


def record_check(report: CheckReport, fingerprint: str, data_dir: Path) -> None:
    """Keep the data check's counts of copies across splits, for fit to find (leak_status)."""
    if report.near_duplicates is None:
        return  # exact copies only: fit finds those itself
    record = {"leaked": report.leaked(), "checked": datetime.now().isoformat(timespec="seconds")}
    store_json(check_record_path(fingerprint, data_dir), record)


def leak_status(splits: DatasetSplits, data_dir: Path) -> LeakStatus:
    """The split's leak status from what is known already (see the module docstring); never a slow search."""
    if splits.scheme == GROUPED:
        return LeakStatus(True, 0, "split 'grouped': no group of copies spans two splits (by the copy detector)")
    recorded = _recorded(splits.fingerprint, data_dir)
    if recorded is not None:
        n = sum(recorded["leaked"].values())
        shown = ", ".join(f"{s} {k}" for s, k in recorded["leaked"].items())
        return LeakStatus(n == 0, n, f"fruitlab data check of this split on {recorded['checked']}: {shown}")
    documented = get_source(splits.name).leaks.get(splits.scheme)
    if documented:
        return LeakStatus(False, None, f"documented leak of split {splits.scheme!r}: {documented}")
    exact = _identical_across(splits, data_dir)
    if exact:
        why = f"{exact} val/test image(s) have identical bytes in an earlier split; near copies not searched"
        return LeakStatus(False, None, why)
    target = splits.root if splits.name == "image_folder" else splits.name
    command = f"fruitlab data check {target} --split {splits.scheme}"
    return LeakStatus(None, None, f"copies across splits not searched: run `{command}`")


def _recorded(fingerprint: str, data_dir: Path) -> dict[str, Any] | None:
    path = check_record_path(fingerprint, data_dir)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _identical_across(splits: DatasetSplits, data_dir: Path) -> int:
    """Val/test images with identical bytes in an earlier split (the cached scan's digests: no image decoded)."""
    aliases = split_aliases(splits)
    names = [s for s in splits.splits if s not in aliases]
    digests = content_digests(splits.root, [i for s in names for i in splits.splits[s].items], data_dir)[0]
    seen: set[str] = set()
    count, start = 0, 0
    for name in names:
        part = digests[start : start + len(splits.splits[name])]
        count += sum(1 for d in part if d and d in seen) if start else 0
        seen.update(d for d in part if d)
        start += len(part)
    return count

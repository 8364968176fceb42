"""How well `fruitlab data check` finds augmented copies across splits, and how long it takes (fresh/rotten fruit).

    FRUITLAB_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/data_check.py [--data-dir DIR]

The photos come from the mirror through fruitlab's own fetch code. Ground truth, used here and never by the
detector: the archive's file names. A test image is a known copy when its source photo (the name without the
augmentation prefix, dli.source_name) and class also occur in train - 544 of 672 by the dataset's README.
The Kaggle set also holds the same photo under two names (two screenshots of one picture), which the names cannot
tell; `data_check_audit.tsv` holds a look at every flagged image that the names call a false alarm.

Prints markdown tables (see data_check.md for a run).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from fruitlab.config import DataConfig
from fruitlab.data import duplicates
from fruitlab.data.checks import CheckReport, check_dataset
from fruitlab.data.dli import source_name
from fruitlab.data.grids import save_report

HERE = Path(__file__).parent
AUDIT = HERE / "data_check_audit.tsv"
THRESHOLDS = (6, 8, 10, 12, 15, 20, 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="default: a new temporary folder, so the first run is a cold one")
    parser.add_argument("--out", default="reports/data-check-benchmark", help="where reports and grids go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("fruitlab.data.grouping").setLevel(logging.INFO)  # the grouped split's group sizes
    mirror = os.environ.get("FRUITLAB_DATA_MIRROR") or str(HERE.parent.parent / "shared" / "datasets")
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="fruitlab-bench-"))
    out = Path(args.out)

    # The threshold only filters verified pairs, so one run at the lowest threshold gives every row of the sweep.
    default = duplicates.MIN_INLIERS
    duplicates.MIN_INLIERS = min(THRESHOLDS)
    cold, cold_s = timed(lambda: check("folder", data_dir, mirror))
    warm, warm_s = timed(lambda: check("folder", data_dir, mirror))
    duplicates.MIN_INLIERS = default
    save_report(only(warm, default), out / "folder")
    unexplained(only(warm, min(THRESHOLDS)), out / "folder")
    print(f"data dir {data_dir}; folder split: first check {cold_s:.0f} s (fetch, scan, features), ", end="")
    print(f"second {warm_s:.0f} s")
    print(f"stages of the first: {stages(cold)}; of the second: {stages(warm)}\n")
    sweep(warm, default)

    for scheme in ("dli", "grouped"):
        report, seconds = timed(lambda s=scheme: check(s, data_dir, mirror))
        save_report(report, out / scheme)
        counts = {s: sum(c.values()) for s, c in report.counts.items()}
        print(
            f"\n{scheme}: {counts}; {len(report.near_duplicates or [])} near-duplicate pairs across splits, "
            f"{report.leaked()} images with a copy in an earlier split; check {seconds:.0f} s ({stages(report)})"
        )
    _, seconds = timed(lambda: check("grouped", data_dir, mirror))
    print(f"grouped again (groups cached): {seconds:.0f} s")


def check(scheme: str, data_dir: Path, mirror: str) -> CheckReport:
    return check_dataset(DataConfig(dataset="fruits_fresh_rotten", split=scheme), data_dir=data_dir, mirror=mirror)


def sweep(report: CheckReport, default: int) -> None:
    """Recall and precision of 'this test image has a copy in train' per inlier threshold."""
    root = Path(report.root)
    train = {(Path(p).parent.name, source_name(p)) for p in files(root / "train")}
    test = files(root / "test")
    truth = {p for p in test if (Path(p).parent.name, source_name(p)) in train}
    audited = read_audit(root)
    print(f"test images: {len(test)}, with a copy in train by file name: {len(truth)}\n")
    print(
        "| min inliers | flagged | recall (names) | precision (names) | other name: same / unsure / different | "
        "precision (names + audit) |"
    )
    print("|---|---|---|---|---|---|")
    for threshold in THRESHOLDS:
        flagged = {p.item for p in report.near_duplicates or [] if p.inliers >= threshold}
        flagged |= exact_copies(report)
        hits = flagged & truth
        verdicts = Counter(audited.get(p, "not audited") for p in flagged - truth)
        mark = " (default)" if threshold == default else ""
        other = f"{verdicts['same']} / {verdicts['unsure']} / {verdicts['different']}"
        if verdicts["not audited"]:
            other += f" (+{verdicts['not audited']} not audited)"
        print(
            f"| {threshold}{mark} | {len(flagged)} | {len(hits) / len(truth):.3f} | {len(hits) / len(flagged):.3f} | "
            f"{other} | {(len(hits) + verdicts['same']) / len(flagged):.3f} |"
        )


def unexplained(report: CheckReport, out: Path) -> None:
    """Flagged test images whose train copy the names do not show, with their strongest match: what to audit."""
    from fruitlab.data.grids import pairs_grid

    root = Path(report.root)
    train = {(Path(p).parent.name, source_name(p)) for p in files(root / "train")}
    best: dict[str, tuple[int, str, bool]] = {}
    for p in report.near_duplicates or []:
        if (Path(p.item).parent.name, source_name(p.item)) not in train and p.inliers > best.get(p.item, (0,))[0]:
            best[p.item] = (p.inliers, p.other, p.mirrored)
    rows = sorted(best.items(), key=lambda kv: kv[1][0])
    with open(out / "unexplained.tsv", "w", encoding="utf-8") as fh:
        fh.write("test_image\ttrain_image\tinliers\tmirrored\n")
        for item, (inliers, other, mirrored) in rows:
            fh.write(f"{os.path.relpath(item, root)}\t{os.path.relpath(other, root)}\t{inliers}\t{mirrored}\n")
    pairs = [(item, other, f"{inliers} inliers{', mirrored' if m else ''}") for item, (inliers, other, m) in rows]
    pairs_grid(report, pairs).save(out / "unexplained.png")


def only(report: CheckReport, threshold: int) -> CheckReport:
    """The report as the default threshold would have made it."""
    kept = [p for p in report.near_duplicates or [] if p.inliers >= threshold]
    return CheckReport(**{**vars(report), "near_duplicates": kept})


def exact_copies(report: CheckReport) -> set[str]:
    return {name for g in report.exact_duplicates if len(g.splits) > 1 for s, name in g.members if s != "train"}


def read_audit(root: Path) -> dict[str, str]:
    """{test image path: 'same' | 'different' | 'unsure'} from the look at each flagged image the names call wrong."""
    if not AUDIT.is_file():
        return {}
    with open(AUDIT, newline="", encoding="utf-8") as fh:
        return {str(root / row["test_image"]): row["verdict"] for row in csv.DictReader(fh, delimiter="\t")}


def files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file())


def stages(report: CheckReport) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


if __name__ == "__main__":
    main()

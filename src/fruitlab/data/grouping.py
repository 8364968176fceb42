"""The 'grouped' split scheme, valid for every dataset: no photo on both sides of a split.

The dataset's default split is pooled, and images that are copies of each other (near-duplicates, duplicates.py,
or identical bytes) form groups: the connected components of the copy graph. Then:

- test: kept, plus every group that has a member in it (whole groups move into test, so nothing of the test
  split is lost and no copy of a test image stays outside it);
- val: whole groups drawn in a seeded order until each class holds about `data.val_fraction` of its images;
- train: the rest.

A group never spans two splits. sklearn's StratifiedGroupKFold could draw val too, but only as 1/k of the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from fruitlab.config import DataConfig
from fruitlab.data.checks import content_digests
from fruitlab.data.duplicates import (
    PARAMS,
    cached_json,
    connected_groups,
    dup_cache_path,
    find_near_duplicates,
    item_key,
    load_features,
)
from fruitlab.errors import DataError

log = logging.getLogger(__name__)

Entry = tuple[str, Any]  # (class, item)


def regroup(raw: Any, cfg: DataConfig, seed: int, data_dir: Path, dataset: str) -> Any:
    """`raw` (a registry.RawData) re-split into train / val (/ test) so that no group of copies crosses splits."""
    pooled = {s: g for s, g in raw.splits.items() if s not in raw.copies}
    entries: list[Entry] = [
        (cls, item) for s in pooled if s != "test" for cls, items in pooled[s].items() for item in items
    ]
    tests: list[Entry] = [(cls, item) for cls, items in pooled.get("test", {}).items() for item in items]
    group = copy_groups([item for _, item in entries + tests], raw.root, data_dir, seed)
    in_test = set(group[len(entries) :])
    moved = [e for e, g in zip(entries, group[: len(entries)], strict=True) if g in in_test]
    rest = [(e, g) for e, g in zip(entries, group[: len(entries)], strict=True) if g not in in_test]
    train, val = split_groups(rest, cfg.val_fraction, seed, dataset)
    splits = {"train": _by_class(train), "val": _by_class(val)}
    if "test" in pooled:
        splits["test"] = _by_class(tests + moved)
    classes = sorted({cls for s in pooled.values() for cls in s})
    splits = {s: {cls: g.get(cls, []) for cls in classes} for s, g in splits.items()}
    sizes = Counter(group)
    log.info(
        "grouped split: %d images in %d groups of copies (largest %d); %s%s",
        len(group),
        len(sizes),
        max(sizes.values(), default=0),
        ", ".join(f"{s} {sum(len(v) for v in g.values())}" for s, g in splits.items()),
        f"; {len(moved)} copies of test images moved into test" if moved else "",
    )
    folders = {s: f"{raw.folders.get(s, raw.root)} (grouped)" for s in splits}
    return dataclasses.replace(raw, splits=splits, folders=folders)


def copy_groups(items: list[Any], root: Any, data_dir: Path, seed: int) -> list[int]:
    """Group id per item: connected components of near-duplicate pairs (all against all; cached) and of
    identical files (a blank image has too few keypoints to match)."""
    keys = [item_key(item) for item in items]
    digest = hashlib.sha1(json.dumps([PARAMS, seed, keys]).encode()).hexdigest()[:20]
    cache = data_dir / ".dup-cache" / f"pairs-{digest}.json"

    def compute() -> list[list[int]]:
        log.info("grouped split: searching %d images for copies (cached after the first run)", len(items))
        features = load_features(items, cache=dup_cache_path(root, data_dir))
        everything = range(len(items))
        return [[m.a, m.b] for m in find_near_duplicates(features, everything, everything, seed=seed)]

    pairs = [(a, b) for a, b in cached_json(cache, compute)]
    first: dict[str, int] = {}
    digests, _ = content_digests(str(root), items, data_dir)
    for i, digest in enumerate(digests):
        if digest:
            pairs.append((first.setdefault(digest, i), i))
    return connected_groups(len(items), pairs)


def split_groups(
    entries: list[tuple[Entry, int]], fraction: float, seed: int, dataset: str
) -> tuple[list[Entry], list[Entry]]:
    """(train, val): whole groups go to val, in a seeded order, while they fit under each class's target.

    A class's target is the same as the plain stratified split's: `fraction` of its images, at least 1. A class
    whose groups are all bigger than that gets its smallest group in val.
    """
    members: dict[int, list[Entry]] = {}
    for entry, g in entries:
        members.setdefault(g, []).append(entry)
    per_class = Counter(cls for (cls, _), _ in entries)
    target = {c: min(max(int(n * fraction + 0.5), 1), n - 1) if n >= 2 else 0 for c, n in per_class.items()}
    order = sorted(members)
    random.Random(f"{seed}/grouped").shuffle(order)
    order.sort(key=lambda g: -len(members[g]))  # big groups first, while there is room; stable: seeded ties
    taken: Counter[str] = Counter()
    val_groups = set()
    for g in order:
        need = Counter(cls for cls, _ in members[g])
        if all(taken[c] + n <= target[c] for c, n in need.items()):
            val_groups.add(g)
            taken.update(need)
    for cls, n in sorted(per_class.items()):
        if n < 2 or taken[cls]:
            continue
        # Every group of this class is bigger than its share: val takes the smallest one (more than the share).
        groups = [g for g in reversed(order) if any(c == cls for c, _ in members[g])]
        if len(groups) < 2:
            raise DataError(
                f"dataset {dataset!r}, split 'grouped': all {n} images of class {cls!r} are copies of one photo, "
                "so they cannot be in both train and val; add distinct photos or use the dataset's default split"
            )
        val_groups.add(groups[0])
        taken.update(c for c, _ in members[groups[0]])
    train = [e for e, g in entries if g not in val_groups]
    val = [e for e, g in entries if g in val_groups]
    return train, val


def _by_class(entries: list[Entry]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for cls, item in entries:
        out.setdefault(cls, []).append(item)
    return out

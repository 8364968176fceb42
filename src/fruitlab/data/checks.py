"""Data checks: what is in each split, and what leaks between them.

`check_dataset` (behind `fruitlab data check`) loads a dataset as training would and reports images per split and
class, class imbalance, unreadable files, extension/content mismatches, exact duplicates (same bytes) within and
across splits, and near-duplicates across splits (augmented copies of one photo; see duplicates.py).
`quick_check` is the cheap part that `load_dataset` runs before every fit: counts, imbalance and exact duplicates
across splits from the cached scan, no image decoded twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fruitlab.config import DataConfig
from fruitlab.data.images import scan_cache_path, scan_images
from fruitlab.errors import DataError

if TYPE_CHECKING:
    from fruitlab.data.registry import DatasetSplits

log = logging.getLogger(__name__)

IMBALANCE_WARN = 3.0  # largest / smallest class in train above which fit warns (and suggests data.balance)
SHOWN = 3  # examples named in a one-line message


@dataclass
class ExactDuplicate:
    """Files (or arrays) with identical bytes."""

    digest: str  # sha1
    members: list[tuple[str, str]]  # (split, item name)

    @property
    def splits(self) -> list[str]:
        return sorted({split for split, _ in self.members})


@dataclass
class NearDuplicate:
    """Two images in different splits that are copies of one photo (rotated, flipped, shifted, noised...)."""

    split: str  # the later split (val or test)
    item: str
    other_split: str  # the earlier split it has a copy in
    other: str
    inliers: int  # RANSAC inliers; copies of one photo mostly have > 30, unrelated photos < 10
    mirrored: bool


@dataclass
class CheckReport:
    dataset: str
    scheme: str
    root: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    aliases: dict[str, str] = field(default_factory=dict)  # split -> the split whose images it repeats
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), left out of the splits
    mismatched: list[tuple[str, str]] = field(default_factory=list)  # (file, format of its content)
    exact_duplicates: list[ExactDuplicate] = field(default_factory=list)
    near_duplicates: list[NearDuplicate] | None = None  # None: not searched
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    examples: dict[str, list[str]] = field(default_factory=dict)  # class -> a few train images (for the grid)
    arrays: dict[str, Any] = field(default_factory=dict, repr=False)  # name -> in-memory image named above

    def imbalance(self) -> dict[str, float]:
        """Per split: images in the largest class / images in the smallest."""
        return {s: max(c.values()) / max(1, min(c.values())) for s, c in self.counts.items() if c}

    def leaked(self) -> dict[str, int]:
        """Per split after the first: how many of its images have an exact or near copy in an earlier split."""
        found: dict[str, set[str]] = defaultdict(set)
        for group in self.exact_duplicates:
            order = sorted(group.members, key=lambda m: self._rank(m[0]))
            for split, item in order:
                if self._rank(split) > self._rank(order[0][0]):
                    found[split].add(item)
        for pair in self.near_duplicates or []:
            found[pair.split].add(pair.item)
        return {s: len(found[self.aliases.get(s, s)]) for s in list(self.counts)[1:]}

    def summary(self) -> list[str]:
        """The lines `fruitlab data check` prints."""
        lines = [f"{self.dataset} ({self.scheme}): {len(self.classes)} classes, root {self.root}"]
        imbalance = self.imbalance()
        for split, per_class in self.counts.items():
            alias = f" (the same images as {self.aliases[split]})" if split in self.aliases else ""
            cells = ", ".join(f"{c} {n}" for c, n in per_class.items())
            lines.append(
                f"  {split}: {sum(per_class.values())} images{alias}; imbalance {imbalance[split]:.2f}; {cells}"
            )
        bad = [f"{self._short(p)}: {why}" for p, why in self.unreadable]
        lines.append(f"unreadable files (left out): {len(self.unreadable)}{_examples(bad)}")
        lies = [f"{self._short(p)} is {fmt}" for p, fmt in self.mismatched]
        lines.append(f"extension does not match content: {len(self.mismatched)}{_examples(lies)}")
        within = [g for g in self.exact_duplicates if len(g.splits) == 1]
        across = [g for g in self.exact_duplicates if len(g.splits) > 1]
        lines.append(
            f"exact duplicates (same bytes): {len(within)} group(s) within a split, {len(across)} across splits"
        )
        if self.near_duplicates is None:
            lines.append("near-duplicates across splits: not searched")
        else:
            lines.append(f"near-duplicates across splits: {len(self.near_duplicates)} pair(s)")
        for split, n in self.leaked().items():
            total = sum(self.counts[split].values())
            lines.append(f"  {split}: {n} of {total} images have an exact or near copy in an earlier split")
        return lines

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["arrays"]
        out["imbalance"] = self.imbalance()
        out["leaked"] = self.leaked()
        return out

    def _rank(self, split: str) -> int:
        return list(self.counts).index(split)

    def _short(self, name: str) -> str:
        """A file's path relative to the dataset root, for messages."""
        inside = self.root and os.path.isabs(name) and name.startswith(os.path.join(self.root, ""))
        return os.path.relpath(name, self.root) if inside else name


# ------------------------------------------------------------------------------------------------- checks
def data_config_for(target: str, split: str | None = None) -> DataConfig:
    """The DataConfig for `fruitlab data check TARGET`: a registered dataset's name, or a folder (image_folder)."""
    from fruitlab.data.registry import dataset_names, get_source

    if target in dataset_names():
        return DataConfig(dataset=target, split=split)
    path = Path(target).expanduser()
    if path.is_dir():
        return DataConfig(dataset="image_folder", root=str(path), split=split)
    if path.exists():
        raise DataError(f"{target} is a file; give a dataset name (fruitlab data list) or an image folder")
    if os.sep in target or target.startswith((".", "~")):
        raise DataError(f"folder {target} does not exist; give an image folder or a dataset name (fruitlab data list)")
    get_source(target, "(neither a dataset nor a folder)")  # raises: unknown dataset, with 'did you mean'
    raise AssertionError("unreachable")


def check_dataset(
    cfg: DataConfig,
    *,
    seed: int = 42,
    data_dir: str | os.PathLike[str] | None = None,
    mirror: str | os.PathLike[str] | None = None,
    near: bool = True,
) -> CheckReport:
    """Load the dataset as `fit` would (same split, seed and cap) and check it; `near=False` skips the slow part."""
    from fruitlab.data.fetch import resolve_data_dir
    from fruitlab.data.registry import load_dataset

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable files are in the report, not in a warning besides it
        splits = load_dataset(cfg, seed=seed, data_dir=data_dir, mirror=mirror)
    return check_splits(splits, resolve_data_dir(data_dir), near=near, seed=seed, started=start)


def check_splits(
    splits: DatasetSplits, data_dir: Path, *, near: bool = True, seed: int = 0, started: float | None = None
) -> CheckReport:
    """The report for loaded splits; features and scans are cached under `data_dir`."""
    started = time.perf_counter() if started is None else started
    aliases = split_aliases(splits)
    names = [s for s in splits.splits if s not in aliases]
    report = CheckReport(
        splits.name,
        splits.scheme,
        splits.root,
        list(splits.classes),
        {s: _per_class(splits, s) for s in splits.splits},
        aliases,
        unreadable=list(splits.skipped),
    )
    report.seconds["load"] = time.perf_counter() - started
    start = time.perf_counter()
    entries = [(s, i, item) for s in names for i, item in enumerate(splits.splits[s].items)]
    digests, report.mismatched = content_digests(splits.root, [item for _, _, item in entries], data_dir)
    report.exact_duplicates = _exact_duplicates(entries, digests)
    report.seconds["scan"] = time.perf_counter() - start
    if near and len(names) > 1:
        start = time.perf_counter()
        report.near_duplicates = _near_duplicates(splits, entries, digests, data_dir, seed)
        report.seconds["near_duplicates"] = time.perf_counter() - start
        from fruitlab.data.leaks import record_check  # it imports this module

        record_check(report, splits.fingerprint, data_dir)  # fit tags its runs on this split with the result
    report.examples = _examples_per_class(splits, names[0])
    report.arrays = _arrays_shown(report, entries)
    return report


def quick_check(splits: DatasetSplits, data_dir: Path) -> list[str]:
    """Warnings worth printing before a fit: exact duplicates across splits, strong class imbalance. Cheap."""
    aliases = split_aliases(splits)
    names = [s for s in splits.splits if s not in aliases]
    entries = [(s, i, item) for s in names for i, item in enumerate(splits.splits[s].items)]
    digests, _ = content_digests(splits.root, [item for _, _, item in entries], data_dir)
    messages = []
    across = [g for g in _exact_duplicates(entries, digests) if len(g.splits) > 1]
    if across:
        shown = "; ".join(" = ".join(f"{s}:{name}" for s, name in g.members[:2]) for g in across[:SHOWN])
        target = splits.root if splits.name == "image_folder" else splits.name
        option = f" --split {splits.scheme}" if splits.scheme not in ("", "default") else ""
        messages.append(
            f"{len(across)} image(s) appear in more than one split of {splits.name} ({splits.scheme}) with identical "
            f"bytes, e.g. {shown}. Validation scores will be inflated; run `fruitlab data check {target}{option}` "
            "(it also finds rotated or flipped copies) or use data.split: grouped"
        )
    train = _per_class(splits, "train")
    if train and min(train.values()) and max(train.values()) / min(train.values()) >= IMBALANCE_WARN:
        big, small = max(train, key=train.__getitem__), min(train, key=train.__getitem__)
        messages.append(
            f"train classes are imbalanced: {big} has {train[big]} images, {small} {train[small]} "
            f"({train[big] / train[small]:.1f}x); consider data.balance: weights or sampler"
        )
    return messages


def split_aliases(splits: DatasetSplits) -> dict[str, str]:
    """{split: earlier split} for splits that repeat another one's images (fruits 'folder': test is val)."""
    aliases: dict[str, str] = {}
    names = list(splits.splits)
    for i, name in enumerate(names):
        for earlier in names[:i]:
            a, b = splits.splits[name], splits.splits[earlier]
            if earlier not in aliases and len(a) == len(b) and _same_items(a.items, b.items):
                aliases[name] = earlier
                break
    return aliases


# ------------------------------------------------------------------------------------------------ internals
def item_name(item: Any, split: str, index: int) -> str:
    """A file's path, or `split[index]` for an in-memory array (CIFAR pickles)."""
    return os.fspath(item) if isinstance(item, str | os.PathLike) else f"{split}[{index}]"


def _per_class(splits: DatasetSplits, split: str) -> dict[str, int]:
    if split not in splits.splits:
        return {}
    counts = Counter(splits.splits[split].labels)
    return {cls: counts[i] for i, cls in enumerate(splits.classes)}


def _same_items(a: list[Any], b: list[Any]) -> bool:
    return a is b or all(x is y or (isinstance(x, str) and x == y) for x, y in zip(a, b, strict=True))


def content_digests(root: str, items: list[Any], data_dir: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """sha1 per item (files from the cached scan, arrays hashed here), and (file, content format) per file whose
    extension names another format."""
    paths = [os.fspath(i) for i in items if isinstance(i, str | os.PathLike)]
    scan = scan_images(paths, cache=scan_cache_path(root, data_dir)) if paths else None
    digests = []
    for item in items:
        if isinstance(item, str | os.PathLike):
            digests.append(scan.digests.get(os.fspath(item), "") if scan else "")
        else:
            digests.append(hashlib.sha1(item.tobytes()).hexdigest())
    mismatched = [(p, scan.formats[p]) for p in scan.mismatched()] if scan else []
    return digests, mismatched


def _examples_per_class(splits: DatasetSplits, split: str, n: int = 8) -> dict[str, list[str]]:
    """The first `n` images of each class in `split`, by name."""
    out: dict[str, list[str]] = {cls: [] for cls in splits.classes}
    part = splits.splits[split]
    for index, (item, label) in enumerate(zip(part.items, part.labels, strict=True)):
        names = out[splits.classes[label]]
        if len(names) < n:
            names.append(item_name(item, split, index))
    return out


def _exact_duplicates(entries: list[tuple[str, int, Any]], digests: list[str]) -> list[ExactDuplicate]:
    members: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (split, index, item), digest in zip(entries, digests, strict=True):
        if digest:
            members[digest].append((split, item_name(item, split, index)))
    return [ExactDuplicate(d, m) for d, m in members.items() if len(m) > 1]


def _near_duplicates(
    splits: DatasetSplits, entries: list[tuple[str, int, Any]], digests: list[str], data_dir: Path, seed: int
) -> list[NearDuplicate]:
    """Pairs across splits: images of each later split against every earlier split's; identical files left out."""
    from fruitlab.data.duplicates import dup_cache_path, find_near_duplicates, load_features

    names = list(dict.fromkeys(split for split, _, _ in entries))
    features = load_features([item for _, _, item in entries], cache=dup_cache_path(splits.root, data_dir))
    rank = {name: i for i, name in enumerate(names)}
    references = [i for i, (split, _, _) in enumerate(entries) if rank[split] < len(names) - 1]
    queries = [i for i, (split, _, _) in enumerate(entries) if rank[split] > 0]
    found = []
    for match in find_near_duplicates(features, queries, references, seed=seed):
        a, b = sorted((match.a, match.b), key=lambda i: rank[entries[i][0]])
        (split_a, index_a, item_a), (split_b, index_b, item_b) = entries[a], entries[b]
        if split_a == split_b or (digests[a] and digests[a] == digests[b]):
            continue  # same split, or an exact duplicate (reported as such)
        found.append(
            NearDuplicate(
                split_b,
                item_name(item_b, split_b, index_b),
                split_a,
                item_name(item_a, split_a, index_a),
                match.inliers,
                match.mirrored,
            )
        )
    return sorted(found, key=lambda p: (rank[p.split], p.item, -p.inliers))


def _arrays_shown(report: CheckReport, entries: list[tuple[str, int, Any]]) -> dict[str, Any]:
    """The in-memory images (CIFAR pickles) that the grids draw, by name; files are read from disk."""
    shown = {n for names in report.examples.values() for n in names}
    shown |= {n for g in report.exact_duplicates for _, n in g.members}
    shown |= {n for p in report.near_duplicates or [] for n in (p.item, p.other)}
    arrays = ((item_name(item, s, i), item) for s, i, item in entries if not isinstance(item, str | os.PathLike))
    return {name: item for name, item in arrays if name in shown}


def _examples(names: list[str]) -> str:
    if not names:
        return ""
    more = f", and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return " (e.g. " + ", ".join(names[:SHOWN]) + more + ")"

"""Dataset-independent steps: class checks, the stratified validation split, the per-class cap, the fingerprint.

Every random choice uses its own generator seeded from (seed, purpose, split, class), so changing the cap does not
move images between train and val, and adding a class does not reshuffle the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from fruitlab.errors import DataError

Grouped = dict[str, list[Any]]  # class name -> items


class _Split(Protocol):
    items: list[Any]
    labels: list[int]


def check_classes(splits: Mapping[str, Grouped], folders: Mapping[str, str], dataset: str) -> list[str]:
    """The sorted class names; DataError when a split's classes differ from train's or a class is empty."""
    train = splits.get("train") or {}
    if not train:
        raise DataError(f"dataset {dataset!r}: no classes found in {folders.get('train', 'the train split')}")
    if len(train) < 2:
        (only,) = train
        raise DataError(
            f"dataset {dataset!r}: classification needs at least 2 classes; found 1 ({only!r}, "
            f"{len(train[only])} images in {os.path.join(folders.get('train', 'train'), only)}). "
            "Add a folder of images for each other class"
        )
    for split, grouped in splits.items():
        folder = folders.get(split, split)
        missing, extra = sorted(set(train) - set(grouped)), sorted(set(grouped) - set(train))
        if missing or extra:
            raise DataError(
                f"dataset {dataset!r}: the classes of split {split!r} ({folder}) differ from train "
                f"({folders.get('train', 'train')}): missing {missing or 'none'}, extra {extra or 'none'}. "
                "Every split needs the same class folders"
            )
        for cls, items in grouped.items():
            if not items:
                raise DataError(
                    f"dataset {dataset!r}: class {cls!r} in split {split!r} has no readable images "
                    f"({os.path.join(folder, cls)}); add images or remove the class from every split"
                )
    return sorted(train)


def stratified_split(train: Grouped, fraction: float, seed: int) -> tuple[Grouped, Grouped]:
    """Hold out `fraction` of each class (at least 1 when it has 2+ items, never all of it) as val."""
    kept: Grouped = {}
    held: Grouped = {}
    for cls in sorted(train):
        items = train[cls]
        n = len(items)
        n_val = min(max(int(n * fraction + 0.5), 1), n - 1) if n >= 2 else 0
        order = list(range(n))
        _rng(seed, "val", cls).shuffle(order)
        val_idx = set(order[:n_val])
        # Keep the source order inside each part so the result does not depend on the shuffle's internals.
        held[cls] = [items[i] for i in range(n) if i in val_idx]
        kept[cls] = [items[i] for i in range(n) if i not in val_idx]
    return kept, held


def classes_missing(grouped: Grouped, classes: Sequence[str], split: str, held_out: str = "") -> list[str]:
    """One message per class with no image in `split` (its accuracy there is not measured, nor early-stopped on).

    `held_out`: how the split was made from train ('data.val_fraction=0.2'), to say why a small class got none.
    """
    messages = []
    for cls in classes:
        if grouped.get(cls):
            continue
        why = (
            f": too few images to hold one out ({held_out}; a class needs at least 2)"
            if held_out
            else " (the split scheme put none there)"
        )
        messages.append(
            f"class {cls!r} has no image in split {split!r}{why}; its {split} accuracy is not measured. "
            f"Add images of {cls!r}, or give the data a {split}/ folder"
        )
    return messages


def cap_per_class(grouped: Grouped, max_per_class: int, seed: int, split: str) -> Grouped:
    """At most `max_per_class` items per class: a seeded subsample in source order."""
    out: Grouped = {}
    for cls, items in grouped.items():
        if len(items) <= max_per_class:
            out[cls] = list(items)
            continue
        chosen = sorted(_rng(seed, "cap", split, cls).sample(range(len(items)), max_per_class))
        out[cls] = [items[i] for i in chosen]
    return out


def fingerprint(splits: Mapping[str, _Split], classes: Sequence[str], root: str | os.PathLike[str]) -> str:
    """16 hex chars of sha256 over classes and every (split, relative path or array hash, label, size)."""
    digest = hashlib.sha256(json.dumps(list(classes)).encode())
    root_path = Path(root)
    for name in sorted(splits):
        split = splits[name]
        for item, label in zip(split.items, split.labels, strict=True):
            key, size = _identity(item, root_path)
            digest.update(f"{name}\t{key}\t{label}\t{size}\n".encode())
    return digest.hexdigest()[:16]


def _identity(item: Any, root: Path) -> tuple[str, int]:
    if isinstance(item, str | os.PathLike):
        rel = Path(os.path.relpath(item, root)).as_posix()  # relative: the same data elsewhere keeps its fingerprint
        return rel, os.path.getsize(item)
    data = item.tobytes()  # a numpy array (CIFAR pickles); duck-typed to keep numpy out of this module's imports
    return f"{hashlib.sha1(data).hexdigest()}{tuple(item.shape)}", len(data)


def _rng(seed: int, *keys: str) -> random.Random:
    # A string seed is hashed with sha512 by `random`, so this is stable across processes and Python versions.
    return random.Random("/".join([str(seed), *keys]))

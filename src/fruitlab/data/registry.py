"""Datasets by name: each source is one registered function; `load_dataset` turns a DataConfig into splits.

A source returns its items grouped by split and class (`RawData`); everything that is the same for every
dataset - names and split schemes checked first, the stratified validation split, the per-class cap, labels and
the fingerprint - happens here, once. Registering a new dataset is one decorated function in `sources.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fruitlab.config import DataConfig
from fruitlab.data.balance import class_weights
from fruitlab.data.checks import quick_check
from fruitlab.data.fetch import resolve_data_dir, resolve_mirror
from fruitlab.data.images import warn_bad_files
from fruitlab.data.labels import derive_task_labels
from fruitlab.data.splitting import (
    Grouped,
    cap_per_class,
    check_classes,
    classes_missing,
    fingerprint,
    stratified_split,
)
from fruitlab.errors import DataError, did_you_mean
from fruitlab.names import SINGLE_TASK

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "val", "test")
GROUPED = "grouped"  # a split scheme of every dataset: no group of copies across splits (data/grouping.py)


@dataclass
class Split:
    items: list[Any]  # file paths (str) or HxWx3 uint8 numpy arrays (CIFAR pickles)
    labels: list[int]  # class index per item
    targets: dict[str, list[int]] = field(default_factory=dict)  # task -> label per item (see data/labels.py)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class DatasetSplits:
    name: str
    classes: list[str]  # class names from the data, sorted; index == label
    splits: dict[str, Split]  # always 'train' and 'val'; 'test' when the data has one
    fingerprint: str  # short sha256 over (split, relative path or array hash, label, file size)
    root: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable files left out, with reasons
    scheme: str = ""  # the split scheme used (the dataset's default when data.split is None)
    tasks: dict[str, list[str]] = field(default_factory=dict)  # task -> label names; {'class': classes} if single

    @property
    def multitask(self) -> bool:
        return list(self.tasks) != [SINGLE_TASK]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}

    def class_weights(self, split: str = "train") -> list[float]:
        """Inverse-frequency weight per class (index == label), averaging 1: the loss weights of data.balance."""
        return class_weights(self.splits[split].labels, self.num_classes)


@dataclass
class SourceRequest:
    """What a source function gets: the config, the resolved split scheme, and where files live."""

    cfg: DataConfig
    split: str
    data_dir: Path
    mirror: Path | None
    where_dataset: str = ""  # '(experiments/x.yaml: data.dataset)' or ''

    def where(self, key: str) -> str:
        """The location of another data.* key, for messages: '(experiments/x.yaml: data.root)'."""
        return _where(self.where_dataset, key)

    @property
    def root(self) -> Path | None:
        """data.root as an absolute path (items stay valid if the working directory changes), or None."""
        return Path(self.cfg.root).expanduser().absolute() if self.cfg.root else None


@dataclass
class RawData:
    """A source's items grouped by split and class, before the validation split, the cap and labels."""

    root: Path
    splits: dict[str, Grouped]  # 'train' always; 'val' and 'test' when the data defines them
    folders: dict[str, str] = field(default_factory=dict)  # split -> the folder its items came from (messages)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    copies: dict[str, str] = field(default_factory=dict)  # split -> the split it repeats, e.g. {'test': 'val'}


Loader = Callable[[SourceRequest], RawData]


@dataclass(frozen=True)
class DatasetSource:
    name: str
    loader: Loader
    splits: tuple[str, ...]  # the dataset's own schemes; the first is the one `grouped` re-splits
    default_split: str  # one of `splits`, or GROUPED where the dataset's own schemes leak
    description: str

    @property
    def base_split(self) -> str:
        """The scheme `grouped` starts from: its items, re-split so that no group of copies spans two splits."""
        return self.splits[0]


_SOURCES: dict[str, DatasetSource] = {}


def register_dataset(
    name: str, splits: tuple[str, ...] = ("default",), default_split: str | None = None, description: str = ""
) -> Callable[[Loader], Loader]:
    """Decorator: register `fn(request) -> RawData` as the dataset `name` with its split schemes.

    `default_split` may be GROUPED (every dataset has it): then `grouped` re-splits `splits[0]`.
    """
    default = default_split or splits[0]
    if default not in (*splits, GROUPED):
        raise ValueError(f"dataset {name!r}: default_split {default!r} is not one of {(*splits, GROUPED)}")

    def decorate(fn: Loader) -> Loader:
        old = _SOURCES.get(name)
        if old is not None and (old.loader.__module__, old.loader.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"dataset {name!r} is already registered by {old.loader.__module__}")
        _SOURCES[name] = DatasetSource(name, fn, tuple(splits), default, description)
        return fn

    return decorate


def dataset_names() -> list[str]:
    return sorted(_sources())


def describe_datasets() -> list[tuple[str, str]]:
    """(name, one-line description with its split schemes, default first) for `fruitlab data list`."""
    out = []
    for name, src in sorted(_sources().items()):
        others = [s for s in (*src.splits, GROUPED) if s != src.default_split]
        schemes = [f"{src.default_split} (default)", *others]
        out.append((name, f"{src.description} [splits: {', '.join(schemes)}]"))
    return out


def get_source(name: str, where: str = "") -> DatasetSource:
    """The registered source, or a DataError with 'did you mean' and every known name."""
    sources = _sources()
    if name not in sources:
        hint = did_you_mean(name, sources)
        raise DataError(
            f"unknown dataset {name!r} {where}{hint}; known: {', '.join(sorted(sources))}".replace("  ", " ")
        )
    return sources[name]


def resolve_split(source: DatasetSource, split: str | None, where: str = "") -> str:
    if split is None:
        return source.default_split
    if split not in source.splits and split != GROUPED:
        allowed = [*source.splits, GROUPED]
        hint = did_you_mean(split, allowed)
        raise DataError(
            f"split {split!r} {_where(where, 'split')} is not a split scheme of dataset {source.name!r}{hint}; "
            f"allowed: {', '.join(allowed)}. Set data.split to one of them, or to null for the default "
            f"({source.default_split})".replace("  ", " ")
        )
    return split


def load_dataset(
    cfg: DataConfig,
    *,
    seed: int,
    data_dir: str | os.PathLike[str] | None = None,
    mirror: str | os.PathLike[str] | None = None,
    where: str = "",
) -> DatasetSplits:
    """Find (fetching if needed), check and split the dataset `cfg.dataset`.

    `where` locates data.dataset for messages, e.g. exp.where("data.dataset"); messages about data.split or
    data.root use the same file with that key.
    """
    source = get_source(cfg.dataset, where)
    scheme = resolve_split(source, cfg.split, where)
    # 'grouped' re-splits what the dataset's first scheme gives.
    loaded = source.base_split if scheme == GROUPED else scheme
    request = SourceRequest(cfg, loaded, resolve_data_dir(data_dir), resolve_mirror(mirror), where)
    raw = source.loader(request)
    warn_bad_files(raw.skipped, context=str(raw.root))
    if scheme == GROUPED:
        from fruitlab.data.grouping import regroup  # OpenCV: imported only when needed

        raw = regroup(raw, cfg, seed, request.data_dir, source.name)
    result = _assemble(source.name, scheme, raw, cfg, seed, where)
    for message in quick_check(result, request.data_dir):  # cheap: cached scan; see `fruitlab data check`
        log.warning("warning: %s", message)
    return result


# ------------------------------------------------------------------------------------------------ internals
def _assemble(name: str, scheme: str, raw: RawData, cfg: DataConfig, seed: int, where: str = "") -> DatasetSplits:
    classes = check_classes(raw.splits, raw.folders, name)
    grouped = dict(raw.splits)
    if "val" not in grouped:
        grouped["train"], grouped["val"] = stratified_split(grouped["train"], cfg.val_fraction, seed)
    if cfg.max_per_class is not None:
        grouped = {s: cap_per_class(g, cfg.max_per_class, seed, s) for s, g in grouped.items()}
    for copy, original in raw.copies.items():
        grouped[copy] = grouped[original]
    order = sorted(grouped, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    splits = {s: _to_split(grouped[s], classes) for s in order}
    _check_not_empty(name, splits, raw, held_out="val" not in raw.splits, val_fraction=cfg.val_fraction)
    for split_name in order:
        if split_name != "train" and split_name not in raw.copies:
            held = f"data.val_fraction={cfg.val_fraction}" if split_name == "val" and "val" not in raw.splits else ""
            for message in classes_missing(grouped[split_name], classes, split_name, held):
                log.warning("warning: dataset %s: %s", name, message)
    labels = derive_task_labels(cfg.labels, classes, splits, raw.root, _where(where, "labels"))
    for split_name, split in splits.items():
        split.targets = labels.targets[split_name]
    result = DatasetSplits(
        name, classes, splits, fingerprint(splits, classes, raw.root), str(raw.root), raw.skipped, scheme, labels.tasks
    )
    log.info(
        "dataset %s (%s): %s, %d classes, fingerprint %s",
        name,
        scheme,
        result.counts(),
        len(classes),
        result.fingerprint,
    )
    return result


def _check_not_empty(name: str, splits: dict[str, Split], raw: RawData, held_out: bool, val_fraction: float) -> None:
    for split_name, split in splits.items():
        if split.items:
            continue
        folder = raw.folders.get(split_name, str(raw.root))
        why = ""
        if held_out and split_name == "val":
            why = (
                f"; it is held out from train (data.val_fraction={val_fraction}) and every class has fewer than 2 "
                "readable images - add images or a val/ folder"
            )
        raise DataError(f"dataset {name!r}: split {split_name!r} has no images ({folder}){why}")


def _to_split(grouped: Grouped, classes: list[str]) -> Split:
    items: list[Any] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        members = grouped.get(cls, [])
        items.extend(members)
        labels.extend([label] * len(members))
    return Split(items, labels)


def _where(where: str, key: str) -> str:
    return where.replace("data.dataset", f"data.{key}") if where else ""


def _sources() -> dict[str, DatasetSource]:
    # The built-in sources register themselves when their module is imported; importing it here, not at the
    # top, avoids an import cycle (sources.py imports register_dataset from this module).
    import fruitlab.data.sources  # noqa: F401

    return _SOURCES

"""Are the evaluated images copies of the model's training images? Then its figures are leaky, and we say so loudly.

The training images are found again from the run that trained the model: its experiment (config/experiment.yaml)
names the dataset, split scheme, seed and caps, so the train split is recomputed exactly, and the run's dataset
fingerprint tag proves it is the same one (a dataset that changed since is not guessed at). Copies are found by the
near-duplicate detector of `fruitlab data check` (data/duplicates.py: rotated, flipped, cropped, re-encoded copies)
plus identical bytes. A model without that record (a plain folder, an older run) gets a note, not a check.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from fruitlab.config import Experiment
from fruitlab.data.checks import content_digests
from fruitlab.data.duplicates import dup_cache_path, find_near_duplicates, load_features
from fruitlab.data.fetch import resolve_data_dir
from fruitlab.data.registry import load_dataset
from fruitlab.errors import FruitlabError
from fruitlab.inference.evaldata import EvalData
from fruitlab.tracking import tags
from fruitlab.tracking.refs import ResolvedModel

log = logging.getLogger(__name__)

SHOWN = 10  # example pairs kept for the report


@dataclass
class TrainCopies:
    n: int  # evaluated images
    count: int | None  # how many of them are copies of a training image; None: not checked
    note: str  # how it was checked, or why not
    examples: list[tuple[str, str]] = field(default_factory=list)  # (evaluated image, its training original)

    @property
    def warning(self) -> str | None:
        if not self.count:
            return None
        return (
            f"WARNING: {self.count} of {self.n} evaluation images are near-copies of training images; "
            "these figures are leaky"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "warning": self.warning}


def find_train_copies(
    client: MlflowClient, ref: ResolvedModel, exp: Experiment | None, target: EvalData, data_dir: str | None
) -> TrainCopies:
    """How many of `target`'s images are (near) copies of the images the model was trained on."""
    n = len(target)
    if exp is None:
        why = "the model has no training run with an experiment config, so its training images are unknown"
        return TrainCopies(n, None, f"Not checked: {why}.")
    try:
        train = load_dataset(exp.data, seed=exp.seed, data_dir=data_dir)
    except FruitlabError as exc:
        return TrainCopies(n, None, f"Not checked: the model's training data cannot be loaded ({exc}).")
    recorded = client.get_run(ref.run_id).data.tags.get(tags.DATASET_FINGERPRINT) if ref.run_id else None
    if recorded and recorded != train.fingerprint:
        return TrainCopies(
            n,
            None,
            f"Not checked: the model's training data changed since it was fitted (fingerprint {train.fingerprint}, "
            f"the run recorded {recorded}).",
        )
    items = train.splits["train"].items
    log.info("looking for copies of the %d training images among the %d evaluated ones", len(items), n)
    found = _copies(items, train.root, target, resolve_data_dir(data_dir), exp.seed)
    examples = [(target.paths[q], _name(items[r], train.root)) for q, r in sorted(found.items())[:SHOWN]]
    where = f"{train.name} ({train.scheme}), train split of {len(items)} images, fingerprint {train.fingerprint}"
    note = f"Checked against the model's training images ({where}) with fruitlab data check's copy detector."
    return TrainCopies(n, len(found), note, examples)


def _copies(train: list[Any], train_root: str, target: EvalData, data_dir: Any, seed: int) -> dict[int, int]:
    """{evaluated index: a training index it copies}: near-duplicates, then identical bytes.

    `seed`: the search's (FLANN's trees); the run's, as `fruitlab data check` of that split uses it."""
    features = load_features(train, cache=dup_cache_path(train_root, data_dir))
    features += load_features(target.items, cache=dup_cache_path(target.root or train_root, data_dir))
    queries = range(len(train), len(features))
    found = {}
    for match in find_near_duplicates(features, queries, range(len(train)), seed=seed):
        found.setdefault(match.b - len(train), match.a)
    train_digests, _ = content_digests(train_root, train, data_dir)
    first = {d: i for i, d in reversed(list(enumerate(train_digests))) if d}
    target_digests, _ = content_digests(target.root or train_root, target.items, data_dir)
    for i, digest in enumerate(target_digests):
        if digest in first:
            found.setdefault(i, first[digest])
    return found


def _name(item: Any, root: str) -> str:
    if isinstance(item, str | os.PathLike):
        return os.path.relpath(item, root) if root else os.fspath(item)
    return "(an in-memory image)"

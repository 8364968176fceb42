"""Feature cache: a phase whose backbone (or the first stages of it) is frozen runs that part once per image.

While a phase trains only the head - or only the last stages - on a frozen, deterministic part of the backbone,
that part's output for an image never changes. So it is computed once (per split, per view), kept in memory and
on disk under a key that fingerprints everything it depends on (the frozen weights and architecture, the
preprocessing, the image files, the views, the numeric precision and device), and the phase trains the rest of
the model on it. Epochs after the first cost the head (or the last stages) alone.

When it is exact, and therefore on by default (`performance.feature_cache: auto`):
- the frozen part has no BatchNorm in training mode (`bn: frozen` or `frozen_all`) and no dropout or drop-path
  active, so its training-mode output is its inference output;
- the training images are not augmented, or only flipped: each flip combination is a cached *view*, and every
  epoch draws each image's view with the flip probabilities the augmentation has (the same distribution);
- no mixup/cutmix (they mix images, before the backbone), one process (no DDP).
Other augmentation is random per epoch; `performance.feature_cache_views: K` then trains on K cached random views
per image (approximate: K fixed draws instead of a fresh one each epoch) and is opt-in.

Hand-written because no maintained library does this for Lightning; the shuffle and the loaders' RNG are seeded
per epoch (datamodule.py) so a cached and an uncached run see the same batches (tests/training/test_featurecache.py
compares the trained weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fruitlab.config import AugmentConfig, PerformanceConfig
from fruitlab.models.parts import select_trainable
from fruitlab.models.staging import StageChain, parameter_owner, stage_chain

log = logging.getLogger(__name__)

CACHE_VERSION = 1
ADVANCE_BATCH = 64  # CPU inference slows with batch size (whole Lite0: 47 img/s at 16, 38 at 64)
VERIFY_TOLERANCE = 1e-3  # logits; float noise from a different batch size is ~1e-6
CACHE_DIR_ENV = "FRUITLAB_CACHE_DIR"
FLIP_KEYS = {"hflip", "vflip"}
BATCH_KEYS = {"mixup", "cutmix", "mix_prob"}
View = tuple[bool, bool]  # (horizontal flip, vertical flip) of the evaluation-framed image


def cache_root() -> Path:
    """$FRUITLAB_CACHE_DIR/features, else ~/.cache/fruitlab/features."""
    base = os.environ.get(CACHE_DIR_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "fruitlab") / "features"


@dataclass(frozen=True)
class Decision:
    """Whether a phase is cached; `start` = chain links computed once (None: the whole feature path)."""

    cached: bool
    reason: str
    start: int | None = None
    flips: tuple[tuple[View, float], ...] = ()  # enumerated flip views and their probabilities
    random_views: int = 0  # K augmented views (opt-in, approximate)

    @property
    def num_views(self) -> int:
        return self.random_views or len(self.flips)


def flip_views(aug: AugmentConfig | None) -> tuple[tuple[View, float], ...] | None:
    """Every (hflip, vflip) combination with its probability when flips are the only per-image augmentation;
    ((no flip), 1.0) without augmentation; None when the augmentation does more than flip."""
    if aug is None or not aug.enabled:
        return (((False, False), 1.0),)
    if aug.model_dump(exclude=FLIP_KEYS | BATCH_KEYS) != AugmentConfig().model_dump(exclude=FLIP_KEYS | BATCH_KEYS):
        return None
    h_options = [(False, 1 - aug.hflip), (True, aug.hflip)] if 0 < aug.hflip < 1 else [(aug.hflip == 1, 1.0)]
    v_options = [(False, 1 - aug.vflip), (True, aug.vflip)] if 0 < aug.vflip < 1 else [(aug.vflip == 1, 1.0)]
    return tuple(((h, v), ph * pv) for h, ph in h_options for v, pv in v_options)


def stochastic_modules(modules: list[nn.Module]) -> list[str]:
    """Dropout / drop-path layers with a non-zero rate: they make training-mode output random."""
    found = []
    for root in modules:
        for name, m in root.named_modules():
            rate = getattr(m, "p", None) if isinstance(m, nn.modules.dropout._DropoutNd) else None
            if rate is None and type(m).__name__ == "DropPath":
                rate = getattr(m, "drop_prob", 0.0)
            if rate:
                found.append(f"{type(m).__name__}({name or type(root).__name__}, {rate})")
    return found


class FeatureCache:
    """Decides per phase, computes or loads the cached tensors, and gives the model the matching forward."""

    def __init__(self, model: nn.Module, plan: Any, perf: PerformanceConfig, augment: AugmentConfig | None):
        self.model, self.plan, self.phases, self.perf, self.augment = model, plan, plan.phases, perf, augment
        # stage -> the chain link its loader's cached tensors start at (None: pooled features), while it serves them;
        # set by the data module, read by the LightningModule
        self.serving: dict[str, int | None] = {}
        self.decisions: dict[int, Decision] = {}
        self.tensors: dict[tuple[str, int], torch.Tensor] = {}  # (split, phase) -> (views, N, ...); this phase's
        self._chain: StageChain | bool | None = False  # False: not looked for yet

    # --- decisions --------------------------------------------------------------------------------------
    def decide(
        self, index: int, examples: Callable[[], torch.Tensor], world_size: int = 1, sizes: dict[str, int] | None = None
    ) -> Decision:
        """Memoised per phase. `examples()`: a few real images (on the model's device) to check the split forward
        pass on and to size the cache; `sizes`: images per split."""
        if index not in self.decisions:
            images = examples()
            decision = self._decide(index, images, world_size)
            if decision.cached:
                decision = self._check(decision, images, sizes or {})
            self.decisions[index] = decision
            log.info("phase %d: feature cache %s (%s)", index + 1, "on" if decision.cached else "off", decision.reason)
        return self.decisions[index]

    def _check(self, decision: Decision, images: torch.Tensor, sizes: dict[str, int]) -> Decision:
        """Off again when the split forward pass is not the model's (beyond float noise) or the cache is too big."""
        error = self.verify(decision.start, images)
        if error > VERIFY_TOLERANCE:
            return Decision(False, f"running the frozen part and the rest separately differs by {error:.2g}")
        with torch.no_grad():
            per_image = self.prefix(images[:1], decision.start).numel() * 4
        total = per_image * (sizes.get("train", 0) * decision.num_views + sizes.get("val", 0))
        limit = self.perf.feature_cache_max_gb * 2**30
        if total > limit:
            return Decision(
                False,
                f"it would hold {total / 2**30:.1f} GiB (performance.feature_cache_max_gb: "
                f"{self.perf.feature_cache_max_gb}); freeze more stages or raise the limit",
            )
        return replace(decision, reason=f"{decision.reason}; {total / 2**20:.0f} MiB")

    def _decide(self, index: int, example: torch.Tensor, world_size: int) -> Decision:
        phase = self.phases[index]
        if self.perf.feature_cache == "off":
            return Decision(False, "performance.feature_cache: off")
        if world_size > 1:
            return Decision(False, f"{world_size} processes train (DDP); the cache is per process")
        if self.augment is not None and self.augment.mixing:
            return Decision(False, "mixup/cutmix mix images before the backbone")
        if phase.bn == "train":
            return Decision(False, "bn: train updates BatchNorm statistics in the frozen layers")
        backbone = self.model.backbone
        trainable = select_trainable(backbone, phase.train)
        if not trainable:
            start, frozen = None, [backbone]
            what = "the whole backbone is frozen"
        else:
            chain = self.chain(example)
            if chain is None:
                return Decision(False, f"{type(backbone).__name__}'s stages cannot be run one by one (stage_chain)")
            owner = parameter_owner(chain)
            owners = [owner(name) for name in trainable]
            start = min((i for i in owners if i is not None), default=len(chain))
            if start == 0:
                return Decision(False, "the phase trains the first stage")
            frozen = chain.modules(0, start)
            what = f"{start} of {len(chain)} stages frozen ({chain.names[0]} .. {chain.names[start - 1]})"
        random_draws = stochastic_modules(frozen)
        if start is None and getattr(backbone, "drop_rate", 0):
            random_draws.append(f"drop_rate={backbone.drop_rate}")
        if random_draws:
            return Decision(False, f"the frozen part is random in training: {', '.join(random_draws[:3])}")
        flips = flip_views(self.augment)
        if flips is not None:
            how = "no augmentation" if len(flips) == 1 else f"{len(flips)} flip views"
            return Decision(True, f"{what}; {how}: exact", start=start, flips=flips)
        if self.perf.feature_cache_views:
            k = self.perf.feature_cache_views
            return Decision(True, f"{what}; {k} augmented views per image (approximate)", start=start, random_views=k)
        return Decision(
            False,
            f"{what}, but the augmentation changes every epoch's images; performance.feature_cache_views: K "
            "trains on K cached augmented views per image instead",
        )

    def chain(self, example: torch.Tensor) -> StageChain | None:
        if self._chain is False:
            self._chain = stage_chain(self.model.backbone, example)
            self.plan.enforce_bn_modes()  # the check ran in eval mode and put every layer back in train mode
        return self._chain  # type: ignore[return-value]

    # --- the two halves of the forward pass ---------------------------------------------------------------
    def prefix(self, x: torch.Tensor, start: int | None) -> torch.Tensor:
        if start is None:
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)  # pooled (B, F)
        assert isinstance(self._chain, StageChain)
        return self._chain.run(x, 0, start)

    def rest(self, x: torch.Tensor, start: int | None) -> Any:
        """The model's forward from the cached tensor on: remaining stages, pooling, head."""
        model = self.model
        if start is not None:
            assert isinstance(self._chain, StageChain)
            return model.forward_head(self._chain.run(x, start))  # remaining stages, pooling, head
        return model.head(x)  # cached pooled features: the head alone

    @torch.no_grad()
    def verify(self, start: int | None, images: torch.Tensor) -> float:
        """Largest difference between rest(prefix(x)) and the full forward on real images, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            full, split = self.model(images), self.rest(self.prefix(images, start), start)
        finally:
            self.model.train(was_training)
            self.plan.enforce_bn_modes()
        full = full if isinstance(full, dict) else {"": full}
        split = split if isinstance(split, dict) else {"": split}
        return max(float((full[k] - split[k]).abs().max()) for k in full)

    # --- computing and storing ----------------------------------------------------------------------------
    def features(self, split: str, index: int, source: Any, context: Any) -> torch.Tensor:
        """(views, N, ...) for one split in phase `index`, from memory, disk, or computed now (`source`: the
        images). The frozen part does not change within a phase, so a phase computes its key once per split."""
        if (split, index) not in self.tensors:
            self.tensors = {k: v for k, v in self.tensors.items() if k[1] >= index}  # free earlier phases'
            self.tensors[(split, index)] = self._load_or_make(split, index, source, context)
        return self.tensors[(split, index)]

    def _load_or_make(self, split: str, index: int, source: Any, context: Any) -> torch.Tensor:
        decision = self.decisions[index]
        views = decision.flips if split == "train" else (((False, False), 1.0),)
        random_views = decision.random_views if split == "train" else 0
        path = cache_root() / f"{self.key(split, decision, source, context, views, random_views)}.pt"
        tensor = _load(path)
        if tensor is not None:
            log.info("reusing cached %s features %s: %s", split, tuple(tensor.shape), path)
            return tensor
        began = time.perf_counter()
        later = self._cut_earlier_next(index)
        if later is not None:
            # The next phase caches an earlier stage of the same images: compute that one (and keep it for
            # the next phase), then run the stages in between on it - one pass over the images for both phases.
            upstream = self._load_or_make(split, later, source, context)
            self.tensors[(split, later)] = upstream
            tensor = self.advance(upstream, self.decisions[later].start, decision.start, source)
        else:
            tensor = source.compute(self, decision.start, views, random_views)
        _save(path, tensor, self.perf.feature_cache_disk_gb)
        size = tensor.numel() * tensor.element_size() / 2**20
        took = time.perf_counter() - began
        log.info("cached %s features %s (%.0f MB) in %.1f s: %s", split, tuple(tensor.shape), size, took, path)
        return tensor

    def _cut_earlier_next(self, index: int) -> int | None:
        """The next phase, when it is cached at an earlier link with the same views (its frozen part then lies
        inside this phase's and cannot change before it starts). K random views qualify too: both phases draw
        them from the same augmentation and seed, so deriving this phase's from the next one's gives both the
        same K draws, in one pass over the images instead of two."""
        this, nxt = self.decisions[index], self.decisions.get(index + 1)
        if nxt is None or not nxt.cached or nxt.random_views != this.random_views or nxt.flips != this.flips:
            return None
        if nxt.start is None or (this.start is not None and nxt.start >= this.start):
            return None
        return index + 1

    def advance(self, tensor: torch.Tensor, start: int, stop: int | None, source: Any) -> torch.Tensor:
        """Cached output of link `start` -> output of link `stop` (None: the pooled features), batch by batch."""
        assert isinstance(self._chain, StageChain)
        model, out = self.model, None
        with source.running() as prepare:
            for v in range(tensor.shape[0]):
                for i in range(0, tensor.shape[1], ADVANCE_BATCH):
                    x = self._chain.run(prepare(tensor[v, i : i + ADVANCE_BATCH]), start, stop)
                    if stop is None:
                        x = model.forward_head(x, pre_logits=True)  # pooled (B, F)
                    y = x.float().cpu()
                    if out is None:
                        out = torch.empty((tensor.shape[0], tensor.shape[1], *y.shape[1:]), dtype=y.dtype)
                    out[v, i : i + len(y)] = y
        assert out is not None
        return out

    def key(self, split: str, decision: Decision, source: Any, context: Any, views: Any, random_views: int) -> str:
        h = hashlib.sha256()
        start = decision.start
        frozen = [self.model.backbone] if start is None else self._chain.modules(0, start)  # type: ignore[union-attr]
        meta = {
            "version": CACHE_VERSION,
            "torch": torch.__version__,
            "split": split,
            "start": start,
            "pool": self.model.pool_type if start is None else None,
            "views": [list(v) for v, _ in views] if not random_views else None,
            "random_views": random_views,
            "augment": self.augment.model_dump() if random_views and self.augment else None,
            # preprocessing, backend, device, precision, memory format; the seed only draws random views
            "context": {k: v for k, v in context.items() if k != "seed" or random_views},
        }
        h.update(json.dumps(meta, sort_keys=True, default=str).encode())
        for module in frozen:
            h.update(repr(module).encode())  # the architecture and its settings
            for name, tensor in module.state_dict().items():
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        source.fingerprint(h)
        return h.hexdigest()[:32]


class CachedTail(nn.Module):
    """The model from a cached tensor on, as a module (for code that calls `model(x)`)."""

    def __init__(self, cache: FeatureCache, start: int | None):
        super().__init__()
        self.cache, self.start = cache, start

    def forward(self, x: torch.Tensor) -> Any:
        return self.cache.rest(x, self.start)


class CachedDataset(Dataset):
    """(cached tensor of the view drawn for this epoch, label) pairs; labels as ImageDataset gives them."""

    def __init__(self, tensor: torch.Tensor, image_dataset: Any, view_of: torch.Tensor | None = None):
        self.tensor, self.base = tensor, image_dataset
        self.view_of = view_of if view_of is not None else torch.zeros(tensor.shape[1], dtype=torch.long)

    def __len__(self) -> int:
        return self.tensor.shape[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        item = self.tensor[int(self.view_of[index]), index]
        if self.base.targets:
            return item, {task: labels[index] for task, labels in self.base.targets.items()}
        return item, self.base.labels[index]


def draw_views(decision: Decision, n: int, seed: int, epoch: int) -> torch.Tensor:
    """Each image's view for one epoch: flips with their probabilities, or one of K random views uniformly."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if decision.random_views:
        return torch.randint(decision.random_views, (n,), generator=generator)
    probs = torch.tensor([p for _, p in decision.flips], dtype=torch.float64)
    if len(probs) == 1:
        return torch.zeros(n, dtype=torch.long)
    return torch.multinomial(probs, n, replacement=True, generator=generator)


def fingerprint_items(h: Any, items: list[Any]) -> None:
    """Files by path, size and modification time; in-memory arrays (CIFAR) by their bytes."""
    for item in items:
        if isinstance(item, np.ndarray):
            h.update(np.ascontiguousarray(item).tobytes())
        else:
            st = os.stat(item)
            h.update(f"{os.path.abspath(item)}|{st.st_size}|{st.st_mtime_ns}".encode())


def _load(path: Path) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["features"]
        os.utime(path)  # recently used: evicted last
        return tensor
    except Exception as exc:  # a damaged file only costs a recomputation
        log.warning("ignoring the unreadable feature cache %s (%s); computing it again", path, exc)
        return None


def evict(root: Path, keep_bytes: float) -> list[Path]:
    """Delete the least recently used cache files until the folder holds at most `keep_bytes`."""
    files = sorted(root.glob("*.pt"), key=lambda f: f.stat().st_mtime, reverse=True)
    total, removed = 0, []
    for f in files:
        total += f.stat().st_size
        if total > keep_bytes:
            f.unlink(missing_ok=True)
            removed.append(f)
    if removed:
        log.info("feature cache over its disk limit: removed %d least recently used file(s)", len(removed))
    return removed


def _save(path: Path, tensor: torch.Tensor, keep_gb: float) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"features": tensor}, tmp)
        os.replace(tmp, path)  # atomic: a second process (sweep worker) sees the whole file or none
        evict(path.parent, keep_gb * 2**30)
    except OSError as exc:  # a read-only or full disk loses the reuse across runs, not this run's speed-up
        log.warning("could not write the feature cache %s: %s", path, exc)
        tmp.unlink(missing_ok=True)

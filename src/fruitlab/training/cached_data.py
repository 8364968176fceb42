"""The data module of a fit with phases: a phase served from the feature cache gets loaders of cached tensors.

Lightning asks for loaders every epoch (the trainer runs with reload_dataloaders_every_n_epochs=1); for a phase
the feature cache (featurecache.py) takes, they hold the frozen part's output instead of images, and the module is
told which part of the forward pass they skip. Other phases get the data module's image loaders, made once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader

from fruitlab.data.datamodule import ImageDataModule, _one_thread_per_worker, resolve_workers
from fruitlab.training.featurecache import CachedDataset, CachedTail, FeatureCache, draw_views, fingerprint_items
from fruitlab.training.phases import PhasePlan

log = logging.getLogger(__name__)

# Inference on the CPU runs faster in small batches (EfficientNet-Lite0 at 224 px, 2 cores: 47 img/s in batches
# of 16, 38 in batches of 64; benchmarks/performance.md); on a GPU the evaluation batch size is used.
CPU_INFERENCE_BATCH = 16


class PhasedDataModule(ImageDataModule):
    def __init__(self, *args: Any, feature_cache: FeatureCache, plan: PhasePlan, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.feature_cache, self.plan = feature_cache, plan

    def train_dataloader(self) -> DataLoader:
        return self._cached("train") or self._uncached("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._cached("val") or self._uncached("val", train=False)

    def _uncached(self, split: str, train: bool) -> DataLoader:
        self._set_inputs(split, None)
        return self.images(split, train)

    def _cached(self, split: str) -> DataLoader | None:
        """Loader of cached tensors when the phase this loader serves is cached, else None."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.lightning_module is None:
            return None
        epoch = trainer.current_epoch
        # Lightning makes the epoch's train loader before on_train_epoch_start, where the phase changes.
        index = self.plan.index_at(epoch) if split == "train" else self.plan.index
        module = trainer.lightning_module

        def examples() -> torch.Tensor:  # a few real images: the cache checks its split forward pass on them
            images = self.dataset(split)
            batch = torch.stack([images[i][0] for i in range(min(4, len(images)))])
            return module.prepare_input(batch.to(module.device))

        decide = self.feature_cache.decide
        decision = decide(index, examples, world_size=trainer.world_size, sizes=self._sizes())
        if decision.cached and index + 1 < len(self.plan.phases):  # one pass can fill the next phase's cache too
            decide(index + 1, examples, world_size=trainer.world_size, sizes=self._sizes())
        if not decision.cached:
            return None
        source = _FeatureSource(self, split, trainer)
        tensor = self.feature_cache.features(split, index, source, source.context())
        train = split == "train"
        view_of = draw_views(decision, tensor.shape[1], self.seed, epoch) if train else None
        dataset = CachedDataset(tensor, self.dataset(split), view_of)
        self._set_inputs(split, decision.start, cached=True)
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size if train else self.eval_batch_size,
            sampler=self._train_sampler(dataset) if train else None,
            num_workers=0,  # in memory already: worker processes would only copy it
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.seed),
        )

    def cached_evaluation(self, split: str, phase: int) -> tuple[DataLoader, torch.nn.Module] | None:
        """For the final evaluation: a loader over the cached tensors of `split` in `phase` and the model's forward
        from them, when that phase cached the split and they are still held; else None."""
        cache = self.feature_cache
        if (split, phase) not in cache.tensors:
            return None
        loader = DataLoader(CachedDataset(cache.tensors[(split, phase)], self.dataset(split)), self.eval_batch_size)
        return loader, CachedTail(cache, cache.decisions[phase].start)

    def _sizes(self) -> dict[str, int]:
        return {s: len(self.splits.splits[s].items) for s in ("train", "val") if s in self.splits.splits}

    def _set_inputs(self, split: str, start: int | None, cached: bool = False) -> None:
        """Tell the feature cache (shared with the LightningModule) what this split's loader serves now."""
        if cached:
            self.feature_cache.serving[split] = start
        else:
            self.feature_cache.serving.pop(split, None)


class _FeatureSource:
    """The images of one split, run through the frozen part of the model once (per view) for the cache."""

    def __init__(self, datamodule: PhasedDataModule, split: str, trainer: Any):
        self.dm, self.split, self.trainer = datamodule, split, trainer

    def context(self) -> dict[str, Any]:
        module = self.trainer.lightning_module
        return {
            "preprocess": self.dm.preprocess,
            "backend": self.dm.cfg.augment_backend,
            "seed": self.dm.seed,
            "device": module.device.type,
            "precision": str(self.trainer.precision),
            "channels_last": bool(module.channels_last),
        }

    def fingerprint(self, h: Any) -> None:
        fingerprint_items(h, list(self.dm.splits.splits[self.split].items))

    @contextmanager
    def running(self) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """Inference as the trainer would run it (device, precision, memory format); yields the input mover."""
        module = self.trainer.lightning_module
        was_training = module.training
        module.eval()
        try:
            with torch.inference_mode(), self.trainer.precision_plugin.forward_context():
                yield lambda x: module.prepare_input(x.to(module.device))
        finally:
            module.train(was_training)  # the module puts frozen BatchNorm back in eval mode

    def batch_size(self) -> int:
        # Inference on the CPU runs faster in small batches (EfficientNet-Lite0 at 224 px: 47 img/s at 16,
        # 38 at 64; benchmarks/performance.md); on a GPU the evaluation batch size.
        on_cpu = self.trainer.lightning_module.device.type == "cpu"
        return min(self.dm.eval_batch_size, CPU_INFERENCE_BATCH) if on_cpu else self.dm.eval_batch_size

    def compute(self, cache: Any, start: int | None, views: Any, random_views: int) -> torch.Tensor:
        dataset = self.dm.dataset(self.split, augment=bool(random_views))
        workers = resolve_workers(self.dm.cfg.num_workers, cheap_images=self.dm.cheap_images(dataset))
        n = len(dataset)
        out: torch.Tensor | None = None
        passes = list(range(random_views)) if random_views else [0]
        flips = [v for v, _ in views] if not random_views else [(False, False)]
        log.info(
            "computing the frozen part once for %s: %d images x %d view(s)", self.split, n, len(passes) * len(flips)
        )
        with self.running() as prepare:
            for k in passes:
                loader = DataLoader(
                    dataset,
                    batch_size=self.batch_size(),
                    num_workers=workers,
                    generator=torch.Generator().manual_seed(self.dm.seed + k),
                    worker_init_fn=_one_thread_per_worker if workers else None,
                )
                done = 0
                for images, _ in loader:
                    x = prepare(images)
                    for j, (hflip, vflip) in enumerate(flips):
                        xv = x.flip(-1) if hflip else x
                        xv = xv.flip(-2) if vflip else xv
                        y = cache.prefix(xv, start).float().cpu()
                        if out is None:
                            out = torch.empty((len(passes) * len(flips), n, *y.shape[1:]), dtype=y.dtype)
                        out[k * len(flips) + j, done : done + len(y)] = y
                    done += len(images)
        assert out is not None
        return out

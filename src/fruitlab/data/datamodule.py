"""Datasets and the LightningDataModule over a loaded `DatasetSplits`.

Shuffling is seeded per epoch (torch's DistributedSampler with one replica: permutation = f(seed, epoch)) and every
loader has its own generator, so the batches of an epoch do not depend on how loaders were created or reused: a
phase served from the feature cache (training/featurecache.py) sees the same batches as the uncached run, and a
resumed run the same as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from fruitlab.config import DataConfig
from fruitlab.data.balance import sample_weights
from fruitlab.data.images import load_rgb_array
from fruitlab.data.transforms import Transform, build_transform, eval_resize

log = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """(image tensor, label) pairs; the label is a class index, or {task: index} for multi-task data."""

    def __init__(
        self,
        items: list[Any],
        labels: list[int],
        transform: Transform,
        min_side: int | None = None,
        targets: dict[str, list[int]] | None = None,
    ):
        self.items, self.labels, self.transform, self.min_side = items, labels, transform, min_side
        self.targets = targets

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image = load_rgb_array(self.items[index], self.min_side)
        if self.targets:
            return self.transform(image), {task: labels[index] for task, labels in self.targets.items()}
        return self.transform(image), self.labels[index]


def resolve_workers(setting: int | str, cheap_images: bool = False) -> int:
    """'auto': one process per core beyond the one that trains (at most 8), except when the model trains on the
    CPU and the images are cheap to read (pre-sized cache, in-memory arrays): then none. On 2 cores a worker
    takes CPU time from the model's threads; with the pre-sized cache, loading in the main process was faster
    (EfficientNet-Lite0 inference at 224 px: 36.9 img/s with 0 workers, 32.1 with 1; benchmarks/performance.md)."""
    if setting != "auto":
        return int(setting)
    if cheap_images and not torch.cuda.is_available():
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _one_thread_per_worker(worker_id: int) -> None:
    # Each worker already is a parallel unit; OpenCV's own thread pool inside it only fights the training
    # threads for the same cores (torch already sets 1 thread in workers).
    import cv2

    cv2.setNumThreads(1)


class ImageDataModule(L.LightningDataModule):
    """Loaders for the splits; the train split alone is augmented.

    `image_cache`: auto / on / off, see `PerformanceConfig.image_cache` (data/presized.py).
    """

    def __init__(
        self, splits: Any, cfg: DataConfig, preprocess: dict[str, Any], seed: int = 42, image_cache: str = "off"
    ):
        super().__init__()
        self.splits, self.cfg, self.preprocess, self.seed = splits, cfg, preprocess, seed
        self.classes: list[str] = list(splits.classes)
        self.image_cache = image_cache
        self._image_loaders: dict[tuple[str, bool], DataLoader] = {}
        self._presized: dict[tuple[str, int], Any] = {}

    def dataset(self, split: str, augment: bool = False) -> ImageDataset:
        part = self.splits.splits[split]
        transform = build_transform(self.preprocess, self.cfg.augment if augment else None, self.cfg.augment_backend)
        targets = part.targets if getattr(self.splits, "multitask", False) else None
        items = self.presized(split, augment)
        return ImageDataset(items, part.labels, transform, min_side=eval_resize(self.preprocess), targets=targets)

    @staticmethod
    def cheap_images(dataset: ImageDataset) -> bool:
        """Images already decoded and sized (pre-sized cache, in-memory arrays): loading them costs little."""
        items = dataset.items
        return len(items) == 0 or not isinstance(items, list) or isinstance(items[0], np.ndarray)

    def presized(self, split: str, augment: bool) -> Any:
        """The split's images from the pre-sized image cache (built on first use), or its items as they are.

        auto: where exact - files (not in-memory arrays) framed as in evaluation; a random resized crop cuts from
        the full image, so it gets the cache only with `on`, at twice the size (margin for crops).
        """
        items = self.splits.splits[split].items
        if self.image_cache == "off" or not items or isinstance(items[0], np.ndarray):
            return items
        crops = augment and self.cfg.augment.random_resized_crop is not None
        if crops and self.image_cache == "auto":
            return items
        side = eval_resize(self.preprocess) * (2 if crops else 1)
        if (split, side) not in self._presized:
            from fruitlab.data.presized import PresizedImages

            images = PresizedImages(items, side, self.preprocess["interpolation"], self.cfg.augment_backend)
            self._presized[(split, side)] = images.build()
        return self._presized[(split, side)]

    def _loader(self, split: str, train: bool) -> DataLoader:
        cfg = self.cfg
        generator = torch.Generator().manual_seed(self.seed)
        dataset = self.dataset(split, augment=train)
        workers = resolve_workers(cfg.num_workers, cheap_images=self.cheap_images(dataset))
        sampler = self._train_sampler(dataset) if train else None
        return DataLoader(
            dataset,
            batch_size=cfg.batch_size if train else self.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=False,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=generator,  # also seeds the workers; the global RNG (dropout) is left alone
            worker_init_fn=_one_thread_per_worker if workers else None,
        )

    @property
    def eval_batch_size(self) -> int:
        return self.cfg.eval_batch_size or 2 * self.cfg.batch_size

    def _train_sampler(self, dataset: Dataset) -> Any:
        generator = torch.Generator().manual_seed(self.seed)
        if self.cfg.balance == "sampler":
            return self.balanced_sampler("train", generator)
        if self._world_size() > 1:
            return None  # Lightning puts its DistributedSampler in, one shard per process
        return DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=self.seed, drop_last=False)

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def balanced_sampler(self, split: str, generator: torch.Generator) -> WeightedRandomSampler:
        """data.balance: sampler - each class drawn equally often (with replacement); an epoch is len(split) draws."""
        labels = self.splits.splits[split].labels
        weights = sample_weights(labels)
        return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)

    def has_split(self, split: str) -> bool:
        return split in self.splits.splits

    def images(self, split: str, train: bool) -> DataLoader:
        """The image loader of a split, made once: Lightning may ask every epoch (reload_dataloaders_every_n_epochs)
        and persistent workers should outlive the epoch."""
        if (split, train) not in self._image_loaders:
            self._image_loaders[(split, train)] = self._loader(split, train)
        return self._image_loaders[(split, train)]

    def train_dataloader(self) -> DataLoader:
        return self.images("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.images("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self.images("test", train=False)

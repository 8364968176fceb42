"""Datasets and the LightningDataModule over a loaded `DatasetSplits`."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from fruitlab.config import DataConfig
from fruitlab.data.balance import sample_weights
from fruitlab.data.images import load_rgb_array
from fruitlab.data.transforms import Transform, build_transform, eval_resize


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


def resolve_workers(setting: int | str) -> int:
    """'auto': one process per core beyond the one that trains (so 1 on a 2-core machine), at most 8."""
    if setting != "auto":
        return int(setting)
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _one_thread_per_worker(worker_id: int) -> None:
    # Each worker already is a parallel unit; OpenCV's own thread pool inside it only fights the training
    # threads for the same cores (torch already sets 1 thread in workers).
    import cv2

    cv2.setNumThreads(1)


class ImageDataModule(L.LightningDataModule):
    """Loaders for the splits; the train split alone is augmented."""

    def __init__(self, splits: Any, cfg: DataConfig, preprocess: dict[str, Any], seed: int = 42):
        super().__init__()
        self.splits, self.cfg, self.preprocess, self.seed = splits, cfg, preprocess, seed
        self.classes: list[str] = list(splits.classes)

    def dataset(self, split: str, augment: bool = False) -> ImageDataset:
        part = self.splits.splits[split]
        transform = build_transform(self.preprocess, self.cfg.augment if augment else None, self.cfg.augment_backend)
        targets = part.targets if getattr(self.splits, "multitask", False) else None
        return ImageDataset(part.items, part.labels, transform, min_side=eval_resize(self.preprocess), targets=targets)

    def _loader(self, split: str, train: bool) -> DataLoader:
        cfg = self.cfg
        workers = resolve_workers(cfg.num_workers)
        generator = torch.Generator().manual_seed(self.seed)
        sampler = self.balanced_sampler(split, generator) if train and cfg.balance == "sampler" else None
        return DataLoader(
            self.dataset(split, augment=train),
            batch_size=cfg.batch_size if train else (cfg.eval_batch_size or 2 * cfg.batch_size),
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=False,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=generator if train else None,
            worker_init_fn=_one_thread_per_worker if workers else None,
        )

    def balanced_sampler(self, split: str, generator: torch.Generator) -> WeightedRandomSampler:
        """data.balance: sampler - each class drawn equally often (with replacement); an epoch is len(split) draws."""
        labels = self.splits.splits[split].labels
        weights = sample_weights(labels)
        return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)

    def has_split(self, split: str) -> bool:
        return split in self.splits.splits

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

"""What `fruitlab fit` does for a one-phase experiment, as a plain PyTorch loop: the baseline of
`benchmarks/performance.py overhead`.

    .venv/bin/python benchmarks/handloop.py -e benchmarks/overhead.yaml [--set key=value ...] [--out DIR]

The inputs are fit's: the experiment file is read with fruitlab's schema, the data come from fruitlab's registry
and ImageDataModule (same files, split, decoding, augmentation, image cache setting, batch sizes and loader
workers), the model from build_classifier (same weights), channels_last as the experiment says, the same seeds.
From there on only torch: the phase's optimizer over every parameter, cross-entropy, train + validation each epoch,
a checkpoint each epoch (`last.pt`, and `best.pt` when the val loss improves, as fit's ModelCheckpoint keeps best and
last), then the best weights evaluated on val and the model saved whole (`model.pt`). No tracking, metrics library,
progress bar or feature cache (overhead.yaml turns fit's off).

The last line printed is `handloop {json}`: seconds spent setting up (data, model), training (epochs with their
validation and checkpoints), finishing (best weights, evaluation, saving) and in all, from the first line of main(),
and the wall-clock time (time.time()) of the first training batch.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fruitlab.config import Experiment, load_experiment
from fruitlab.data.datamodule import ImageDataModule
from fruitlab.data.registry import load_dataset
from fruitlab.models.classifier import build_classifier

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def main() -> None:
    started = time.perf_counter()
    args = parse()
    exp = load_experiment(args.experiment, args.set)
    phase = check_supported(exp)
    seed_everything(exp.seed)
    splits = load_dataset(exp.data, seed=exp.seed)
    model, _ = build_classifier(exp.model, exp.preprocess, splits.tasks)
    data = ImageDataModule(splits, exp.data, model.preprocess, seed=exp.seed, image_cache=exp.performance.image_cache)
    train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
    channels_last = exp.performance.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = phase.optimizer
    extra = {"momentum": opt.momentum, "nesterov": opt.nesterov} if opt.name == "sgd" else {}
    optimizer = OPTIMIZERS[opt.name](model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay, **extra)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=exp.loss.label_smoothing)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    set_up = time.perf_counter()

    best, first_step_at = float("inf"), None
    for epoch in range(phase.epochs):
        if hasattr(train_loader.sampler, "set_epoch"):  # a per-epoch seeded shuffle: what Lightning calls each epoch
            train_loader.sampler.set_epoch(epoch)
        epoch_started = time.perf_counter()
        model.train()
        for images, labels in train_loader:
            if first_step_at is None:  # wall clock, as fit's first_step_seconds metric is stamped
                first_step_at = time.time()
            loss = loss_fn(model(to_format(images, channels_last)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val_loss, val_acc = evaluate(model, val_loader, loss_fn, channels_last)
        took = time.perf_counter() - epoch_started
        print(f"epoch {epoch} ({took:.1f} s): train loss {loss.item():.4f}, val loss {val_loss:.4f}, acc {val_acc:.4f}")
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save(state, out / "last.pt")
        if val_loss < best:
            best = val_loss
            torch.save(state, out / "best.pt")
    trained = time.perf_counter()

    model.load_state_dict(torch.load(out / "best.pt")["model"])
    val_loss, val_acc = evaluate(model, val_loader, loss_fn, channels_last)
    torch.save(model, out / "model.pt")
    done = time.perf_counter()
    print(f"best model: val loss {val_loss:.4f}, val acc {val_acc:.4f}, saved to {out / 'model.pt'}")
    seconds = {"setup_s": set_up - started, "train_s": trained - set_up, "final_s": done - trained}
    seconds |= {"total_s": done - started, "first_step_at": first_step_at}
    print("handloop " + json.dumps({k: round(v, 3) for k, v in seconds.items()}))


def to_format(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@torch.inference_mode()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, loss_fn: nn.Module, channels_last: bool):
    """(mean loss, accuracy) over the loader."""
    model.eval()
    total, right, count = 0.0, 0, 0
    for images, labels in loader:
        logits = model(to_format(images, channels_last))
        total += float(loss_fn(logits, labels)) * len(labels)
        right += int((logits.argmax(-1) == labels).sum())
        count += len(labels)
    return total / count, right / count


def seed_everything(seed: int) -> None:
    """What lightning.seed_everything does: Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_supported(exp: Experiment):
    """The loop mirrors one phase that trains everything at one rate: refuse anything else rather than differ."""
    phases = exp.finetune.phases
    phase = phases[0]
    supported = (
        len(phases) == 1
        and phase.train == "all"
        and phase.schedule.name == "constant"
        and phase.optimizer.name in OPTIMIZERS
        and phase.optimizer.backbone_lr in (None, phase.optimizer.lr)
        and exp.data.labels.source == "class"
        and exp.data.balance == "none"
        and not exp.data.augment.mixing
    )
    if not supported:
        raise SystemExit(
            f"{exp.source}: handloop.py mirrors one phase with train: all, a constant schedule, one learning rate, "
            f"optimizer {'/'.join(OPTIMIZERS)}, single-task labels, no balancing and no mixup/cutmix"
        )
    return phase


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-e", "--experiment", required=True, help="experiment name or YAML path")
    parser.add_argument("--set", action="append", default=[], help="override a key, as `fruitlab fit --set`")
    parser.add_argument("--out", default="handloop", help="folder for checkpoints and the model")
    return parser.parse_args()


if __name__ == "__main__":
    main()

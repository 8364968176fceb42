"""Augmentation throughput of the two backends: images per second on one core.

    .venv/bin/python benchmarks/augment_backends.py [--images-32 N] [--images-224 N] [--rounds R]

One process with one torch thread and one OpenCV thread, as each DataLoader worker runs (datamodule.py), so
loading feeds about (images/s per core) x workers. Images are decoded once beforehand (decoding is the same PIL
code for both backends); the timed part is the transform alone: an HxWx3 uint8 array in, a normalised
(3, size, size) float tensor out.

- 32 px: CIFAR-10 JPEGs read straight from the mirror's archive (nothing extracted), size 32, no resize for eval.
- 224 px: the fresh/rotten fruit photos (fetch them first: `fruitlab data fetch fruits_fresh_rotten`), decoded
  as the DataModule does (JPEG draft decoding down to a shorter side >= 256), crop_pct 0.875.

Rounds alternate between the backends. CPU time (time.process_time) counts only this process's time on its
core, so it holds up when other processes share the machine; the best round's wall time is printed beside it.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fruitlab.config import AugmentConfig
from fruitlab.data.images import load_rgb_array
from fruitlab.data.transforms import BACKENDS, build_transform, eval_resize

MIRROR = Path(os.environ.get("FRUITLAB_DATA_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
FRUITS = Path(os.environ.get("FRUITLAB_DATA_DIR", Path.home() / ".cache" / "fruitlab" / "datasets"))
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

PIPELINES = {
    "train: random resized crop, hflip, rotate, colour jitter": AugmentConfig(
        random_resized_crop=(0.08, 1.0), hflip=0.5, rotate=15, color_jitter=0.3
    ),
    "train: resize + centre crop, hflip, rotate, colour jitter": AugmentConfig(hflip=0.5, rotate=15, color_jitter=0.3),
    "train: random resized crop, hflip, RandAugment(2, 9)": AugmentConfig(
        random_resized_crop=(0.08, 1.0), hflip=0.5, randaugment={"num_ops": 2, "magnitude": 9}
    ),
    "eval: resize + centre crop": None,
}


def cifar_images(count: int) -> list[np.ndarray]:
    """`count` CIFAR-10 train JPEGs spread over the archive (every k-th file), decoded."""
    with tarfile.open(MIRROR / "cifar10-jpeg.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/train/" in m.name and m.name.endswith(".jpg")]
        step = max(1, len(members) // count)
        chosen = members[::step][:count]
        return [np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")) for m in chosen]


def fruit_images(count: int, min_side: int) -> list[np.ndarray]:
    files = sorted((FRUITS / "fruits_fresh_rotten").rglob("*.png"))
    if not files:
        raise SystemExit(f"no fruit photos under {FRUITS}: run `fruitlab data fetch fruits_fresh_rotten` first")
    step = max(1, len(files) // count)
    return [load_rgb_array(f, min_side) for f in files[::step][:count]]


def measure(transform: Callable, images: list[np.ndarray]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for one pass over the images."""
    cpu, wall = time.process_time(), time.perf_counter()
    for image in images:
        transform(image)
    return time.process_time() - cpu, time.perf_counter() - wall


def run(size: int, images: list[np.ndarray], crop_pct: float, rounds: int) -> list[str]:
    pre = {"input_size": size, "crop_pct": crop_pct, "interpolation": "bilinear", **IMAGENET}
    rows = []
    for name, augment in PIPELINES.items():
        transforms = {b: build_transform(pre, augment, b) for b in BACKENDS}
        for b in BACKENDS:  # warm-up: lazy imports, first-call allocations
            measure(transforms[b], images[:20])
        times: dict[str, list[tuple[float, float]]] = {b: [] for b in BACKENDS}
        for _ in range(rounds):
            for b in BACKENDS:
                times[b].append(measure(transforms[b], images))
        cells = []
        for b in BACKENDS:
            cpu = np.median([t[0] for t in times[b]])
            wall = min(t[1] for t in times[b])
            cells.append(f"{len(images) / cpu:,.0f} ({len(images) / wall:,.0f})")
        cpu_a, cpu_t = (np.median([t[0] for t in times[b]]) for b in BACKENDS)
        rows.append(f"| {size} px | {name} | {cells[0]} | {cells[1]} | {cpu_t / cpu_a:.1f}x |")
        print(rows[-1], flush=True)
    return rows


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-32", type=int, default=2000)
    parser.add_argument("--images-224", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import albumentations
    import cv2
    import torchvision

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, GPU: {torch.cuda.is_available()}")
    print(f"load average before: {os.getloadavg()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"albumentations {albumentations.__version__}, opencv {cv2.__version__}, numpy {np.__version__}"
    )
    print("| size | pipeline | albumentations img/s per core (best wall) | torchvision | albumentations faster by |")
    print("|---|---|---|---|---|")
    run(32, cifar_images(args.images_32), crop_pct=1.0, rounds=args.rounds)
    pre224 = {"input_size": 224, "crop_pct": 0.875}
    run(224, fruit_images(args.images_224, eval_resize(pre224)), crop_pct=0.875, rounds=args.rounds)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

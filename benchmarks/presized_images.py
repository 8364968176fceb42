"""Loading speed from the original photos against the pre-sized cache: images per second on one core.

    .venv/bin/python benchmarks/presized_images.py [FOLDER] [--images N] [--rounds R] [--backend B]

FOLDER defaults to the fresh/rotten fruit photos (fetch them first: `fruitlab data fetch fruits_fresh_rotten`).
One process with one torch thread and one OpenCV thread, as each DataLoader worker runs (datamodule.py); the
timed part is what ImageDataset.__getitem__ does per image: read it, then transform it into a normalised
(3, 224, 224) tensor. Originals are decoded as the DataModule does (JPEG draft decoding to a shorter side >= 256);
the cache holds them shrunk to that side. The cache is built into a temporary folder (deleted afterwards), so
the first row also shows what building it costs once; the files are read from the page cache in both cases
(a warm-up pass first), which is how epochs after the first run.

Rounds alternate between the two sources. CPU time (time.process_time) counts only this process's time on its
core, so it holds up when other processes share the machine; the best round's wall time is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fruitlab.config import AugmentConfig
from fruitlab.data.images import load_rgb_array
from fruitlab.data.presized import PresizedImages
from fruitlab.data.transforms import BACKENDS, build_transform, eval_resize

FRUITS = Path(os.environ.get("FRUITLAB_DATA_DIR", Path.home() / ".cache" / "fruitlab" / "datasets"))
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
PRE = {"input_size": 224, "crop_pct": 0.875, "interpolation": "bilinear", **IMAGENET}
PIPELINES = {
    "train: random resized crop, hflip, colour jitter": AugmentConfig(
        random_resized_crop=(0.08, 1.0), hflip=0.5, color_jitter=0.3
    ),
    "eval: resize + centre crop": None,
}
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def photos(folder: Path, count: int) -> list[str]:
    """`count` image files spread over the folder (every k-th in sorted order, so all classes)."""
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        raise SystemExit(f"no images under {folder}: run `fruitlab data fetch fruits_fresh_rotten` first")
    return files[:: max(1, len(files) // count)][:count]


def measure(read: Callable[[int], np.ndarray], transform: Callable, count: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for one pass: read each image, transform it."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        transform(read(i))
    return time.process_time() - cpu, time.perf_counter() - wall


def run(files: Sequence[str], cache: PresizedImages, backend: str, rounds: int) -> None:
    side = eval_resize(PRE)
    sources = {"original files": lambda i: load_rgb_array(files[i], side), "presized cache": cache.__getitem__}
    for name, augment in PIPELINES.items():
        transform = build_transform(PRE, augment, backend)
        times: dict[str, list[tuple[float, float]]] = {s: [] for s in sources}
        for read in sources.values():  # warm-up: page cache, lazy imports, the memmap
            measure(read, transform, len(files))
        for _ in range(rounds):
            for source, read in sources.items():
                times[source].append(measure(read, transform, len(files)))
        cells = []
        for source in sources:
            cpu, wall = np.median([t[0] for t in times[source]]), min(t[1] for t in times[source])
            cells.append((len(files) / cpu, f"{len(files) / cpu:,.0f} ({len(files) / wall:,.0f})"))
        faster = cells[1][0] / cells[0][0]
        print(f"| {name} | {cells[0][1]} | {cells[1][1]} | {faster:.1f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=FRUITS / "fruits_fresh_rotten")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", choices=BACKENDS, default="albumentations")
    args = parser.parse_args()

    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    files = photos(args.folder, args.images)
    source_mb = sum(os.path.getsize(f) for f in files) / 1e6
    print(f"{len(files)} images from {args.folder} ({source_mb:.1f} MB), backend {args.backend}, {os.cpu_count()} CPUs")
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        cache = PresizedImages(files, eval_resize(PRE), PRE["interpolation"], args.backend, root=root).build()
        print(f"built once in {time.perf_counter() - start:.1f} s (2 threads): {cache.describe()}")
        print("| pipeline | original files img/s per core (best wall) | presized cache | cache faster by |")
        print("|---|---|---|---|")
        run(files, cache, args.backend, args.rounds)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

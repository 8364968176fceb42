"""Tiny real-format fixtures: images written by PIL, archives, CIFAR-10 batches in torchvision's exact format."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_image(path: Path, fmt: str = "JPEG", size: tuple[int, int] = (16, 12), seed: int = 0) -> Path:
    """A noisy RGB image in `fmt`, whatever the file's extension says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG whose header is intact (PIL opens it) but whose pixel data stops halfway."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def write_text(path: Path, text: str = "not an image\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_class_tree(split_dir: Path, counts: dict[str, int], ext: str = ".jpg", fmt: str = "JPEG") -> list[Path]:
    """`split_dir/<class>/<class>_NN<ext>` with `counts[class]` distinct images each."""
    paths = []
    for c, (cls, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            seed = zlib.crc32(f"{split_dir}/{cls}/{i}".encode()) + c
            paths.append(write_image(split_dir / cls / f"{cls}_{i:02d}{ext}", fmt=fmt, seed=seed))
    return paths


def write_cifar_batches(
    folder: Path, train_per_class: int = 4, test_per_class: int = 2, classes: list[str] = CIFAR_CLASSES
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A `cifar-10-batches-py` folder in torchvision's format; returns {file: (data rows, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    train_labels = [c for c in range(len(classes)) for _ in range(train_per_class)]
    rng.shuffle(train_labels)
    for i in range(5):  # the train images spread over five batches, as in the real files
        written[f"data_batch_{i + 1}"] = _batch_rows(rng, [int(x) for x in train_labels[i::5]])
    written["test_batch"] = _batch_rows(rng, [c for c in range(len(classes)) for _ in range(test_per_class)])
    for name, (data, labels) in written.items():
        entry = {
            "batch_label": name,
            "labels": labels,
            "data": data,
            "filenames": [f"{n}.png" for n in range(len(labels))],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"num_cases_per_batch": 10000, "label_names": list(classes), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def _batch_rows(rng: np.random.Generator, labels: list[int]) -> tuple[np.ndarray, list[int]]:
    return rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), labels


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

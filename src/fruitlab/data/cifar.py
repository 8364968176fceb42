"""CIFAR-10 on disk: torchvision's pickled `cifar-10-batches-py` folder, or class folders of JPEG files.

The pickled batches are what `torchvision.datasets.CIFAR10(download=True)` leaves on disk; they are read with an
unpickler that only rebuilds numpy arrays, so a doctored batch file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from fruitlab.errors import DataError

BATCHES_DIR = "cifar-10-batches-py"
JPEG_DIR = "cifar10"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
SIDE = 32  # pixels; each row of a batch's `data` is 3 x 32 x 32 bytes, channel-major (R plane, G, B)

# Everything a CIFAR batch pickle references: numpy's array rebuilders, and _codecs.encode, which protocol-2
# pickles written by Python 3 use for bytes.
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


def detect_layout(root: Path, where: str = "") -> tuple[str, Path]:
    """('pickle', the batches folder) or ('jpeg', the folder holding train/ and test/)."""
    for candidate in (root / BATCHES_DIR, root):
        if (candidate / META).is_file():
            return "pickle", candidate
    for candidate in (root / JPEG_DIR, root):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return "jpeg", candidate
    raise DataError(
        f"data.root {root} {where} is not a CIFAR-10 folder: expected {BATCHES_DIR}/ with {META} "
        "(torchvision's pickled batches) or train/ and test/ class folders (the JPEG layout)".replace("  ", " ")
    )


def read_pickled(folder: Path) -> dict[str, dict[str, list[Any]]]:
    """{'train': {class: [HxWx3 uint8 arrays]}, 'test': {...}} from a `cifar-10-batches-py` folder."""
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH, META) if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{folder} lacks {', '.join(missing)}; extract cifar-10-python.tar.gz again, "
            "or delete the folder so fruitlab fetches it"
        )
    names = _label_names(folder / META)
    return {
        "train": _read_batches([folder / n for n in TRAIN_BATCHES], names),
        "test": _read_batches([folder / TEST_BATCH], names),
    }


def _label_names(path: Path) -> list[str]:
    meta = _unpickle(path)
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names or len(set(names)) != len(names):
        raise DataError(f"{path}: expected a dict with a list of distinct 'label_names'; is this CIFAR-10?")
    return [str(n) for n in names]


def _read_batches(paths: list[Path], names: list[str]) -> dict[str, list[Any]]:
    import numpy as np  # lazy: only this layout needs it

    arrays, labels = [], []
    for path in paths:
        data, batch_labels = _batch(path)
        arrays.append(data)
        labels.extend(batch_labels)
    # (N, 3072) rows -> (N, 3, 32, 32) planes -> (N, 32, 32, 3) HWC, the layout PIL and albumentations expect
    images = np.ascontiguousarray(np.concatenate(arrays).reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    bad = sorted({lab for lab in labels if not 0 <= lab < len(names)})
    if bad:
        raise DataError(f"{paths[0].parent}: labels {bad} have no name in {META} ({len(names)} classes)")
    grouped: dict[str, list[Any]] = {name: [] for name in names}
    for image, label in zip(images, labels, strict=True):
        grouped[names[label]].append(image)
    return grouped


def _batch(path: Path) -> tuple[Any, list[int]]:
    import numpy as np

    entry = _unpickle(path)
    try:
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = [int(x) for x in entry["labels"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 batch (expected 'data' and 'labels', {exc!r})") from None
    if data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE or len(data) != len(labels):
        raise DataError(
            f"{path}: expected 'data' of shape (N, {3 * SIDE * SIDE}) and N labels, "
            f"got {data.shape} and {len(labels)} labels"
        )
    return data, labels


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # The canonical batches were pickled by Python 2 with numpy 1 (numpy.core); numpy 2 calls it numpy._core.
        module = "numpy._core.multiarray" if module == "numpy.core.multiarray" else module
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return _ArraysOnly(fh, encoding="latin1").load()  # latin1: byte strings pickled by Python 2
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise DataError(f"{path}: cannot read this CIFAR-10 pickle ({exc}); extract the archive again") from None

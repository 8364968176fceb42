"""Image files decoded and shrunk once to the size the transforms resize them to, kept in one file on disk.

Every epoch (and every run and sweep trial on the same files) otherwise decodes each full-size photo again, only
for the transform to shrink it to `round(input_size / crop_pct)` px on the shorter side. Here each file is decoded
once (`open_rgb`, as the dataset does) and shrunk with the very call the backend's eval frame makes (cv2 INTER_AREA
as in CentreFrame, or v2.Resize), so that the frame's resize becomes a no-op and evaluation sees the same pixels
with or without the cache (tests/data/test_presized.py). Random resized crops then cut from the shrunk image rather
than the decoded file (up to twice as large for a JPEG, full size for other formats): where small crops need that
detail, give the train split a larger `short_side`.

One file per (files, size, resize): a header, an index (offset, height, width) and the pixels back to back, uint8,
read through a memmap that each process opens on first use. The name is a sha1 over the files' paths, sizes and
mtimes and the library versions, so a changed file builds a new cache; it is written to a temporary file and
renamed, so two processes building it at once never read half of one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL

from fruitlab.data.images import SCAN_WORKERS, open_rgb
from fruitlab.data.transforms import BACKENDS, resized_shape
from fruitlab.errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_DIR_ENV = "FRUITLAB_CACHE_DIR"
MAGIC = b"FLPRESZ1"  # then the image count (int64), the index (count x 3 int64), the pixels

Resize = Callable[[np.ndarray], np.ndarray]  # HxWx3 uint8 -> shorter side `short_side`, uint8


def cache_root() -> Path:
    """$FRUITLAB_CACHE_DIR/images, else ~/.cache/fruitlab/images (not created here)."""
    value = os.environ.get(CACHE_DIR_ENV)
    return (Path(value).expanduser() if value else Path.home() / ".cache" / "fruitlab") / "images"


class PresizedImages:
    """HxWx3 uint8 arrays for `items` (file paths, or in-memory arrays given back as they are), shorter side at
    most `short_side`. Construct (a stat per file), `build()` once in the main process, then index from anywhere.
    """

    def __init__(
        self,
        items: list[Any],
        short_side: int,
        interpolation: str = "bilinear",
        backend: str = "albumentations",
        root: str | os.PathLike[str] | None = None,
    ):
        self.items, self.short_side, self.backend, self.interpolation = items, short_side, backend, interpolation
        self.method = _resizer(backend, interpolation, short_side)[0]
        self.files = [i for i, item in enumerate(items) if not isinstance(item, np.ndarray)]  # indices of files
        self._row = {item: row for row, item in enumerate(self.files)}  # item index -> row in the cache
        self.path = Path(root or cache_root()) / f"{short_side}px-{self._key()}.bin" if self.files else None
        self._index: np.ndarray | None = None  # (rows, 3) int64: byte offset, height, width
        self._data: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> np.ndarray:
        if index not in self._row:
            return self.items[index]
        if self._data is None or self._index is None:
            self._index, self._data = self._open()
        offset, height, width = (int(v) for v in self._index[self._row[index]])
        # A copy: torch warns on (and must not write into) the read-only mapping; 0.2 MB costs microseconds.
        return np.array(self._data[offset : offset + height * width * 3]).reshape(height, width, 3)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into DataLoader workers (spawn): a memmap would travel as a full copy of the pixels.
        return {**self.__dict__, "_data": None, "_index": None}

    def build(self, workers: int = SCAN_WORKERS) -> PresizedImages:
        """Decode and shrink every file into the cache unless it is there already; returns self."""
        if self.path is None or self.path.is_file():
            return self
        start = time.perf_counter()
        # This process forks DataLoader workers next. An OpenCV thread pool started here can be copied into a
        # worker with a lock held, and the worker's cv2.setNumThreads(1) then hangs for good (opencv/opencv#5150,
        # seen once in benchmarks/performance.py): keep OpenCV single-threaded; two Python threads use the cores.
        cv2.setNumThreads(1)
        load = functools.partial(self._load, resize=_resizer(self.backend, self.interpolation, self.short_side)[1])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        index = np.zeros((len(self.files), 3), dtype=np.int64)
        offset = len(MAGIC) + 8 + index.nbytes
        try:
            with os.fdopen(fd, "wb") as out, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                out.seek(offset)
                for row, image in enumerate(pool.map(load, self.files)):  # in order; PIL releases the GIL
                    index[row] = offset, *image.shape[:2]
                    offset += out.write(image.tobytes())  # C order, whatever the array's layout
                out.seek(0)
                out.write(MAGIC + np.int64(len(self.files)).tobytes() + index.tobytes())
            os.replace(tmp, self.path)  # atomic: readers see no cache or a whole one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info(
            "presized %d images to %d px (%s) in %.1f s: %.1f MB in %s",
            len(self.files), self.short_side, self.method, time.perf_counter() - start, offset / 1e6, self.path,
        )  # fmt: skip
        return self

    @property
    def nbytes(self) -> int:
        """Size of the cache file (0 when not built, or when every item is an in-memory array)."""
        return self.path.stat().st_size if self.path is not None and self.path.is_file() else 0

    def describe(self) -> str:
        where = f"{self.nbytes / 1e6:.1f} MB in {self.path}" if self.nbytes else "not built"
        files, side = len(self.files), self.short_side
        return f"{files} of {len(self.items)} images presized to {side} px ({self.method}): {where}"

    # -------------------------------------------------------------------------------------------- internals
    def _load(self, index: int, resize: Resize) -> np.ndarray:
        image = np.asarray(open_rgb(self.items[index], self.short_side))  # DataError names the file
        return image if min(image.shape[:2]) <= self.short_side else resize(image)  # only ever shrink

    def _key(self) -> str:
        entries = []
        for index in self.files:
            path = os.path.realpath(self.items[index])
            try:
                st = os.stat(path)
            except OSError as exc:
                raise DataError(f"cannot read image {self.items[index]}: {exc.strerror}") from None
            entries.append([path, st.st_size, st.st_mtime_ns])
        spec = [CACHE_VERSION, PIL.__version__, self.short_side, self.method, entries]
        return hashlib.sha1(json.dumps(spec).encode()).hexdigest()

    def _open(self) -> tuple[np.ndarray, np.memmap]:
        if self.path is None or not self.path.is_file():
            raise DataError(f"no presized image cache at {self.path}: call PresizedImages.build() first")
        data = np.memmap(self.path, dtype=np.uint8, mode="r")
        count = int(np.frombuffer(data[len(MAGIC) : len(MAGIC) + 8], dtype=np.int64)[0])
        if bytes(data[: len(MAGIC)]) != MAGIC or count != len(self.files):
            raise DataError(f"presized image cache {self.path} is damaged: delete it and it is rebuilt")
        start = len(MAGIC) + 8
        return np.frombuffer(data[start : start + count * 24], dtype=np.int64).reshape(count, 3), data


def _resizer(backend: str, interpolation: str, short_side: int) -> tuple[str, Resize]:
    """(what the cache key records, the resize) as the backend's eval frame shrinks: same library, same call."""
    if backend == "albumentations":
        import cv2

        def area(image: np.ndarray) -> np.ndarray:  # CentreFrame shrinks with INTER_AREA, whatever `interpolation`
            height, width = resized_shape(*image.shape[:2], short_side)
            return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

        return f"opencv {cv2.__version__} INTER_AREA", area
    if backend == "torchvision":
        import torchvision
        from torchvision.transforms import InterpolationMode, v2

        mode = InterpolationMode(interpolation)
        frame = v2.Compose([v2.ToImage(), v2.Resize(short_side, interpolation=mode, antialias=True)])

        def antialiased(image: np.ndarray) -> np.ndarray:  # the pipeline's own ToImage + Resize
            # np.array: PIL's arrays are read-only and torch warns when it wraps one (ToImage copies it anyway).
            return frame(np.array(image)).permute(1, 2, 0).numpy()  # (3, h, w) -> (h, w, 3)

        return f"torchvision {torchvision.__version__} {mode.value}", antialiased
    raise ValueError(f"unknown augmentation backend {backend!r} (allowed: {', '.join(BACKENDS)})")

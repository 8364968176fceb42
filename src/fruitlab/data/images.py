"""Reading image files by content, and finding the ones that cannot be read.

File names lie (the fruit photos are JPEG files named .png), so the format always comes from the bytes: PIL sniffs
it. `scan_images` fully decodes every file once, because a truncated JPEG opens fine and only fails when its
pixels are read - in the middle of an epoch, if nobody checked. The same read gives each file's content digest
(sha1 of its bytes), which finds exact duplicates. Results are cached per file (size, mtime), so a second scan of
the same files costs a stat each.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import PIL
from PIL import Image, ImageOps

from fruitlab.errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: entries carry the content digest
SCAN_WORKERS = 2  # PIL releases the GIL while decoding, so threads scale; the target machines have 2 cores
SHOWN_BAD = 5  # files named in the one warning about unreadable files

# What an extension promises; used only to count files whose content disagrees with their name.
EXTENSION_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


# Greyscale modes deeper than 8 bits: PIL's convert("RGB") clips them at 255 instead of scaling (to_8bit does).
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class DepthError(ValueError):
    """An image whose pixel values have no known range to scale to 8 bits."""


class UnreadableFilesWarning(UserWarning):
    """Some image files could not be decoded and were left out of the dataset."""


@dataclass
class ScanResult:
    """Readable files in input order, unreadable ones with a reason, and the format PIL found in each good file."""

    good: list[str]
    bad: list[tuple[str, str]]
    formats: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # good file -> sha1 of its bytes (exact duplicates)

    def __iter__(self) -> Iterator[Any]:
        # So callers that only need the two lists can write `good, bad = scan_images(paths)`.
        return iter((self.good, self.bad))

    def mismatched(self) -> list[str]:
        """Good files whose extension names another format than their content (e.g. JPEG bytes in a .png)."""
        out = []
        for path in self.good:
            expected = EXTENSION_FORMATS.get(os.path.splitext(path)[1].lower())
            if expected and self.formats.get(path) not in (expected, None):
                out.append(path)
        return out


def open_rgb(path: str | os.PathLike[str] | IO[bytes], min_side: int | None = None) -> Image.Image:
    """Decode an image by its content (never its extension), apply its EXIF rotation, and return it as RGB.

    With `min_side`, JPEGs decode at the smallest libjpeg scale (1/2, 1/4, 1/8) whose shorter side still
    covers it: large photos decode several times faster, and the resize that follows keeps the same detail.
    Any image still twice as large as that (a big PNG, say) is then box-reduced by a whole factor that keeps
    its shorter side >= min_side, before the RGB copy is made: memory holds one decoded image in its own
    mode (1 byte a pixel for greyscale) instead of it plus a full-size RGB copy of 3 bytes a pixel.
    """
    try:
        with Image.open(path) as img:
            if min_side and img.format == "JPEG":
                w, h = img.size
                scale = min_side / min(w, h)
                if scale < 1:
                    img.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
            if img.mode in DEEP_MODES:
                img = to_8bit(img)
            if min_side and min(img.size) >= 2 * min_side:
                if img.mode in ("1", "P"):  # modes Image.reduce does not take
                    img = img.convert("L" if img.mode == "1" else "RGB")
                img = img.reduce(min(img.size) // min_side)
            rgb = img.convert("RGB")
        # Phone photos store "rotate me" in EXIF; without this they would train (and be served) sideways.
        ImageOps.exif_transpose(rgb, in_place=True)
    except DepthError as exc:
        raise DataError(f"cannot use image {_name(path)}: {exc}") from None
    except Exception as exc:  # decoding untrusted bytes fails in many ways (OSError, SyntaxError, struct.error...)
        raise DataError(f"cannot read image {_name(path)}: {_reason(exc)}; replace or delete the file") from None
    return rgb


def to_8bit(img: Image.Image) -> Image.Image:
    """A greyscale image of more than 8 bits (16-bit PNG/TIFF, 32-bit int or float TIFF) as 8-bit 'L', scaled.

    PIL's own convert("RGB") clips such values at 255, so a 16-bit photo turns almost white. 16-bit values are
    scaled by their full range (0-65535 -> 0-255), as is 32-bit integer data that stays within 16 bits (Pillow
    reads some 16-bit files as 'I'); float data must lie in 0-1. Anything else has no range to scale by: DepthError.
    """
    import numpy as np

    pixels = np.asarray(img)
    if img.mode == "F":
        finite = bool(np.isfinite(pixels).all())
        if not finite or pixels.min() < 0 or pixels.max() > 1:
            shown = f"{pixels.min():g} to {pixels.max():g}" if finite else "NaN or infinite values"
            raise DepthError(
                f"a 32-bit float image with values {shown}, outside 0-1, so its brightness scale is unknown; "
                "save it as an 8- or 16-bit image"
            )
        scaled = pixels * 255.0
    else:
        if img.mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
            raise DepthError(
                f"a 32-bit integer image with values {pixels.min()} to {pixels.max()}, beyond 16 bits, so its "
                "brightness scale is unknown; save it as an 8- or 16-bit image"
            )
        scaled = pixels.astype(np.float32) / 257.0  # 65535 / 255: the 16-bit range onto the 8-bit one
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")


def load_rgb_array(item: str | os.PathLike[str] | Any, min_side: int | None = None) -> Any:
    """HxWx3 uint8 numpy array from a file (see open_rgb) or an in-memory array (CIFAR pickles), as is."""
    import numpy as np

    if isinstance(item, np.ndarray):
        return item
    return np.asarray(open_rgb(item, min_side))


def scan_images(
    paths: Iterable[str | os.PathLike[str]], cache: Path | None = None, workers: int = SCAN_WORKERS
) -> ScanResult:
    """Fully decode every file (threads), reusing cached verdicts for files whose size and mtime are unchanged.

    `cache` is a JSON file (see `scan_cache_path`); None scans without a cache.
    """
    files = [os.fspath(p) for p in paths]
    stats = {p: _stat(p) for p in files}
    known = _read_cache(cache)
    verdicts: dict[str, Verdict] = {}
    todo = []
    for path in files:
        entry = known.get(path)
        if stats[path] is None:
            verdicts[path] = (None, "cannot read: the file does not exist or is not accessible", None)
        elif entry is not None and entry[:2] == list(stats[path]):
            verdicts[path] = (entry[2], entry[3], entry[4])
        else:
            todo.append(path)
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            verdicts.update(zip(todo, pool.map(_check, todo), strict=True))
        _write_cache(cache, {p: [*stats[p], *verdicts[p]] for p in files if stats[p] is not None})
    log.debug("scanned %d files (%d decoded, %d from cache)", len(files), len(todo), len(files) - len(todo))
    return _result(files, verdicts)


def scan_cache_path(root: str | os.PathLike[str], data_dir: Path) -> Path:
    """`<data_dir>/.scan-cache/<sha1 of the resolved root>.json`: one cache per dataset folder."""
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()
    return data_dir / ".scan-cache" / f"{key}.json"


def warn_bad_files(bad: list[tuple[str, str]], context: str = "") -> None:
    """One warning for all unreadable files: how many, and up to five of them with the reason."""
    if not bad:
        return
    shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:SHOWN_BAD])
    more = f"; and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
    where = f" in {context}" if context else ""
    warnings.warn(
        f"skipped {len(bad)} unreadable image file(s){where}: {shown}{more}. "
        "Replace or delete them to silence this warning.",
        UnreadableFilesWarning,
        stacklevel=3,
    )


# ------------------------------------------------------------------------------------------------ internals
Verdict = tuple[str | None, str | None, str | None]  # (format, reason it is unreadable, sha1 of the bytes)


def _check(path: str) -> Verdict:
    """(format, None, sha1) for a file that decodes completely, else (None, reason, None)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if not data:
            return None, "empty file (0 bytes)", None
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()  # the full decode: a truncated JPEG only fails here
            if img.mode in ("I", "F"):
                to_8bit(img)  # a range that cannot be scaled makes the file unusable, found here, not mid-epoch
        return fmt, None, hashlib.sha1(data).hexdigest()
    except Exception as exc:  # any failure to decode means the file is unusable; the reason says which
        return None, _reason(exc), None


def _reason(exc: Exception) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image PIL can read (unrecognised content)"
    if isinstance(exc, FileNotFoundError):
        return "the file does not exist"
    if isinstance(exc, DepthError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _name(path: object) -> str:
    return os.fspath(path) if isinstance(path, str | os.PathLike) else getattr(path, "name", "<stream>")


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _result(files: list[str], verdicts: dict[str, Verdict]) -> ScanResult:
    result = ScanResult(good=[], bad=[])
    for path in files:
        fmt, reason, digest = verdicts[path]
        if reason is None:
            result.good.append(path)
            result.formats[path] = fmt or "?"
            result.digests[path] = digest or ""
        else:
            result.bad.append((path, reason))
    return result


def _read_cache(cache: Path | None) -> dict[str, list[Any]]:
    if cache is None or not cache.is_file():
        return {}
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache only costs a rescan
    # A new Pillow may read files the old one could not (or the reverse): start over.
    if data.get("version") != CACHE_VERSION or data.get("pillow") != PIL.__version__:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_cache(cache: Path | None, files: dict[str, list[Any]]) -> None:
    if cache is None:
        return
    payload = {"version": CACHE_VERSION, "pillow": PIL.__version__, "files": files}
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, cache)  # atomic: a concurrent reader sees the old or the new cache, never half of one
    except OSError as exc:
        # A read-only data dir only loses the speed-up, not the scan.
        log.debug("could not write the scan cache %s: %s", cache, exc)
        tmp.unlink(missing_ok=True)

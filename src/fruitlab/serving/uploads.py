"""Checking uploaded files before anything is predicted: size, declared type, real content, pixel count, decoding.

Each check fails with the HTTP status that says what is wrong: 413 (too large: bytes, or pixels - a decompression
bomb is a small file that claims a huge image), 415 (not an image: the declared type or the content), 422 (an
image that cannot be decoded, e.g. truncated). The pixel count is read from the header, before any pixel is
decoded, per file and for the whole request (many files each under the per-file limit must not add up to gigabytes
of decoded pixels); files are then decoded one at a time, each shrunk to what the model needs before the next.
Only a few common formats are accepted (PIL can open formats that run external programs, such as
EPS). The bytes stay in memory; a client-supplied file name is only echoed back, never used as a path.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import DEFAULT_MAX_HEADER_SIZE

from fruitlab.data.images import open_rgb
from fruitlab.errors import DataError, FruitlabError

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "MPO")  # MPO: phone JPEGs holding several pictures
NAME_LENGTH = 120
MAX_PART_HEADER = DEFAULT_MAX_HEADER_SIZE  # python-multipart's limit on one header line of a part (Starlette's parser)
GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream")  # what a client sends when it does not know


class UploadError(FruitlabError):
    """An uploaded file is refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    name: str  # shown in messages and answers only
    content_type: str | None
    data: bytes


@dataclass
class CheckedImage:
    name: str
    sha256: str
    bytes: int
    width: int
    height: int
    format: str
    image: Image.Image  # RGB, EXIF rotation applied; decoded or reduced to a smaller scale that still covers min_side


def safe_name(name: str | None, index: int) -> str:
    """A printable, bounded name for messages: the last path component of what the client sent."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:NAME_LENGTH]
    return base or f"file {index + 1}"


@dataclass
class Header:
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def check_request(
    uploads: list[Upload], *, max_bytes: int, max_pixels: int, max_request_pixels: int, min_side: int | None
) -> list[CheckedImage]:
    """Every file's header first, then the pixels of all of them together, then the decodes, one at a time.

    Each image is decoded, shrunk to what the model needs (open_rgb's min_side) and its full-size pixels freed
    before the next one is decoded, so memory holds one full-size image at a time, however many the request has;
    the request's total (read from the headers, before any decoding) bounds the work.
    """
    headers = [check_header(u, max_bytes=max_bytes, max_pixels=max_pixels) for u in uploads]
    total = sum(h.pixels for h in headers)
    if total > max_request_pixels:
        raise UploadError(
            413,
            f"the {len(uploads)} images of this request claim {total:,} pixels together, more than the limit of "
            f"{max_request_pixels:,} per request; send fewer or smaller images per request",
        )
    return [decode_upload(u, h, min_side) for u, h in zip(uploads, headers, strict=True)]


def check_header(upload: Upload, *, max_bytes: int, max_pixels: int) -> Header:
    """Size, declared type, format and pixel count from the header only; UploadError naming the file."""
    name = repr(upload.name)
    size = len(upload.data)
    if size > max_bytes:
        raise UploadError(413, f"{name} is {_mb(size)}; the limit is {_mb(max_bytes)} per file")
    if size == 0:
        raise UploadError(422, f"{name} is empty (0 bytes)")
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if declared not in GENERIC_TYPES and not declared.startswith("image/"):
        raise UploadError(415, f"{name} was sent as {declared!r}, not as an image (accepted: {', '.join(FORMATS)})")
    try:
        with Image.open(io.BytesIO(upload.data), formats=FORMATS) as header:  # reads the header only
            fmt, (width, height) = header.format or "?", header.size
    except Image.DecompressionBombError as exc:  # more than twice PIL's MAX_IMAGE_PIXELS: refused by PIL itself
        raise UploadError(413, f"{name} is refused as a decompression bomb: {exc}") from None
    except Exception:  # UnidentifiedImageError, or a header so broken that a plugin fails on it
        raise UploadError(
            415, f"{name} is not an image (its content is none of {', '.join(FORMATS)}, whatever its name or type)"
        ) from None
    if width * height > max_pixels:
        raise UploadError(
            413,
            f"{name} claims {width} x {height} = {width * height:,} pixels, more than the limit of {max_pixels:,} "
            "(a decompression bomb, or a photo to shrink first)",
        )
    return Header(fmt, width, height)


def decode_upload(upload: Upload, header: Header, min_side: int | None) -> CheckedImage:
    """The full decode (a truncated file fails here), shrunk to min_side where it is larger; UploadError 422."""
    try:
        image = open_rgb(io.BytesIO(upload.data), min_side)
    except DataError as exc:
        reason = str(exc).split(": ", 1)[-1].removesuffix("; replace or delete the file")
        raise UploadError(422, f"{upload.name!r} is a {header.format} image that cannot be decoded: {reason}") from None
    digest = hashlib.sha256(upload.data).hexdigest()
    return CheckedImage(upload.name, digest, len(upload.data), header.width, header.height, header.format, image)


def multipart_problem(exc: BaseException) -> str | None:
    """What the multipart parser could not read, in words, for a 400 whose cause is a parse error; else None.

    Starlette answers any multipart parse error with a bare "Invalid multipart data."; the parser's own reason is
    in the exception chain. The usual one is a part header over the parser's 4,224-byte limit: a long file name.
    """
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, MultipartParseError):
            reason = str(seen) or type(seen).__name__
            if "header size" in reason.lower():
                return (
                    f"a part of the multipart body has a header longer than {MAX_PART_HEADER:,} bytes - usually a "
                    "file name thousands of characters long; send the file under a shorter name"
                )
            return f"the multipart body cannot be parsed ({reason}); send the files as multipart/form-data"
        seen = seen.__cause__ or seen.__context__
    return None


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n:,} bytes"

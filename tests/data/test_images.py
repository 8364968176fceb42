from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from PIL import Image

from fruitlab.data.images import UnreadableFilesWarning, open_rgb, scan_cache_path, scan_images, warn_bad_files
from fruitlab.errors import DataError

from .helpers import write_image, write_text, write_truncated_jpeg


def test_open_rgb_decodes_by_content_not_extension(tmp_path: Path) -> None:
    jpeg_as_png = write_image(tmp_path / "photo.png", fmt="JPEG", size=(20, 10))
    gray_png_as_jpg = tmp_path / "gray.jpg"
    Image.new("L", (8, 6), 128).save(gray_png_as_jpg, format="PNG")

    img = open_rgb(jpeg_as_png)
    assert (img.mode, img.size) == ("RGB", (20, 10))
    gray = open_rgb(gray_png_as_jpg)
    assert (gray.mode, gray.size, gray.getpixel((0, 0))) == ("RGB", (8, 6), (128, 128, 128))

    scan = scan_images([jpeg_as_png, gray_png_as_jpg])
    assert scan.formats == {str(jpeg_as_png): "JPEG", str(gray_png_as_jpg): "PNG"}
    assert scan.mismatched() == [str(jpeg_as_png), str(gray_png_as_jpg)]


def test_open_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    img = Image.new("RGB", (40, 20), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(path, format="JPEG", exif=exif.tobytes())
    assert open_rgb(path).size == (20, 40)


def test_open_rgb_names_the_unreadable_file(tmp_path: Path) -> None:
    fake = write_text(tmp_path / "notes.jpg")
    with pytest.raises(DataError, match=r"notes\.jpg.*not an image"):
        open_rgb(fake)


def test_scan_sorts_out_truncated_text_and_empty_files(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.png", fmt="JPEG")
    truncated = write_truncated_jpeg(tmp_path / "cut.jpg")
    text = write_text(tmp_path / "readme.jpg")
    empty = tmp_path / "empty.jpg"
    empty.touch()
    missing = tmp_path / "gone.jpg"

    good_paths, bad = scan_images([good, truncated, text, empty, missing])

    assert good_paths == [str(good)]
    reasons = dict(bad)
    assert list(reasons) == [str(truncated), str(text), str(empty), str(missing)]
    assert "truncated" in reasons[str(truncated)]
    assert "not an image" in reasons[str(text)]
    assert "0 bytes" in reasons[str(empty)]
    assert "does not exist" in reasons[str(missing)]


def test_scan_cache_reuses_verdicts_while_size_and_mtime_are_unchanged(tmp_path: Path) -> None:
    files = [write_image(tmp_path / "imgs" / f"{i}.jpg", seed=i) for i in range(3)]
    cache = scan_cache_path(tmp_path / "imgs", tmp_path / "data")
    assert cache.parent == tmp_path / "data" / ".scan-cache"

    assert scan_images(files, cache=cache).bad == []
    assert cache.is_file()

    # Same size and mtime but garbage inside: only a cache hit can still call it good.
    victim = files[0]
    stat = victim.stat()
    victim.write_bytes(b"x" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert scan_images(files, cache=cache).bad == []

    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: decoded again
    good, bad = scan_images(files, cache=cache)
    assert [p for p, _ in bad] == [str(victim)]
    assert good == [str(f) for f in files[1:]]


def test_scan_survives_a_damaged_cache_file(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.jpg")
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    assert scan_images([image], cache=cache).good == [str(image)]


def test_warn_bad_files_is_one_warning_naming_at_most_five(tmp_path: Path) -> None:
    bad = [(str(tmp_path / f"bad{i}.jpg"), "not an image") for i in range(7)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_bad_files(bad, context="somewhere")
        warn_bad_files([])
    assert len(caught) == 1
    assert caught[0].category is UnreadableFilesWarning
    message = str(caught[0].message)
    assert "skipped 7 unreadable" in message and "somewhere" in message
    assert sum(f"bad{i}.jpg" in message for i in range(7)) == 5
    assert "and 2 more" in message


def deep_copies(folder: Path) -> dict[str, Path]:
    """A real photo (scikit-image's cat) in greyscale, saved 8-bit and in the deeper modes that PIL clips."""
    import numpy as np
    from skimage import data

    grey = np.asarray(Image.fromarray(data.chelsea()).convert("L"))  # uint8
    files = {
        "8-bit.png": Image.fromarray(grey),
        "16-bit.png": Image.fromarray(grey.astype(np.uint16) * 257),  # mode I;16, the full 16-bit range
        "float.tif": Image.fromarray(grey.astype(np.float32) / 255),  # mode F, 0-1
        "int32.tif": Image.fromarray(grey.astype(np.int32) * 257),  # mode I within 16 bits
        "float-1000.tif": Image.fromarray(grey.astype(np.float32) * 4),  # 0-1020: no known scale
        "int32-big.tif": Image.fromarray(grey.astype(np.int32) * 100_000),
    }
    for name, image in files.items():
        image.save(folder / name)
    return {name: folder / name for name in files}


def test_deeper_than_8_bit_images_are_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    import numpy as np

    from fruitlab.data.images import load_rgb_array

    files = deep_copies(tmp_path)
    assert Image.open(files["16-bit.png"]).mode == "I;16"
    reference = load_rgb_array(files["8-bit.png"])
    assert 20 < reference.mean() < 200  # a real photo, neither black nor white
    for name in ("16-bit.png", "float.tif", "int32.tif"):
        decoded = load_rgb_array(files[name])  # the read training, `predict` and `serve` share
        assert decoded.shape == reference.shape and decoded.dtype == np.uint8, name
        assert np.abs(decoded.astype(int) - reference).max() <= 1, name


def test_deep_images_without_a_known_range_are_refused_by_name(tmp_path: Path) -> None:
    files = deep_copies(tmp_path)
    with pytest.raises(DataError, match=r"float-1000.tif: a 32-bit float image with values 16 to 776, outside 0-1"):
        open_rgb(files["float-1000.tif"])
    big = r"int32-big.tif: a 32-bit integer image with values 400000 to 19400000, beyond 16 bits"
    with pytest.raises(DataError, match=big):
        open_rgb(files["int32-big.tif"])
    scan = scan_images(files.values())  # found when the dataset is scanned, not in the middle of an epoch
    assert sorted(Path(p).name for p, _ in scan.bad) == ["float-1000.tif", "int32-big.tif"]
    assert all("brightness scale is unknown" in reason for _, reason in scan.bad)


def test_a_large_png_is_reduced_before_the_rgb_copy_but_still_covers_min_side(tmp_path: Path) -> None:
    import numpy as np
    from skimage import data

    photo = Image.fromarray(data.chelsea()).resize((1800, 1200))  # a PNG: no libjpeg draft for it
    photo.save(tmp_path / "big.png")
    Image.new("1", (3000, 2000), 1).save(tmp_path / "bits.png")  # mode 1: converted, then reduced
    reduced = open_rgb(tmp_path / "big.png", min_side=224)
    assert reduced.size == (1800 // 5, 1200 // 5) and min(reduced.size) >= 224  # the largest whole factor: 5
    expected = np.asarray(photo.reduce(5), dtype=int)
    assert np.abs(np.asarray(reduced, dtype=int) - expected).max() <= 1
    bits = open_rgb(tmp_path / "bits.png", min_side=224)
    assert bits.size == (3000 // 8, 2000 // 8) and bits.getpixel((0, 0)) == (255, 255, 255)
    assert open_rgb(tmp_path / "big.png").size == (1800, 1200)  # without min_side: as stored

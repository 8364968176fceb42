"""The pre-sized image cache on real photos (scikit-image's cat, coffee and astronaut), written the ways datasets
hold them: large JPEGs (decoded in draft mode), a PNG, JPEG bytes in a .png, an EXIF-rotated phone photo, one
already smaller than the cache size, and an in-memory array.

The claim that matters: the eval transform gives bit-identical tensors with and without the cache, on both backends.
"""

from __future__ import annotations

import os
import pickle
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch.utils.data import DataLoader

from fruitlab.data import presized
from fruitlab.data.datamodule import ImageDataset
from fruitlab.data.images import load_rgb_array, open_rgb
from fruitlab.data.presized import PresizedImages, cache_root
from fruitlab.data.transforms import build_transform, eval_resize, resized_shape
from fruitlab.errors import DataError

from .helpers import write_truncated_jpeg

PRE = {"input_size": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 0.875}
SIDE = eval_resize(PRE)  # 256

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save(path: Path, pixels: np.ndarray, scale: float = 1.0, fmt: str = "JPEG", **kwargs: object) -> str:
    img = Image.fromarray(pixels)
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    img.save(path, format=fmt, quality=90, **kwargs)
    return str(path)


def _phone_photo(path: Path) -> str:
    """The cat stored turned to portrait, with EXIF orientation 6 ("turn me clockwise"): it decodes upright."""
    img = Image.fromarray(data.chelsea()).transpose(Image.Transpose.ROTATE_90)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(path, format="JPEG", quality=90, exif=exif.tobytes())
    return str(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("photos")
    return [
        _save(folder / "coffee.png", data.coffee(), scale=3.0),  # 1800 x 1200 JPEG named .png (the fruit photos)
        _save(folder / "cat.jpg", data.chelsea(), scale=3.0),  # 1353 x 900: draft decodes at 1/2
        _save(folder / "astronaut.png", data.astronaut(), fmt="PNG"),  # 512 x 512, no draft mode
        _phone_photo(folder / "phone.jpg"),
        _save(folder / "small.jpg", data.coffee(), scale=0.4),  # 240 x 160: smaller than the cache size
    ]


def _copies(photos: list[str], folder: Path) -> list[str]:
    folder.mkdir()
    return [shutil.copy2(p, folder / Path(p).name) for p in photos]


# ------------------------------------------------------------------------------------------- contents
def test_cache_holds_each_file_decoded_and_shrunk_once(photos: list[str], tmp_path: Path) -> None:
    cifar = np.zeros((32, 32, 3), dtype=np.uint8)
    cache = PresizedImages([*photos, cifar], SIDE, root=tmp_path).build()

    assert len(cache) == len(photos) + 1
    assert cache[len(photos)] is cifar  # in-memory arrays are given back as they are, not cached
    for i, path in enumerate(photos):
        decoded = np.asarray(open_rgb(path, SIDE))
        if min(decoded.shape[:2]) > SIDE:
            height, width = resized_shape(*decoded.shape[:2], SIDE)
            expected = cv2.resize(decoded, (width, height), interpolation=cv2.INTER_AREA)
        else:
            expected = decoded  # never enlarged: the transform does that, as without the cache
        image = cache[i]
        assert image.dtype == np.uint8 and image.flags.writeable
        np.testing.assert_array_equal(image, expected)
    shapes = [cache[i].shape for i in range(len(photos))]
    assert shapes == [(256, 384, 3), (256, 385, 3), (256, 256, 3), (256, 384, 3), (160, 240, 3)]
    upright = cv2.resize(data.chelsea(), (384, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(cache[3].astype(int) - upright).mean() < 3  # the phone photo, turned as EXIF says
    assert cache.nbytes == cache.path.stat().st_size > 256 * 256 * 3 * 4
    assert cache.describe().startswith(f"5 of 6 images presized to 256 px (opencv {cv2.__version__} INTER_AREA): ")


# load_rgb_array returns PIL's read-only arrays, and torchvision's ToImage warns about them (the direct path only).
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
@pytest.mark.parametrize(
    ("backend", "interpolation"),
    [
        ("albumentations", "bilinear"),
        ("albumentations", "bicubic"),
        ("torchvision", "bilinear"),
        ("torchvision", "bicubic"),
    ],
)
def test_eval_transform_is_bit_identical_with_and_without_the_cache(
    photos: list[str], tmp_path: Path, backend: str, interpolation: str
) -> None:
    pre = {**PRE, "interpolation": interpolation}
    transform = build_transform(pre, None, backend)
    cache = PresizedImages(photos, eval_resize(pre), interpolation, backend, root=tmp_path).build()
    for i, path in enumerate(photos):
        direct = transform(load_rgb_array(path, eval_resize(pre)))  # what ImageDataset does today
        cached = transform(cache[i])
        assert cached.shape == (3, 224, 224)
        assert torch.equal(cached, direct), f"{Path(path).name}: max diff {(cached - direct).abs().max():.4f}"


def test_cache_of_the_other_backend_is_not_identical(photos: list[str], tmp_path: Path) -> None:
    # Why the backend is part of the key: OpenCV's box filter and torchvision's triangle filter shrink differently.
    cache = PresizedImages(photos[:1], SIDE, backend="albumentations", root=tmp_path).build()
    torchvision_eval = build_transform(PRE, None, "torchvision")
    assert not torch.equal(torchvision_eval(cache[0]), torchvision_eval(load_rgb_array(photos[0], SIDE)))


# ------------------------------------------------------------------------------------------- reuse and keys
def test_second_build_reuses_the_file_without_decoding(
    photos: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = PresizedImages(photos, SIDE, root=tmp_path).build()
    expected = [first[i] for i in range(len(photos))]
    written = first.path.stat().st_mtime_ns

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(presized, "open_rgb", no_decoding)
    second = PresizedImages(list(photos), SIDE, root=tmp_path).build()  # another run, same files
    assert second.path == first.path and second.path.stat().st_mtime_ns == written
    for i, image in enumerate(expected):
        np.testing.assert_array_equal(second[i], image)
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]


def test_changed_added_or_removed_files_give_a_new_cache(photos: list[str], tmp_path: Path) -> None:
    files = _copies(photos, tmp_path / "photos")

    def path(items: list[str], **kwargs: object) -> Path:
        return PresizedImages(items, **{"short_side": SIDE, "root": tmp_path / "cache", **kwargs}).path

    base = path(files)
    assert path(list(files)) == base
    assert path([os.path.relpath(f) for f in files]) == base  # same files named another way
    os.utime(files[0], ns=(0, os.stat(files[0]).st_mtime_ns + 1))  # touched
    touched = path(files)
    shutil.copy(files[2], files[1])  # replaced by other content
    replaced = path(files)
    removed, added = path(files[:-1]), path([*files, files[0]])
    others = {removed, added, path(files, short_side=288), path(files, backend="torchvision")}
    assert len({base, touched, replaced, *others}) == 7
    # albumentations shrinks with INTER_AREA whatever the experiment's interpolation: one cache serves both.
    assert path(files, interpolation="bicubic") == replaced
    assert path([np.zeros((4, 4, 3), np.uint8)]) is None  # nothing to cache


def test_default_root_follows_the_environment(
    photos: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRUITLAB_CACHE_DIR", str(tmp_path / "cache"))
    cache = PresizedImages(photos[:1], SIDE)
    assert cache_root() == tmp_path / "cache" / "images" == cache.path.parent
    assert cache.nbytes == 0 and cache.describe().endswith("not built")
    with pytest.raises(DataError, match="build"):
        cache[0]
    monkeypatch.delenv("FRUITLAB_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "fruitlab" / "images"


# ------------------------------------------------------------------------------------------- failures, processes
def test_unreadable_file_is_named_and_leaves_no_cache(photos: list[str], tmp_path: Path) -> None:
    cut = write_truncated_jpeg(tmp_path / "photos" / "cut.jpg")
    with pytest.raises(DataError, match=r"cut\.jpg"):
        PresizedImages([photos[0], str(cut), photos[1]], SIDE, root=tmp_path / "cache").build()
    assert list((tmp_path / "cache").iterdir()) == []  # neither a cache nor its temporary file
    with pytest.raises(DataError, match=r"gone\.jpg"):
        PresizedImages([str(tmp_path / "gone.jpg")], SIDE, root=tmp_path / "cache")


def test_two_builders_at_once_leave_one_whole_cache(photos: list[str], tmp_path: Path) -> None:
    caches = [PresizedImages(photos, SIDE, root=tmp_path) for _ in range(2)]  # e.g. two sweep workers
    threads = [threading.Thread(target=c.build, kwargs={"workers": 1}) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.name for p in tmp_path.iterdir()] == [caches[0].path.name]  # no temporary file left behind
    for i in range(len(photos)):
        np.testing.assert_array_equal(caches[0][i], caches[1][i])


def test_pickles_without_its_pixels(photos: list[str], tmp_path: Path) -> None:
    cache = PresizedImages(photos, SIDE, root=tmp_path).build()
    first = cache[0]  # opens the memmap here
    copy = pickle.loads(pickle.dumps(cache))
    assert len(pickle.dumps(cache)) < 10_000 < cache.nbytes  # spawned workers get paths, not a copy of the pixels
    np.testing.assert_array_equal(copy[0], first)


def test_dataloader_workers_read_the_cache(photos: list[str], tmp_path: Path) -> None:
    # The integration: ImageDataset takes the cache as its items (load_rgb_array returns arrays as they are).
    transform = build_transform(PRE, None, "albumentations")
    cache = PresizedImages(photos, SIDE, root=tmp_path).build()
    dataset = ImageDataset(cache, list(range(len(photos))), transform, min_side=SIDE)  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    images, labels = (torch.cat(parts) for parts in zip(*loader, strict=True))
    assert cache._data is None  # the main process never opened it: each worker mapped the file itself
    assert labels.tolist() == list(range(len(photos)))
    expected = torch.stack([transform(load_rgb_array(p, SIDE)) for p in photos])
    assert torch.equal(images, expected)


@pytest.mark.parametrize("backend", ["albumentations", "torchvision"])
def test_the_data_module_serves_the_same_tensors_from_the_cache(photos, tmp_path, monkeypatch, backend):
    """`performance.image_cache: auto` as fit uses it: same train (flips, colour) and val tensors, one cache file."""
    from types import SimpleNamespace

    from fruitlab.config import AugmentConfig, DataConfig
    from fruitlab.data.datamodule import ImageDataModule

    monkeypatch.setenv("FRUITLAB_CACHE_DIR", str(tmp_path))
    files = [p for p in photos if isinstance(p, str)]
    part = SimpleNamespace(items=files, labels=[0] * len(files))
    splits = SimpleNamespace(classes=["x"], splits={"train": part, "val": part})
    cfg = DataConfig(batch_size=2, num_workers=0, augment=AugmentConfig(hflip=1.0), augment_backend=backend)
    cached = ImageDataModule(splits, cfg, PRE, image_cache="auto")
    plain = ImageDataModule(splits, cfg, PRE, image_cache="off")
    for augment in (False, True):
        a, b = cached.dataset("val", augment=augment), plain.dataset("val", augment=augment)
        assert isinstance(a.items, PresizedImages) and isinstance(b.items, list)
        for i in range(len(files)):
            assert torch.equal(a[i][0], b[i][0])
    assert len(list((tmp_path / "images").glob("*.bin"))) == 1
    # With the images pre-sized the CPU loader reads them in the main process (a worker would take a core)
    auto = cfg.model_copy(update={"num_workers": "auto"})
    assert ImageDataModule(splits, auto, PRE, image_cache="auto").val_dataloader().num_workers == 0
    assert ImageDataModule(splits, auto, PRE, image_cache="off").val_dataloader().num_workers >= 1
    # a random resized crop would cut from the shrunk image: auto leaves such a split uncached
    crops = ImageDataModule(
        splits, cfg.model_copy(update={"augment": AugmentConfig(random_resized_crop=(0.5, 1))}), PRE, image_cache="auto"
    )
    assert isinstance(crops.dataset("train", augment=True).items, list)

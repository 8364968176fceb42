"""The near-duplicate detector on real photos and their augmented copies; no file name is ever involved."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from fruitlab.data import duplicates
from fruitlab.data.duplicates import (
    MIN_INLIERS,
    MIRROR,
    Features,
    connected_groups,
    dup_cache_path,
    extract_features,
    find_near_duplicates,
    load_features,
    verify_pair,
)

from .copies import COPIES, PHOTOS, hflip, photo, save, small


@pytest.fixture(scope="module")
def originals() -> dict[str, np.ndarray]:
    return {name: small(photo(name)) for name in PHOTOS}


@pytest.fixture(scope="module")
def features(originals: dict[str, np.ndarray]) -> dict[str, Features]:
    return {name: extract_features(image) for name, image in originals.items()}


@pytest.mark.parametrize("how", list(COPIES))
def test_every_kind_of_augmented_copy_is_verified(how: str, originals: dict, features: dict) -> None:
    for name in ("astronaut", "coffee"):
        copy = extract_features(COPIES[how](originals[name]))
        inliers = max(verify_pair(copy, features[name], mirrored) for mirrored in (False, True))
        assert inliers >= MIN_INLIERS, f"{how} copy of {name}: {inliers} inliers"


def test_different_photos_are_not_verified(features: dict) -> None:
    for a, b in itertools.combinations(features, 2):
        for mirrored in (False, True):
            assert verify_pair(features[a], features[b], mirrored) < MIN_INLIERS, (a, b, mirrored)


def test_mirror_permutation_matches_descriptors_of_the_flipped_image(originals: dict) -> None:
    image = originals["chelsea"]
    plain, flipped = extract_features(image), extract_features(hflip(image))
    # As is, the flipped image's descriptors hardly match; through MIRROR they match like the original's.
    assert verify_pair(flipped, plain, mirrored=False) < MIN_INLIERS
    assert verify_pair(flipped, plain, mirrored=True) > 3 * MIN_INLIERS
    assert sorted(MIRROR) == list(range(128))


def test_search_finds_copies_across_sets_and_nothing_else(originals: dict) -> None:
    references = list(originals.values())  # 0..6: seven unrelated photos
    copies = [COPIES["rotate45"](originals["astronaut"]), COPIES["vflip_rotate30_noise"](originals["coffee"])]
    strangers = [small(photo("camera")), small(photo("coins"))]
    items = references + copies + strangers
    feats = [extract_features(i) for i in items]
    queries = range(len(references), len(items))
    found = find_near_duplicates(feats, queries, range(len(references)))
    names = list(originals)
    assert {(m.a, m.b) for m in found} == {(names.index("astronaut"), 7), (names.index("coffee"), 8)}
    assert next(m for m in found if m.b == 8).mirrored  # the vertically flipped copy
    assert find_near_duplicates(feats, queries, range(len(references))) == found  # seeded: the same again


def test_features_are_cached_per_file(tmp_path: Path, originals: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [save(image, tmp_path / "imgs" / f"{name}.jpg") for name, image in list(originals.items())[:3]]
    cache = dup_cache_path(tmp_path / "imgs", tmp_path / "data")
    first = load_features(files, cache=cache)
    assert cache.is_file() and all(len(f.desc) > 50 for f in first)

    def fail(item: object) -> Features:
        raise AssertionError(f"extracted again: {item}")

    monkeypatch.setattr(duplicates, "extract_features", fail)
    again = load_features([str(f) for f in files], cache=cache)
    assert all(np.array_equal(a.desc, b.desc) and np.array_equal(a.xy, b.xy) for a, b in zip(first, again, strict=True))


def test_connected_groups() -> None:
    assert connected_groups(6, [(0, 3), (3, 5), (1, 2)]) == [0, 1, 1, 0, 2, 0]
    assert connected_groups(3, []) == [0, 1, 2]

"""Near-duplicate images: copies of one photo that survive rotation, flips, shifts, crops, noise and re-encoding.

Written here because no maintained library finds such copies: perceptual hashes (imagehash, which cleanvision
uses for near duplicates) change when a photo is rotated by 15-75 degrees with black corners, which is exactly
how the fruit photos were augmented. The parts are OpenCV's (SIFT, FLANN, RANSAC); the glue is ours. File names
are never looked at.

1. Features: each image, resized so its longer side is `SIDE` px and median-filtered (a 3x3 median removes
   salt-and-pepper dots, which would otherwise become keypoints), gives up to `MAX_FEATURES` SIFT keypoints,
   which are rotation- and scale-invariant. A mirrored image's SIFT descriptors are a fixed permutation of the
   original's (`MIRROR`), so flips (a vertical flip is a horizontal one turned by 180 degrees) cost no second
   extraction. Features are cached per image (file size and mtime, or the array's hash).
2. Shortlist: each query descriptor, as is and mirrored, finds its `NEIGHBOURS` nearest reference descriptors in
   one FLANN kd-tree over every reference image (RootSIFT, Arandjelovic & Zisserman 2012); a reference image gets
   one vote per query descriptor it appears among; the `SHORTLIST` most-voted images per query and orientation
   go on.
3. Verification: Lowe's ratio test between the two images' descriptors, one match per reference keypoint, then a
   RANSAC similarity transform (rotation, scale, shift: what the augmentations do). A pair with at least
   `MIN_INLIERS` inliers is a near-duplicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from fruitlab.data.images import load_rgb_array

log = logging.getLogger(__name__)

SIDE = 256  # px: the longer side every image is resized to before detection
MAX_FEATURES = 300  # SIFT keypoints per image, the strongest
CONTRAST = 0.01  # SIFT contrastThreshold; OpenCV's 0.04 finds < 20 keypoints on many fruit-on-white photos
NEIGHBOURS = 3  # nearest reference descriptors per query descriptor (votes)
SHORTLIST = 5  # reference images per query image and orientation that are verified
TREES, CHECKS = 1, 8  # FLANN kd-trees and leaves visited: 4 trees or 32 checks shortlist no more true copies
RATIO = 0.8  # Lowe's ratio test
RANSAC_PX = 4.0  # reprojection error of an inlier, px at SIDE
MIN_INLIERS = 12  # unrelated fruit photos reach 6-9, copies mostly > 30: see benchmarks/data_check.md
MAX_SCALE = 3.0  # a copy is at most this much larger or smaller than the original
WORKERS = 2  # OpenCV releases the GIL; the target machines have 2 cores
QUERY_CHUNK = 50_000  # descriptors per FLANN search call (bounds memory)
INDEX_BUDGET = 2_000_000  # reference descriptors in the FLANN index (~1 GB); above, fewer per image are indexed
PARAMS = f"side{SIDE}-n{MAX_FEATURES}-c{CONTRAST}-cv{cv2.__version__}"  # what cached features depend on

# The mirror image's descriptor: OpenCV's SIFT descriptor is a 4x4 grid (rows, columns in the keypoint's frame) of
# 8 orientation bins. Mirroring the image reverses the grid's rows and negates the bins (checked numerically:
# 10% relative difference to descriptors recomputed on the flipped image, 55% for any other permutation).
MIRROR = np.arange(128).reshape(4, 4, 8)[::-1][:, :, [(8 - o) % 8 for o in range(8)]].reshape(-1)


@dataclass
class Features:
    xy: np.ndarray  # (n, 2) float32 keypoint positions, px in the resized image
    desc: np.ndarray  # (n, 128) uint8 SIFT descriptors

    def root(self, mirrored: bool = False) -> np.ndarray:
        """(n, 128) float32 RootSIFT (unit L2 norm, so a dot product is a cosine), optionally of the mirror image."""
        d = self.desc[:, MIRROR] if mirrored else self.desc
        d = d.astype(np.float32)
        d /= d.sum(axis=1, keepdims=True) + 1e-7
        return np.sqrt(d)

    def points(self, mirrored: bool = False) -> np.ndarray:
        return self.xy * np.array([-1.0, 1.0], np.float32) if mirrored else self.xy


@dataclass(frozen=True)
class Match:
    """Two near-duplicate images: indices into the items given, a < b."""

    a: int
    b: int
    inliers: int  # RANSAC inliers of the similarity transform
    mirrored: bool  # one is a mirror image of the other


# ------------------------------------------------------------------------------------------------ features
def extract_features(item: Any) -> Features:
    """SIFT keypoints of one image (a file or an HxWx3 array): see the module docstring, step 1."""
    rgb = load_rgb_array(item, min_side=SIDE)
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    scale = SIDE / max(gray.shape)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=interpolation)
    gray = cv2.medianBlur(gray, 3)
    sift = cv2.SIFT_create(nfeatures=MAX_FEATURES, contrastThreshold=CONTRAST)
    keypoints, desc = sift.detectAndCompute(gray, None)
    if desc is None:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))
    xy = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return Features(xy, np.clip(desc, 0, 255).astype(np.uint8))  # OpenCV's float SIFT values are integers 0-255


def load_features(items: Sequence[Any], cache: Path | None = None, workers: int = WORKERS) -> list[Features]:
    """Features of every item, reusing `cache` (an .npz, see `dup_cache_path`) for unchanged files."""
    keys = [item_key(item) for item in items]
    known = _read_features(cache)
    todo = sorted({i for i, key in enumerate(keys) if key not in known}, key=keys.__getitem__)
    start = time.perf_counter()
    if len(todo) >= 500:  # about 20 s and up on two cores: say why it is quiet
        log.info("near-duplicates: SIFT features of %d images (cached for the next time)", len(todo))
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            known.update(
                zip((keys[i] for i in todo), pool.map(extract_features, (items[i] for i in todo)), strict=True)
            )
        _write_features(cache, known)
    log.debug("features of %d images (%d extracted in %.1f s)", len(items), len(todo), time.perf_counter() - start)
    return [known[key] for key in keys]


def item_key(item: Any) -> str:
    """What cached features are valid for: a file's path, size and mtime, or an array's content hash."""
    if isinstance(item, str | os.PathLike):
        path = os.fspath(item)
        st = os.stat(path)
        return f"{path}\t{st.st_size}\t{st.st_mtime_ns}"
    return "array:" + hashlib.sha1(np.ascontiguousarray(item).tobytes()).hexdigest() + str(tuple(item.shape))


def dup_cache_path(root: str | os.PathLike[str], data_dir: Path) -> Path:
    """`<data_dir>/.dup-cache/<sha1 of the resolved root>-<parameters>.npz`: one cache per dataset folder."""
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()
    return data_dir / ".dup-cache" / f"{key}-{PARAMS}.npz"


# ---------------------------------------------------------------------------------------------- matching
def find_near_duplicates(
    features: Sequence[Features], queries: Sequence[int], references: Sequence[int], seed: int = 0
) -> list[Match]:
    """Near-duplicate pairs (query, reference), each unordered pair once; queries and references may overlap."""
    queries, references = sorted(set(queries)), sorted(set(references))
    if not queries or not references:
        return []
    # Many small matrix products: OpenBLAS's own threads made them 12x slower on 2 busy cores (measured).
    with threadpool_limits(1, user_api="blas"):
        start = time.perf_counter()
        candidates = sorted(_shortlist(features, queries, references, seed))
        shortlisted = time.perf_counter()
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            inliers = list(pool.map(lambda c: verify_pair(features[c[0]], features[c[1]], c[2]), candidates))
    matches: dict[tuple[int, int], Match] = {}
    for (a, b, mirrored), count in zip(candidates, inliers, strict=True):
        if count >= MIN_INLIERS and count > getattr(matches.get((a, b)), "inliers", 0):
            matches[(a, b)] = Match(a, b, count, mirrored)
    log.debug(
        "near duplicates: %d queries x %d references, %d candidates (%.1f s), %d pairs verified (%.1f s)",
        len(queries),
        len(references),
        len(candidates),
        shortlisted - start,
        len(matches),
        time.perf_counter() - shortlisted,
    )
    return sorted(matches.values(), key=lambda m: (m.a, m.b))


def verify_pair(query: Features, reference: Features, mirrored: bool = False) -> int:
    """RANSAC inliers of a similarity transform between the two images' ratio-test matches (0: no transform)."""
    if len(query.desc) < 2 or len(reference.desc) < 2:
        return 0
    sim = query.root(mirrored) @ reference.root().T  # (n_query, n_reference) cosines
    best2 = np.argpartition(-sim, 1, axis=1)[:, :2]
    top2 = np.take_along_axis(sim, best2, axis=1)
    first = top2.argmax(axis=1)
    rows = np.arange(len(sim))
    s1, s2 = top2[rows, first], top2[rows, 1 - first]
    d1, d2 = np.sqrt(np.maximum(0, 2 - 2 * s1)), np.sqrt(np.maximum(0, 2 - 2 * s2))
    keep = np.flatnonzero(d1 < RATIO * d2)
    target = best2[keep, first[keep]]
    # One match per reference keypoint (the most similar): repeated matches would count as extra inliers.
    order = np.argsort(-s1[keep], kind="stable")
    _, unique = np.unique(target[order], return_index=True)
    keep, target = keep[order][unique], target[order][unique]
    if len(keep) < max(3, MIN_INLIERS // 2):
        return 0
    src = query.points(mirrored)[keep]
    dst = reference.xy[target]
    transform, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX, maxIters=2000, confidence=0.995
    )
    if transform is None or mask is None:
        return 0
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    return int(mask.sum()) if 1 / MAX_SCALE <= scale <= MAX_SCALE else 0


def _shortlist(
    features: Sequence[Features], queries: list[int], references: list[int], seed: int
) -> set[tuple[int, int, bool]]:
    """{(a, b, mirrored)} with a < b: each query's most-voted references, per orientation (step 2)."""
    per_image = max(16, INDEX_BUDGET // len(references))  # the fruit photos (3,395 x <= 300) stay far below
    ref_desc = [features[r].root()[:per_image] for r in references]
    owner = np.concatenate([np.full(len(d), r, np.int64) for r, d in zip(references, ref_desc, strict=True)])
    if not len(owner):
        return set()
    cv2.setRNGSeed(seed)  # FLANN draws its kd-trees from OpenCV's RNG: seeded, the same data gives the same trees
    index = cv2.flann_Index(np.concatenate(ref_desc), {"algorithm": 1, "trees": TREES})  # 1 = FLANN_INDEX_KDTREE
    n = len(features)
    jobs = [(q, mirrored) for q in queries for mirrored in (False, True) if len(features[q].desc)]
    votes = _count_votes(index, owner, features, jobs, n)
    out = set()
    for (q, mirrored), counts in votes.items():
        for r in counts[:SHORTLIST]:
            out.add((min(q, r), max(q, r), mirrored))
    return out


def _count_votes(
    index: Any, owner: np.ndarray, features: Sequence[Features], jobs: list[tuple[int, bool]], n: int
) -> dict[tuple[int, bool], list[int]]:
    """{(query, mirrored): reference images by falling vote count} from FLANN searches in chunks on threads."""
    chunks: list[list[tuple[int, bool]]] = [[]]
    size = 0
    for job in jobs:
        if size > QUERY_CHUNK:
            chunks.append([])
            size = 0
        chunks[-1].append(job)
        size += len(features[job[0]].desc)

    def search(chunk: list[tuple[int, bool]]) -> tuple[np.ndarray, np.ndarray]:
        desc = np.concatenate([features[q].root(m) for q, m in chunk])
        job_of_row = np.concatenate([np.full(len(features[q].desc), j) for j, (q, _) in enumerate(chunk)])
        idx, _ = index.knnSearch(desc, min(NEIGHBOURS, len(owner)), params={"checks": CHECKS})
        return job_of_row, owner[idx]

    votes: dict[tuple[int, bool], list[int]] = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for chunk, (job_of_row, owners) in zip(chunks, pool.map(search, chunks), strict=True):
            query_of_row = np.array([q for q, _ in chunk])[job_of_row]
            # One vote per (descriptor, image): an image found twice among one descriptor's neighbours counts once.
            fresh = np.ones_like(owners, dtype=bool)
            for k in range(1, owners.shape[1]):
                fresh[:, k] = (owners[:, k, None] != owners[:, :k]).all(axis=1)
            fresh &= owners != query_of_row[:, None]
            rows, cols = np.nonzero(fresh)
            pair = job_of_row[rows].astype(np.int64) * n + owners[rows, cols]
            keys, counts = np.unique(pair, return_counts=True)
            order = np.lexsort((-counts, keys // n))
            for key in keys[order]:
                votes.setdefault(chunk[int(key // n)], []).append(int(key % n))
    return votes


# ----------------------------------------------------------------------------------------------- groups
def connected_groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Group id per item (0..n-1): the connected components of the pair graph, ids in order of first member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    ids: dict[int, int] = {}
    return [ids.setdefault(find(i), len(ids)) for i in range(n)]


# ------------------------------------------------------------------------------------------------- cache
def _read_features(cache: Path | None) -> dict[str, Features]:
    if cache is None or not cache.is_file():
        return {}
    try:
        with np.load(cache, allow_pickle=False) as data:
            keys, offsets, xy, desc = data["keys"], data["offsets"], data["xy"], data["desc"]
    except (OSError, ValueError, KeyError):
        return {}  # a damaged cache only costs a new extraction
    return {
        str(key): Features(xy[offsets[i] : offsets[i + 1]], desc[offsets[i] : offsets[i + 1]])
        for i, key in enumerate(keys)
    }


def _write_features(cache: Path | None, features: dict[str, Features]) -> None:
    if cache is None:
        return
    keys = sorted(features)
    offsets = np.cumsum([0] + [len(features[k].desc) for k in keys])
    xy = np.concatenate([features[k].xy for k in keys]) if keys else np.zeros((0, 2), np.float32)
    desc = np.concatenate([features[k].desc for k in keys]) if keys else np.zeros((0, 128), np.uint8)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, keys=np.array(keys, dtype=str), offsets=offsets, xy=xy, desc=desc)
        os.replace(tmp, cache)  # atomic: a concurrent reader sees the old or the new cache
    except OSError as exc:
        log.debug("could not write the feature cache %s: %s", cache, exc)
        tmp.unlink(missing_ok=True)


def cached_json(path: Path | None, compute: Callable[[], Any]) -> Any:
    """`compute()`, or its earlier result stored as JSON at `path` (None: no cache)."""
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    value = compute()
    if path is not None:
        store_json(path, value)
    return value


def store_json(path: Path, value: Any) -> None:
    """Write `value` as JSON atomically (a concurrent reader sees the old file or the new one); a cache, so a
    failure to write is logged, not raised."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("could not write %s: %s", path, exc)

"""The two augmentation backends against each other on real photos; only the train split is augmented; every key
of the spec is honoured by both.

Differences are in grey levels (0-255, undoing the normalisation). Tolerances: an operation with fixed parameters
(a range of one value) on 224 px crops of real photos, mean < 0.5 and < 2% of values more than 4 apart (rounding,
and the line where a warped image meets the fill colour); the eval transform, which resizes with different
filters, mean < 1 at 224 px and < 2.5 at 64 px. Random draws must agree in distribution: two-sample
Kolmogorov-Smirnov test at the 0.1% level on per-image features, seeded, so every run gives the same outcome.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage import data
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, v2

from fruitlab.config import AugmentConfig, DataConfig
from fruitlab.data.augment_albumentations import rand_augment_ops
from fruitlab.data.datamodule import ImageDataModule, ImageDataset
from fruitlab.data.mixing import mix_batch
from fruitlab.data.transforms import BACKENDS, AugmentPlan, build_pipeline, build_transform, fill_colour

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def preprocess(size: int = 224, crop_pct: float = 1.0, interpolation: str = "bilinear") -> dict:
    return {"input_size": size, "crop_pct": crop_pct, "interpolation": interpolation, "mean": MEAN, "std": STD}


def grey_levels(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """|a - b| of two normalised (3, H, W) tensors, in grey levels."""
    return ((a - b).abs() * torch.tensor(STD).view(3, 1, 1) * 255).numpy()


def both(pre: dict, plan: AugmentPlan | None, image: np.ndarray) -> np.ndarray:
    return grey_levels(*(build_pipeline(pre, plan, backend)(image) for backend in BACKENDS))


PHOTOS = {"cat": data.chelsea(), "coffee": data.coffee()}  # 300x451 and 400x600 RGB
# 224x224 crops: no resizing in the frame, so what differs is the operation alone.
CROPS = {"cat": PHOTOS["cat"][38:262, 100:324].copy(), "coffee": PHOTOS["coffee"][100:324, 150:374].copy()}


# ------------------------------------------------------------------------------------------- fixed draws
@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_eval_transform_agrees_within_the_resize_filter(name: str) -> None:
    # torchvision shrinks with an antialiasing triangle filter, albumentations with OpenCV's INTER_AREA (box):
    # the one difference left in the eval transform; it grows with the reduction.
    image = PHOTOS[name]
    diff = both(preprocess(224, crop_pct=0.875), None, image)  # 300 -> 256 px, then the 224 crop
    assert diff.mean() < 1.0 and (diff > 4).mean() < 0.05
    diff = both(preprocess(64), None, image)  # 300 -> 64 px
    assert diff.mean() < 2.5 and (diff > 4).mean() < 0.2
    for interpolation, tolerance in (("bilinear", 0.5), ("bicubic", 1.0)):  # enlarging: 32 -> 64 px (CIFAR-like)
        diff = both(preprocess(64, interpolation=interpolation), None, image[100:132, 100:132].copy())
        assert diff.mean() < tolerance and diff.max() <= 8


FIXED = {
    "hflip": AugmentPlan(hflip=1.0),
    "vflip": AugmentPlan(vflip=1.0),
    "rotate 30 ccw": AugmentPlan(rotate=(30.0, 30.0)),
    "rotate 30 cw": AugmentPlan(rotate=(-30.0, -30.0)),
    "zoom in 1.3": AugmentPlan(scale=(1.3, 1.3)),
    "zoom out 0.7": AugmentPlan(scale=(0.7, 0.7)),
    "shear 20": AugmentPlan(shear=(20.0, 20.0)),
    "shift 0.1": AugmentPlan(shift=(0.1, 0.1)),
    "shift -0.15": AugmentPlan(shift=(-0.15, -0.15)),
    "rotate + zoom + shift": AugmentPlan(rotate=(20.0, 20.0), scale=(1.2, 1.2), shift=(0.1, 0.1)),
    "brightness 1.3": AugmentPlan(brightness=(1.3, 1.3)),
    "contrast 0.6": AugmentPlan(contrast=(0.6, 0.6)),
    "saturation 1.5": AugmentPlan(saturation=(1.5, 1.5)),
    "hue 0.1": AugmentPlan(hue=(0.1, 0.1)),  # OpenCV: 2-degree hue steps
    "hue -0.3": AugmentPlan(hue=(-0.3, -0.3)),
    "blur sigma 1.5": AugmentPlan(blur=1.0, blur_sigma=(1.5, 1.5)),
    "sharpen 2": AugmentPlan(sharpness=1.0),
    "soften 0.2": AugmentPlan(sharpness=1.0, sharpness_factor=0.2),
    "crop 100%": AugmentPlan(crop_area=(1.0, 1.0)),  # the whole (square) image: a random resized crop without chance
}


@pytest.mark.parametrize("name", sorted(PHOTOS))
@pytest.mark.parametrize("case", sorted(FIXED))
def test_fixed_augmentations_agree_on_real_photos(case: str, name: str) -> None:
    image, pre = CROPS[name], preprocess()
    diff = both(pre, FIXED[case], image)
    # Interpolation rounding; the warps differ only along the line where the image meets the fill (< 2% of pixels).
    assert diff.mean() < 0.5, f"{case}: mean {diff.mean():.2f} grey levels apart"
    assert (diff > 4).mean() < 0.02, f"{case}: {(diff > 4).mean():.1%} of values more than 4 grey levels apart"
    if case != "crop 100%":  # and the case is not vacuous: the augmentation changed the image
        changed = grey_levels(
            build_pipeline(pre, FIXED[case], "torchvision")(image), build_pipeline(pre, None, "torchvision")(image)
        )
        assert changed.mean() > 1.0


def test_rotation_and_shear_together_are_the_one_composition_that_differs() -> None:
    # Documented in transforms.py: albumentations shears after rotating, torchvision before. If a library changes
    # its order this fails, and the documentation must change with it.
    diff = both(preprocess(), AugmentPlan(rotate=(20.0, 20.0), shear=(10.0, 10.0)), CROPS["cat"])
    assert diff.mean() > 5


@pytest.mark.parametrize("magnitude", [9, 30])
def test_rand_augment_operations_match_torchvision(magnitude: int) -> None:
    size, image = 224, CROPS["cat"]
    fill = fill_colour(preprocess())
    torchvision_ra = v2.RandAugment(interpolation=InterpolationMode.BILINEAR, fill=list(fill))
    ours = rand_augment_ops(magnitude, size, interpolation=1, fill=fill)  # 1 = cv2.INTER_LINEAR
    space = torchvision_ra._AUGMENTATION_SPACE  # private, but the reference: the same 14 names and magnitudes
    assert list(ours) == list(space)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    for name, variants in ours.items():
        magnitudes, signed = space[name]
        values = magnitudes(31, size, size)
        value = float(values[magnitude]) if values is not None else 0.0
        assert len(variants) == (2 if signed else 1), name
        for sign, op in zip((1, -1), variants, strict=False):
            expected = torchvision_ra._apply_image_or_video_transform(
                tensor, name, sign * value, interpolation=torchvision_ra.interpolation, fill=torchvision_ra._fill
            )
            diff = np.abs(op(image=image)["image"].astype(float) - expected.permute(1, 2, 0).numpy())
            assert diff.mean() < 1.0 and (diff > 4).mean() < 0.02, f"{name} {sign:+d}: {diff.mean():.2f}"


# ------------------------------------------------------------------------------------------ random draws
def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def assert_same_distribution(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Column by column: the KS statistic under its 0.1% critical value."""
    n = len(a)
    critical = 1.949 * np.sqrt(2 / n)
    for column in range(a.shape[1]):
        stat = ks_statistic(a[:, column], b[:, column])
        assert stat < critical, f"{what}, feature {column}: KS {stat:.3f} >= {critical:.3f}"


GRADIENT = np.stack(
    [np.tile(np.arange(64) * 4, (64, 1)), np.tile(np.arange(64)[:, None] * 4, (1, 64)), np.full((64, 64), 128)],
    axis=-1,
).astype(np.uint8)  # red = 4 x column, green = 4 x row: each output pixel tells where it came from


def fitted_geometry(out: torch.Tensor) -> np.ndarray:
    """The affine map output pixel -> source pixel fitted to the gradient, (a, b, c, d, e, f), and a - e (0 unless
    the zoom differs between the axes), to 0.01."""
    rgb = out * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    rgb = (rgb * 255).numpy()
    inside = np.abs(rgb[2] - 128) < 0.5  # the fill and pixels blended with it have another blue
    ys, xs = np.nonzero(inside)
    design = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(float)
    source = np.stack([rgb[0][inside], rgb[1][inside]], axis=1) / 4
    coefficients = np.linalg.solve(design.T @ design, design.T @ source)  # least squares, (3, 2)
    a, b, c, d, e, f = coefficients.T.ravel()
    return np.round([a, b, c, d, e, f, a - e], 2)  # float noise must not separate equal (flip) values


def draws(backend: str, plan: AugmentPlan, image: np.ndarray, features, n: int, size: int) -> np.ndarray:
    transform = build_pipeline(preprocess(size), plan, backend)
    torch.manual_seed(1234)  # albumentations takes its random state from torch's (SeededCompose)
    return np.array([features(transform(image)) for _ in range(n)])


DRAWS = 200  # per backend and case

RANDOM_GEOMETRY = {
    "flips": AugmentPlan(hflip=0.3, vflip=0.7),
    "rotate": AugmentPlan(rotate=(-30.0, 30.0)),
    "zoom": AugmentPlan(scale=(0.7, 1.3)),
    "shear": AugmentPlan(shear=(-15.0, 15.0)),
    "shift": AugmentPlan(shift=(-0.2, 0.2)),
    "random resized crop": AugmentPlan(crop_area=(0.3, 1.0)),
}


@pytest.mark.parametrize("case", sorted(RANDOM_GEOMETRY))
def test_random_geometry_has_the_same_distribution(case: str) -> None:
    plan = RANDOM_GEOMETRY[case]
    size = 32 if plan.crop_area else 64
    a, b = (draws(backend, plan, GRADIENT, fitted_geometry, DRAWS, size) for backend in BACKENDS)
    assert_same_distribution(a, b, case)
    if case == "flips":  # and the flip rates are the asked ones (4 standard errors)
        for rates in (a, b):
            assert abs((rates[:, 0] < 0).mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / DRAWS)
            assert abs((rates[:, 4] < 0).mean() - 0.7) < 4 * np.sqrt(0.3 * 0.7 / DRAWS)


def colour_features(out: torch.Tensor) -> np.ndarray:
    """Per image: mean of each channel, contrast (std), fine detail (mean |horizontal difference|); to 0.01."""
    features = [*out.mean(dim=(1, 2)).tolist(), out.std().item(), out.diff(dim=2).abs().mean().item()]
    return np.round(features, 2)  # float noise must not separate equal values (unchanged images)


RANDOM_PIXELS = {
    "colour jitter": AugmentPlan(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=(-0.1, 0.1)),
    "blur half the time": AugmentPlan(blur=0.5),
    "sharpen half the time": AugmentPlan(sharpness=0.5),
    "randaugment 2 ops magnitude 9": AugmentPlan(randaugment=(2, 9)),
}


@pytest.mark.parametrize("case", sorted(RANDOM_PIXELS))
def test_random_pixel_augmentations_have_the_same_distribution(case: str) -> None:
    image = CROPS["coffee"][::7, ::7].copy()  # 32 px
    a, b = (draws(backend, RANDOM_PIXELS[case], image, colour_features, DRAWS, 32) for backend in BACKENDS)
    assert_same_distribution(a, b, case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_draws_are_independent_between_operations_and_workers_and_repeat_with_the_seed(backend: str) -> None:
    # albumentations 2.0.8's own seeding gives every operation the same stream (hflip and vflip at p=0.5 always
    # together) and every forked worker the same draws; SeededCompose must prevent both.
    image, pre = GRADIENT, preprocess(64)
    transform = build_pipeline(pre, AugmentPlan(hflip=0.5, vflip=0.5), backend)
    geometry = draws(backend, AugmentPlan(hflip=0.5, vflip=0.5), image, fitted_geometry, 200, 64)
    h, v = geometry[:, 0] < 0, geometry[:, 4] < 0  # source x falls as output x grows: flipped
    assert abs(h.mean() - 0.5) < 0.15 and abs(v.mean() - 0.5) < 0.15
    assert abs((h & v).mean() - 0.25) < 0.12  # independent: a quarter, not a half

    dataset = ImageDataset([image] * 16, [0] * 16, transform)

    def load(seed: int) -> torch.Tensor:
        loader = DataLoader(dataset, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(seed))
        return torch.cat([batch[0] for batch in loader])  # batches 0, 2 from worker 0; 1, 3 from worker 1

    first = load(1)
    assert not torch.equal(first[0:4], first[4:8]) or not torch.equal(first[8:12], first[12:16])
    assert torch.equal(first, load(1))


# ------------------------------------------------------------------------- validation and test data
AGGRESSIVE = AugmentConfig(
    hflip=1.0,
    vflip=1.0,
    rotate=45,
    scale=(0.6, 1.4),
    shear=20,
    shift=0.3,
    color_jitter=0.8,
    hue=0.3,
    blur=1.0,
    sharpness=1.0,
    random_resized_crop=(0.1, 0.5),
    randaugment={"num_ops": 3, "magnitude": 20},
    mixup=0.4,
    cutmix=1.0,
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_and_test_data_are_never_augmented(backend: str, photo_splits: SimpleNamespace) -> None:
    photo_splits.splits["test"] = photo_splits.splits["val"]
    pre = preprocess(48)
    cfg = DataConfig(augment=AGGRESSIVE, augment_backend=backend, num_workers=0, batch_size=5)
    module = ImageDataModule(photo_splits, cfg, pre)
    evaluate = build_transform(pre, None, backend)
    for split, loader in (("val", module.val_dataloader()), ("test", module.test_dataloader())):
        images = torch.cat([batch[0] for batch in loader])
        expected = torch.stack([evaluate(item) for item in photo_splits.splits[split].items])
        assert torch.equal(images, expected), f"{backend}: the {split} loader changed its images"
    train = torch.cat([batch[0] for batch in module.train_dataloader()])  # shuffled: compare with every image
    plain = torch.stack([evaluate(item) for item in photo_splits.splits["train"].items])
    assert not any(torch.equal(image, other) for image in train for other in plain)


# -------------------------------------------------------------------------------- every key honoured
PER_IMAGE = {
    "hflip": 1.0,
    "vflip": 1.0,
    "rotate": 30.0,
    "scale": (0.6, 0.7),
    "shear": 20.0,
    "shift": 0.2,
    "color_jitter": 0.5,
    "hue": 0.2,
    "blur": 1.0,
    "sharpness": 1.0,
    "random_resized_crop": (0.2, 0.3),
    "randaugment": {"num_ops": 3, "magnitude": 20},
}
PER_BATCH = {"mixup": {"mixup": 0.4}, "cutmix": {"cutmix": 1.0}, "mix_prob": {"mixup": 0.4, "mix_prob": 0.0}}


def test_every_spec_key_is_checked_here() -> None:
    # A key added to AugmentConfig must be added to one of these tables, i.e. to both backends or to mix_batch.
    assert set(PER_IMAGE) | set(PER_BATCH) == set(AugmentConfig.model_fields)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", sorted(PER_IMAGE))
def test_each_per_image_key_changes_the_output(key: str, backend: str) -> None:
    image, pre = CROPS["cat"][::2, ::2].copy(), preprocess(112)
    plain = build_transform(pre, None, backend)(image)
    transform = build_transform(pre, AugmentConfig(**{key: PER_IMAGE[key]}), backend)
    changed = []
    for seed in range(4):
        torch.manual_seed(seed)
        changed.append(not torch.allclose(transform(image), plain, atol=1e-3))
    assert any(changed), f"{backend} ignores `{key}`"


@pytest.mark.parametrize("key", sorted(PER_BATCH))
def test_each_per_batch_key_changes_the_batch(key: str) -> None:
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mixed, _, lam = mix_batch(images, AugmentConfig(**PER_BATCH[key]), torch.Generator().manual_seed(0))
    if key == "mix_prob":  # mix_prob 0: never mixed, although mixup is on
        assert mixed is images and lam == 1.0
        mixed, _, lam = mix_batch(images, AugmentConfig(mixup=0.4), torch.Generator().manual_seed(0))
    assert not torch.equal(mixed, images) and lam < 1.0

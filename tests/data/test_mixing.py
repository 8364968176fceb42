"""mix_batch and mixed_loss: shapes, lam, the pasted box, probability, seeding, several tasks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fruitlab.config import AugmentConfig
from fruitlab.data.mixing import mix_batch, mixed_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch(n: int = 16, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("spec", [{"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}])
def test_shapes_permutation_and_lam(spec: dict) -> None:
    images = batch()
    for seed in range(20):
        mixed, perm, lam = mix_batch(images, AugmentConfig(**spec), seeded(seed))
        assert mixed.shape == images.shape and mixed.dtype == images.dtype
        assert sorted(perm.tolist()) == list(range(16)) and perm.device == images.device
        assert 0.0 <= lam <= 1.0


def test_mixup_is_the_convex_combination() -> None:
    images = batch()
    mixed, perm, lam = mix_batch(images, AugmentConfig(mixup=0.4), seeded(1))
    assert lam < 1.0
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[perm])


def test_cutmix_pastes_one_box_whose_area_is_1_minus_lam() -> None:
    images = batch()
    for seed in range(30):
        mixed, perm, lam = mix_batch(images, AugmentConfig(cutmix=1.0), seeded(seed))
        from_other = (mixed != images).any(dim=1)  # (N, H, W): pixels taken from the partner image
        for i in range(16):
            if perm[i] == i:
                continue  # paired with itself: nothing visible changes
            assert torch.equal(mixed[i][:, from_other[i]], images[perm[i]][:, from_other[i]])
            rows, cols = from_other[i].any(dim=1).nonzero(), from_other[i].any(dim=0).nonzero()
            if len(rows):  # one solid box
                box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
                assert from_other[i].sum() == box
            assert from_other[i].float().mean().item() == pytest.approx(1 - lam, abs=1e-9)


def test_both_on_switches_about_half_and_half() -> None:
    images, cutmix = batch(), 0
    for seed in range(200):
        mixed, perm, lam = mix_batch(images, AugmentConfig(mixup=0.4, cutmix=1.0), seeded(seed))
        is_mixup = torch.allclose(mixed, lam * images + (1 - lam) * images[perm])
        cutmix += not is_mixup
    assert 70 < cutmix < 130  # 100 expected, 5 standard deviations either side


@pytest.mark.parametrize("spec", [{}, {"mixup": 0.4, "mix_prob": 0.0}, {"cutmix": 1.0, "mix_prob": 0.0}])
def test_off_or_probability_zero_is_the_identity(spec: dict) -> None:
    images = batch()
    mixed, perm, lam = mix_batch(images, AugmentConfig(**spec), seeded(0))
    assert mixed is images and lam == 1.0 and torch.equal(perm, torch.arange(16))


def test_mix_prob_is_the_share_of_mixed_batches() -> None:
    images = batch()
    mixed = sum(mix_batch(images, AugmentConfig(mixup=0.4, mix_prob=0.3), seeded(s))[2] < 1.0 for s in range(300))
    assert abs(mixed / 300 - 0.3) < 4 * (0.3 * 0.7 / 300) ** 0.5


def test_same_seed_same_mix() -> None:
    images, cfg = batch(), AugmentConfig(mixup=0.4, cutmix=1.0)
    first, second = mix_batch(images, cfg, seeded(7)), mix_batch(images, cfg, seeded(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[2] == second[2]
    torch.manual_seed(7)  # no generator: torch's global one
    third = mix_batch(images, cfg)
    torch.manual_seed(7)
    assert torch.equal(third[0], mix_batch(images, cfg)[0])


def test_mixed_loss_per_task_equals_cross_entropy_on_soft_labels() -> None:
    # Two tasks with different numbers of classes, as a multi-task model sees them.
    images = batch(8)
    targets = {"fruit": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), "freshness": torch.tensor([0, 1, 1, 0, 0, 1, 1, 0])}
    logits = {"fruit": torch.randn(8, 3, generator=seeded(1)), "freshness": torch.randn(8, 2, generator=seeded(2))}
    _, perm, lam = mix_batch(images, AugmentConfig(mixup=0.4), seeded(3))
    assert lam < 1.0
    for task, y in targets.items():
        classes = logits[task].shape[1]
        soft = lam * F.one_hot(y, classes) + (1 - lam) * F.one_hot(y[perm], classes)
        expected = F.cross_entropy(logits[task], soft.float())
        torch.testing.assert_close(mixed_loss(F.cross_entropy, logits[task], y, perm, lam), expected)


def test_unmixed_batch_costs_one_loss_call() -> None:
    calls = []

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return F.cross_entropy(logits, target)

    mixed_loss(loss, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.arange(4), 1.0)
    assert len(calls) == 1

"""The feature cache trains the same model as the uncached path, skips the frozen part after the first pass,
reuses its files across runs and recomputes them when what they depend on changes."""

from __future__ import annotations

import lightning as L
import pytest
import timm
import torch

from fruitlab.config import (
    AugmentConfig,
    DataConfig,
    HeadConfig,
    ModelConfig,
    PerformanceConfig,
    PhaseConfig,
    PreprocessConfig,
    TrainSpec,
)
from fruitlab.data.datamodule import ImageDataModule
from fruitlab.models.classifier import build_classifier
from fruitlab.models.staging import stage_chain
from fruitlab.training.cached_data import PhasedDataModule
from fruitlab.training.featurecache import FeatureCache, flip_views
from fruitlab.training.module import ClassifierModule
from fruitlab.training.phases import PhasePlan, PhaseSchedule

HEAD = PhaseConfig(name="head", epochs=2, train="none", optimizer={"lr": 1e-2})
TOP = PhaseConfig(name="top", epochs=2, train=TrainSpec(last_stages=2), bn="frozen_all", optimizer={"lr": 1e-3})


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FRUITLAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


def train(splits, tmp_path, phases, cache="auto", augment=None, backbone="test_efficientnet", dropout=0.2, **perf):
    """One fit like fruitlab's (phase schedule, loaders reloaded per epoch); returns module, cache, backbone calls."""
    L.seed_everything(0, verbose=False)
    cfg = ModelConfig(backbone=backbone, pretrained=False, head=HeadConfig(dropout=dropout))
    model, _ = build_classifier(cfg, PreprocessConfig(input_size=64), splits.classes)
    plan = PhasePlan(phases)
    data = DataConfig(batch_size=4, num_workers=0, augment=augment or AugmentConfig())
    features = FeatureCache(model, plan, PerformanceConfig(feature_cache=cache, **perf), data.augment)
    module = ClassifierModule(model, plan, channels_last=True, augment=data.augment, feature_cache=features)
    dm = PhasedDataModule(splits, data, model.preprocess, seed=0, feature_cache=features, plan=plan)
    calls = {"fit": 0}
    backbone_features = model.backbone.forward_features  # what the classifier's forward_features runs

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls["fit"] += 1
        return backbone_features(x)

    model.backbone.forward_features = counted
    trainer = L.Trainer(
        max_epochs=sum(p.epochs for p in phases),
        logger=False,
        callbacks=[PhaseSchedule()],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(module, datamodule=dm)
    return module, features, calls["fit"]


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < atol, worst


def test_a_cached_frozen_phase_trains_the_same_head(photo_splits, tmp_path, cache_dir):
    cached, features, calls_cached = train(photo_splits, tmp_path / "a", [HEAD])
    plain, _, calls_plain = train(photo_splits, tmp_path / "b", [HEAD], cache="off")
    assert features.decisions[0].cached and features.decisions[0].start is None
    assert_same_weights(weights(cached), weights(plain))
    n_train, n_val = len(photo_splits.splits["train"].items), len(photo_splits.splits["val"].items)
    # Uncached: the backbone runs on every training and validation batch of both epochs (+ the sanity check).
    assert calls_plain >= 2 * (n_train // 4 + n_val // 8)
    # Cached: once per image for the cache (batches of 8), plus a few checks - never during the epochs.
    assert calls_cached <= (n_train + n_val) // 8 + 2 + 4
    assert len(list(cache_dir.glob("*.pt"))) == 2  # train and val


def test_a_cached_frozen_prefix_trains_the_same_last_stages(photo_splits, tmp_path):
    cached, features, _ = train(photo_splits, tmp_path / "a", [HEAD, TOP])
    plain, _, _ = train(photo_splits, tmp_path / "b", [HEAD, TOP], cache="off")
    top = features.decisions[1]
    assert top.cached and top.start is not None and top.start > 0
    assert_same_weights(weights(cached), weights(plain), atol=1e-4)
    # and the last stages did learn (the comparison is not between two untouched models)
    L.seed_everything(0, verbose=False)
    fresh, _ = build_classifier(
        ModelConfig(backbone="test_efficientnet", pretrained=False), PreprocessConfig(input_size=64), ["a", "b"]
    )
    moved = [
        k for k, v in fresh.backbone.state_dict().items() if not torch.equal(v, cached.model.backbone.state_dict()[k])
    ]
    assert moved


def test_flips_are_cached_as_views_drawn_with_their_probability(photo_splits, tmp_path):
    module, features, _ = train(photo_splits, tmp_path, [HEAD], augment=AugmentConfig(hflip=0.5))
    decision = features.decisions[0]
    assert decision.cached and [v for v, _ in decision.flips] == [(False, False), (True, False)]
    train_tensor = features.tensors[("train", 0)]
    assert train_tensor.shape[0] == 2
    # View 1 is the frozen part's output for the mirrored image, exactly what the flip augmentation feeds it.
    dm = ImageDataModule(photo_splits, DataConfig(batch_size=4), module.model.preprocess, seed=0)
    image = module.prepare_input(dm.dataset("train")[3][0].unsqueeze(0))
    module.eval()
    with torch.no_grad():
        expected = module.model.forward_head(module.model.forward_features(image.flip(-1)), pre_logits=True)
    torch.testing.assert_close(train_tensor[1, 3], expected[0], atol=1e-5, rtol=1e-5)
    from fruitlab.training.featurecache import draw_views

    draws = draw_views(decision, 10_000, seed=0, epoch=1)
    assert 0.47 < draws.float().mean() < 0.53
    assert not torch.equal(draws, draw_views(decision, 10_000, seed=0, epoch=2))  # a new draw each epoch


def test_a_second_run_reuses_the_files_and_a_change_recomputes_them(photo_splits, tmp_path, cache_dir, caplog):
    train(photo_splits, tmp_path / "a", [HEAD])
    first = sorted(p.name for p in cache_dir.glob("*.pt"))
    caplog.set_level("INFO", logger="fruitlab")
    _, _, calls = train(photo_splits, tmp_path / "b", [HEAD])
    assert sorted(p.name for p in cache_dir.glob("*.pt")) == first
    assert "reusing cached train features" in caplog.text
    assert calls <= 4  # the split-forward check; no pass over the data

    photo_splits.splits["train"].items[0] = photo_splits.splits["train"].items[0][::-1].copy()  # one image changed
    train(photo_splits, tmp_path / "c", [HEAD])
    after = sorted(p.name for p in cache_dir.glob("*.pt"))
    assert len(after) == 3  # a new train file; val is unchanged and reused


def test_frozen_weights_are_part_of_the_key(photo_splits, tmp_path, cache_dir):
    from types import SimpleNamespace

    from fruitlab.training.featurecache import Decision

    cfg = ModelConfig(backbone="test_efficientnet", pretrained=False)
    model, _ = build_classifier(cfg, PreprocessConfig(input_size=64), photo_splits.classes)
    features = FeatureCache(model, PhasePlan([HEAD]), PerformanceConfig(), None)
    source = SimpleNamespace(fingerprint=lambda h: h.update(b"same images"))
    decision = Decision(True, "test", start=None, flips=(((False, False), 1.0),))
    key = features.key("train", decision, source, {"input_size": 64}, decision.flips, 0)
    assert key == features.key("train", decision, source, {"input_size": 64}, decision.flips, 0)
    assert key != features.key("train", decision, source, {"input_size": 96}, decision.flips, 0)
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1e-3)
    assert key != features.key("train", decision, source, {"input_size": 64}, decision.flips, 0)


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"augment": AugmentConfig(rotate=10)}, "feature_cache_views"),
        ({"augment": AugmentConfig(mixup=0.2)}, "mixup"),
        ({"cache": "off"}, "feature_cache: off"),
        ({"phases": [PhaseConfig(train="none", bn="train", epochs=1)]}, "bn: train"),
    ],
)
def test_phases_that_would_not_be_exact_are_not_cached_and_say_why(photo_splits, tmp_path, settings, reason):
    phases = settings.pop("phases", [PhaseConfig(train="none", epochs=1)])
    _, features, _ = train(photo_splits, tmp_path, phases, **settings)
    decision = features.decisions[0]
    assert not decision.cached and reason in decision.reason


def test_augmentation_beyond_flips_can_use_k_cached_views(photo_splits, tmp_path):
    phases = [PhaseConfig(train="none", epochs=1)]
    _, features, _ = train(photo_splits, tmp_path, phases, augment=AugmentConfig(rotate=10), feature_cache_views=3)
    decision = features.decisions[0]
    assert decision.cached and decision.random_views == 3 and "approximate" in decision.reason
    views = features.tensors[("train", 0)]
    assert views.shape[0] == 3 and not torch.equal(views[0], views[1])  # three different draws


def test_k_augmented_views_of_two_phases_come_from_one_pass_over_the_images(photo_splits, tmp_path, monkeypatch):
    """The head phase's pooled features are the last-stage phase's cached stage outputs, run on: the same K
    draws for both phases, and the images decoded, augmented and run through the frozen stages once."""
    from fruitlab.training import cached_data

    passes = []
    compute = cached_data._FeatureSource.compute

    def counted(self, cache, start, views, random_views):
        passes.append((self.split, start))
        return compute(self, cache, start, views, random_views)

    monkeypatch.setattr(cached_data._FeatureSource, "compute", counted)
    phases = [
        PhaseConfig(train="none", epochs=1),
        PhaseConfig(train=TrainSpec(last_stages=1), bn="frozen_all", epochs=1),
    ]
    _, features, _ = train(photo_splits, tmp_path, phases, augment=AugmentConfig(rotate=10), feature_cache_views=2)
    head, top = features.decisions[0], features.decisions[1]
    assert head.random_views == top.random_views == 2 and top.start is not None
    assert sorted(passes) == [("train", top.start), ("val", top.start)]  # one pass per split, for both phases
    staged = features.tensors[("train", 1)]
    assert staged.shape[0] == 2 and not torch.equal(staged[0], staged[1])


def test_drop_path_in_the_frozen_part_turns_the_cache_off(photo_splits, tmp_path):
    from fruitlab.config import ModelConfig as M

    cfg = M(backbone="test_efficientnet", pretrained=False, kwargs={"drop_path_rate": 0.2})
    model, _ = build_classifier(cfg, PreprocessConfig(input_size=64), photo_splits.classes)
    features = FeatureCache(model, PhasePlan([HEAD]), PerformanceConfig(), None)
    decision = features.decide(0, lambda: torch.rand(2, 3, 64, 64))
    assert not decision.cached and "DropPath" in decision.reason


def test_flip_views_enumerate_only_flips():
    assert flip_views(None) == (((False, False), 1.0),)
    assert flip_views(AugmentConfig(hflip=1.0)) == (((True, False), 1.0),)
    both = dict(flip_views(AugmentConfig(hflip=0.5, vflip=0.25)))
    assert both == {(False, False): 0.375, (False, True): 0.125, (True, False): 0.375, (True, True): 0.125}
    assert flip_views(AugmentConfig(hflip=0.5, color_jitter=0.1)) is None


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "resnet10t", "vgg11"])
def test_cnn_backbones_split_into_a_verified_chain(name):
    backbone = timm.create_model(name, pretrained=False, num_classes=0)
    chain = stage_chain(backbone, torch.rand(2, 3, 64, 64))
    assert chain is not None and len(chain) >= 4
    x = torch.rand(2, 3, 64, 64)
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(chain.run(chain.run(x, 0, 2), 2), backbone.forward_features(x))


def test_a_vision_transformer_has_no_chain_but_its_frozen_phase_is_still_cached(photo_splits):
    cfg = ModelConfig(backbone="test_vit", pretrained=False)
    model, _ = build_classifier(cfg, PreprocessConfig(), photo_splits.classes)
    size = model.preprocess["input_size"]
    assert stage_chain(model.backbone, torch.rand(2, 3, size, size)) is None
    plan = PhasePlan([HEAD, TOP])
    features = FeatureCache(model, plan, PerformanceConfig(), None)
    images = lambda: torch.rand(2, 3, size, size)  # noqa: E731
    assert features.decide(0, images).cached  # the whole backbone: no chain needed
    partial = features.decide(1, images)
    assert not partial.cached and "stage_chain" in partial.reason


def test_the_folder_keeps_the_most_recently_used_files_within_its_limit(tmp_path):
    import os

    from fruitlab.training.featurecache import evict

    for age, name in enumerate(["new", "middle", "old"]):
        f = tmp_path / f"{name}.pt"
        f.write_bytes(b"x" * 1000)
        os.utime(f, (1_000_000 - age * 100, 1_000_000 - age * 100))
    removed = evict(tmp_path, keep_bytes=2500)
    assert [f.name for f in removed] == ["old.pt"]
    assert sorted(f.name for f in tmp_path.glob("*.pt")) == ["middle.pt", "new.pt"]

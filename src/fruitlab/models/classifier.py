"""Backbone + head as one plain nn.Module; what serving needs (labels, preprocessing) travels on it."""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn

from fruitlab.config import HeadConfig, ModelConfig, PreprocessConfig
from fruitlab.models.backbone import build_backbone, resolve_preprocess

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def build_head(in_features: int, num_classes: int, cfg: HeadConfig) -> nn.Sequential:
    """[dropout] -> (linear -> act -> dropout) x len(hidden) -> linear."""
    layers: list[nn.Module] = []
    width = in_features
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation]()]
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    if cfg.dropout and not cfg.hidden:
        layers.append(nn.Dropout(cfg.dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """images (B, 3, H, W) -> logits (B, num_classes).

    `pool='model'` uses the backbone's own pre-logits path (works for every timm model, ViTs included);
    'avg'/'max'/'avgmax' pool the last feature map directly, as Keras' include_top=False + pooling does.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: HeadConfig,
        classes: list[str],
        preprocess: dict[str, Any],
        backbone_name: str,
    ):
        super().__init__()
        self.backbone = backbone
        self.pool_type = head.pool
        if head.pool == "model":
            self.pool: nn.Module = nn.Identity()
            in_features = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        else:
            self.pool = SelectAdaptivePool2d(pool_type=head.pool, flatten=True)
            in_features = int(backbone.num_features) * self.pool.feat_mult()
            # The backbone's own pre-logits MLP (VGG's 4096-d fc6/fc7) is unused on this path: drop its weights.
            if isinstance(getattr(backbone, "pre_logits", None), nn.Module):
                backbone.pre_logits = nn.Identity()
        self.head = build_head(in_features, num_classes, head)
        self.classes = list(classes)
        self.preprocess = dict(preprocess)
        self.backbone_name = backbone_name

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "model":
            return self.backbone(x)  # (B, F): timm's own pooling and pre-logits
        return self.pool(self.backbone.forward_features(x))  # (B, C, h, w) -> (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def metadata(self) -> dict[str, Any]:
        return {"classes": self.classes, "preprocess": self.preprocess, "backbone": self.backbone_name}


def build_classifier(
    cfg: ModelConfig, preprocess_cfg: PreprocessConfig, classes: list[str], where: str = ""
) -> tuple[Classifier, str]:
    """The model for these classes, and a description of where its backbone weights came from."""
    backbone, weights = build_backbone(cfg, where)
    pre = resolve_preprocess(backbone, preprocess_cfg)
    model = Classifier(backbone, len(classes), cfg.head, classes, pre.to_dict(), cfg.backbone)
    return model, weights

"""Small CNNs trained from scratch, registered with timm so that `model.backbone: fruitlab_cnn` works like any
other timm name (create_model, num_features, forward_features, group_matcher for phases).

timm has no plain "conv + batch norm + max-pool blocks" network of this size, which is what the from-scratch
fruit-and-vegetable system used (Keras Sequential: Conv2D/BatchNorm/MaxPool blocks, dropout, Dense).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import register_model
from torch import nn

# Names registered here, for the fast name check (models/names.py) that must not import this module.
SCRATCH_NAMES = ("fruitlab_cnn", "fruitlab_cnn_small")


class ConvBlock(nn.Sequential):
    """(conv 3x3 -> batch norm -> ReLU) x convs -> max-pool 2 -> dropout: (B, C_in, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, in_chs: int, out_chs: int, convs: int = 2, drop: float = 0.0):
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                nn.Conv2d(in_chs if i == 0 else out_chs, out_chs, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_chs),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.MaxPool2d(2))
        if drop:
            layers.append(nn.Dropout2d(drop))
        super().__init__(*layers)


class ScratchCNN(nn.Module):
    """timm-style model: `num_classes=0` gives pooled features; `stages.N` are the phases' stage groups."""

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        convs_per_block: int = 2,
        block_drop: float = 0.1,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        in_chans: int = 3,
    ):
        super().__init__()
        blocks, chs = [], in_chans
        for width in widths:
            blocks.append(ConvBlock(chs, width, convs_per_block, block_drop))
            chs = width
        self.stages = nn.Sequential(*blocks)
        self.num_features = chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(chs, num_classes) if num_classes else nn.Identity()
        self.default_cfg = self.pretrained_cfg = {
            "input_size": (3, 128, 128),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "num_classes": num_classes,
        }

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^$", "blocks": r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)  # (B, 3, H, W) -> (B, C, H/16, W/16)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x))  # (B, C)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _no_pretrained(name: str, pretrained: bool, kwargs: dict[str, Any]) -> None:
    if pretrained:
        raise ValueError(f"{name} is trained from scratch and has no pretrained weights; use pretrained: false")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's own, for weight loading
        kwargs.pop(key, None)


@register_model
def fruitlab_cnn(pretrained: bool = False, **kwargs: Any) -> ScratchCNN:
    """Four conv blocks (32-64-128-256, two convs each) with batch norm and dropout: about 1.2 M parameters."""
    _no_pretrained("fruitlab_cnn", pretrained, kwargs)
    return ScratchCNN(widths=(32, 64, 128, 256), **kwargs)


@register_model
def fruitlab_cnn_small(pretrained: bool = False, **kwargs: Any) -> ScratchCNN:
    """Three blocks (16-32-64), one conv each: for tests and quick CPU runs."""
    _no_pretrained("fruitlab_cnn_small", pretrained, kwargs)
    return ScratchCNN(widths=(16, 32, 64), convs_per_block=1, **kwargs)

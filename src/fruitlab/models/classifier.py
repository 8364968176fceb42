"""Backbone + head as one plain nn.Module; what serving needs (labels, preprocessing) travels on it."""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn

from fruitlab.config import HeadConfig, MlpConfig, ModelConfig, PreprocessConfig, SharedConfig, TaskHeadConfig
from fruitlab.errors import ModelError, did_you_mean
from fruitlab.models.backbone import build_backbone, resolve_preprocess, timm_arch
from fruitlab.names import SINGLE_TASK

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def mlp_layers(in_features: int, cfg: MlpConfig) -> tuple[list[nn.Module], int]:
    """(linear -> act -> dropout) x len(cfg.hidden), and the width that comes out."""
    layers: list[nn.Module] = []
    width = in_features
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation]()]
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    return layers, width


def build_head(in_features: int, num_classes: int, cfg: MlpConfig) -> nn.Sequential:
    """[dropout] -> (linear -> act -> dropout) x len(hidden) -> linear."""
    layers, width = mlp_layers(in_features, cfg)
    if cfg.dropout and not cfg.hidden:
        layers.append(nn.Dropout(cfg.dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class MultiTaskHead(nn.Module):
    """features (B, F) -> shared layers (B, S) -> {task: logits (B, n_task)}."""

    def __init__(self, in_features: int, tasks: dict[str, list[str]], shared: MlpConfig, heads: dict[str, MlpConfig]):
        super().__init__()
        layers, width = mlp_layers(in_features, shared)
        self.shared = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({task: build_head(width, len(names), heads[task]) for task, names in tasks.items()})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.shared(features)
        return {task: head(shared) for task, head in self.heads.items()}


class Classifier(nn.Module):
    """images (B, 3, H, W) -> logits (B, num_classes), or {task: logits (B, n_task)} for a multi-task model.

    `pool='model'` uses the backbone's own pre-logits path (works for every timm model, ViTs included);
    'avg'/'max'/'avgmax' pool the last feature map directly, as Keras' include_top=False + pooling does.
    `tasks` maps each task to its label names; a single-task model has one task, `class`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: dict[str, list[str]],
        head: HeadConfig,
        preprocess: dict[str, Any],
        backbone_name: str,
        shared: SharedConfig | None = None,
        heads: dict[str, TaskHeadConfig] | None = None,
        timm_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        # How to build this exact module again (models/spec.py): timm's name and keyword arguments, the head configs.
        self.timm_kwargs = dict(timm_kwargs or {})
        self.head_cfg, self.shared_cfg, self.heads_cfg = head, shared, heads
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
        self.tasks = {task: list(names) for task, names in tasks.items()}
        self.multitask = heads is not None
        if self.multitask:
            self.head: nn.Module = MultiTaskHead(in_features, self.tasks, shared or SharedConfig(), heads or {})
        else:
            (names,) = self.tasks.values()
            self.head = build_head(in_features, len(names), head)
        # Single-task: the class names; multi-task: {task: label names}. Either way what labels.json holds.
        self.classes: Any = self.tasks if self.multitask else next(iter(self.tasks.values()))
        self.preprocess = dict(preprocess)
        self.backbone_name = backbone_name

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> the backbone's feature map (B, C, h, w) (tokens for a ViT), as timm's models."""
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> Any:
        """feature map -> pooled features (B, F) with `pre_logits`, else logits (or {task: logits}), as timm's."""
        # 'model': timm's own pooling and pre-logits (its classifier is Identity); else (B, C, h, w) -> (B, C * k)
        pooled = self.backbone.forward_head(x) if self.pool_type == "model" else self.pool(x)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor) -> Any:
        return self.forward_head(self.forward_features(x))

    def metadata(self) -> dict[str, Any]:
        return {"classes": self.classes, "preprocess": self.preprocess, "backbone": self.backbone_name}


def build_classifier(
    cfg: ModelConfig, preprocess_cfg: PreprocessConfig, tasks: dict[str, list[str]] | list[str], where: str = ""
) -> tuple[Classifier, str]:
    """The model for these tasks (or a plain list of classes), and where its backbone weights came from."""
    if not isinstance(tasks, dict):
        tasks = {SINGLE_TASK: list(tasks)}
    check_heads(cfg, tasks, where)
    backbone, weights = build_backbone(cfg, where)
    pre = resolve_preprocess(backbone, preprocess_cfg)
    model = Classifier(
        backbone, tasks, cfg.head, pre.to_dict(), timm_arch(cfg), cfg.shared, cfg.heads, timm_kwargs=cfg.kwargs
    )
    return model, weights


def check_heads(cfg: ModelConfig, tasks: dict[str, list[str]], where: str = "") -> None:
    """model.heads must name exactly the tasks the data labels (data.labels)."""
    where = where.replace("model.backbone", "model.heads")
    data_tasks = sorted(tasks)
    if cfg.heads is None:
        if data_tasks != [SINGLE_TASK]:
            raise ModelError(
                f"the data has several tasks {data_tasks} (data.labels) but model.heads is not set {where}; "
                f"add one head per task, e.g. heads: {{{', '.join(f'{t}: {{}}' for t in data_tasks)}}}"
            )
        return
    if sorted(cfg.heads) != data_tasks:
        extra = sorted(set(cfg.heads) - set(tasks))
        missing = sorted(set(tasks) - set(cfg.heads))
        hints = "".join(did_you_mean(name, tasks) for name in extra[:1])
        raise ModelError(
            f"model.heads {sorted(cfg.heads)} {where} must name the tasks the data labels: {data_tasks} "
            f"(unknown: {extra or 'none'}{hints}; missing: {missing or 'none'}). Set data.labels to label "
            "every task, or rename the heads".replace("  ", " ")
        )

"""Grad-CAM overlays (jacobgil/pytorch-grad-cam) on a logged model, for any timm CNN backbone.

Grad-CAM needs the layer whose feature map it weighs. Names differ per family (EfficientNet `bn2`, ResNet
`layer4`, VGG `features`), so the layer is found by running one image: the last backbone module to finish with a
spatial map (B, C, h, w), h and w > 1 - the final feature map before global pooling, whatever the family calls it.
Backbones without such a map (ViTs: tokens) get no overlays, and the report says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fruitlab.evaluation.html import Tile


class TaskLogits(nn.Module):
    """One task's logits as a plain tensor: Grad-CAM's targets index a (B, C) output, not a dict."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[self.task] if isinstance(out, dict) else out


def find_target_layer(model: nn.Module, input_size: int) -> tuple[str, nn.Module] | None:
    """(name, module) of the backbone's final spatial feature map, found by a forward pass; None if it has none."""
    backbone = getattr(model, "backbone", model)
    modules = dict(backbone.named_modules())
    finished: list[tuple[str, tuple[int, ...]]] = []  # in the order forward hooks fire (a parent after its children)
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: finished.append((name, tuple(out.shape) if torch.is_tensor(out) else ()))
        )
        for name, module in modules.items()
        if name  # the backbone itself returns pooled features
    ]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    for name, shape in reversed(finished):
        if len(shape) == 4 and shape[2] > 1 and shape[3] > 1:
            return name, modules[name]
    return None


def gradcam_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, task: str, classes: Sequence[int]) -> np.ndarray:
    """(B, S, S) Grad-CAM heat maps in [0, 1], each for the given class index of its image."""
    from pytorch_grad_cam import GradCAM  # imports OpenCV, scipy, scikit-learn: only when overlays are drawn
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    # A frozen backbone's feature map has no gradient path through its parameters; the input provides one.
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), GradCAM(TaskLogits(model, task), [layer]) as cam:
        maps = cam(input_tensor=x, targets=targets)
    model.zero_grad(set_to_none=True)  # drop the parameter gradients Grad-CAM's backward left behind
    return maps


def overlay_tiles(images: np.ndarray, maps: np.ndarray, captions: list[list[str]], kinds: list[str]) -> list[Tile]:
    """Heat maps blended over the images (RGB uint8, (B, S, S, 3)); red = regions that raised the class score."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return [
        Tile(show_cam_on_image(image.astype(np.float32) / 255, heat, use_rgb=True, image_weight=0.55), caption, kind)
        for image, heat, caption, kind in zip(images, maps, captions, kinds, strict=True)
    ]

"""A classifier as data: the JSON spec that builds the same module again, without pickles or fruitlab's classes.

The spec names the timm architecture and its keyword arguments, the head (and, multi-task, shared and per-task
head) layers, the tasks with their labels and the preprocessing, plus the versions that wrote it. Together with the
weights (a safetensors file of `state_dict()`, see inference/model_format.py) it is the whole model: building from
the spec with `pretrained=False` and loading the weights gives the module that was saved, bit for bit.
The README's "Model format" section describes the fields for readers without fruitlab.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import ValidationError
from torch import nn

from fruitlab.config import HeadConfig, SharedConfig, TaskHeadConfig
from fruitlab.errors import ModelError
from fruitlab.models.backbone import create_backbone
from fruitlab.models.classifier import Classifier

FORMAT = "fruitlab.classifier"
FORMAT_VERSION = 1  # bump on any change an older loader cannot read; loaders refuse newer versions


def classifier_spec(model: Classifier) -> dict[str, Any]:
    """The JSON-able description of `model` that build_from_spec() turns back into the same architecture."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": {"timm_model": model.backbone_name, "kwargs": {"num_classes": 0, **model.timm_kwargs}},
        "head": model.head_cfg.model_dump(),
        "shared": model.shared_cfg.model_dump() if model.multitask and model.shared_cfg else None,
        "heads": {t: h.model_dump() for t, h in model.heads_cfg.items()} if model.heads_cfg is not None else None,
        "tasks": model.tasks,
        "preprocess": model.preprocess,
        "versions": {name: _version(name) for name in ("fruitlab", "timm", "torch")},
    }


def build_from_spec(spec: dict[str, Any], source: str = "the model") -> Classifier:
    """The architecture `spec` describes, with random weights (timm's pretrained=False: nothing is downloaded)."""
    check_spec(spec, source)
    try:
        backbone_spec = spec["backbone"]
        kwargs = {k: v for k, v in backbone_spec["kwargs"].items() if k != "num_classes"}
        head = HeadConfig(**spec["head"])
        shared = SharedConfig(**spec["shared"]) if spec.get("shared") else None
        heads = {t: TaskHeadConfig(**h) for t, h in spec["heads"].items()} if spec.get("heads") is not None else None
        tasks = {t: list(names) for t, names in spec["tasks"].items()}
        preprocess = dict(spec["preprocess"])
    except (KeyError, TypeError, AttributeError, ValidationError) as exc:
        raise ModelError(f"{source}: its spec is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    backbone: nn.Module = create_backbone(backbone_spec["timm_model"], kwargs, source)
    return Classifier(backbone, tasks, head, preprocess, backbone_spec["timm_model"], shared, heads, timm_kwargs=kwargs)


def check_spec(spec: Any, source: str) -> None:
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise ModelError(f"{source}: not a fruitlab classifier spec (format {found!r}, expected {FORMAT!r})")
    written = spec.get("format_version")
    if not isinstance(written, int) or written > FORMAT_VERSION:
        by = spec.get("versions", {}).get("fruitlab", "?")
        raise ModelError(
            f"{source}: model format version {written!r} (written by fruitlab {by}) is newer than this fruitlab "
            f"reads (up to {FORMAT_VERSION}); upgrade fruitlab"
        )


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"

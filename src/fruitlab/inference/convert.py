"""`fruitlab convert-model`: a model an older fruitlab logged as a pickle, rewritten in the current format.

The pickle is read once (the user vouches for it with --trust-pickle), its architecture read off the module itself
(timm architecture, pooling, head layers), rebuilt from that spec with random weights, given the old weights, and
checked: both models must give the same logits on the same inputs. The result is logged to the same run (its
`fruitlab.model_uri` tag then names the new model) and, for a registered model, registered as a new version that
takes over the old version's aliases; or, with --out, written to a folder.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from torch import nn

from fruitlab.config import HeadConfig, MlpConfig, SharedConfig, TaskHeadConfig
from fruitlab.errors import FruitlabError, ModelError
from fruitlab.inference import legacy
from fruitlab.inference.model_format import log_classifier, save_model_dir
from fruitlab.models.backbone import create_backbone
from fruitlab.models.classifier import ACTIVATIONS, Classifier
from fruitlab.tracking import refs, runs, tags

TOLERANCE = 1e-5  # largest logit difference between the pickled and the converted model


@dataclass
class Conversion:
    source: str  # the pickled model (pinned URI or folder)
    target: str  # the converted one: models:/m-... or a folder
    max_diff: float
    registered: str | None = None  # models:/NAME/VERSION of the new version
    moved_aliases: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = f"converted {self.source} -> {self.target} (same logits: max difference {self.max_diff:.1e})"
        if self.registered:
            moved = f"; aliases {', '.join(self.moved_aliases)} moved to it" if self.moved_aliases else ""
            line += f"; registered as {self.registered}{moved}"
        return line


def convert_model(
    model: str, *, out: str | Path | None = None, uri: str | None = None, trust_pickle: bool = False
) -> Conversion:
    """Convert the pickled model `model` names (any model reference, tracking/refs.py); see the module doc."""
    if not trust_pickle:
        raise ModelError(
            "converting reads the old model, and reading a pickle runs whatever code it contains: pass "
            "--trust-pickle to confirm that you trust the tracking store (or folder) it comes from"
        )
    uri = runs.tracking_uri(uri)
    client = runs.client_for(uri)
    resolved = refs.resolve(client, model, uri)
    if out is None and resolved.run_id is None:
        raise FruitlabError(f"{model} has no run to log the converted model to; give --out DIR (a new folder)")
    old, tasks, preprocess = _read_pickled(resolved.uri, resolved.ref.kind == "folder")
    new = rebuild(old, tasks, preprocess, resolved.uri)
    example = torch.randn(2, 3, int(preprocess["input_size"]), int(preprocess["input_size"]))
    diff = _max_difference(old, new, example, resolved.uri)
    if out is not None:
        return Conversion(resolved.uri, str(save_model_dir(new, Path(out), example)), diff)
    target = log_classifier(new, str(resolved.run_id), example)
    runs.set_tags(client, str(resolved.run_id), {tags.MODEL_URI: target})
    client.set_logged_model_tags(target.removeprefix("models:/"), {tags.CONVERTED_FROM: resolved.uri})
    result = Conversion(resolved.uri, target, diff)
    if resolved.name is not None:
        _register(client, result, resolved.name, str(resolved.version))
    return result


def rebuild(old: nn.Module, tasks: dict[str, list[str]], preprocess: dict[str, Any], source: str) -> Classifier:
    """A Classifier built from what the unpickled one is made of, holding its weights."""
    if not all(hasattr(old, a) for a in ("backbone", "head", "pool_type")):
        raise ModelError(f"model {source!r}: the pickled module is a {type(old).__name__}, not a fruitlab classifier")
    arch = (getattr(old.backbone, "pretrained_cfg", None) or {}).get("architecture") or old.backbone_name
    multitask = isinstance(old.head, nn.Module) and hasattr(old.head, "heads")
    if multitask:
        head = HeadConfig(pool=old.pool_type)
        shared = _mlp_config(old.head.shared, SharedConfig, classifier=False)
        heads = {t: _mlp_config(old.head.heads[t], TaskHeadConfig, classifier=True) for t in tasks}
    else:
        head, shared, heads = _mlp_config(old.head, HeadConfig, classifier=True, pool=old.pool_type), None, None
    backbone = create_backbone(arch, {}, f"model {source!r}")
    new = Classifier(backbone, tasks, head, preprocess, arch, shared, heads)
    try:
        new.load_state_dict(old.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ModelError(f"model {source!r}: the rebuilt architecture does not fit its weights: {exc}") from None
    return new.eval()


# ------------------------------------------------------------------------------------------------ internals
def _read_pickled(source: str, is_folder: bool) -> tuple[nn.Module, dict[str, list[str]], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(source) if is_folder else Path(mlflow.artifacts.download_artifacts(source, dst_path=tmp))
        except MlflowException as exc:
            raise ModelError(f"cannot download model {source!r}: {str(exc).strip().splitlines()[0]}") from None
        if not legacy.is_pickled(folder):
            raise ModelError(f"model {source!r} is in the current format already (no pickle): nothing to convert")
        return legacy.load_pickled(folder, source, trust_pickle=True)


def _mlp_config(layers: nn.Module, kind: type[MlpConfig], classifier: bool, **extra: Any) -> Any:
    """The MlpConfig that builds `layers` (linear -> activation -> dropout ..., then the classifier if any)."""
    linears = [m for m in layers.modules() if isinstance(m, nn.Linear)]
    hidden = [m.out_features for m in (linears[:-1] if classifier else linears)]
    names = {cls: name for name, cls in ACTIVATIONS.items()}
    activations = [names[type(m)] for m in layers.modules() if type(m) in names]
    dropouts = [m.p for m in layers.modules() if isinstance(m, nn.Dropout)]
    return kind(
        hidden=hidden,
        activation=activations[0] if activations else "relu",
        dropout=dropouts[0] if dropouts else 0.0,
        **extra,
    )


@torch.inference_mode()
def _max_difference(old: nn.Module, new: nn.Module, example: torch.Tensor, source: str) -> float:
    a, b = old.eval()(example), new.eval()(example)  # (B, n) or {task: (B, n_task)}
    a, b = (a, b) if isinstance(a, dict) else ({"": a}, {"": b})
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    if diff > TOLERANCE:
        raise ModelError(f"model {source!r}: the converted model's logits differ by {diff:.2e}; not converted")
    return diff


def _register(client: Any, result: Conversion, name: str, old_version: str) -> None:
    """The converted model as a new version of `name`; the aliases of the old version move to it."""
    version = mlflow.register_model(result.target, name).version
    result.registered = f"models:/{name}/{version}"
    aliases = client.get_registered_model(name).aliases or {}
    for alias, points_at in sorted(aliases.items()):
        if str(points_at) == old_version:
            client.set_registered_model_alias(name, alias, str(version))
            result.moved_aliases.append(alias)
    client.set_model_version_tag(name, str(version), tags.CONVERTED_FROM, f"models:/{name}/{old_version}")

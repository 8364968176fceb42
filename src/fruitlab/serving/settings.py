"""What `fruitlab serve` is told: the model, the prediction log, the limits. No heavy imports (the CLI builds it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fruitlab.errors import FruitlabError

DEFAULT_DB = "sqlite:///predictions.db"
DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class ServeSettings:
    model: str  # models:/NAME@ALIAS (followed when the alias moves), models:/NAME/VERSION, a run id, a folder
    db: str = DEFAULT_DB  # any SQLAlchemy URL; the schema is created on start
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI
    poll_seconds: float = 0.0  # re-resolve the alias this often; 0 = only on POST /admin/reload
    wait_for_model: bool = False  # start without a model and load it once the alias exists (compose)
    device: str = "cpu"
    max_bytes: int = 8 * 2**20  # per uploaded file
    max_files: int = 8  # per request
    max_pixels: int = 40_000_000  # width x height, read from the header before any decoding
    concurrency: int = 2  # requests decoded and predicted at once
    queue: int = 16  # requests waiting for one of those; beyond: 503 with Retry-After
    top_k: int = 3  # labels answered per image and task (the log keeps LOG_TOP_K)

    def __post_init__(self) -> None:
        positive = {
            "--max-mb": self.max_bytes,
            "--max-files": self.max_files,
            "--max-pixels": self.max_pixels,
            "--concurrency": self.concurrency,
            "--top-k": self.top_k,
        }
        for option, value in positive.items():
            if value < 1:
                raise FruitlabError(f"{option} {value}: must be at least 1")
        if self.queue < 0 or self.poll_seconds < 0:
            raise FruitlabError("--queue and --poll cannot be negative")

    @property
    def max_body_bytes(self) -> int:
        """The whole request: every file at its limit plus room for the multipart headers and the tag."""
        return self.max_files * self.max_bytes + 2**20


def parse_seconds(text: str, option: str = "--poll") -> float:
    """'30s', '2m', '1h', '500ms', '45' (seconds), '0' or 'off' (never) -> seconds."""
    cleaned = text.strip().lower()
    if cleaned in ("off", "never", "no", "0"):
        return 0.0
    match = DURATION.fullmatch(cleaned)
    if match is None:
        raise FruitlabError(f"{option} {text!r}: expected a duration such as 30s, 2m, 1h, 500ms, or 0/off")
    return float(match["value"]) * UNITS[match["unit"]]

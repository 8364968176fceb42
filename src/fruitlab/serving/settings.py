"""What `fruitlab serve` is told: the model, the prediction log, the limits. No heavy imports (the CLI builds it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fruitlab.errors import FruitlabError

DEFAULT_DB = "sqlite:///predictions.db"
DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
TOKEN_ENV = "FRUITLAB_ADMIN_TOKEN"  # the admin bearer token itself
TOKEN_FILE_ENV = "FRUITLAB_ADMIN_TOKEN_FILE"  # or a file holding it (a Docker/Kubernetes secret)
TOKEN_MIN_LENGTH = 16


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
    max_request_pixels: int = 100_000_000  # decoded pixels of all files of one request together (memory bound)
    # Bearer token for /admin/reload, /predictions and /predictions/stats; None: those routes are off, unless
    # insecure_admin opens them to anyone who reaches the port. Kept out of repr (settings get logged).
    admin_token: str | None = field(default=None, repr=False)
    insecure_admin: bool = False

    def __post_init__(self) -> None:
        positive = {
            "--max-mb": self.max_bytes,
            "--max-files": self.max_files,
            "--max-pixels": self.max_pixels,
            "--concurrency": self.concurrency,
            "--top-k": self.top_k,
            "--max-request-pixels": self.max_request_pixels,
        }
        for option, value in positive.items():
            if value < 1:
                raise FruitlabError(f"{option} {value}: must be at least 1")
        if self.queue < 0 or self.poll_seconds < 0:
            raise FruitlabError("--queue and --poll cannot be negative")
        if self.admin_token is not None and self.insecure_admin:
            raise FruitlabError(
                f"--insecure-admin with an admin token ({TOKEN_ENV} or {TOKEN_FILE_ENV}): choose one - the token "
                "protects the admin and log routes, --insecure-admin opens them to anyone"
            )

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


def read_admin_token(env: Mapping[str, str], token_file: str | None = None) -> str | None:
    """The admin token from `token_file` (--admin-token-file), $FRUITLAB_ADMIN_TOKEN_FILE or $FRUITLAB_ADMIN_TOKEN.

    None when none is set (or set to an empty value): the admin and log routes are then off. A file holds the token
    alone (surrounding whitespace and a trailing newline are ignored). Too short a token is refused: it must not be
    guessable.
    """
    path = token_file or env.get(TOKEN_FILE_ENV) or None
    value = (env.get(TOKEN_ENV) or "").strip()
    if path and value:
        raise FruitlabError(f"both {TOKEN_ENV} and a token file ({path}) are set; give the admin token one way")
    where = TOKEN_ENV
    if path:
        where = f"admin token file {path}"
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise FruitlabError(f"cannot read the {where}: {exc.strerror or exc}") from None
        if not value:
            raise FruitlabError(f"the {where} is empty; write the token into it (e.g. openssl rand -hex 32)")
    if not value:
        return None
    spaced = any(ch.isspace() for ch in value)
    if len(value) < TOKEN_MIN_LENGTH or spaced:
        raise FruitlabError(
            f"the admin token in {where} is {len(value)} characters{' with spaces' if spaced else ''}; use at least "
            f"{TOKEN_MIN_LENGTH} characters without spaces, e.g. the output of `openssl rand -hex 32`"
        )
    return value

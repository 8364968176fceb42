"""Who may reload the model and read the prediction log: the holder of the admin bearer token.

    Authorization: Bearer <token>     on POST /admin/reload, GET /predictions, GET /predictions/stats

The token comes from $FRUITLAB_ADMIN_TOKEN or a file (settings.read_admin_token) and is compared in constant time
(hmac.compare_digest), so the answer's timing says nothing about how much of a guess was right. Without a token
these routes are off (403 saying how to turn them on) unless the server was started with --insecure-admin.
Prediction, the pages, /health and /ready stay open.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fruitlab.serving.settings import TOKEN_ENV, TOKEN_FILE_ENV, ServeSettings

ADMIN_ROUTES = ("/admin/reload", "/predictions", "/predictions/stats")
bearer = HTTPBearer(
    auto_error=False,  # a missing header is answered here, with a message, not with FastAPI's bare 403
    scheme_name="admin token",
    description=f"the server's admin token (${TOKEN_ENV}); needed by the admin and log routes",
)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fruitlab admin"'}


def admin_mode(settings: ServeSettings) -> str:
    """How the admin and log routes are guarded, for the start-up line."""
    if settings.admin_token is not None:
        return "admin and log routes need the bearer token"
    if settings.insecure_admin:
        return "admin and log routes OPEN to anyone who reaches the port (--insecure-admin)"
    return f"admin and log routes off (no {TOKEN_ENV})"


def require_admin(settings: ServeSettings) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency: passes with the right token (or --insecure-admin); else 401 or 403 with a message."""
    token = settings.admin_token.encode() if settings.admin_token is not None else None

    async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> None:
        if token is None:
            if settings.insecure_admin:
                return
            raise HTTPException(
                403,
                f"this route is off: the server has no admin token. Set {TOKEN_ENV} (or {TOKEN_FILE_ENV}, a file "
                "holding it) and restart, then send `Authorization: Bearer <token>`; or start the server with "
                "--insecure-admin on a trusted network only",
            )
        if credentials is None:
            raise HTTPException(
                401, "this route needs the admin token: send `Authorization: Bearer <token>`", headers=CHALLENGE
            )
        if not hmac.compare_digest(credentials.credentials.encode(), token):
            raise HTTPException(401, "the admin token is wrong", headers=CHALLENGE)

    return check

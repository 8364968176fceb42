"""The upload page, the dashboard and their assets, read once from the package: a URL never names a file.

plotly.js comes from the installed plotly package (the same pinned version as the Python side), so the dashboard
works without internet access. It is served gzip-compressed when the browser accepts that (4.6 MB -> about 1.4 MB).
"""

from __future__ import annotations

import gzip
from functools import cached_property
from importlib import resources

from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PLOTLY = "plotly.min.js"
PAGES = {"upload": "index.html", "dashboard": "dashboard.html"}
ASSET_TYPES = {
    "style.css": "text/css; charset=utf-8",
    "upload.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "plotly.min.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# Scripts and styles from this server only; uploaded images are shown from blob: URLs made in the page.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


# On every answer (pages, assets, JSON, the middleware's own 413/415): the browser takes the declared type, never
# guesses one from the bytes (an upload echoed back, or a JSON error, is never run as a script or shown as HTML).
EVERY_RESPONSE = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class SecurityHeaders:
    """ASGI middleware adding EVERY_RESPONSE's headers (the pages add their own Content-Security-Policy)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in EVERY_RESPONSE.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


class Assets:
    def __init__(self) -> None:
        static = resources.files("fruitlab.serving") / "static"
        names = [*PAGES.values(), *(name for name in ASSET_TYPES if name != PLOTLY)]
        self._files = {name: (static / name).read_bytes() for name in names}

    @cached_property
    def _plotly(self) -> bytes:
        return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()

    @cached_property
    def _plotly_gz(self) -> bytes:
        return gzip.compress(self._plotly, compresslevel=6)

    def page(self, name: str) -> Response:
        headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
        return Response(self._files[PAGES[name]], media_type="text/html; charset=utf-8", headers=headers)

    def asset(self, name: str, accept_encoding: str) -> Response | None:
        """The asset by its exact name, or None for any other name."""
        if name not in ASSET_TYPES:
            return None
        if name != PLOTLY:
            return Response(self._files[name], media_type=ASSET_TYPES[name], headers={"Cache-Control": "no-cache"})
        headers = {"Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
        if "gzip" in accept_encoding:
            headers["Content-Encoding"] = "gzip"
            return Response(self._plotly_gz, media_type=ASSET_TYPES[name], headers=headers)
        return Response(self._plotly, media_type=ASSET_TYPES[name], headers=headers)

"""Bounds on what a request can cost: body size and type before parsing, and how many requests work at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_AFTER_S = 1


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit:,} bytes (all files together)")


class UploadLimits:
    """ASGI middleware for POST to the upload routes: multipart only (415), at most `max_body` bytes (413).

    A declared Content-Length over the limit is refused before a byte of the body is read; a body without one
    (chunked) is counted as it arrives and refused once it passes the limit. Other routes pass through.
    """

    def __init__(self, app: ASGIApp, max_body: int, paths: tuple[str, ...] = ("/predict",)) -> None:
        self.app = app
        self.max_body = max_body
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        kind = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if kind != "multipart/form-data":
            detail = (
                f"{scope['path']} takes multipart/form-data (one or more `files` fields, an optional `tag`), "
                f"not {kind or 'a body without a content type'}"
            )
            await _send_json(send, 415, detail)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _send_json(send, 413, BodyTooLarge(self.max_body).detail)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)  # FastAPI answers an HTTPException raised while parsing
            return message

        await self.app(scope, counted, send)


class Gate:
    """At most `concurrency` requests work at once and `queue` more wait; a request beyond those gets 503.

    Created inside the running event loop (the app's lifespan); the counter is only touched from that loop.
    """

    def __init__(self, concurrency: int, queue: int) -> None:
        self.concurrency = concurrency
        self.capacity = concurrency + queue
        self.admitted = 0
        self._working = asyncio.Semaphore(concurrency)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.admitted >= self.capacity:
            raise HTTPException(
                503,
                f"busy: {self.concurrency} requests are being answered and {self.capacity - self.concurrency} "
                f"are waiting; retry in {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @asynccontextmanager
    async def work(self) -> AsyncIterator[None]:
        async with self._working:
            yield


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""`fruitlab serve`: a FastAPI app around one registered model; every answered prediction is logged first.

    GET  /                  upload page: choose or drop images, see label(s) and probabilities
    GET  /dashboard         predictions over time, by class and by model version (plotly.js, served from here)
    POST /predict           multipart: `files` (one or more images), optional `tag`; ?top_k=
    GET  /predictions       the log, newest first, paged; filters label, model_version, tag, since, until  [admin]
    GET  /predictions/stats counts by label, version and time bucket; latency percentiles                [admin]
    GET  /health, /ready    the process answers / a model is loaded
    POST /admin/reload      resolve the alias (e.g. champion) now; a new version is swapped in (model_slot.py) [admin]
    GET  /docs              OpenAPI (FastAPI's Swagger page loads its own assets from a CDN; nothing else does)

[admin]: `Authorization: Bearer <admin token>` (auth.py); without a configured token these routes are off.
A request is answered only after its rows are in the log (one transaction); if the write fails the answer is 503.
Uploads are checked in uploads.py, body size and concurrency bounded in limits.py; every error is {"detail": ...}.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fruitlab import __version__
from fruitlab.errors import ModelError
from fruitlab.serving.auth import admin_mode, require_admin
from fruitlab.serving.limits import RETRY_AFTER_S, Gate, UploadLimits
from fruitlab.serving.log import (
    LABEL_JOIN,
    LOG_TOP_K,
    TAG_LENGTH,
    Filters,
    LogError,
    PredictionLog,
    normalize_url,
    utc_naive,
)
from fruitlab.serving.model_slot import LoadedModel, ModelSlot
from fruitlab.serving.pages import Assets, SecurityHeaders
from fruitlab.serving.schemas import Error, PredictionPage, PredictResponse, Ready, ReloadResult
from fruitlab.serving.settings import ServeSettings
from fruitlab.serving.uploads import CheckedImage, Upload, UploadError, check_request, multipart_problem, safe_name

log = logging.getLogger(__name__)
TAG_PATTERN = r"^[\w .:@/+=-]*$"
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": Error} for s in (413, 415, 422, 503)}
GUARDED: dict[int | str, dict[str, Any]] = {s: {"model": Error} for s in (401, 403)}  # see auth.py
WAIT_RETRY_S = 10.0  # how often a server started without its model (--wait-for-model) looks for it


def create_app(
    settings: ServeSettings, *, log_db: PredictionLog | None = None, slot: ModelSlot | None = None
) -> FastAPI:
    """The app, with its prediction log open (schema created) and its model loaded (unless wait_for_model)."""
    normalize_url(settings.db)  # a malformed URL fails before the model is loaded
    slot = slot or ModelSlot(settings.model, settings.tracking_uri, settings.device)
    if slot.current is None:
        try:
            slot.reload()
        except ModelError as exc:
            if not settings.wait_for_model:
                raise
            log.warning(
                "no model yet (%s); retrying every %.0f s, /ready answers 503 until then", exc, _retry(settings)
            )
    owns_log = log_db is None
    log_db = log_db or PredictionLog(settings.db)  # after the model: a failed start leaves no empty log behind

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gate = Gate(settings.concurrency, settings.queue)
        follow = settings.poll_seconds > 0 and slot.follows_alias
        task = asyncio.create_task(_follow(slot, _retry(settings), follow)) if follow or not slot.current else None
        yield
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if owns_log:
            log_db.close()

    app = FastAPI(
        title="fruitlab serve",
        version=__version__,
        summary="Image classification with a registered model; every answered prediction is logged.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.slot, app.state.log = settings, slot, log_db
    app.add_middleware(UploadLimits, max_body=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so the limits' own answers get the headers too
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    _pages(app, Assets())
    admin = [Depends(require_admin(settings))]
    _prediction_routes(app, settings, slot, log_db, admin)
    _model_routes(app, slot, admin)
    return app


def run_server(settings: ServeSettings, host: str, port: int, access_log: bool = True) -> None:
    """Load the model, open the log, serve until Ctrl+C (requests in flight finish, and are logged, first)."""
    import uvicorn

    app = create_app(settings)
    model = app.state.slot.current
    shown = f"{model.uri} (model {model.name} version {model.version})" if model else f"{settings.model} (waiting)"
    log.info("serving %s at http://%s:%d - log %s", shown, host, port, app.state.log.shown_url)
    log.info("%s", admin_mode(settings))
    # limit_concurrency is a last resort (uvicorn answers it with a plain-text 503); the Gate answers first.
    limit = max(128, 4 * (settings.concurrency + settings.queue))
    uvicorn.run(app, host=host, port=port, access_log=access_log, limit_concurrency=limit, timeout_graceful_shutdown=30)


# ------------------------------------------------------------------------------------------------ routes
def _prediction_routes(
    app: FastAPI, settings: ServeSettings, slot: ModelSlot, log_db: PredictionLog, admin: list[Any]
) -> None:
    @app.post("/predict", response_model=PredictResponse, responses=ERRORS, tags=["predict"])
    async def predict(
        request: Request,
        files: Annotated[list[UploadFile], File(description="one or more images (JPEG, PNG, WebP, GIF, BMP)")],
        tag: Annotated[str | None, Form(max_length=TAG_LENGTH, pattern=TAG_PATTERN, description="client tag")] = None,
        top_k: Annotated[int, Query(ge=1, le=20, description="labels answered per image and task")] = settings.top_k,
    ) -> PredictResponse:
        """Label the images; the answer comes after the rows are in the prediction log."""
        started = time.perf_counter()
        if len(files) > settings.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; the limit is {settings.max_files}")
        async with request.app.state.gate.admit():
            model = slot.current  # this request's model to the end, whatever a reload does meanwhile
            if model is None:
                detail = f"no model loaded yet ({slot.last_error or 'loading'}); retry later"
                raise HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})
            uploads = [Upload(safe_name(f.filename, i), f.content_type, await f.read()) for i, f in enumerate(files)]
            async with request.app.state.gate.work():
                answered = await run_in_threadpool(_label, model, uploads, settings, max(top_k, LOG_TOP_K))
            latency_ms = (time.perf_counter() - started) * 1000
            request_id, now = uuid.uuid4().hex, datetime.now(UTC).replace(tzinfo=None)
            tag = tag or None
            rows = [_row(request_id, i, c, t, model, latency_ms, tag, now) for i, (c, t) in enumerate(answered)]
            try:
                await run_in_threadpool(log_db.write, rows)
            except LogError as exc:
                log.error("%s; request %s not answered", exc, request_id)
                detail = "the prediction could not be logged, so it is not answered; retry later"
                raise HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        return PredictResponse(
            request_id=request_id,
            model=model.describe(),
            latency_ms=round(latency_ms, 2),
            tag=tag,
            predictions=[_answer(c, t, top_k) for c, t in answered],
        )

    @app.get("/predictions", response_model=PredictionPage, responses=GUARDED, dependencies=admin, tags=["log"])
    async def predictions(
        label: str | None = None,
        model_version: str | None = None,
        tag: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page: Annotated[int, Query(ge=1)] = 1,
        per_page: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> PredictionPage:
        """The prediction log, newest first. Times are UTC; `since`/`until` take ISO 8601."""
        filters = Filters(label, model_version, tag, since, until)
        total, rows = await run_in_threadpool(log_db.page, filters, page, per_page)
        for row in rows:
            row["created_at"] = row["created_at"].replace(tzinfo=UTC)
        return PredictionPage(total=total, page=page, per_page=per_page, items=rows)

    @app.get("/predictions/stats", responses=GUARDED, dependencies=admin, tags=["log"])
    async def stats(
        label: str | None = None,
        model_version: str | None = None,
        tag: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        bucket: Literal["auto", "minute", "hour", "day"] = "auto",
    ) -> dict[str, Any]:
        """Counts by label, by model version and per time bucket (auto: by the window's length)."""
        filters = Filters(label, model_version, tag, since, until)
        chosen = _bucket(since, until) if bucket == "auto" else bucket
        return await run_in_threadpool(log_db.stats, filters, chosen)


def _model_routes(app: FastAPI, slot: ModelSlot, admin: list[Any]) -> None:
    @app.get("/health", tags=["service"])
    async def health() -> dict[str, str]:
        """The process answers (whether or not a model is loaded)."""
        return {"status": "ok"}

    @app.get("/ready", response_model=Ready, responses={503: {"model": Error}}, tags=["service"])
    async def ready() -> Ready:
        """200 with the model when one is loaded, else 503."""
        model = slot.current
        if model is None:
            raise HTTPException(503, f"no model loaded yet: {slot.last_error or 'loading'}")
        return Ready(status="ready", model=model.describe())

    @app.post(
        "/admin/reload",
        response_model=ReloadResult,
        responses={**GUARDED, 503: {"model": Error}},
        dependencies=admin,
        tags=["service"],
    )
    async def reload() -> ReloadResult:
        """Resolve the model reference (e.g. models:/NAME@champion) now; load and swap in a new version."""
        try:
            result = await run_in_threadpool(slot.reload)
        except ModelError as exc:
            serving = slot.current.version if slot.current else "none"
            raise HTTPException(503, f"reload failed, still serving version {serving}: {exc}") from None
        return ReloadResult(**result.describe())


def _pages(app: FastAPI, assets: Assets) -> None:
    @app.get("/", include_in_schema=False)
    async def upload_page() -> Response:
        return assets.page("upload")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> Response:
        return assets.page("dashboard")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str, request: Request) -> Response:
        found = assets.asset(name, request.headers.get("accept-encoding", ""))
        if found is None:
            raise HTTPException(404, "Not Found")
        return found


# ------------------------------------------------------------------------------------------------ internals
def _label(model: LoadedModel, uploads: list[Upload], settings: ServeSettings, k: int) -> list[tuple[Any, Any]]:
    """Check and decode every file (any bad one refuses the request), then one forward pass for all."""
    try:
        checked = check_request(
            uploads,
            max_bytes=settings.max_bytes,
            max_pixels=settings.max_pixels,
            max_request_pixels=settings.max_request_pixels,
            min_side=model.predictor.min_side,
        )
    except UploadError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    tasks = model.predictor.predict_images([c.image for c in checked], top_k=k)
    return list(zip(checked, tasks, strict=True))


def _row(
    request_id: str, item: int, c: CheckedImage, tasks: dict, model: LoadedModel, ms: float, tag: str | None, now: Any
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "item": item,
        "created_at": now,
        "sha256": c.sha256,
        "bytes": c.bytes,
        "width": c.width,
        "height": c.height,
        "format": c.format,
        "model_name": model.name,
        "model_version": model.version,
        "label": _top_label(tasks),
        "labels": {task: top[0][0] for task, top in tasks.items()},
        "probabilities": {task: {lb: round(p, 6) for lb, p in top[:LOG_TOP_K]} for task, top in tasks.items()},
        "latency_ms": round(ms, 3),
        "client_tag": tag,
    }


def _answer(c: CheckedImage, tasks: dict, top_k: int) -> dict[str, Any]:
    return {
        "filename": c.name,
        "sha256": c.sha256,
        "bytes": c.bytes,
        "width": c.width,
        "height": c.height,
        "format": c.format,
        "label": _top_label(tasks),
        "tasks": {t: [{"label": lb, "probability": p} for lb, p in top[:top_k]] for t, top in tasks.items()},
    }


def _top_label(tasks: dict) -> str:
    return LABEL_JOIN.join(top[0][0] for top in tasks.values())


def _bucket(since: datetime | None, until: datetime | None) -> str:
    if since is None:
        return "hour"
    span = (utc_naive(until) or datetime.now(UTC).replace(tzinfo=None)) - utc_naive(since)
    return "minute" if span <= timedelta(hours=3) else "hour" if span <= timedelta(days=4) else "day"


def _retry(settings: ServeSettings) -> float:
    return settings.poll_seconds or WAIT_RETRY_S


async def _follow(slot: ModelSlot, every: float, keep_following: bool) -> None:
    """Reload every `every` seconds; without `keep_following`, only until the first model is loaded."""
    while keep_following or slot.current is None:
        await asyncio.sleep(every)
        try:
            await run_in_threadpool(slot.reload)
        except ModelError as exc:
            serving = f"version {slot.current.version}" if slot.current else "no model"
            log.warning("model reload failed, still serving %s: %s", serving, exc)
        except Exception:  # a poller that dies silently would freeze the model: log and go on
            log.exception("model reload failed")


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'request'}: {e.get('msg')}" for e in errors
    ]
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer, except a bare multipart parse error, which says what could not be parsed."""
    detail = multipart_problem(exc) if getattr(exc, "status_code", None) == 400 else None
    if detail is not None:
        return JSONResponse({"detail": detail}, status_code=400)
    return await http_exception_handler(request, exc)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

"""The FastAPI app: built by ``create_app(settings)``; the lifespan owns the runtime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tipml import __version__
from tipml.errors import TipmlError
from tipml.logs import request_id_var
from tipml.serving.endpoints import router
from tipml.serving.middleware import RequestMiddleware
from tipml.serving.runtime import Runtime
from tipml.serving.scoring import Scorer
from tipml.settings import Settings

log = logging.getLogger("tipml.serving")


def _error(status: int, code: str, detail: str, field: str | None = None) -> JSONResponse:
    body: dict[str, str] = {"error": code, "detail": detail}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def _loc(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _on_tipml_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TipmlError)
    if exc.status_code >= 500:
        log.error("request failed", extra={"error": exc.code, "detail": exc.detail})
    return _error(exc.status_code, exc.code, exc.detail, exc.field)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems: list[str] = []
    fields: list[str] = []
    for err in exc.errors()[:10]:
        where = _loc(tuple(err.get("loc", ())))
        if err.get("type") == "json_invalid":
            where = "body"
            msg = "is not valid JSON"
        elif err.get("type") == "missing":
            msg = "field required"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        else:
            msg = str(err.get("msg", "invalid"))
        fields.append(where)
        problems.append(f"{where}: {msg}")
    return _error(422, "invalid_request", "; ".join(problems), fields[0] if fields else None)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
    return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    rid = request_id_var.get() or "-"
    return _error(500, "internal_error", f"internal error (request id {rid})")


def create_app(settings: Settings, *, scorer: Scorer | None = None) -> FastAPI:
    runtime = Runtime.build(settings, scorer=scorer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="tipml",
        version=__version__,
        summary="Scores and generates personalised tips for the recommender.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.include_router(router)
    app.add_exception_handler(TipmlError, _on_tipml_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(
        RequestMiddleware,
        metrics=runtime.metrics,
        max_body_bytes=settings.max_body_bytes,
        log_requests=settings.log_requests,
    )
    return app

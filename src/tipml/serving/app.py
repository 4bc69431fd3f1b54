"""The FastAPI app: built by ``create_app(settings)``; the lifespan owns the runtime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tipml import __version__
from tipml.errors import TipmlError
from tipml.logs import request_id_var
from tipml.serving.endpoints import ScoreFastRoute, router
from tipml.serving.middleware import RequestMiddleware
from tipml.serving.runtime import Runtime
from tipml.serving.scoring import Scorer
from tipml.settings import Settings

log = logging.getLogger("tipml.serving")


def _error(
    status: int,
    code: str,
    detail: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, str] = {"error": code, "detail": detail}
    if field is not None:
        body["field"] = field
    rid = request_id_var.get()
    if rid:
        body["request_id"] = rid
    return JSONResponse(body, status_code=status, headers=headers)


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


_PROMPT_VERSION_LOC = ("body", "prompt_version")


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
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        fields.append(where)
        problems.append(f"{where}: {msg[:300]}")
    return _error(422, "invalid_request", "; ".join(problems), fields[0] if fields else None)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
    if exc.status_code == 400:
        # Starlette/FastAPI's "error parsing the body" (the JSON route parses first, so this
        # is only reached by a body no route accepts): a malformed body, like bad JSON.
        return _error(422, "invalid_request", f"body: {exc.detail}", "body")
    return _error(
        exc.status_code,
        codes.get(exc.status_code, "http_error"),
        str(exc.detail),
        headers=exc.headers,
    )


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI document states this deployment's limits, not only the contract's
    ceilings: ``max_chars`` up to ``TIPML_GENERATE_MAX_CHARS``, ``candidates`` up to
    ``TIPML_MAX_CANDIDATES`` — so a request the document allows is one the service accepts."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate()["components"]["schemas"]
            max_chars = schemas["GenerateRequest"]["properties"]["max_chars"]["anyOf"][0]
            max_chars["maximum"] = settings.generate_max_chars
            schemas["ScoreRequest"]["properties"]["candidates"]["maxItems"] = (
                settings.max_candidates
            )
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


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
    _document_limits(app, settings)
    app.include_router(router)
    app.add_exception_handler(TipmlError, _on_tipml_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    # Anything else is caught by RequestMiddleware: a 500 with the request id in the body
    # and in X-Request-ID (an `Exception` handler here would run outside the middleware).
    app.add_middleware(
        RequestMiddleware,
        metrics=runtime.metrics,
        max_body_bytes=settings.max_body_bytes,
        log_requests=settings.log_requests,
        fast_routes=(ScoreFastRoute(),),
    )
    return app


def app_from_env() -> FastAPI:
    """The app of one ``tipml serve --workers N`` worker (uvicorn imports this factory in each
    worker process): settings from the environment the supervisor prepared."""
    from tipml.logs import configure_logging
    from tipml.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)

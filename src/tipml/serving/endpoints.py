"""Routes. Thin: parse, call a service, return. Errors are raised, never built here."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.types import Scope

from tipml.errors import InvalidRequest, Unauthorized
from tipml.serving.runtime import Runtime
from tipml.serving.schemas import (
    ComponentStatus,
    ErrorBody,
    ExperimentsReport,
    GenerateRequest,
    GenerateResponse,
    ReadyResponse,
    ScoreRequest,
    ScoreResponse,
)
from tipml.serving.score_decoder import decode_score
from tipml.serving.service import ScoreInput


def parse_json_body(body: bytes) -> Any:
    """A request body as JSON, or ``InvalidRequest`` on ``body``: orjson (fast), and the
    standard library for what orjson refuses but JSON allows (integers wider than 64 bits, so
    an out-of-range feature is refused by name, not as a bad body). Invalid UTF-8 and nesting
    deeper than orjson's 1,024 levels are malformed bodies."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest(f"body: is not valid JSON ({reason[:120]})", field="body") from None


class JSONRoute(APIRoute):
    """Parses a JSON body before FastAPI does (FastAPI then reads the cached value): faster,
    and a malformed body is a 422 on ``body`` like any other invalid JSON, not a bare 400."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parse_first(request: Request) -> Response:
            request.state.started = time.perf_counter()  # /score's stage clock starts here
            if request.method in ("POST", "PUT", "PATCH") and _is_json(request):
                body = await request.body()
                if body:
                    request._json = parse_json_body(body)
            return await handler(request)

        return parse_first


class ScoreRoute(JSONRoute):
    """``/score``'s own request path, the hot one. FastAPI's generic handler resolves the
    dependencies, validates the body from Python objects, then validates the returned model
    again before serialising it; here: the bearer check, one validation straight from the
    JSON bytes (pydantic-core, no intermediate objects), plain data out, one orjson
    serialisation. The endpoint declared below stays the OpenAPI document's source (same
    models, so the contract is unchanged) and answers what is not a JSON POST."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        generic = super().get_route_handler()

        async def handle(request: Request) -> Response:
            if request.method != "POST" or not _is_json(request):
                return await generic(request)
            started = time.perf_counter()
            runtime: Runtime = request.app.state.runtime
            return score_response(
                *await score_json(
                    runtime, await request.body(), request.headers.get("authorization", ""), started
                )
            )

        return handle


M = TypeVar("M", bound=BaseModel)


def validate_json(model: type[M], body: bytes) -> M:
    """``model`` from a JSON body, with FastAPI's errors (a 422 naming the field). What
    pydantic's JSON parser refuses but JSON allows (integers wider than 64 bits, numbers
    beyond a double) takes the slow way: ``parse_json_body``, then validation of the objects,
    so an out-of-range feature is still refused by name."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if not any(e["type"] == "json_invalid" for e in exc.errors()):
            raise _request_error(exc) from None
    try:
        return model.model_validate(parse_json_body(body))
    except ValidationError as exc:
        raise _request_error(exc) from None


def _request_error(exc: ValidationError) -> RequestValidationError:
    return RequestValidationError(
        [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
    )


def _is_json(request: Request) -> bool:
    return _json_media(request.headers.get("content-type"))


def _json_media(kind: str | None) -> bool:
    if not kind:
        return True
    media = kind.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class ScoreFastRoute:
    """``/score`` straight from the ASGI edge (``RequestMiddleware``'s fast routes): a JSON
    POST skips Starlette's exception, exit-stack and routing layers, the request and response
    objects and the background task — the same ``score_json`` as ``ScoreRoute``, which still
    answers everything else (another method, a non-JSON body, a mounted root path). Errors are
    raised to the middleware, which answers them with the app's own exception handlers."""

    path = "/score"

    def accepts(self, scope: Scope) -> bool:
        if scope["method"] != "POST" or scope.get("root_path"):
            return False
        kind = next((v for k, v in scope["headers"] if k == b"content-type"), None)
        return _json_media(None if kind is None else kind.decode("latin-1"))

    async def __call__(
        self, scope: Scope, body: bytes, started: float
    ) -> tuple[bytes, list[Callable[[], None]]]:
        runtime: Runtime = scope["app"].state.runtime
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return await score_json(runtime, body, auth.decode("latin-1"), started)


router = APIRouter(route_class=JSONRoute)
# set by `tipml serve --workers N` (serving/workers.py) in its workers: their metrics directory
WORKER_METRICS_VAR = "TIPML_WORKER_METRICS_DIR"


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_token(request: Request, runtime: RuntimeDep) -> None:
    """Bearer auth with a constant-time compare against every configured token."""
    check_bearer(request.headers.get("authorization", ""), runtime)


def check_bearer(header: str, runtime: Runtime) -> None:
    """``require_token`` on the ``Authorization`` header's value."""
    tokens = runtime.settings.token_values()
    if not tokens and runtime.settings.dev:
        return
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized(
            "authorization: expected 'Authorization: Bearer <token>'", field="authorization"
        )
    given = presented.strip().encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token)
    if not matched:
        raise Unauthorized("authorization: token not accepted", field="authorization")


Authorized = Depends(require_token)
_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    413: {"model": ErrorBody, "description": "Body larger than TIPML_MAX_BODY_BYTES."},
    422: {"model": ErrorBody, "description": "Invalid input; `field` names it."},
}


async def score(body: ScoreRequest, runtime: RuntimeDep, request: Request) -> Response:
    """Rank candidate tips for a user; every candidate gets a score, rank and propensity."""
    return await answer_score(body, runtime, request.state.started)


router.add_api_route(
    "/score",
    score,
    methods=["POST"],
    response_model=ScoreResponse,
    responses=_ERRORS,
    dependencies=[Authorized],
    tags=["recommender"],
    route_class_override=ScoreRoute,
)


async def score_json(
    runtime: Runtime, body: bytes, authorization: str, started: float
) -> tuple[bytes, list[Callable[[], None]]]:
    """A JSON ``/score`` request's whole answer: the bearer check, one validation straight
    from the body's bytes (msgspec's fast lane, else pydantic's), the ranking; the response
    body and the work to run once it is sent (the decision record). Raises what the error
    handlers translate."""
    check_bearer(authorization, runtime)
    # the fast lane first; what it does not accept, the contract's model decides (ADR 0025)
    req = decode_score(body) or validate_json(ScoreRequest, body)
    return await score_content(req, runtime, started)


async def answer_score(req: ScoreRequest, runtime: Runtime, started: float) -> Response:
    return score_response(*await score_content(req, runtime, started))


def score_response(content: bytes, deferred: list[Callable[[], None]]) -> Response:
    """The framework's answer of a ranking: the body, then the decision record's work."""
    after = BackgroundTask(_after_response, deferred) if deferred else None
    return Response(content, media_type="application/json", background=after)


async def score_content(
    req: ScoreRequest | ScoreInput, runtime: Runtime, started: float
) -> tuple[bytes, list[Callable[[], None]]]:
    stage, entered = runtime.metrics.stage, time.perf_counter()
    stage["parse_validate"].observe(entered - started)
    # from the in-memory replica (no await: the request runs through without yielding), else
    # one read of the store within the budget; too slow: the online columns are missing
    known, online = runtime.online.replica_features(req.user_id)
    if not known:
        try:
            online = await asyncio.wait_for(
                runtime.online.user_features(req.user_id), runtime.settings.score_online_timeout_s
            )
        except TimeoutError:
            online = None
            runtime.metrics.score_online_missing.inc()
    stage["online"].observe(time.perf_counter() - entered)
    deferred: list[Callable[[], None]] = []
    answer = runtime.score_service.score(req, defer=deferred.append, online=online)
    mark = time.perf_counter()
    content = orjson.dumps(answer)
    stage["serialize"].observe(time.perf_counter() - mark)
    return content, deferred


async def _after_response(work: list[Callable[[], None]]) -> None:
    """Run ``work`` on the event loop once the response is sent. A coroutine: Starlette would
    hand a plain function to a worker thread, and that hop per request (GIL hand-offs among
    the pool's threads) cost more than the work — the shadow's predict of 100 rows and the
    decision record, ~0.2 ms."""
    for job in work:
        job()


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses=_ERRORS,
    dependencies=[Authorized],
    tags=["recommender"],
)
async def generate(body: GenerateRequest, runtime: RuntimeDep) -> GenerateResponse:
    """Write one personalised tip with the LLM; falls back to a deterministic template
    (``fallback: true``) on any LLM problem — never a 5xx for that."""
    return await runtime.generate_service.generate(body)


@router.get(
    "/experiments/report",
    response_model=ExperimentsReport,
    responses={401: _ERRORS[401]},
    dependencies=[Authorized],
    tags=["experiments"],
)
async def experiments_report(runtime: RuntimeDep) -> ExperimentsReport:
    """Reward per experiment variant and per prompt version, from the archived decision log
    and feedback (what ``tipml experiments report --json`` prints)."""
    return ExperimentsReport.model_validate(await asyncio.to_thread(runtime.experiments_report))


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """The process is alive and serving HTTP. Checks no dependency."""
    return {"status": "ok"}


@router.get(
    "/readyz", response_model=ReadyResponse, tags=["ops"], responses={503: {"model": ReadyResponse}}
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Ready to take traffic: the scorer is loaded, the LLM gateway's routes are up, NATS is
    connected and every in-process consumer is healthy (connected, fetching, lag under the
    threshold)."""
    state = runtime.gateway_state
    components = {
        "scorer": ComponentStatus(ok=True, detail=f"{runtime.score_service.scorer.version} loaded"),
        "gateway": ComponentStatus(
            ok=state.status == "ready", detail=f"{state.status}: {state.detail}"
        ),
    }
    if state.local_llm is not None:
        llm = state.local_llm
        running = llm.running and state.llm_detail is None
        detail = (
            f"{llm.server} running at {llm.api_base}"
            + (f" (restarted {llm.restarts}x)" if llm.restarts else "")
            if running
            else state.llm_detail or f"{llm.server} is not running"
        )
        components["local_llm"] = ComponentStatus(ok=running, detail=detail)
    if runtime.registry is not None:
        ok, detail = runtime.registry.health()
        components["registry"] = ComponentStatus(ok=ok, detail=detail)
    for name, (ok, detail) in runtime.events.health().items():
        components[name] = ComponentStatus(ok=ok, detail=detail)
    if runtime.settings.online_store != "jetstream":
        ok, detail = runtime.online.health()
        components["online_store"] = ComponentStatus(ok=ok, detail=detail)
    ready = all(c.ok for c in components.values())
    body = ReadyResponse(ready=ready, components=components)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus exposition."""
    # with `--workers N`: the sum over the workers, through prometheus_client's multi-process
    # mode (gauges carry a `pid` label there)
    # (our own variable, not PROMETHEUS_MULTIPROC_DIR: importing Feast sets that one in any
    # process that imports it, and a single process's page would then read empty files)
    runtime.metrics.flush()  # this process's batched request metrics, up to now
    registry = runtime.metrics.registry
    shared = os.environ.get(WORKER_METRICS_VAR)
    if shared:
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=shared)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

"""Pure ASGI middleware: request id, body size limit, access log and HTTP metrics — and the
fast routes, answered here without the framework's layers below (``/score``).

Pure ASGI (not ``BaseHTTPMiddleware``) keeps the per-request overhead to a few microseconds.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tipml.errors import PayloadTooLarge
from tipml.ids import ProcessIds
from tipml.logs import request_id_var
from tipml.serving.metrics import Metrics

access_log = logging.getLogger("tipml.access")
error_log = logging.getLogger("tipml.serving")
_VALID_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class FastRoute(Protocol):
    """A route the middleware answers itself: ``accepts`` says whether this request is one
    (method, content type); the call returns the 200 JSON body and the work to run once it is
    sent, or raises an error the app's exception handlers translate."""

    path: str

    def accepts(self, scope: Scope) -> bool: ...

    async def __call__(
        self, scope: Scope, body: bytes, started: float
    ) -> tuple[bytes, Sequence[Callable[[], None]]]: ...


# request ids for requests that bring none (a uuid4 would read the kernel's random source)
_request_ids = ProcessIds()


def _error_response(status: int, code: str, detail: str, rid: str) -> tuple[Message, Message]:
    body = orjson.dumps({"error": code, "detail": detail, "request_id": rid})
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", rid.encode()),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        log_requests: bool,
        fast_routes: Sequence[FastRoute] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.log_requests = log_requests
        self.fast: Mapping[str, FastRoute] = {r.path: r for r in fast_routes}

    async def _buffer(self, receive: Receive) -> tuple[bytes, str | None]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", f"body: larger than the limit of {self.max_body} bytes"
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = ""
        length: int | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                rid = candidate if _VALID_RID.match(candidate) else ""
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        rid = rid or _request_ids.next()
        token = request_id_var.set(rid)
        status = 500
        started_response = False
        fast = self.fast.get(scope["path"])
        if fast is not None and not fast.accepts(scope):
            fast = None
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            too_large: str | None = None
            app_receive = receive
            if length is not None and length > self.max_body:
                too_large = f"body: {length} bytes is over the limit of {self.max_body} bytes"
            elif length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                # Chunked body of unknown size: buffer it (up to the limit) before the app runs.
                buffered, too_large = await self._buffer(receive)
                app_receive = _replay(buffered, receive)
            if too_large is not None:
                start, body = _error_response(413, PayloadTooLarge.code, too_large, rid)
                status = 413
                await send(start)
                await send(body)
            else:
                try:
                    if fast is not None:
                        status = await self._answer(fast, scope, app_receive, send_wrapper)
                    else:
                        await self.app(scope, app_receive, send_wrapper)
                except Exception:
                    # The one place an unexpected error becomes a response: a JSON 500 that
                    # keeps the contract (request id in the body and the header), no trace.
                    error_log.exception("unhandled error", extra={"path": scope["path"]})
                    if started_response:
                        raise
                    status = 500
                    start, body = _error_response(
                        500, "internal_error", f"internal error (request id {rid})", rid
                    )
                    await send(start)
                    await send(body)
        finally:
            elapsed = time.perf_counter() - started
            route: Any = scope.get("route")
            path = fast.path if fast is not None else getattr(route, "path", None) or "unmatched"
            self.metrics.request_done(path, scope["method"], status, elapsed)
            if self.log_requests and path not in ("/healthz", "/metrics"):
                access_log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)

    async def _answer(self, route: FastRoute, scope: Scope, receive: Receive, send: Send) -> int:
        """A fast route's answer, sent; its status. A client error goes through the app's own
        exception handlers (the same bodies as the framework's path); anything else is raised
        to the caller's 500. The route's after-work runs once the response is sent."""
        started = time.perf_counter()
        body = await _read_body(receive)
        if body is None:
            return 499  # the client went away: nothing to answer
        try:
            content, after = await route(scope, body, started)
        except Exception as exc:
            handlers: dict[Any, Any] = scope["app"].exception_handlers
            handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
            if handler is None:
                raise
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, send)
            return int(response.status_code)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})
        for job in after:
            try:
                job()
            except Exception:  # the answer is sent; the job's failure is logged, not raised
                error_log.exception("after-response work failed", extra={"path": route.path})
        return 200

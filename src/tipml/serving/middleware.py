"""Pure ASGI middleware: request id, body size limit, access log and HTTP metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) keeps the per-request overhead to a few microseconds.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tipml.errors import PayloadTooLarge
from tipml.logs import request_id_var
from tipml.serving.metrics import Metrics

access_log = logging.getLogger("tipml.access")
error_log = logging.getLogger("tipml.serving")
_VALID_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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


class RequestMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int, log_requests: bool
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.log_requests = log_requests

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
        rid = rid or uuid.uuid4().hex
        token = request_id_var.set(rid)
        status = 500
        started_response = False
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
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed)
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

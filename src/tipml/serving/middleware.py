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
_VALID_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _error_response(status: int, code: str, detail: str, rid: str) -> tuple[Message, Message]:
    body = orjson.dumps({"error": code, "detail": detail})
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


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int,
                 log_requests: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.log_requests = log_requests

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
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise PayloadTooLarge(
                        f"body: larger than the limit of {self.max_body} bytes"
                    )
            return message

        try:
            if length is not None and length > self.max_body:
                start, body = _error_response(
                    413, PayloadTooLarge.code,
                    f"body: {length} bytes is larger than the limit of {self.max_body} bytes", rid,
                )
                status = 413
                await send(start)
                await send(body)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route: Any = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed)
            if self.log_requests and path not in ("/healthz", "/metrics"):
                access_log.info(
                    "request",
                    extra={"method": scope["method"], "path": scope["path"], "status": status,
                           "ms": round(elapsed * 1000, 2)},
                )
            request_id_var.reset(token)

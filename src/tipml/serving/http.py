"""uvicorn's httptools protocol, writing a fixed-length response in one send (ADR 0023).

uvicorn writes a response's status line and headers to the socket when the app sends
``http.response.start`` and its body when the app sends ``http.response.body``: two
``send`` calls, two TCP segments on the wire, two wake-ups of the client (a py-spy profile of
a saturated ``/score`` worker put ~10 % of its samples in those two writes, the 300-byte
head's more than the 8 KB body's). ``OneWriteHttpToolsProtocol`` holds the head of a response
that declares its ``content-length`` and writes it together with the first body chunk: one
segment and one wake-up per answer. Measured: the load generator's CPU per ``/score`` fell by
about an eighth; the worker's own stayed within the noise — its one write costs what the two
did.

Everything else is uvicorn's own code path: parsing, keep-alive, pipelining, flow control,
``100 Continue`` (written as it comes: the client waits for it), chunked and streamed
responses (their head goes out at once, so a stream's client sees the response start before
the first event), ``HEAD`` (no body: the head goes out when the response completes), a
connection closed after the response (the head goes out first).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class _OneWriteTransport:
    """A response cycle's view of the connection's transport: the cycle's first write after
    the response started — its head — is held if the response has a fixed length, and sent
    with the next write (or when the response completes, or before the connection closes)."""

    __slots__ = ("_cycle", "_head", "_state", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._state = 0  # 0: head not written yet, 1: head held, 2: passing writes through

    def write(self, data: bytes) -> None:
        if self._state == 1:  # the body after a held head: one write
            self._state = 2
            head, self._head = self._head, None
            self._transport.write(data if head is None else head + data)
            return
        if self._state == 0 and self._cycle.response_started:  # the head
            if self._cycle.chunked_encoding is False:  # fixed length: the body follows
                self._state, self._head = 1, data
                return
            self._state = 2
        self._transport.write(data)

    def flush(self) -> None:
        """Write a held head (a response that completed without a body write: ``HEAD``)."""
        if self._state == 1:
            self._state = 2
            head, self._head = self._head, None
            if head is not None and not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, …
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.run(..., http=OneWriteHttpToolsProtocol)``: each request's cycle writes
    through a ``_OneWriteTransport``."""

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle is previous:
            return  # an upgrade: no new response cycle
        transport = _OneWriteTransport(self.transport, cycle)
        cycle.transport = transport  # type: ignore[assignment]
        completed = cycle.on_response

        def on_response() -> None:  # this cycle's, even when another is queued behind it
            transport.flush()
            completed()

        cycle.on_response = on_response

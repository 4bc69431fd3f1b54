"""``OneWriteHttpToolsProtocol`` (ADR 0023) in a real uvicorn server on a real socket: a
fixed-length response leaves in one write, and everything uvicorn does besides — ``HEAD``,
``100 Continue``, streamed responses, keep-alive, pipelining, ``Connection: close``, an app
that fails half-way — behaves as with uvicorn's own protocol."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from tipml.serving.http import OneWriteHttpToolsProtocol

BODY = b"x" * 8000
SEEN_HEAD = asyncio.Event()


class _Counting:
    """The connection's real transport, counting the writes that reach it."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport, self._writes = transport, writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


WRITES: list[bytes] = []


class CountingProtocol(OneWriteHttpToolsProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = _Counting(self.transport, WRITES)  # type: ignore[assignment]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/stream":  # chunked: the head must reach the client before the first chunk
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.wait_for(SEEN_HEAD.wait(), 5)
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if path == "/fail":  # starts a fixed-length response, then fails
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
        )
        raise RuntimeError("failed half-way")
    out = body or BODY
    headers = [(b"content-length", str(len(out)).encode()), (b"content-type", b"text/plain")]
    if path == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    config = uvicorn.Config(
        app, port=free, http=CountingProtocol, lifespan="off", log_level="critical"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (a flag uvicorn sets, no event to await)
        await asyncio.sleep(0.01)
    WRITES.clear()
    SEEN_HEAD.clear()
    yield free
    server.should_exit = True
    await task


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_a_fixed_length_response_is_one_write(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    head, body = await _response(reader)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == BODY
    assert len(WRITES) == 1
    assert WRITES[0] == head + body
    # keep-alive: the next request on the same connection, again one write
    writer.write(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\nabc")
    head, body = await _response(reader)
    assert body == b"abc"
    assert len(WRITES) == 2
    assert WRITES[1] == head + body
    writer.close()


async def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\n\r\na"
        b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\n"
        b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\n\r\nc"
    )
    assert (await _response(reader))[1] == b"a"
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # HEAD: no body follows
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: 8000" in head
    assert (await _response(reader))[1] == b"c"
    writer.close()


async def test_head_gets_its_head_without_a_body(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: 8000" in head
    writer.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")  # and the connection goes on
    assert (await _response(reader))[1] == BODY
    writer.close()


async def test_100_continue_is_sent_before_the_body_is(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"data")
    assert (await _response(reader))[1] == b"data"
    writer.close()


async def test_a_streamed_response_starts_before_its_first_chunk(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # before any chunk
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"transfer-encoding: chunked" in head
    SEEN_HEAD.set()
    assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"5\r\nfirst\r\n0\r\n\r\n"
    writer.close()


async def test_connection_close_sends_the_whole_response_first(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /close HTTP/1.1\r\nhost: t\r\n\r\n")
    head, body = await _response(reader)
    assert b"connection: close" in head
    assert body == BODY
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then the server closes
    writer.close()


async def test_an_app_failing_after_the_start_closes_the_connection(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /fail HTTP/1.1\r\nhost: t\r\n\r\n")
    # as with uvicorn's own protocol: the head that was started, then the connection closes
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert data.endswith(b"\r\n\r\n")
    with contextlib.suppress(ConnectionError):
        writer.close()

"""A continuous pull from a durable JetStream consumer (ADR 0017).

nats-py's ``PullSubscription.fetch(n)`` sends a pull request and, once the consumer is caught
up (its no-wait probe finds nothing), sends a lingering one and returns only when ``n``
messages have arrived or its timeout has passed: at 1,000 events/s with a batch of 500 the
events that did arrive wait up to half a second in the client — the visibility-lag tail of
issue 10 (p99 492 ms; 0.3-0.5 s stall windows). It also awaits every message through a task,
a timer and a uuid of its own.

``PullStream`` keeps pull requests outstanding at the server — a new one for ``batch``
messages whenever at most half a batch is still owed (or, with ``ahead=False``, only when
nothing is) — lets the messages land in one subscription's queue, and ``next_batch`` returns
whatever has arrived, at least one message and at most ``batch``, waiting only while nothing
has. One inbox read by one loop: messages come out in the order the server sent them.

Bookkeeping of what the server still owes: every request adds its batch; every message takes
one; a request that ends early (408 "Request Timeout" at its expiry, 409 "Leadership Change",
409 "Message Size Exceeds MaxBytes", …) says how many it still owed in
``Nats-Pending-Messages``. A request whose end was never heard (a server restart, a lost
connection) is written off once its expiry has passed.

Every request also bounds its bytes (``max_bytes``: 8 MiB, or twice the server's largest
message). A batch of 500 blocks of decisions (ADR 0028, up to 256 KiB each) asked for 100 MB
at once: the server's write buffer to the client passed its 64 MiB ``max_pending`` while a busy
``tipml serve`` read slowly, and the server cut the connection as a slow consumer, every ten
seconds (``scripts/up.sh``, 2026-12-01 07:12 UTC).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError

STATUS = "Status"
PENDING_MESSAGES = "Nats-Pending-Messages"
HEARTBEAT = "100"
NO_MESSAGES = "404"
ENDED = ("408", "409")  # the request ended: expired, or the server ended it (leadership …)


_LINGER_TICK_S = 0.05
_MAX_BYTES = 8 << 20  # per pull request (at least twice the server's max_payload)


class PullStream:
    def __init__(
        self,
        nc: Any,
        stream: str,
        durable: str,
        *,
        batch: int,
        expires_s: float = 1.0,
        ahead: bool = True,
    ) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.batch = batch
        self.expires_s = expires_s
        self.ahead = ahead
        self._sub: Any = None
        self._inbox = ""
        self._buffer: deque[Msg] = deque()
        self._owed = 0  # messages the outstanding requests may still deliver
        self._expires_at = 0.0  # monotonic time by which every outstanding request has ended
        self.requests = 0

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        # no callback: messages wait in the subscription's queue and are taken in bulk
        self._sub = await self._nc.subscribe(self._inbox)

    async def _request(self) -> None:
        if time.monotonic() > self._expires_at + 0.5:
            self._owed = 0  # every request has expired; its end was not heard (restart, …)
        if self.ahead and self._owed > self.batch // 2:
            return
        if not self.ahead and self._owed > 0:
            return
        wanted = self.batch if self.ahead else self.batch - self._owed
        expires_ns = int(self.expires_s * 1e9)
        max_bytes = max(_MAX_BYTES, 2 * int(getattr(self._nc, "max_payload", 0) or 0))
        body = orjson.dumps({"batch": wanted, "expires": expires_ns, "max_bytes": max_bytes})
        await self._nc.publish(self._subject, body, reply=self._inbox)
        self._owed += wanted
        self._expires_at = time.monotonic() + self.expires_s
        self.requests += 1

    def _take(self, msg: Msg) -> None:
        """Account for one message from the inbox: keep it, or read the server's status."""
        self._sub._pending_size -= len(msg.data)  # nats-py's slow-consumer accounting
        headers = msg.headers or {}
        status = headers.get(STATUS)
        if status is None:
            self._owed = max(0, self._owed - 1)
            self._buffer.append(msg)
        elif status in ENDED:
            try:
                self._owed = max(0, self._owed - int(headers.get(PENDING_MESSAGES, "")))
            except (TypeError, ValueError):
                self._owed = 0
        elif status not in (HEARTBEAT, NO_MESSAGES):  # 503: no JetStream answers the request
            self._owed = 0
            description = headers.get("Description", "")
            raise NoRespondersError if status == "503" else NatsError(f"{status} {description}")

    def _drain(self) -> None:
        queue: asyncio.Queue[Msg] = self._sub._pending_queue
        while True:
            try:
                msg = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._take(msg)

    def _hand_out(self) -> list[Msg]:
        n = min(self.batch, len(self._buffer))
        return [self._buffer.popleft() for _ in range(n)]

    async def next_batch(self, wait_s: float, linger_s: float = 0.0) -> list[Msg]:
        """What has arrived: 1 to ``batch`` messages in delivery order; ``TimeoutError`` when
        nothing arrives within ``wait_s``. ``linger_s``: once the first message is here, keep
        gathering for up to that long or until ``batch`` have arrived — fewer, larger batches
        for a handler whose cost is per batch (the archiver: a Parquet part each)."""
        deadline = time.monotonic() + wait_s
        queue: asyncio.Queue[Msg] = self._sub._pending_queue
        while True:
            self._drain()
            await self._request()
            if self._buffer:
                if linger_s > 0:
                    await self._linger(time.monotonic() + linger_s)
                return self._hand_out()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            # wake when the outstanding requests should have ended at the latest, to ask again
            wait = min(remaining, max(self._expires_at + 0.5 - time.monotonic(), 0.01))
            try:
                msg = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                continue
            self._take(msg)

    async def _linger(self, until: float) -> None:
        """Gather until ``until`` or a full batch: wake every few tens of milliseconds and
        take what arrived in bulk (a wake-up per message would cost a task and a timer each)."""
        while len(self._buffer) < self.batch:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, _LINGER_TICK_S))
            self._drain()
            await self._request()

    def held(self) -> list[Msg]:
        """Messages received and not handed out yet (a status error met on the way is left
        to the next ``next_batch``'s accounting: the requests are written off and renewed)."""
        with contextlib.suppress(Exception):
            self._drain()
        return list(self._buffer)

    async def close(self) -> None:
        """Stop asking, and give back what was received but not handed out (nak: redelivered
        at once, not after ack_wait). Deliveries still in flight are returned by the server
        after ack_wait."""
        if self._sub is None:
            return
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
        for msg in self.held():
            with contextlib.suppress(Exception):
                await msg.nak()
        self._buffer.clear()
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=2)
        self._sub = None

"""The durable pull consumer runtime shared by every JetStream handler.

Per fetched batch: parse each message (an invalid one is dead-lettered at once and
terminated), hand the valid ones to the handler — which writes state idempotently — and ack
only after the write succeeded. When a batch fails, its messages are retried one by one so one
bad event cannot take the others down with it; a message that keeps failing is redelivered with
back-off and dead-lettered on its last allowed delivery (``max_deliver``), so the stream keeps
flowing. Shutdown is graceful: stop fetching, finish and ack the batch in hand, write the state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from tipml.domain.events import InvalidEvent
from tipml.events.bus import Bus
from tipml.events.keyed import ConflictError, Item, WriteResult
from tipml.events.metrics import EventMetrics
from tipml.events.pull import PullStream
from tipml.settings import Settings

log = logging.getLogger("tipml.consumer")


class Handler(Protocol):
    """What a consumer does with its events. ``parse`` is pure; ``handle`` writes state
    idempotently (the same item twice changes nothing) and raises if the write failed."""

    name: str  # durable consumer name
    stream: str
    filter_subject: str  # "": the whole stream
    # optional ``linger_s: float``: gather a batch for up to that long (PullStream.next_batch)

    def parse(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[str, Any]:
        """(event_id, event) or ``InvalidEvent``; ``headers``: the message's NATS headers."""
        ...

    async def handle(self, items: Sequence[Item[Any]]) -> WriteResult: ...

    def set_floor(self, floor: int) -> None: ...


@dataclass
class ConsumerState:
    """What the state file holds (see serving/README.md, "State file reference")."""

    consumer: str
    stream: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    connected: bool = False
    last_acked_seq: int = 0
    ack_floor: int = 0
    processed: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    redeliveries: int = 0
    retried: int = 0
    paused_retries: int = 0
    pending: int | None = None
    ack_pending: int | None = None
    last_fetch_at: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    updated_at: str | None = None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def consumer_config(handler: Handler, settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=handler.name,
        name=handler.name,
        filter_subject=handler.filter_subject or None,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.consumer_ack_wait_s,
        # The server never gives up on a message (-1): a message in flight while the process
        # crashed TIPML_CONSUMER_MAX_DELIVER times must not be stranded without a dead letter.
        # tipml dead-letters instead: after max_deliver failed attempts, or (a crash loop)
        # after 2 x max_deliver deliveries that were never acked.
        max_deliver=-1,
        max_ack_pending=settings.consumer_max_ack_pending,
        max_waiting=512,
    )


class ConsumerRunner:
    def __init__(
        self,
        bus: Bus,
        handler: Handler,
        settings: Settings,
        metrics: EventMetrics,
        *,
        state_dir: Path | None = None,
        fetch_timeout_s: float = 1.0,
    ) -> None:
        self.bus = bus
        self.handler = handler
        self.settings = settings
        self.metrics = metrics
        self.state = ConsumerState(consumer=handler.name, stream=handler.stream)
        self.state_path = (state_dir / f"{handler.name}.json") if state_dir else None
        self.fetch_timeout_s = fetch_timeout_s
        self._stop = asyncio.Event()
        self._last_fetch = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._pull: PullStream | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.bus.js.add_consumer(
            self.handler.stream, config=consumer_config(self.handler, self.settings)
        )
        self._tasks = [
            asyncio.create_task(self._run(), name=f"consumer-{self.handler.name}"),
            asyncio.create_task(self._housekeeping(), name=f"state-{self.handler.name}"),
        ]

    async def stop(self) -> None:
        """Stop fetching, finish the batch in hand, write the state. Never raises: the
        process's shutdown (decision flush, NATS close, server stop) must go on."""
        self._stop.set()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, timeout=self.fetch_timeout_s + 10)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception as exc:
                self._error(f"stopped with: {type(exc).__name__}: {exc}")
        try:
            await self._refresh_info()
            self.write_state()
        except Exception as exc:
            log.error("consumer state not written", extra={"error": str(exc)[:300]})

    def healthy(self, stale_after_s: float = 30.0) -> tuple[bool, str]:
        s = self.state
        if not self.bus.nc.is_connected:
            return False, "not connected to NATS"
        if self._tasks and self._tasks[0].done():
            return False, f"consumer loop ended: {s.last_error}"
        if time.monotonic() - self._last_fetch > stale_after_s:
            return False, f"no fetch for {stale_after_s:g} s"
        if s.pending is not None and s.pending > self.settings.consumer_lag_ready:
            return False, f"lag {s.pending} over {self.settings.consumer_lag_ready}"
        return True, f"lag {s.pending}, processed {s.processed}, dead-lettered {s.dead_lettered}"

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        """Fetch and process until stopped. Nothing a message, the bus or a handler does ends
        this loop: an error is recorded (state file, log, ``/readyz``) and the loop goes on
        after a back-off that grows while errors repeat.

        Messages come from a ``PullStream`` (ADR 0017): pull requests stay outstanding at the
        server while a batch is processed, and each turn takes whatever has arrived (up to
        ``consumer_batch``) instead of waiting for a full batch. With ``consumer_prefetch`` a
        new request is sent while half a batch is still owed, so the server's sending overlaps
        the handler's work; not while errors repeat (messages held through a back-off would
        only wait out their ack_wait). What was received and not handed out when the loop
        stops is nak'ed: redelivered at once, not after ack_wait."""
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    if self._pull is None:
                        pull = PullStream(
                            self.bus.nc,
                            self.handler.stream,
                            self.handler.name,
                            batch=self.settings.consumer_batch,
                            expires_s=self.fetch_timeout_s,
                        )
                        await pull.start()
                        self._pull = pull
                    self._pull.ahead = self.settings.consumer_prefetch and failures == 0
                    msgs = await self._pull.next_batch(
                        self.fetch_timeout_s, getattr(self.handler, "linger_s", 0.0)
                    )
                except (TimeoutError, NatsTimeout):
                    self._last_fetch = time.monotonic()
                    self.state.last_fetch_at = _now_iso()
                    continue
                except Exception as exc:
                    failures += 1
                    self._error(f"fetch: {type(exc).__name__}: {exc}")
                    await self._pause(failures)
                    continue
                self._last_fetch = time.monotonic()
                self.state.last_fetch_at = _now_iso()
                self.state.connected = True
                try:
                    await self._process(msgs)
                except Exception as exc:  # ack/nak/term or a dead-letter publish failed
                    failures += 1
                    self.metrics.loop_errors.labels(self.handler.name).inc()
                    self._error(f"batch: {type(exc).__name__}: {exc}; unacked messages redeliver")
                    await self._pause(failures)
                else:
                    failures = 0
        finally:
            if self._pull is not None:
                await self._pull.close()
                self._pull = None

    async def _pause(self, failures: int) -> None:
        delay = min(0.25 * 2 ** min(failures - 1, 5), 8.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=delay)

    async def _process(self, msgs: list[Msg]) -> None:
        started = time.perf_counter()
        valid: list[tuple[Msg, Item[Any]]] = []
        for msg in msgs:
            delivered, seq, arrived = delivery(msg)
            if delivered > 1:
                self.state.redeliveries += 1
                self.metrics.redeliveries.labels(self.handler.name).inc()
                if delivered > 2 * self.settings.consumer_max_deliver:
                    await self._dead_letter(
                        msg,
                        "crash_loop",
                        f"delivered {delivered} times and never acknowledged",
                    )
                    continue
            try:
                event_id, event = self.handler.parse(msg.subject, msg.data, msg.headers)
            except InvalidEvent as exc:
                await self._dead_letter(msg, exc.code, exc.detail)
                continue
            valid.append((msg, Item(seq, event_id, event, arrived, delivered)))
        if valid:
            try:
                result = await self._handle_through_outages(valid)
            except Exception as exc:
                self._error(f"batch of {len(valid)}: {type(exc).__name__}: {exc}")
                await self._one_by_one(valid)
            else:
                if result is not None:
                    await self._ack(valid, result)
        self.metrics.batch_seconds.labels(self.handler.name).observe(time.perf_counter() - started)

    async def _handle_through_outages(
        self, valid: list[tuple[Msg, Item[Any]]]
    ) -> WriteResult | None:
        """``handler.handle``, retried for as long as the failure is the infrastructure's (NATS
        unreachable, a KV timeout, write conflicts): the messages are kept in progress, not
        nak'ed, so an outage longer than the back-off schedule never turns good events into
        dead letters. ``None``: stopping before the outage ended (the messages redeliver)."""
        attempt = 0
        while True:
            try:
                return await self.handler.handle([item for _, item in valid])
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                self.state.paused_retries += 1
                self._error(
                    f"infrastructure error, batch of {len(valid)} paused (attempt {attempt}): "
                    f"{type(exc).__name__}: {exc}"
                )
            if self._stop.is_set():
                return None
            held = self._pull.held() if self._pull is not None else []
            for msg in [m for m, _ in valid] + held:
                with contextlib.suppress(Exception):
                    await msg.in_progress()  # restart ack_wait: still ours
            await self._pause(attempt)

    async def _one_by_one(self, valid: list[tuple[Msg, Item[Any]]]) -> None:
        for msg, item in valid:
            try:
                result = await self._handle_through_outages([(msg, item)])
            except Exception as exc:
                await self._failed(msg, exc)
            else:
                if result is not None:
                    await self._ack([(msg, item)], result)

    async def _ack(self, acked: list[tuple[Msg, Item[Any]]], result: WriteResult) -> None:
        for msg, _ in acked:
            await msg.ack()
        last = max(item.seq for _, item in acked)
        self.state.last_acked_seq = max(self.state.last_acked_seq, last)
        self.state.processed += result.applied
        self.state.duplicates += result.duplicates
        self.state.conflicts += result.conflicts
        self.metrics.processed.labels(self.handler.name).inc(result.applied)
        self.metrics.duplicates.labels(self.handler.name).inc(result.duplicates)
        if result.conflicts:
            self.metrics.conflicts.labels(self.handler.name).inc(result.conflicts)

    async def _failed(self, msg: Msg, exc: Exception) -> None:
        delivered = msg.metadata.num_delivered or 1
        detail = f"{type(exc).__name__}: {exc}"[:500]
        if delivered >= self.settings.consumer_max_deliver:
            await self._dead_letter(msg, "max_deliver", f"failed {delivered} times; last: {detail}")
            return
        backoff = self.settings.consumer_backoff_s
        delay = backoff[min(delivered - 1, len(backoff) - 1)] if backoff else 1.0
        self.state.retried += 1
        self._error(f"seq {msg.metadata.sequence.stream}: {detail}; retry in {delay:g} s")
        await msg.nak(delay=delay)

    async def _dead_letter(self, msg: Msg, code: str, detail: str) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        try:
            text: str | None = msg.data.decode()
        except UnicodeDecodeError:
            text = None
        letter = {
            "stream": meta.stream,
            "consumer": self.handler.name,
            "subject": msg.subject,
            "stream_seq": seq,
            "num_delivered": meta.num_delivered,
            "error": code,
            "detail": detail,
            "payload": text,
            "payload_b64": None if text is not None else base64.b64encode(msg.data).decode(),
            "headers": dict(msg.headers or {}),
            "dead_lettered_at": _now_iso(),
        }
        await self.bus.js.publish(
            f"dlq.{meta.stream}.{self.handler.name}",
            orjson.dumps(letter),
            headers={"Nats-Msg-Id": f"dlq:{meta.stream}:{self.handler.name}:{seq}"},
        )
        await msg.term()
        self.state.dead_lettered += 1
        self.state.last_acked_seq = max(self.state.last_acked_seq, seq)
        self.metrics.dead_letters.labels(self.handler.name, code).inc()
        log.warning(
            "dead-lettered",
            extra={
                "consumer": self.handler.name,
                "seq": seq,
                "error": code,
                "detail": detail[:300],
            },
        )

    def _error(self, text: str) -> None:
        self.state.last_error = text[:500]
        self.state.last_error_at = _now_iso()
        log.warning("consumer error", extra={"consumer": self.handler.name, "error": text[:500]})

    # -- housekeeping: ack floor, lag, state file -------------------------------------------

    async def _refresh_info(self) -> None:
        try:
            info = await self.bus.js.consumer_info(
                self.handler.stream, self.handler.name, timeout=2
            )
        except Exception:
            self.state.connected = self.bus.nc.is_connected
            return
        self.state.connected = True
        self.state.pending = info.num_pending
        self.state.ack_pending = info.num_ack_pending
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        self.state.ack_floor = int(floor or 0)
        self.handler.set_floor(self.state.ack_floor)
        self.metrics.lag.labels(self.handler.name).set(float(info.num_pending or 0))

    async def _housekeeping(self) -> None:
        while not self._stop.is_set():
            await self._refresh_info()
            self.write_state()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.settings.state_interval_s)

    def write_state(self) -> None:
        self.state.updated_at = _now_iso()
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        # a private name: the consumers of other processes on this data dir (``tipml serve
        # --workers N``, a second ``tipml consume``) write the same state file
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(asdict(self.state), option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.state_path)


def delivery(msg: Msg) -> tuple[int, int, float]:
    """(times delivered, stream sequence, epoch seconds the message reached the stream),
    read from the reply subject the server gives a consumed message —
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``, or
    the longer form with domain and account hash. ``Msg.metadata`` builds the same from it as
    dataclasses and a datetime: a few microseconds per event on the ingest path."""
    tokens = (msg.reply or "").split(".")
    if tokens[:2] == ["$JS", "ACK"]:
        if len(tokens) == 9:
            return int(tokens[4]), int(tokens[5]), int(tokens[7]) / 1e9
        if len(tokens) >= 11:
            return int(tokens[6]), int(tokens[7]), int(tokens[9]) / 1e9
    meta = msg.metadata  # raises NotJSMessageError for anything else
    arrived = meta.timestamp.timestamp() if meta.timestamp else 0.0
    return meta.num_delivered or 1, meta.sequence.stream, arrived


_TRANSIENT: tuple[type[BaseException], ...] = (
    NatsError,  # timeouts, no responders, connection closed/draining, slow consumer …
    ConflictError,
    OSError,
    asyncio.TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """An error of the infrastructure (retry and wait), not of the event (dead-letter it).
    A JetStream API error is transient only as a server-side one (5xx: unavailable, no
    leader); a 4xx says the request itself is wrong and retrying cannot fix it."""
    if isinstance(exc, InvalidEvent):
        return False
    if isinstance(exc, APIError):
        return exc.code is not None and exc.code >= 500
    return isinstance(exc, _TRANSIENT)


def group_by_key(items: Sequence[Item[Any]], key: Any) -> dict[str, list[Item[Any]]]:
    groups: dict[str, list[Item[Any]]] = {}
    for item in items:
        groups.setdefault(key(item.event), []).append(item)
    return groups

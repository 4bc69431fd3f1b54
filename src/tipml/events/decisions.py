"""The decision log: every ``/score`` and ``/generate`` answer, published to JetStream.

``record`` is O(1) in every state and never raises: it appends to a bounded in-memory buffer;
when that is full, to a bounded overflow that the background task writes to a local spill
file; only what exceeds the buffer, the overflow and the spill bound together is dropped —
and counted. The background task publishes with ``Nats-Msg-Id`` = decision id and waits for
JetStream's ack; while NATS is unreachable decisions stay buffered or spilled, and the spill
files are replayed first when NATS is back. A re-sent decision whose first ack was lost is
dropped by the stream's duplicate window, so each arrives once.

The publisher sends everything buffered (up to ``in_flight``) at once and collects the acks on
one wildcard inbox (``_AckInbox``): an unacknowledged decision is a dict entry, not the task,
future and timer of a ``js.publish`` each. Beside a saturated ``/score`` the event loop turns
about once per 30 ms and one ``js.publish`` round trip took ten turns, so batches of 64 of
them published 260 decisions/s against 1,000 recorded (ADR 0026).

**Blocks** (ADR 0028): a ``/score`` decision's id is reserved from the log (``new_id``) before
the answer is sent, and the decisions recorded while the publisher is busy share one message:
the block ``ml.decisions.score.<key>``, ``Nats-Msg-Id`` = key, whose ids are ``<key>-<i>``.
What a message costs — the client's publish and ack, the server's store, the archiver's fetch
and ack — was a third of a saturated ``/score``'s CPU with one message per decision. A block
is closed when the publisher takes it (so an idle log sends blocks of one, at once), when it
holds ``batch_max`` ids or its decisions' bytes reach ``batch_bytes``; it is sent once every
reserved id was recorded (an id never recorded within ``_ABANDON_S`` is given up on, counted
as dropped). Its body is NDJSON: line 0 the index ``[[id, ts, user_id], …]``, then one line
per decision in that order — the archiver files each decision from the index without parsing
it, and ``lookup_decision`` finds an id's block by its subject. A block that would be larger
than ``_MAX_BLOCK_BYTES`` is sent as one message per decision on the per-decision subjects
(which ``lookup_decision`` also reads). ``batch_max=1``: every decision its own message.

Spill files are written whole under a temporary name and renamed (never half a file); a line
that cannot be read anyway (a disk that lied) is skipped and counted, never fatal. The
publisher restarts itself after any error; ``health()`` says how it is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from tipml.domain.decisions import decode_decision
from tipml.events.bus import DECISIONS
from tipml.events.metrics import EventMetrics
from tipml.ids import ProcessIds

log = logging.getLogger("tipml.decisions")

Record = tuple[str, str, bytes, dict[str, str]]  # subject, decision/block id, payload, headers
# Published with each decision beside ``Nats-Msg-Id``: its time and user, so the archiver
# files a decision without parsing its ~8 KB body (absent when not a safe header value)
TS_HEADER = "Tipml-Ts"
USER_HEADER = "Tipml-User-Id"
# On a block: how many decisions it holds (absent: the message is one decision)
BATCH_HEADER = "Tipml-Batch"
_names = itertools.count()
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# a block's decision id: ``<key>-<i>``, the key 24 hex digits (a uuid's first group has 8)
_BLOCK_ID = re.compile(r"^([0-9a-f]{24})-(\d{1,4})$")
_MAX_BLOCK_BYTES = 900 << 10  # under NATS's default max_payload (1 MiB)
_ABANDON_S = 5.0  # a reserved id not recorded by then never will be (its request failed)


def block_key(decision_id: str) -> str | None:
    """The key of the block a decision id belongs to; None for an id of its own message."""
    match = _BLOCK_ID.match(decision_id)
    return match.group(1) if match else None


def block_rows(data: bytes) -> list[tuple[str, str, str, bytes]]:
    """A block's decisions: (id, ts, user_id, the decision's JSON) each, in order.
    ``ValueError`` when ``data`` is not a block (an index that does not match its lines)."""
    head, _, rest = data.partition(b"\n")
    index = orjson.loads(head)
    lines = rest.split(b"\n") if rest else []
    if not isinstance(index, list) or len(index) != len(lines):
        raise ValueError("a block's index does not match its decisions")
    out = []
    for entry, line in zip(index, lines, strict=True):
        if not (
            isinstance(entry, list) and len(entry) == 3 and all(isinstance(v, str) for v in entry)
        ):
            raise ValueError("a block's index entry is not [id, ts, user_id]")
        out.append((entry[0], entry[1], entry[2], line))
    return out


def message_decisions(
    subject: str, data: bytes, headers: Mapping[str, str] | None = None
) -> list[tuple[str, bytes]]:
    """The decisions one message of the decision log holds, as (the decision's own subject,
    its JSON): a block's, in order (``ValueError`` if it is not one); else the message."""
    if not headers or BATCH_HEADER not in headers:
        return [(subject, data)]
    prefix = subject.rpartition(".")[0]
    return [(f"{prefix}.{i}", line) for i, _, _, line in block_rows(data)]


class _Block:
    """An open or closed block: reserved ids, and the decisions recorded for them so far."""

    __slots__ = ("closed_at", "index", "key", "kind", "lines", "missing", "size")

    def __init__(self, key: str, kind: str) -> None:
        self.key = key
        self.kind = kind
        self.lines: list[bytes | None] = []
        self.index: list[list[str] | None] = []
        self.missing = 0  # reserved, not recorded yet
        self.size = 0  # bytes recorded
        self.closed_at = 0.0  # monotonic; 0: still open


_keys = ProcessIds(width=8)  # block keys: 24 hex digits


def _count(item: Record) -> int:
    """How many decisions a message holds."""
    n = item[3].get(BATCH_HEADER)
    return int(n) if n is not None and n.isdigit() else 1


def decision_subject(kind: str, decision_id: str) -> str:
    """``ml.decisions.<kind>.<decision_id>``: one subject per decision, so the stream itself
    answers "which decision was this?" by subject (``lookup_decision``) — no second index.
    An id that is not a subject token (never one of ours) keeps ``ml.decisions.<kind>``."""
    if _TOKEN.match(decision_id):
        return f"ml.decisions.{kind}.{decision_id}"
    return f"ml.decisions.{kind}"


def _header_value(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 256 and value.isascii() and value.isprintable():
        return value
    return None


def decision_headers(decision_id: str, payload: dict[str, Any]) -> dict[str, str]:
    """``Nats-Msg-Id`` (the stream's de-duplication) and, when they are safe header values,
    the decision's ``ts`` and ``user_id`` (``TS_HEADER``, ``USER_HEADER``)."""
    headers = {"Nats-Msg-Id": decision_id}
    for name, key in ((TS_HEADER, "ts"), (USER_HEADER, "user_id")):
        value = _header_value(payload.get(key))
        if value is not None:
            headers[name] = value
    return headers


async def lookup_decision(
    js: JetStreamContext, decision_id: str, kinds: tuple[str, ...] = ("generate", "score")
) -> dict[str, Any] | None:
    """The logged decision with this id, or None if the stream has none (not yet, or not
    ours). One stream get by subject per kind tried — the block's subject first for an id of
    a block; a NATS error propagates (transient)."""
    if not _TOKEN.match(decision_id):
        return None
    key = block_key(decision_id)
    for kind in kinds:
        # an id of a block: the block's subject; then the id's own (a block too large for one
        # message was sent one message per decision)
        subjects = [f"ml.decisions.{kind}.{decision_id}"]
        if key is not None:
            subjects.insert(0, f"ml.decisions.{kind}.{key}")
        for subject in subjects:
            try:
                msg = await js.get_last_msg(DECISIONS, subject)
            except NotFoundError:
                continue
            data = msg.data
            if data and key is not None and subject.endswith(key):
                data = _in_block(data, decision_id)
            if not data:
                continue
            try:
                payload = decode_decision(data)
            except ValueError:  # not JSON, or candidate columns that do not line up
                return None
            return payload if isinstance(payload, dict) else None
    return None


def _in_block(data: bytes, decision_id: str) -> bytes | None:
    try:
        return next((d for i, _, _, d in block_rows(data) if i == decision_id), None)
    except ValueError:  # not a block
        return None


def _ack_error(msg: Msg) -> str | None:
    """None for JetStream's ack of a stored message (``{"stream": …, "seq": …}``, a duplicate
    included); else what went wrong: an API error, or no stream listening (status 503)."""
    data = msg.data
    if data[:1] == b"{" and b'"error"' not in data:
        return None
    if not data:
        status = (msg.headers or {}).get("Status", "")
        return "no stream answered (no responders)" if status == "503" else f"status {status}"
    return f"publish refused: {data[:240].decode(errors='replace')}"


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class _AckInbox:
    """JetStream's publish acks for one connection on one wildcard inbox. A publish waiting for
    its ack is an entry of ``waiting`` (reply token -> its index in the batch); the batch is
    done when ``waiting`` is empty (``done``, a bare future: ``asyncio.wait_for`` would add a
    task and two more turns of a busy event loop). A late ack — of a batch given up on — finds no
    entry and is ignored: that decision was re-sent, and the stream's duplicate window keeps
    one copy."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.sub: Subscription | None = None
        self.waiting: dict[str, int] = {}
        self.failed: dict[int, str] = {}  # index -> why
        self.done: asyncio.Future[None] | None = None
        self.sending = False  # a batch is being sent: its acks may come before it is all out
        self._tokens = itertools.count()

    async def open(self) -> None:
        self.sub = await self.nc.subscribe(f"{self.prefix}.*", cb=self._on_ack)

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()

    async def _on_ack(self, msg: Msg) -> None:
        index = self.waiting.pop(msg.subject[len(self.prefix) + 1 :], None)
        if index is None:
            return
        error = _ack_error(msg)
        if error is not None:
            self.failed[index] = error
        if not self.waiting and not self.sending and self.done is not None:
            _settle(self.done)

    async def publish(self, items: list[Record], timeout_s: float) -> dict[int, str]:
        """Send ``items``, wait (up to ``timeout_s``) for their acks; index -> why, of those not
        stored."""
        self.waiting.clear()
        self.failed = {}
        loop = asyncio.get_running_loop()
        self.done = done = loop.create_future()
        prefix, waiting, tokens = self.prefix, self.waiting, self._tokens
        # the client flushes (and yields) when its pending buffer fills: acks of a batch's
        # start may come while the rest is sent, and must not end the batch
        self.sending = True
        try:
            for i, (subject, _, payload, headers) in enumerate(items):
                token = str(next(tokens))
                waiting[token] = i
                try:
                    await self.nc.publish(
                        subject, payload, reply=f"{prefix}.{token}", headers=headers
                    )
                except Exception as exc:  # the connection went: this and the rest are not sent
                    waiting.pop(token, None)
                    why = f"{type(exc).__name__}: {exc}"[:300]
                    self.failed.update((j, why) for j in range(i, len(items)))
                    break  # what was sent before still waits for its ack (or the timeout)
        finally:
            self.sending = False
        if waiting:
            timer = loop.call_later(timeout_s, _settle, done)
            try:
                await done
            finally:
                timer.cancel()
        if waiting:
            self.failed.update((i, f"no ack within {timeout_s:g} s") for i in waiting.values())
            waiting.clear()
        return self.failed


class DecisionLog:
    def __init__(
        self,
        spill_dir: Path,
        metrics: EventMetrics,
        *,
        buffer: int = 10_000,
        spill_max_bytes: int = 256 << 20,
        publish_timeout_s: float = 2.0,
        in_flight: int = 4096,
        batch_max: int = 64,
        batch_bytes: int = 256 << 10,
    ) -> None:
        """``in_flight``: the most decisions published and not yet acknowledged (one batch: at
        1,000 decisions/s a batch is the few hundred recorded during the last round trip).
        ``batch_max`` / ``batch_bytes``: a block's most decisions / bytes (1: no blocks)."""
        self.spill_dir = spill_dir
        self.metrics = metrics
        self.buffer = buffer
        self.spill_max_bytes = spill_max_bytes
        self.publish_timeout_s = publish_timeout_s
        self.in_flight = in_flight
        self.batch_max = batch_max
        self.batch_bytes = batch_bytes
        self._queue: deque[Record] = deque()
        self._overflow: deque[Record] = deque()  # waiting to be spilled by the background task
        self._queued = 0  # decisions in _queue (a block is one record of many)
        self._overflowed = 0
        self._open: _Block | None = None
        self._closed: list[_Block] = []  # closed, waiting for reserved ids to be recorded
        self._slots: dict[str, tuple[_Block, int]] = {}  # reserved id -> its block and place
        self.blocks = 0  # block messages made
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: Callable[[], NATS | None] = lambda: None
        self._inbox: _AckInbox | None = None
        self._spilled_bytes = 0
        self.published = 0
        self.dropped = 0
        self.corrupt = 0
        self.restarts = 0
        self.last_error: str | None = None

    # -- the request path -------------------------------------------------------------------

    def new_id(self, kind: str) -> str:
        """Reserve the id of a decision that ``record`` will log: a place in the open block
        (O(1)). An id reserved and never recorded is given up on after ``_ABANDON_S``."""
        if self.batch_max <= 1:
            return str(uuid.uuid4())
        block = self._open
        if (
            block is None
            or block.kind != kind
            or len(block.lines) >= self.batch_max
            or block.size >= self.batch_bytes
        ):
            if block is not None:
                self._close(block)
            block = self._open = _Block(_keys.next(), kind)
        i = len(block.lines)
        block.lines.append(None)
        block.index.append(None)
        block.missing += 1
        decision_id = f"{block.key}-{i}"
        self._slots[decision_id] = (block, i)
        return decision_id

    def record(self, kind: str, decision_id: str, payload: dict[str, Any]) -> None:
        """Log one decision: O(1), never raises, never touches the disk. An id from
        ``new_id`` fills its place in its block; any other is a message of its own."""
        slot = self._slots.pop(decision_id, None)
        try:
            data = orjson.dumps(payload, default=str)
        except (TypeError, orjson.JSONEncodeError) as exc:
            if slot is not None:
                self._settle(slot[0], slot[1], b"", None)
            self._drop(1, f"not serialisable: {exc}")
            return
        if slot is None:
            self._enqueue(
                (
                    decision_subject(kind, decision_id),
                    decision_id,
                    data,
                    decision_headers(decision_id, payload),
                )
            )
            return
        entry = [
            decision_id,
            _header_value(payload.get("ts")) or "",
            _header_value(payload.get("user_id")) or "",
        ]
        self._settle(slot[0], slot[1], data, entry)
        self._wake.set()

    def _settle(self, block: _Block, i: int, data: bytes, entry: list[str] | None) -> None:
        """Place ``i`` of ``block`` is recorded (``b""``: its decision could not be)."""
        block.lines[i] = data
        block.index[i] = entry
        block.size += len(data)
        block.missing -= 1
        if block.closed_at and not block.missing:
            self._finish(block)

    def _close(self, block: _Block) -> None:
        """No more ids from ``block``; it is sent once they are all recorded."""
        block.closed_at = time.monotonic()
        if self._open is block:
            self._open = None
        if block.missing:
            self._closed.append(block)
        else:
            self._finish(block)

    def _take_blocks(self, abandon_before: float) -> None:
        """Close the open block; send the closed ones still waiting since ``abandon_before``
        with what was recorded (the rest is counted dropped)."""
        if self._open is not None and self._open.lines:
            self._close(self._open)
        for block in [b for b in self._closed if b.closed_at < abandon_before]:
            self._finish(block)

    def _finish(self, block: _Block) -> None:
        if block in self._closed:
            self._closed.remove(block)
        entries: list[tuple[list[str], bytes]] = []
        never = 0
        for i, (entry, data) in enumerate(zip(block.index, block.lines, strict=True)):
            if data is None:  # reserved, never recorded
                never += 1
                self._slots.pop(f"{block.key}-{i}", None)
            elif entry is not None:
                entries.append((entry, data))
        block.missing = 0
        if never:
            self._drop(never, "reserved and never recorded")
        if not entries:
            return
        body = b"\n".join([orjson.dumps([e for e, _ in entries]), *(d for _, d in entries)])
        if len(body) > _MAX_BLOCK_BYTES:  # too large for one message: one message each
            for (decision_id, ts, user), data in entries:
                headers = decision_headers(decision_id, {"ts": ts, "user_id": user})
                self._enqueue(
                    (decision_subject(block.kind, decision_id), decision_id, data, headers)
                )
            return
        headers = {"Nats-Msg-Id": block.key, BATCH_HEADER: str(len(entries))}
        self._enqueue((f"ml.decisions.{block.kind}.{block.key}", block.key, body, headers))
        self.blocks += 1

    def _enqueue(self, item: Record) -> None:
        n = _count(item)
        if self._queued + n <= self.buffer:
            self._queue.append(item)
            self._queued += n
            self.metrics.decisions_buffered.set(self._queued)
        elif self._overflowed + n <= self.buffer:
            self._overflow.append(item)
            self._overflowed += n
        else:
            self._drop(n, "buffer and overflow full")
            return
        self._wake.set()

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        self.metrics.decisions_dropped.inc(n)
        log.error("decisions dropped", extra={"dropped": n, "why": why})

    # -- spill files ------------------------------------------------------------------------

    def _spill_files(self) -> list[Path]:
        if not self.spill_dir.exists():
            return []
        return sorted([*self.spill_dir.glob("spill-*.jsonl"), *self.spill_dir.glob("*.sending")])

    def spilled_bytes(self) -> int:
        return self._spilled_bytes

    @staticmethod
    def _lines(items: list[Record]) -> bytes:
        return b"".join(
            orjson.dumps({"subject": s, "id": i, "payload": p.decode(), "headers": h}) + b"\n"
            for s, i, p, h in items
        )

    def _write_atomically(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _spill(self, items: list[Record]) -> None:
        """Write ``items`` to a new spill file (whole, then renamed), within the bound."""
        lines = self._lines(items)
        n = sum(_count(item) for item in items)
        if self._spilled_bytes + len(lines) > self.spill_max_bytes:
            self._drop(n, "spill file full")
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        name = f"spill-{time.time_ns():020d}-{os.getpid()}-{next(_names)}.jsonl"
        self._write_atomically(self.spill_dir / name, lines)
        self._spilled_bytes += len(lines)
        self.metrics.decisions_spilled.inc(n)

    def _read_spill(self, path: Path) -> list[Record]:
        out: list[Record] = []
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                headers = row.get("headers") or {"Nats-Msg-Id": row["id"]}  # older spill files
                out.append((row["subject"], row["id"], row["payload"].encode(), dict(headers)))
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
                self.corrupt += 1
                self.metrics.decisions_corrupt.inc()
                log.error("unreadable spill line skipped", extra={"file": path.name})
        return out

    # -- the background publisher -----------------------------------------------------------

    def start(self, client: Callable[[], NATS | None]) -> None:
        """Publish through the connection ``client`` gives (None: not connected now)."""
        self._client = client
        self._spilled_bytes = sum(p.stat().st_size for p in self._spill_files())
        self._task = asyncio.create_task(self._supervise(), name="decision-log")

    async def _supervise(self) -> None:
        """Run the publisher; after any error, record it and start again (with back-off)."""
        failures = 0
        while not self._stop.is_set():
            try:
                await self._run()
                return
            except Exception as exc:
                failures += 1
                self.restarts += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("decision publisher failed; restarting")
                await self._sleep(min(0.5 * 2 ** min(failures - 1, 4), 8.0))

    async def _publish(self, nc: NATS, items: list[Record]) -> list[Record]:
        """Publish and wait for the acks; returns the items that were not acknowledged."""
        inbox = self._inbox
        if inbox is None or inbox.nc is not nc:
            if inbox is not None:
                await inbox.close()
            self._inbox = inbox = _AckInbox(nc)
            await inbox.open()
        why = await inbox.publish(items, self.publish_timeout_s)
        failed = [items[i] for i in sorted(why)]
        if why:
            self.last_error = why[min(why)]
        acked = sum(_count(item) for item in items) - sum(_count(item) for item in failed)
        self.published += acked
        self.metrics.decisions_published.inc(acked)
        return failed

    async def _spill_overflow(self) -> None:
        if self._overflow:
            batch = list(self._overflow)
            self._overflow.clear()
            self._overflowed = 0
            await asyncio.to_thread(self._spill, batch)

    async def _replay_spills(self, nc: NATS) -> bool:
        """Publish the spilled decisions (the oldest); False if some were not acknowledged.
        A file is renamed before it is read, so decisions spilled meanwhile are not lost."""
        for path in self._spill_files():
            sending = path if path.suffix == ".sending" else path.with_suffix(".sending")
            os.replace(path, sending)
            size = sending.stat().st_size
            failed = await self._publish(nc, self._read_spill(sending))
            if failed:
                lines = self._lines(failed)
                await asyncio.to_thread(self._write_atomically, sending, lines)
                self._spilled_bytes += len(lines) - size
                return False
            sending.unlink()
            self._spilled_bytes -= size
        return True

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._take_blocks(time.monotonic() - _ABANDON_S)
            await self._spill_overflow()
            nc = self._client()
            if nc is None:
                await self._sleep(0.5)
                continue
            if not await self._replay_spills(nc):
                await self._sleep(0.5)
                continue
            if not self._queue:
                await self._sleep(1.0)
                continue
            batch: list[Record] = []
            taken = 0
            while self._queue and (not batch or taken + _count(self._queue[0]) <= self.in_flight):
                batch.append(self._queue.popleft())
                taken += _count(batch[-1])
            self._queued -= taken
            failed = await self._publish(nc, batch)
            if failed:
                self._queue.extendleft(reversed(failed))
                self._queued += sum(_count(item) for item in failed)
                await self._sleep(0.5)
            self.metrics.decisions_buffered.set(self._queued)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Publish what is buffered (within the timeout), spill the rest to disk."""
        deadline = time.monotonic() + flush_timeout_s
        self._take_blocks(time.monotonic() + _ABANDON_S)  # what a request still holds: dropped
        while (
            (self._queue or self._overflow)
            and time.monotonic() < deadline
            and self._client() is not None
            and self._task is not None
            and not self._task.done()
        ):
            self._wake.set()
            await asyncio.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
                await asyncio.wait_for(self._task, timeout=self.publish_timeout_s + 1)
        if self._inbox is not None:
            await self._inbox.close()
            self._inbox = None
        rest = [*self._queue, *self._overflow]
        self._queue.clear()
        self._overflow.clear()
        self._queued = self._overflowed = 0
        if rest:
            try:
                self._spill(rest)
            except OSError as exc:
                self._drop(len(rest), f"spill failed at shutdown: {exc}")

    @property
    def buffered(self) -> int:
        """Decisions recorded and not yet published (in blocks still open included)."""
        in_blocks = sum(
            sum(1 for line in b.lines if line) for b in (*self._closed, self._open) if b is not None
        )
        return self._queued + self._overflowed + in_blocks

    def health(self) -> tuple[bool, str]:
        running = self._task is not None and not self._task.done()
        full = self._queued >= self.buffer
        detail = (
            f"{self.published} published ({self.blocks} blocks), {self._queued} buffered, "
            f"{self._spilled_bytes} bytes spilled, {self.dropped} dropped"
        )
        if self.corrupt:
            detail += f", {self.corrupt} unreadable spill lines skipped"
        if self.restarts:
            detail += f", publisher restarted {self.restarts}x"
        if self.last_error and (full or not running):
            detail += f"; last error: {self.last_error}"
        if not running:
            return False, "publisher not running; " + detail
        if full:
            return False, "buffer full, spilling to disk; " + detail
        return True, detail

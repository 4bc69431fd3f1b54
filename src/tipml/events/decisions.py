"""The decision log: every ``/score`` and ``/generate`` answer, published to JetStream.

``record`` never waits on the network: it appends to a bounded in-memory buffer (O(1)); a
background task publishes with ``Nats-Msg-Id`` = decision id and waits for JetStream's ack.
While NATS is unreachable, decisions stay buffered; when the buffer is full they are appended
to a local spill file (bounded by ``decision_spill_max_bytes``), replayed first when NATS is
back. Only what exceeds both bounds is dropped — and counted. A re-sent decision whose first
ack was lost is dropped by the stream's duplicate window, so each arrives once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from nats.js import JetStreamContext

from tipml.events.metrics import EventMetrics

log = logging.getLogger("tipml.decisions")

Record = tuple[str, str, bytes]  # subject, decision id, payload


class DecisionLog:
    def __init__(
        self,
        spill_dir: Path,
        metrics: EventMetrics,
        *,
        buffer: int = 10_000,
        spill_max_bytes: int = 256 << 20,
        publish_timeout_s: float = 2.0,
        in_flight: int = 64,
    ) -> None:
        self.spill_dir = spill_dir
        self.metrics = metrics
        self.buffer = buffer
        self.spill_max_bytes = spill_max_bytes
        self.publish_timeout_s = publish_timeout_s
        self.in_flight = in_flight
        self._queue: deque[Record] = deque()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._js: Callable[[], JetStreamContext | None] = lambda: None
        self.published = 0
        self.last_error: str | None = None

    # -- the request path -------------------------------------------------------------------

    def record(self, kind: str, decision_id: str, payload: dict[str, Any]) -> None:
        """Queue one decision; bounded time, never raises on the request path."""
        item = (f"ml.decisions.{kind}", decision_id, orjson.dumps(payload, default=str))
        if len(self._queue) < self.buffer:
            self._queue.append(item)
            self.metrics.decisions_buffered.set(len(self._queue))
            self._wake.set()
        else:
            self._spill([item])

    # -- spill file -------------------------------------------------------------------------

    def _spill_files(self) -> list[Path]:
        if not self.spill_dir.exists():
            return []
        return sorted([*self.spill_dir.glob("spill-*.jsonl"), *self.spill_dir.glob("*.sending")])

    def spilled_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._spill_files())

    @staticmethod
    def _lines(items: list[Record]) -> bytes:
        return b"".join(
            orjson.dumps({"subject": s, "id": i, "payload": p.decode()}) + b"\n"
            for s, i, p in items
        )

    def _spill(self, items: list[Record]) -> None:
        lines = self._lines(items)
        if self.spilled_bytes() + len(lines) > self.spill_max_bytes:
            self.metrics.decisions_dropped.inc(len(items))
            log.error("decision log full: dropped", extra={"dropped": len(items)})
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"spill-{os.getpid()}-{time.time_ns() // 1_000_000_000}.jsonl"
        with path.open("ab") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        self.metrics.decisions_spilled.inc(len(items))

    def _read_spill(self, path: Path) -> list[Record]:
        out: list[Record] = []
        for line in path.read_bytes().splitlines():
            if line.strip():
                row = orjson.loads(line)
                out.append((row["subject"], row["id"], row["payload"].encode()))
        return out

    # -- the background publisher -----------------------------------------------------------

    def start(self, js: Callable[[], JetStreamContext | None]) -> None:
        self._js = js
        self._task = asyncio.create_task(self._run(), name="decision-log")

    async def _publish(self, js: JetStreamContext, items: list[Record]) -> list[Record]:
        """Publish and wait for the acks; returns the items that were not acknowledged."""

        async def one(item: Record) -> bool:
            subject, decision_id, payload = item
            try:
                await js.publish(
                    subject,
                    payload,
                    timeout=self.publish_timeout_s,
                    headers={"Nats-Msg-Id": decision_id},
                )
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                return False
            return True

        results = await asyncio.gather(*(one(i) for i in items))
        failed = [item for item, ok in zip(items, results, strict=True) if not ok]
        acked = len(items) - len(failed)
        self.published += acked
        self.metrics.decisions_published.inc(acked)
        return failed

    async def _run(self) -> None:
        while not self._stop.is_set():
            js = self._js()
            if js is None:
                await self._sleep(0.5)
                continue
            # Spilled decisions first: they are the oldest. A file is renamed before it is
            # read, so decisions spilled meanwhile go to a new file and are not lost.
            for path in self._spill_files():
                sending = path if path.suffix == ".sending" else path.with_suffix(".sending")
                os.replace(path, sending)
                failed = await self._publish(js, self._read_spill(sending))
                if failed:
                    sending.write_bytes(self._lines(failed))
                    break
                sending.unlink()
            if not self._queue:
                await self._sleep(1.0)
                continue
            batch = [self._queue.popleft() for _ in range(min(self.in_flight, len(self._queue)))]
            failed = await self._publish(js, batch)
            if failed:
                self._queue.extendleft(reversed(failed))
                await self._sleep(0.5)
            self.metrics.decisions_buffered.set(len(self._queue))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Publish what is buffered (within the timeout), spill the rest to disk."""
        deadline = time.monotonic() + flush_timeout_s
        while self._queue and time.monotonic() < deadline and self._js() is not None:
            self._wake.set()
            await asyncio.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(self._task, timeout=self.publish_timeout_s + 1)
        if self._queue:
            self._spill(list(self._queue))
            self._queue.clear()

    @property
    def buffered(self) -> int:
        return len(self._queue)

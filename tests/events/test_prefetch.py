"""A consumer fetches its next batch while it processes the current one (``consumer_prefetch``,
ADR 0016): batches still reach the handler one at a time and in stream order, and a batch
fetched ahead when the consumer stops goes back to the server at once (nak), not after
``ack_wait``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.events.helpers import events_settings, eventually
from tipml.events.bus import SIGNALS, EmbeddedNats, provision
from tipml.events.consumer import ConsumerRunner
from tipml.events.keyed import Item, WriteResult
from tipml.events.metrics import EventMetrics


class Recorder:
    """Records each batch's stream sequences; slow enough that the next fetch completes while
    a batch is handled; checks batches never overlap."""

    stream = SIGNALS
    filter_subject = "signals.>"

    def __init__(self, name: str, delay_s: float = 0.02) -> None:
        self.name = name
        self.delay_s = delay_s
        self.batches: list[list[int]] = []
        self.busy = False
        self.overlapped = False

    def parse(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[str, Any]:
        return orjson.loads(data)["event_id"], {}

    async def handle(self, items: Sequence[Item[Any]]) -> WriteResult:
        self.overlapped |= self.busy
        self.busy = True
        await asyncio.sleep(self.delay_s)
        self.batches.append([i.seq for i in items])
        self.busy = False
        return WriteResult(applied=len(items))

    def set_floor(self, floor: int) -> None:
        pass


async def _backlog(nc: NATS, n: int) -> None:
    js = nc.jetstream()
    acks = [
        await js.publish_async("signals.x", orjson.dumps({"event_id": f"e{i}"})) for i in range(n)
    ]
    await asyncio.gather(*acks)


@pytest.mark.parametrize("prefetch", [True, False])
async def test_batches_arrive_one_at_a_time_in_stream_order(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path, prefetch: bool
) -> None:
    settings = events_settings(tmp_path, nats.url, consumer_batch=100, consumer_prefetch=prefetch)
    bus = await provision(nc, settings)
    await _backlog(nc, 1_500)
    handler = Recorder(f"recorder-{prefetch}")
    runner = ConsumerRunner(bus, handler, settings, EventMetrics(CollectorRegistry()))
    await runner.start()

    async def done() -> bool:
        return runner.state.processed == 1_500

    await eventually(done, what="backlog processed")
    await runner.stop()
    seqs = [s for batch in handler.batches for s in batch]
    assert seqs == list(range(1, 1_501))  # every message once, in stream order
    assert not handler.overlapped
    assert len(handler.batches) >= 15


async def test_a_batch_fetched_ahead_is_given_back_when_the_consumer_stops(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    settings = events_settings(
        tmp_path, nats.url, consumer_batch=50, consumer_ack_wait_s=30.0, consumer_prefetch=True
    )
    bus = await provision(nc, settings)
    await _backlog(nc, 400)
    handler = Recorder("recorder-stop", delay_s=0.3)  # the next batch is in hand while it waits
    runner = ConsumerRunner(bus, handler, settings, EventMetrics(CollectorRegistry()))
    await runner.start()

    async def some() -> bool:
        return runner.state.processed >= 50

    await eventually(some, what="a first batch handled")
    await runner.stop()
    handled = runner.state.processed
    assert handled < 400
    # another consumer process picks the rest up at once — the batch fetched ahead included,
    # nak'ed at the stop instead of left to the 30 s ack_wait
    rest = Recorder("recorder-stop", delay_s=0.0)
    again = ConsumerRunner(bus, rest, settings, EventMetrics(CollectorRegistry()))
    started = time.monotonic()
    await again.start()

    async def all_done() -> bool:
        return again.state.processed == 400 - handled

    try:
        await eventually(all_done, timeout_s=10, what="the rest handled by the next consumer")
    finally:
        await again.stop()
    assert time.monotonic() - started < 10
    assert sorted(s for b in handler.batches + rest.batches for s in b) == list(range(1, 401))


class Clock(Recorder):
    """Records how long each event waited (the event carries its publish time)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, delay_s=0.0)
        self.waits: list[float] = []

    def parse(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[str, Any]:
        body = orjson.loads(data)
        return body["event_id"], body["sent"]

    async def handle(self, items: Sequence[Item[Any]]) -> WriteResult:
        now = time.time()
        self.waits.extend(now - i.event for i in items)
        return await super().handle(items)


@pytest.mark.parametrize("prefetch", [True, False])
async def test_a_trickle_of_events_is_handed_over_as_it_arrives(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path, prefetch: bool
) -> None:
    """A caught-up consumer with a batch of 500 gets 40 events over 0.8 s: each reaches the
    handler at once, not when a batch of 500 has filled or the pull request has expired."""
    settings = events_settings(tmp_path, nats.url, consumer_batch=500, consumer_prefetch=prefetch)
    bus = await provision(nc, settings)
    handler = Clock(f"clock-{prefetch}")
    runner = ConsumerRunner(bus, handler, settings, EventMetrics(CollectorRegistry()))
    await runner.start()
    await asyncio.sleep(0.3)  # caught up: the consumer is waiting on an empty stream
    js = nc.jetstream()
    for i in range(40):
        await js.publish("signals.x", orjson.dumps({"event_id": f"t{i}", "sent": time.time()}))
        await asyncio.sleep(0.02)

    async def all_handled() -> bool:
        return runner.state.processed == 40

    try:
        await eventually(all_handled, timeout_s=10, what="the trickle handled")
    finally:
        await runner.stop()
    assert max(handler.waits) < 0.25, sorted(handler.waits)[-5:]

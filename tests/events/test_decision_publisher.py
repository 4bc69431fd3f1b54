"""The decision log's publisher keeps up with a busy event loop, and loses nothing when
JetStream refuses.

The finding (ADR 0026): beside a saturated ``/score`` (1,000 rps, one process) the event loop
turns about once per 30 ms, and one ``js.publish`` round trip took ten turns; batches of 64
of them published 260 decisions/s, so the buffer filled (10,000) and spilled to disk within
ten seconds. The test reproduces that loop — tasks that each burn 4 ms per turn — and counts
the turns the publisher needs for a backlog: with a round trip per 64 decisions it was ~250.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.events.helpers import eventually
from tipml.events.bus import DECISIONS, EmbeddedNats
from tipml.events.decisions import DecisionLog
from tipml.events.metrics import EventMetrics

BACKLOG = 2_000


async def _decisions_stream(nc: NATS) -> None:
    await nc.jetstream().add_stream(name=DECISIONS, subjects=["ml.>"], duplicate_window=120)


async def test_a_backlog_is_published_in_a_few_turns_of_a_busy_loop(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    await _decisions_stream(nc)
    log = DecisionLog(tmp_path / "spill", EventMetrics(CollectorRegistry()))
    log.start(lambda: nc)
    busy = True
    turns = 0

    async def hog() -> None:  # one request's worth of CPU per turn of the loop
        while busy:
            until = time.perf_counter() + 0.004
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0)

    async def count_turns() -> None:
        nonlocal turns
        while busy:
            turns += 1
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(hog()) for _ in range(8)]
    tasks.append(asyncio.create_task(count_turns()))
    try:
        await asyncio.sleep(0.1)  # the publisher is idle, waiting for a decision
        start = turns
        for i in range(BACKLOG):
            log.record("score", f"d-{i:05d}", {"decision_id": f"d-{i:05d}", "user_id": "u"})
        deadline = time.monotonic() + 60
        # polled once per turn: the publisher exposes a count, not an event to wait on
        while log.published < BACKLOG and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0)
        used = turns - start
    finally:
        busy = False
        await asyncio.gather(*tasks)
    assert log.published == BACKLOG, log.health()
    assert used < 80, f"{used} turns of the loop to publish {BACKLOG} decisions"
    info = await nc.jetstream().stream_info(DECISIONS)
    assert info.state.messages == BACKLOG
    await log.stop()
    assert log.buffered == 0
    assert list((tmp_path / "spill").glob("*")) == []  # nothing spilled


async def test_a_refused_publish_keeps_the_decision_and_names_the_reason(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    """No stream takes ``ml.>`` yet: every ack is "no responders". The decisions stay
    buffered, the reason is in ``health()``; once the stream exists they arrive, once each."""
    log = DecisionLog(tmp_path / "spill", EventMetrics(CollectorRegistry()), publish_timeout_s=0.5)
    log.start(lambda: nc)
    for i in range(5):
        log.record("score", f"r-{i}", {"decision_id": f"r-{i}"})

    async def refused() -> bool:
        return log.last_error is not None and log.buffered == 5

    await eventually(refused, what="refused publishes kept")
    assert "no responders" in (log.last_error or "")
    assert log.published == 0
    await _decisions_stream(nc)
    await eventually(lambda: _published(log, 5), timeout_s=30, what="decisions published")
    await log.stop()
    js = nc.jetstream()
    info = await js.stream_info(DECISIONS)
    ids = [
        orjson.loads((await js.get_msg(DECISIONS, seq)).data or b"")["decision_id"]
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]
    assert sorted(ids) == [f"r-{i}" for i in range(5)]


async def _published(log: DecisionLog, n: int) -> bool:
    return log.published == n


async def test_a_batch_is_done_when_all_of_it_is_acked_not_the_part_sent_first(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client yields while a batch is sent (nats-py flushes and waits when its pending
    buffer fills): here, for 50 ms after the first decision, so that decision's ack arrives
    before the rest is sent. The batch must wait for every ack — not end when the part sent
    first is acked, give the rest up as unacked and send them again."""
    await _decisions_stream(nc)
    log = DecisionLog(tmp_path / "spill", EventMetrics(CollectorRegistry()))
    for i in range(200):
        log.record("score", f"b-{i:04d}", {"decision_id": f"b-{i:04d}"})
    publish = nc.publish
    sent = 0

    async def publish_then_yield(*args: Any, **kwargs: Any) -> None:
        nonlocal sent
        await publish(*args, **kwargs)
        sent += 1
        if sent == 1:
            await nc.flush()
            await asyncio.sleep(0.05)

    monkeypatch.setattr(nc, "publish", publish_then_yield)
    log.start(lambda: nc)
    await eventually(lambda: _published(log, 200), timeout_s=30, what="the batch published")
    assert log.last_error is None
    assert sent == 200  # each once: none given up on and sent again
    await log.stop()
    info = await nc.jetstream().stream_info(DECISIONS)
    assert info.state.messages == 200

"""Crashes, restarts and concurrency, with real processes and a real nats-server."""

from __future__ import annotations

import asyncio
import random
import signal as signals
from collections import Counter
from pathlib import Path

import orjson
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.events.helpers import (
    consumer_process,
    events_settings,
    eventually,
    publish,
    signal,
    user_total,
)
from tipml.events.bus import DECISIONS, EmbeddedNats, connect, provision
from tipml.events.decisions import DecisionLog
from tipml.events.metrics import EventMetrics
from tipml.events.runtime import EventsRuntime


async def publish_stream(
    nc: NATS, users: list[str], n: int, rate: float, truth: Counter[str]
) -> None:
    js = nc.jetstream()
    rng = random.Random(5)
    for _ in range(n):
        user = rng.choice(users)
        s, d, eid = signal(user)
        await publish(js, s, d, eid)
        truth[user] += 1
        await asyncio.sleep(1 / rate)


async def totals_match(nc: NATS, truth: Counter[str]) -> bool:
    js = nc.jetstream()
    for user, count in truth.items():
        if await user_total(js, user) != count:
            return False
    return True


async def test_sigkilled_consumer_loses_and_doubles_nothing(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    await provision(nc, events_settings(tmp_path, nats.url))
    users = [f"k{i}" for i in range(25)]
    truth: Counter[str] = Counter()
    publisher = asyncio.create_task(publish_stream(nc, users, 2500, 110.0, truth))
    rng = random.Random(11)
    kills = 0
    while kills < 20:
        proc = consumer_process(nats.url, tmp_path / "data")
        await asyncio.sleep(rng.uniform(0.8, 2.0))  # start-up, then some work, then die
        proc.send_signal(signals.SIGKILL)
        await asyncio.to_thread(proc.wait)
        kills += 1
    await publisher
    final = consumer_process(nats.url, tmp_path / "data")
    try:
        await eventually(
            lambda: totals_match(nc, truth),
            timeout_s=90,
            what="per-user counts equal the ground truth",
        )
    finally:
        final.terminate()
        await asyncio.to_thread(final.wait)
    assert sum(truth.values()) == 2500
    assert kills == 20


async def test_two_consumer_processes_lose_no_update(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    await provision(nc, events_settings(tmp_path, nats.url))
    users = [f"h{i}" for i in range(4)]  # few hot keys: replicas collide on every batch
    truth: Counter[str] = Counter()
    procs = [consumer_process(nats.url, tmp_path / f"data{i}") for i in range(2)]
    try:
        await publish_stream(nc, users, 1500, 400.0, truth)
        await eventually(
            lambda: totals_match(nc, truth),
            timeout_s=60,
            what="counts with two concurrent consumers",
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.to_thread(proc.wait)
    states = [
        orjson.loads((tmp_path / f"data{i}" / "state" / "signals-features.json").read_bytes())
        for i in range(2)
    ]
    assert all(s["processed"] > 0 for s in states)  # both replicas really worked
    assert sum(s["processed"] for s in states) == 1500


async def test_nats_restart_mid_stream_resumes_without_loss(
    nats: EmbeddedNats, tmp_path: Path
) -> None:
    settings = events_settings(tmp_path, nats.url)
    events = EventsRuntime(settings, CollectorRegistry(), consumers=("signals",))
    await events.start(wait=True)
    nc = await connect(nats.url, "restart-publisher")
    truth: Counter[str] = Counter()
    users = [f"r{i}" for i in range(10)]
    await publish_stream(nc, users, 300, 1000.0, truth)
    await asyncio.to_thread(nats.stop)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(nats.start)
    await eventually(lambda: _connected(nc), what="publisher reconnected")
    await publish_stream(nc, users, 300, 1000.0, truth)
    try:
        await eventually(
            lambda: totals_match(nc, truth), timeout_s=60, what="all events after the restart"
        )
        ok, _ = events.runners[0].healthy()
        assert ok
    finally:
        await events.stop()
        await nc.close()


async def _connected(nc: NATS) -> bool:
    return bool(nc.is_connected)


async def test_decision_log_loses_nothing_across_a_30s_outage(
    nats: EmbeddedNats, tmp_path: Path
) -> None:
    settings = events_settings(tmp_path, nats.url)
    events = EventsRuntime(settings, CollectorRegistry())  # provisions the streams
    await events.start(wait=True)
    log = DecisionLog(
        tmp_path / "spill", EventMetrics(CollectorRegistry()), buffer=50, publish_timeout_s=0.5
    )
    nc = await connect(nats.url, "decisions")
    js = nc.jetstream()
    log.start(lambda: nc if nc.is_connected else None)
    ids = [f"d{i:04d}" for i in range(400)]
    for i in ids[:100]:
        log.record("score", i, {"decision_id": i})
    await eventually(lambda: _published(log, 100), what="first decisions published")

    await asyncio.to_thread(nats.stop)
    for i in ids[100:]:  # 30 s without NATS; the buffer holds 50, the rest spills to disk
        log.record("generate", i, {"decision_id": i})
        await asyncio.sleep(30 / 300)
    assert log.spilled_bytes() > 0
    await asyncio.to_thread(nats.start)

    await eventually(lambda: _published(log, 400), timeout_s=60, what="all decisions")
    await log.stop()
    info = await js.stream_info(DECISIONS)
    assert info.state.messages == 400
    seen = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        seen.append(orjson.loads((await js.get_msg(DECISIONS, seq)).data or b"")["decision_id"])
    assert sorted(seen) == ids  # every decision arrived, once
    assert log.spilled_bytes() == 0
    await nc.close()
    await events.stop()


async def _published(log: DecisionLog, n: int) -> bool:
    return log.published >= n

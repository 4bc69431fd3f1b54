"""The consumer runtime must not die quietly (issue 7, finding 9): each test injects one fault
into a real runtime on a real nats-server and checks the loop, the shutdown and /readyz."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from tests.events.helpers import events_settings, eventually, publish, signal, user_total
from tipml.domain.tips import TipStatsView
from tipml.events.bus import DECISIONS, EmbeddedNats, connect
from tipml.events.decisions import DecisionLog
from tipml.events.dlq import dead_letters
from tipml.events.metrics import EventMetrics
from tipml.events.runtime import EventsRuntime


def _runner(events: EventsRuntime, name: str) -> Any:
    return next(r for r in events.runners if r.handler.name == name)


@pytest.fixture
async def runtime(tmp_path: Path, nats: EmbeddedNats) -> AsyncIterator[EventsRuntime]:
    settings = events_settings(tmp_path, nats.url)
    events = EventsRuntime(
        settings,
        CollectorRegistry(),
        consumers=("signals", "feedback"),
        decisions=True,
        tip_view=TipStatsView(),
    )
    await events.start(wait=True)
    yield events
    await events.stop()


async def test_a_failing_ack_or_dead_letter_publish_does_not_end_the_loop(
    runtime: EventsRuntime, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    js = nc.jetstream()
    original_ack = Msg.ack
    acks = {"failed": 0}

    async def flaky_ack(self: Msg) -> None:
        if acks["failed"] < 2:
            acks["failed"] += 1
            raise ConnectionResetError("ack lost")
        await original_ack(self)

    monkeypatch.setattr(Msg, "ack", flaky_ack)
    bus = runtime.bus
    assert bus is not None
    original_publish = bus.js.publish
    dlq = {"failed": 0}

    async def flaky_publish(subject: str, *args: Any, **kwargs: Any) -> Any:
        if subject.startswith("dlq.") and dlq["failed"] < 1:
            dlq["failed"] += 1
            raise ConnectionResetError("dead-letter publish lost")
        return await original_publish(subject, *args, **kwargs)

    monkeypatch.setattr(bus.js, "publish", flaky_publish)
    await publish(js, "signals.task.completed", b"{poison", "poison-x")
    for _ in range(5):
        s, d, eid = signal("gina")
        await publish(js, s, d, eid)

    async def flowed() -> bool:
        return await user_total(js, "gina") == 5 and runner.state.dead_lettered == 1

    runner = _runner(runtime, "signals-features")
    await eventually(flowed, timeout_s=30, what="the stream flowed on after the faults")
    assert acks["failed"] >= 1
    assert dlq["failed"] == 1
    assert runner.healthy()[0]
    s, d, eid = signal("gina")  # and the loop still takes new events
    await publish(js, s, d, eid)
    await eventually(lambda: _total(js, "gina", 6), what="a new event after the faults")


async def _total(js: Any, user: str, n: int) -> bool:
    return await user_total(js, user) == n


async def test_a_kv_outage_longer_than_the_backoff_dead_letters_nothing(
    runtime: EventsRuntime, nc: NATS
) -> None:
    """Back-off 0.2 s, 0.4 s and 3 deliveries: under the old runtime the event was a dead
    letter within a second of a KV outage; an outage is not a poison message."""
    js = nc.jetstream()
    runner = _runner(runtime, "signals-features")
    store = runner.handler.store
    original = store.write_many
    outage = {"until": asyncio.get_running_loop().time() + 5.0}

    async def down(groups: Any) -> Any:
        if asyncio.get_running_loop().time() < outage["until"]:
            raise NatsTimeout()
        return await original(groups)

    store.write_many = down
    s, d, eid = signal("hank")
    await publish(js, s, d, eid)
    await eventually(lambda: _total(js, "hank", 1), timeout_s=30, what="applied after the outage")
    assert runner.state.dead_lettered == 0
    assert runner.state.paused_retries >= 3
    bus = runtime.bus
    assert bus is not None
    assert [letter async for letter in dead_letters(bus)] == []


async def test_shutdown_flushes_decisions_even_when_a_consumer_stop_fails(
    tmp_path: Path, nats: EmbeddedNats, nc: NATS
) -> None:
    settings = events_settings(tmp_path, nats.url)
    events = EventsRuntime(
        settings, CollectorRegistry(), consumers=("signals",), decisions=True, name="t"
    )
    await events.start(wait=True)
    assert events.decisions is not None

    async def broken_stop() -> None:
        raise RuntimeError("consumer stop blew up")

    events.runners[0].stop = broken_stop  # type: ignore[method-assign]
    events.decisions._client = lambda: None  # NATS "away": the decisions stay buffered
    for i in range(3):
        events.decisions.record("score", f"d-{i}", {"decision_id": f"d-{i}"})
    await events.stop()
    assert events.nc is not None
    assert events.nc.is_closed
    spilled = list((tmp_path / "data" / "decisions-spill").glob("spill-*.jsonl"))
    lines = [line for p in spilled for line in p.read_bytes().splitlines()]
    assert len(lines) == 3  # buffered decisions were spilled, not lost


async def _decisions_in_stream(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(DECISIONS)
    return int(info.state.messages)


async def test_a_corrupt_spill_line_is_skipped_and_counted(
    tmp_path: Path, nats: EmbeddedNats
) -> None:
    nc = await connect(nats.url, "spill-test")
    from tipml.events.bus import provision

    bus = await provision(nc, events_settings(tmp_path, nats.url))
    spill = tmp_path / "spill"
    spill.mkdir()
    good = [
        orjson.dumps({"subject": "ml.decisions.score", "id": f"s-{i}", "payload": "{}"})
        for i in range(2)
    ]
    (spill / "spill-1-1.jsonl").write_bytes(good[0] + b"\n" + b'{"subject": "ml.dec' + b"\n")
    (spill / "spill-2-1.jsonl").write_bytes(good[1] + b"\n")
    before = await _decisions_in_stream(nc)
    log = DecisionLog(spill, EventMetrics(CollectorRegistry()))
    log.start(lambda: bus.nc)
    try:
        await eventually(
            lambda: _count_is(nc, before + 2), what="both good spilled decisions published"
        )
        assert log.corrupt == 1
        ok, detail = log.health()
        assert ok, detail
        assert "1 unreadable spill lines skipped" in detail
        assert list(spill.glob("*.jsonl")) == []
        assert list(spill.glob("*.sending")) == []
    finally:
        await log.stop()
        await nc.close()


async def _count_is(nc: NATS, n: int) -> bool:
    return await _decisions_in_stream(nc) == n


async def test_record_is_o1_when_the_buffer_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full buffer must not glob, stat or fsync on the request path."""
    log = DecisionLog(tmp_path / "spill", EventMetrics(CollectorRegistry()), buffer=10)
    touched: list[str] = []
    monkeypatch.setattr(os, "fsync", lambda fd: touched.append("fsync"))
    monkeypatch.setattr(Path, "glob", lambda self, pattern: touched.append("glob") or iter(()))
    for i in range(25):
        log.record("score", f"d-{i}", {"i": i})
    assert touched == []
    assert log.buffered == 20  # 10 buffered + 10 waiting to be spilled by the background
    log.record("score", "one-too-many", {"i": -1})
    assert log.dropped == 5 + 1


async def test_decision_log_reports_a_dead_publisher(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "spill", EventMetrics(CollectorRegistry()))
    ok, _ = log.health()
    assert not ok  # never started: not ready, and /readyz says so


async def test_tip_view_watch_recovers_and_readyz_tells_meanwhile(
    runtime: EventsRuntime, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def view_ok() -> bool:
        return runtime.health().get("tip_view", (False, ""))[0]

    await eventually(view_ok, what="tip view watching")
    original_watchall = KeyValue.watchall
    failures = {"left": 3}

    async def broken_watchall(self: KeyValue, **kwargs: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionResetError("watch refused")
        return await original_watchall(self, **kwargs)

    monkeypatch.setattr(KeyValue, "watchall", broken_watchall)
    watcher_cls = KeyValue.KeyWatcher
    original_updates = watcher_cls.updates
    broke = {"done": False}

    async def breaking_updates(self: Any, **kwargs: Any) -> Any:
        if not broke["done"]:
            broke["done"] = True
            raise ConnectionResetError("watch lost")
        return await original_updates(self, **kwargs)

    monkeypatch.setattr(watcher_cls, "updates", breaking_updates)

    async def view_down() -> bool:
        return not (await view_ok())

    await eventually(view_down, timeout_s=10, what="readyz reports the broken watch")
    await eventually(view_ok, timeout_s=30, what="the watch restarted")
    js = nc.jetstream()
    body = {"event_id": "fb-1", "user_id": "ivy", "tip_id": "tip-z", "ts": "2026-11-27T10:00:00Z"}
    await publish(js, "feedback.completed", orjson.dumps(body), "fb-1")

    async def seen() -> bool:
        assert runtime.tip_view is not None
        return "tip-z" in runtime.tip_view.snapshot()

    await eventually(seen, what="the restarted watch feeds the view")

"""Exactly once by event_id within the duplicate horizon, not only JetStream's duplicate window
(issue 7, finding 5 and 9): re-publishes under a new message id, after the window, inside one
batch, and dead-letter replays after a partial write — against a real nats-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.events.helpers import events_settings, eventually, publish, signal, user_total
from tipml.domain.events import parse_signal
from tipml.domain.records import kv_key
from tipml.domain.users import empty_user_state, fold_signals
from tipml.events.bus import EmbeddedNats, provision
from tipml.events.dlq import dead_letters, replay
from tipml.events.keyed import Item, KeyedStore
from tipml.events.runtime import EventsRuntime


def _runner(events: EventsRuntime, name: str) -> Any:
    return next(r for r in events.runners if r.handler.name == name)


@pytest.fixture
async def runtime(tmp_path: Path, nats: EmbeddedNats) -> AsyncIterator[EventsRuntime]:
    # a 1 s duplicate window: "later than the window" is one second away
    settings = events_settings(tmp_path, nats.url, duplicate_window_s=1.0)
    events = EventsRuntime(settings, CollectorRegistry(), consumers=("signals", "feedback"))
    await events.start(wait=True)
    yield events
    await events.stop()


async def _settled(events: EventsRuntime, name: str, processed: int, duplicates: int) -> None:
    state = _runner(events, name).state

    async def check() -> bool:
        return state.processed >= processed and state.duplicates >= duplicates

    await eventually(check, what=f"{name}: {processed} applied, {duplicates} duplicates")
    await asyncio.sleep(0.3)
    assert (state.processed, state.duplicates) == (processed, duplicates)


async def test_republished_after_ack_and_after_the_window_counts_once(
    runtime: EventsRuntime, nc: NATS
) -> None:
    js = nc.jetstream()
    subject, data, eid = signal("carol")
    await publish(js, subject, data, eid)
    await _settled(runtime, "signals-features", 1, 0)
    await asyncio.sleep(2.5)  # acked, the ack floor moved on, the duplicate window passed
    await publish(js, subject, data, eid)  # the same message id, after the window
    await publish(js, subject, data, f"retry-{uuid.uuid4()}")  # a producer's retry, new id
    await _settled(runtime, "signals-features", 1, 2)
    assert await user_total(js, "carol") == 1


async def test_duplicates_inside_one_batch_count_once(
    tmp_path: Path, nats: EmbeddedNats, nc: NATS
) -> None:
    js = nc.jetstream()
    settings = events_settings(tmp_path, nats.url)
    await provision(nc, settings)
    subject, data, eid = signal("dave")
    for n in range(3):  # all in the stream before the consumer starts: one fetch
        await publish(js, subject, data, f"{eid}-{n}")
    events = EventsRuntime(settings, CollectorRegistry(), consumers=("signals",))
    await events.start(wait=True)
    try:
        await _settled(events, "signals-features", 1, 2)
    finally:
        await events.stop()
    assert await user_total(js, "dave") == 1


def _feedback(tip: str, version: str) -> tuple[str, bytes, str]:
    eid = str(uuid.uuid4())
    body = {
        "event_id": eid,
        "user_id": "erin",
        "tip_id": tip,
        "prompt_version": version,
        "ts": "2026-11-27T10:00:00Z",
    }
    return "feedback.completed", orjson.dumps(body), eid


async def _aggregate(js: Any, bucket: str, key: str) -> dict[str, Any]:
    kv = await js.key_value(bucket)
    return dict(orjson.loads((await kv.get(kv_key(key))).value)["s"])


async def test_feedback_and_aggregates_count_once_after_the_window(
    runtime: EventsRuntime, nc: NATS
) -> None:
    js = nc.jetstream()
    subject, data, eid = _feedback("tip-9", "v2")
    await publish(js, subject, data, eid)
    await _settled(runtime, "feedback-rewards", 1, 0)
    await asyncio.sleep(2.5)
    await publish(js, subject, data, eid)
    await publish(js, subject, data, "another-msg-id")
    await _settled(runtime, "feedback-rewards", 1, 2)
    assert (await _aggregate(js, "tip_stats", "tip-9"))["n"] == 1
    assert (await _aggregate(js, "prompt_stats", "v2"))["n"] == 1


async def test_dlq_replay_after_a_partial_write_counts_once(
    runtime: EventsRuntime, nc: NATS
) -> None:
    """The tip aggregate was written, the prompt aggregate kept failing: the event is
    dead-lettered; replayed after the fix, it completes the prompt aggregate and leaves the
    tip aggregate alone."""
    js = nc.jetstream()
    handler = _runner(runtime, "feedback-rewards").handler
    original = handler.prompts.write_many

    async def failing(groups: Any) -> Any:  # a bug, not an outage: retried, then dead-lettered
        raise ValueError("prompt aggregate rejected the event")

    handler.prompts.write_many = failing
    subject, data, _ = _feedback("tip-7", "v3")
    await publish(js, subject, data, None)

    bus = runtime.bus
    assert bus is not None

    async def dead() -> bool:
        return len([letter async for letter in dead_letters(bus)]) >= 1

    await eventually(dead, timeout_s=30, what="dead-lettered after max_deliver")
    assert (await _aggregate(js, "tip_stats", "tip-7"))["n"] == 1
    handler.prompts.write_many = original
    assert len(await replay(bus)) == 1
    await eventually(
        lambda: _has(js, "prompt_stats", "v3"), timeout_s=20, what="prompt aggregate written"
    )
    await asyncio.sleep(0.5)
    assert (await _aggregate(js, "tip_stats", "tip-7"))["n"] == 1
    assert (await _aggregate(js, "prompt_stats", "v3"))["n"] == 1


async def _has(js: Any, bucket: str, key: str) -> bool:
    from nats.js.errors import KeyNotFoundError

    try:
        await (await js.key_value(bucket)).get(kv_key(key))
    except KeyNotFoundError:
        return False
    return True


async def test_ids_are_remembered_for_the_horizon_then_forgotten(
    tmp_path: Path, nats: EmbeddedNats, nc: NATS
) -> None:
    bus = await provision(nc, events_settings(tmp_path, nats.url))
    kv = await bus.kv("user_features")
    store = KeyedStore(kv, empty_user_state, fold_signals, horizon_s=7200)
    events = [parse_signal(s, d) for s, d, _ in (signal("frank") for _ in range(3))]
    t0 = 1_800_000_000.0
    a, b, c = events
    await store.write("frank", [Item(1, a.event_id, a, t0)])
    # an hour later, from another replica (no cache): still within the 2 h horizon
    other = KeyedStore(kv, empty_user_state, fold_signals, horizon_s=7200)
    assert (await other.write("frank", [Item(2, a.event_id, a, t0 + 3600)])).applied == 0
    # three hours later: the id of `a` is forgotten once a newer event moves the horizon
    assert (await other.write("frank", [Item(3, b.event_id, b, t0 + 3 * 3600)])).applied == 1
    record = (await other.read("frank"))[1]
    assert record is not None
    assert len(record["d"]) == 1  # only the newest hour's ids are kept
    assert (await other.write("frank", [Item(4, c.event_id, c, t0 + 3 * 3600)])).applied == 1
    state = await other.state("frank")
    assert state["total"] == {"task.completed": 3}

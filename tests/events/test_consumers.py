"""Consumers against a real nats-server: idempotency, dead letters, rewards, the archive."""

from __future__ import annotations

import base64
import calendar
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.events.helpers import events_settings, eventually, publish, signal, user_total
from tipml.domain.events import parse_signal
from tipml.domain.records import kv_key
from tipml.domain.rewards import RewardTable
from tipml.domain.tips import TipStatsView
from tipml.domain.users import apply_signals, empty_user_state, materialize
from tipml.errors import ConfigError
from tipml.events.bus import EmbeddedNats, provision
from tipml.events.dlq import dead_letters, replay
from tipml.events.handlers import SignalsHandler
from tipml.events.keyed import Item, KeyedStore
from tipml.events.runtime import EventsRuntime


@pytest.fixture
async def runtime(tmp_path: Path, nats: EmbeddedNats) -> AsyncIterator[EventsRuntime]:
    settings = events_settings(tmp_path, nats.url)
    events = EventsRuntime(
        settings, CollectorRegistry(), consumers=("signals", "feedback", "archiver")
    )
    await events.start(wait=True)
    yield events
    await events.stop()


def runner(events: EventsRuntime, name: str) -> Any:
    return next(r for r in events.runners if r.handler.name == name)


async def test_duplicate_publish_and_duplicate_event_id_count_once(
    runtime: EventsRuntime, nc: NATS
) -> None:
    js = nc.jetstream()
    subject, data, eid = signal("alice")
    await publish(js, subject, data, eid)
    await publish(js, subject, data, eid)  # same Nats-Msg-Id: dropped by the stream
    await publish(js, subject, data, f"{eid}-other")  # same event_id, new msg id: skipped
    subject2, data2, eid2 = signal("alice")
    await publish(js, subject2, data2, eid2)

    async def done() -> bool:
        return runner(runtime, "signals-features").state.processed >= 2

    await eventually(done, what="two events applied")
    await eventually(lambda: _dupes(runtime), what="duplicate seen")
    assert await user_total(js, "alice") == 2


async def _dupes(events: EventsRuntime) -> bool:
    return runner(events, "signals-features").state.duplicates >= 1


async def test_redelivered_items_change_nothing(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    bus = await provision(nc, events_settings(tmp_path, nats.url))
    store = KeyedStore(await bus.kv("user_features"), empty_user_state, apply_signals)
    events = [parse_signal(s, d) for s, d, _ in (signal("bob"), signal("bob"))]
    items = [Item(seq, e.event_id, e) for seq, e in enumerate(events, start=10)]
    first = await store.write("bob", items)
    again = await store.write("bob", items)  # a redelivery after a crash before the ack
    other = KeyedStore(store.kv, empty_user_state, apply_signals)  # another replica, no cache
    third = await other.write("bob", items[1:])
    assert (first.applied, again.applied, third.applied) == (2, 0, 0)
    assert again.duplicates == 2
    state = await store.state("bob")
    assert state["total"] == {"task.completed": 2}
    # every id folded in within the horizon is remembered (8-byte digests by arrival hour),
    # so a duplicate long after the ack floor moved on still changes nothing
    nxt = parse_signal(*signal("bob")[:2])
    await other.write("bob", [Item(12, nxt.event_id, nxt)])
    _, record = await other.read("bob")
    assert record is not None
    assert sum(len(base64.urlsafe_b64decode(ids)) for ids in record["d"].values()) == 3 * 8
    assert (await other.write("bob", [Item(13, events[0].event_id, events[0])])).applied == 0


async def test_streams_are_bounded_by_size_as_well_as_age(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    limit = 1 << 20
    settings = events_settings(tmp_path, nats.url, stream_max_bytes=limit)
    bus = await provision(nc, settings)
    info = await bus.js.stream_info("DECISIONS")
    assert info.config.max_bytes == limit
    assert info.config.max_age == settings.stream_max_age_s
    record = b"x" * 20_000  # a /score decision with 100 candidates
    for i in range(150):  # 3 MB into a 1 MiB stream
        await bus.js.publish(f"ml.decisions.score.d{i}", record)
    info = await bus.js.stream_info("DECISIONS")
    assert info.state.bytes <= limit
    assert info.state.first_seq > 1  # the oldest went first
    assert info.state.last_seq == 150
    # a restart with another limit updates the stream in place
    await provision(nc, events_settings(tmp_path, nats.url, stream_max_bytes=2 * limit))
    assert (await bus.js.stream_info("DECISIONS")).config.max_bytes == 2 * limit
    # more than the server can reserve: start-up stops naming the setting
    huge = events_settings(tmp_path, nats.url, stream_max_bytes=1 << 50)
    with pytest.raises(ConfigError, match=r"TIPML_STREAM_MAX_BYTES: the server cannot reserve"):
        await provision(nc, huge)


async def test_poison_event_is_dead_lettered_and_the_stream_flows_on(
    runtime: EventsRuntime, nc: NATS
) -> None:
    js = nc.jetstream()
    await publish(js, "signals.task.completed", b"{not json", "poison-1")
    await publish(js, "signals.app.opened", orjson.dumps({"user_id": "carol"}), "poison-2")
    for _ in range(3):
        s, d, eid = signal("carol")
        await publish(js, s, d, eid)

    async def flowed() -> bool:
        return await user_total(js, "carol") == 3

    await eventually(flowed, what="later events processed")
    letters = [letter async for _, letter in dead_letters(runtime.bus)]  # type: ignore[arg-type]
    assert [x["error"] for x in letters] == ["invalid_event", "invalid_event"]
    assert letters[0]["payload"] == "{not json"  # the original payload, byte for byte
    assert letters[0]["subject"] == "signals.task.completed"
    assert letters[0]["stream"] == "SIGNALS"
    assert letters[0]["stream_seq"] == 1
    assert "event_id" in letters[1]["detail"]
    assert runner(runtime, "signals-features").state.dead_lettered == 2


async def test_failing_handler_retries_with_backoff_then_dead_letters(
    tmp_path: Path, nats: EmbeddedNats, nc: NATS
) -> None:
    settings = events_settings(tmp_path, nats.url)
    events = EventsRuntime(settings, CollectorRegistry(), consumers=("signals",))
    await events.start(wait=True)
    handler: SignalsHandler = runner(events, "signals-features").handler
    real = handler.handle
    calls: list[int] = []

    async def flaky(items: Any) -> Any:
        if any(i.event.user_id == "boom" for i in items):
            calls.append(len(items))
            raise RuntimeError("state store exploded")
        return await real(items)

    handler.handle = flaky  # type: ignore[method-assign]
    js = nc.jetstream()
    for user in ("dave", "boom", "dave"):
        s, d, eid = signal(user)
        await publish(js, s, d, eid)

    async def settled() -> bool:
        return runner(events, "signals-features").state.dead_lettered == 1

    await eventually(settled, timeout_s=30, what="dead letter after max_deliver")
    await events.stop()
    assert await user_total(js, "dave") == 2
    bus = await provision(nc, settings)
    letters = [letter async for _, letter in dead_letters(bus)]
    assert len(letters) == 1
    assert letters[0]["error"] == "max_deliver"
    assert letters[0]["num_delivered"] == settings.consumer_max_deliver
    assert "state store exploded" in letters[0]["detail"]
    assert orjson.loads(letters[0]["payload"])["user_id"] == "boom"

    # After the fix, `tipml dlq replay` re-drives it and it is applied once.
    replayed = await replay(bus)
    assert [r["subject"] for r in replayed] == ["signals.task.completed"]
    assert [x async for x in dead_letters(bus)] == []
    fixed = EventsRuntime(settings, CollectorRegistry(), consumers=("signals",))
    await fixed.start(wait=True)

    async def boom_applied() -> bool:
        return await user_total(js, "boom") == 1

    await eventually(boom_applied, what="replayed event applied")
    await fixed.stop()


async def test_feedback_updates_tip_and_prompt_aggregates(runtime: EventsRuntime, nc: NATS) -> None:
    js = nc.jetstream()
    rows = [("completed", "v1"), ("dismissed", "v1"), ("liked", "v2"), ("snoozed", None)]
    for i, (reaction, version) in enumerate(rows):
        body = {
            "event_id": f"f{i}",
            "user_id": "erin",
            "tip_id": "sleep-001",
            "decision_id": f"never-seen-{i}",
            "prompt_version": version,
            "ts": "2026-11-27T10:00:00Z",
        }
        await publish(js, f"feedback.{reaction}", orjson.dumps(body), f"f{i}")
    await publish(
        js,
        "feedback.exploded",
        orjson.dumps(
            {
                "event_id": "bad",
                "user_id": "erin",
                "tip_id": "sleep-001",
                "ts": "2026-11-27T10:00:00Z",
            }
        ),
        "bad",
    )

    async def done() -> bool:
        r = runner(runtime, "feedback-rewards").state
        return r.processed == 4 and r.dead_lettered == 1

    await eventually(done, what="feedback applied")
    tips = await js.key_value("tip_stats")
    tip = orjson.loads((await tips.get(kv_key("sleep-001"))).value or b"")["s"]
    rewards = RewardTable()
    assert tip["n"] == 4
    assert tip["reward_sum"] == pytest.approx(sum(rewards.reward(r) for r, _ in rows))
    prompts = await js.key_value("prompt_stats")
    v1 = orjson.loads((await prompts.get("v1")).value or b"")["s"]
    assert v1["reactions"] == {"completed": 1, "dismissed": 1}

    # /score's tip view follows the bucket: a serving process's watched view sees the result
    view = TipStatsView()
    serving = EventsRuntime(runtime.settings, CollectorRegistry(), tip_view=view, name="serve")
    await serving.start(wait=True)
    try:

        async def seen() -> bool:
            stats = view.snapshot().get("sleep-001")
            return stats is not None and stats.impressions == 4

        await eventually(seen, what="the tip view shows the aggregate")
        assert view.snapshot()["sleep-001"].reward_sum == pytest.approx(tip["reward_sum"])
    finally:
        await serving.stop()


async def test_archiver_writes_each_event_once_readable_with_duckdb(
    runtime: EventsRuntime, nc: NATS, tmp_path: Path
) -> None:
    js = nc.jetstream()
    ids = []
    for i in range(50):
        s, d, eid = signal(f"u{i % 5}", ts=f"2026-11-{26 + i % 2}T10:00:00+00:00")
        ids.append(eid)
        await publish(js, s, d, eid)
    await publish(js, s, d, eid)  # a duplicate publish
    archive = runner(runtime, "archive-signals")

    async def archived() -> bool:
        return archive.state.processed >= 50

    await eventually(archived, what="archived")
    root = runtime.settings.data_dir / "offline" / "signals"
    assert sorted(p.name for p in root.iterdir()) == ["date=2026-11-26", "date=2026-11-27"]
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT event_id, count(*) FROM '{root}/*/*.parquet' GROUP BY event_id"
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert all(r[1] == 1 for r in rows)
    # A crash between the file rename and the ack: the batch comes again, nothing is added.
    handler = archive.handler
    from tipml.events.archive import Archiver

    restarted = Archiver("SIGNALS", runtime.settings.data_dir / "offline")
    again = await restarted.handle(
        [Item(seq, "", handler.parse("signals.x", b"{}")[1]) for seq in range(1, 51)]
    )
    assert again.applied == 0
    assert again.duplicates == 50
    total = con.execute(f"SELECT count(*) FROM '{root}/*/*.parquet'").fetchone()
    assert total == (50,)


async def test_state_file_and_metrics(runtime: EventsRuntime, nc: NATS) -> None:
    js = nc.jetstream()
    for _ in range(5):
        s, d, eid = signal("frank")
        await publish(js, s, d, eid)
    path = runtime.settings.data_dir / "state" / "signals-features.json"

    async def written() -> bool:
        return path.exists() and orjson.loads(path.read_bytes())["processed"] == 5

    await eventually(written, what="state file")
    state = orjson.loads(path.read_bytes())
    assert state["consumer"] == "signals-features"
    assert state["stream"] == "SIGNALS"
    assert state["last_acked_seq"] == 5
    assert state["duplicates"] == 0
    assert state["dead_lettered"] == 0
    assert state["pending"] == 0
    assert state["connected"] is True
    for key in ("last_error", "updated_at", "last_fetch_at", "ack_floor", "pid"):
        assert key in state
    assert not list(path.parent.glob("*.tmp"))  # written atomically
    assert runtime.health()["consumer:signals-features"][0] is True


def test_online_features_read_out_is_point_in_time() -> None:
    events = [
        parse_signal(*signal("g", ts=ts)[:2])
        for ts in (
            "2026-11-20T08:00:00+00:00",
            "2026-11-26T09:10:00+00:00",
            "2026-11-27T09:50:00+00:00",
            "2026-11-27T09:58:00+00:00",
        )
    ]
    state = apply_signals(empty_user_state(), events)
    at = calendar.timegm(time.strptime("2026-11-27 10:00:00", "%Y-%m-%d %H:%M:%S"))
    feats = materialize(state, at)
    assert feats["signal_counts_1h"] == {"task.completed": 2}
    assert feats["signal_counts_24h"] == {"task.completed": 2}
    assert feats["signal_counts_7d"] == {"task.completed": 3}
    assert feats["signal_counts_total"] == {"task.completed": 4}
    assert feats["streak_days"] == 2
    earlier = materialize(state, at - 3 * 86400)  # before the later events: they do not count
    assert earlier["signal_counts_total"] == {"task.completed": 4}  # all-time, by definition
    assert earlier["signal_counts_7d"] == {"task.completed": 1}
    assert earlier["last_seen"] == "2026-11-20T08:00:00+00:00"

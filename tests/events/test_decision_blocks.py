"""The decision log sends the ``/score`` decisions recorded while a publish is in flight as one
message, a block (ADR 0028); each decision is still found by its id, archived once as its own
row and kept by compaction.

The finding (two ``tipml serve`` workers at saturation, 32 connections, CPU per request of the
workers and nats-server from ``/proc`` as ``bench/bench_score_cpu.py`` reads it; 2026-12-01
05:27 UTC): 813-833 µs with one message per decision, 692-697 with no consumers (no archiver),
578-664 in a lab build whose log sent nothing. What a message costs — the publish and its ack,
the server's store, the archiver's fetch and ack — was up to a third of a request's CPU.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.events.helpers import events_settings, eventually
from tipml.events import decisions as decisions_module
from tipml.events.archive import Archiver, compact
from tipml.events.bus import DECISIONS, EmbeddedNats, provision
from tipml.events.consumer import ConsumerRunner
from tipml.events.decisions import (
    BATCH_HEADER,
    DecisionLog,
    block_key,
    lookup_decision,
    message_decisions,
)
from tipml.events.metrics import EventMetrics


def _decision(decision_id: str, user: str) -> dict[str, Any]:
    return {
        "decision_id": decision_id,
        "kind": "score",
        "user_id": user,
        "ts": "2026-12-01T06:00:00+00:00",
        "candidates": {"tip_id": ["a", "b"], "score": [0.2, 0.1], "rank": [1, 2]},
    }


def _burst(log: DecisionLog, n: int, users: str) -> list[str]:
    """``n`` requests answered (their ids reserved) before any is recorded — as ``/score``
    records after the answer is sent — then recorded, users ``<users>-<i>``."""
    reserved = [log.new_id("score") for _ in range(n)]
    for i, decision_id in enumerate(reserved):
        log.record("score", decision_id, _decision(decision_id, f"{users}-{i}"))
    return reserved


async def _stream_messages(nc: NATS) -> list[Any]:
    js = nc.jetstream()
    info = await js.stream_info(DECISIONS)
    return [
        await js.get_msg(DECISIONS, seq)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


async def test_decisions_recorded_while_a_publish_is_in_flight_go_out_as_one_message(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    settings = events_settings(tmp_path, nats.url)
    await provision(nc, settings)
    log = DecisionLog(tmp_path / "spill", EventMetrics(CollectorRegistry()), batch_max=64)
    log.start(lambda: nc)
    ids: list[str] = []
    # ten bursts of 50 requests while the loop is busy with them
    for burst in range(10):
        ids += _burst(log, 50, f"u{burst}")
        await asyncio.sleep(0.01)

    async def published() -> bool:
        return log.published == 500

    await eventually(published, timeout_s=30, what="500 decisions published")
    await log.stop()
    assert len(set(ids)) == 500
    assert log.dropped == 0
    messages = await _stream_messages(nc)
    assert len(messages) <= 20, f"{len(messages)} messages for 500 decisions"
    assert log.blocks == len(messages)
    held = [
        (subject, data)
        for m in messages
        for subject, data in message_decisions(m.subject, m.data or b"", m.headers)
    ]
    assert [s.rsplit(".", 1)[1] for s, _ in held] == ids  # each once, in order
    assert all(int((m.headers or {})[BATCH_HEADER]) <= 64 for m in messages)
    js = nc.jetstream()
    for n in (0, 49, 50, 255, 499):
        found = await lookup_decision(js, ids[n])
        assert found is not None
        assert found["decision_id"] == ids[n]
        assert found["candidates"] == [
            {"tip_id": "a", "score": 0.2, "rank": 1},
            {"tip_id": "b", "score": 0.1, "rank": 2},
        ]
    assert await lookup_decision(js, f"{block_key(ids[0])}-999") is None


async def test_a_block_waits_for_a_late_record_and_gives_up_on_one_never_made(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decisions_module, "_ABANDON_S", 0.5)
    await provision(nc, events_settings(tmp_path, nats.url))
    log = DecisionLog(tmp_path / "spill", EventMetrics(CollectorRegistry()))
    log.start(lambda: nc)
    late, never, prompt = (log.new_id("score") for _ in range(3))
    log.record("score", prompt, _decision(prompt, "u1"))
    await asyncio.sleep(0.2)  # the publisher closed the block: it waits for the other two
    assert log.published == 0
    log.record("score", late, _decision(late, "u2"))
    started = time.monotonic()

    async def published() -> bool:
        return log.published == 2

    await eventually(published, timeout_s=10, what="the block sent without the id never made")
    assert time.monotonic() - started > 0.1  # it waited for the missing one first
    assert log.dropped == 1
    [message] = await _stream_messages(nc)
    ids = [
        s.rsplit(".", 1)[1]
        for s, _ in message_decisions(message.subject, message.data, message.headers)
    ]
    assert ids == [late, prompt]
    assert await lookup_decision(nc.jetstream(), never) is None
    # an id of a block now sent, recorded after all (a request stalled past the wait): it
    # goes out as its own message, and is found
    log.record("score", never, _decision(never, "u3"))
    await eventually(lambda: _n(log, 3), timeout_s=10, what="the late decision on its own")
    found = await lookup_decision(nc.jetstream(), never)
    assert found is not None
    assert found["user_id"] == "u3"
    await log.stop()


async def _n(log: DecisionLog, n: int) -> bool:
    return log.published == n


async def test_blocks_are_archived_one_row_per_decision_once_and_compaction_keeps_them(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    settings = events_settings(tmp_path, nats.url, consumer_ack_wait_s=10)
    bus = await provision(nc, settings)
    log = DecisionLog(tmp_path / "spill", EventMetrics(CollectorRegistry()))
    log.start(lambda: nc)
    ids: list[str] = []
    for burst in range(6):
        ids += _burst(log, 30, f"u{burst}")
        await eventually(lambda b=burst: _n(log, 30 * (b + 1)), timeout_s=10, what="a block out")
    await log.stop()
    assert len(await _stream_messages(nc)) == 6
    # two archivers of one group, one after the other: the second finds nothing left to write
    for _ in range(2):
        runner = ConsumerRunner(
            bus, Archiver(DECISIONS, settings.archive), settings, EventMetrics(CollectorRegistry())
        )
        await runner.start()

        async def acked(r: ConsumerRunner = runner) -> bool:
            return r.state.last_acked_seq >= 6 or r.state.ack_floor >= 6

        await eventually(acked, timeout_s=20, what="the blocks archived")
        await runner.stop()
    location = settings.archive
    [part] = location.parts("decisions")
    table = location.read(part)
    assert table.column("decision_id").to_pylist() == ids  # each once, in order
    assert table.column("subject").to_pylist() == [f"ml.decisions.score.{i}" for i in ids]
    assert table.column("user_id").to_pylist() == [f"u{b}-{i}" for b in range(6) for i in range(30)]
    assert all(table.column("valid").to_pylist())
    assert sorted(set(table.column("stream_seq").to_pylist())) == list(range(1, 7))
    # a part written twice (an archiver stalled past ack_wait): compaction keeps one row per
    # decision — not one per stream sequence, which would keep 6 of 180
    location.write(part.replace(".parquet", "-1.parquet"), table)
    [done] = compact(location, streams=("decisions",))
    assert (done.files_before, done.rows_before, done.rows_after) == (2, 360, 180)
    [merged] = location.parts("decisions")
    assert sorted(location.read(merged).column("decision_id").to_pylist()) == sorted(ids)

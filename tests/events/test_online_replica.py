"""Serving's in-memory replica of the users' online features (``TIPML_ONLINE_READ=replica``)
and the snapshot views kept by a bucket's watch, against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.events.helpers import events_settings, eventually, publish, signal
from tipml.domain.records import kv_key
from tipml.domain.tips import TipStatsView
from tipml.events.bus import TIP_STATS_BUCKET, USER_FEATURES_BUCKET, EmbeddedNats
from tipml.events.runtime import EventsRuntime


async def _started(tmp_path: Path, url: str, **kwargs: Any) -> EventsRuntime:
    runtime = EventsRuntime(
        events_settings(tmp_path, url), CollectorRegistry(), consumers=("signals",), **kwargs
    )
    await runtime.start(wait=True)
    return runtime


async def test_replica_serves_the_buckets_values_without_a_round_trip(
    tmp_path: Path, nats: EmbeddedNats, nc: NATS
) -> None:
    js = nc.jetstream()
    runtime = await _started(tmp_path, nats.url, user_replica=True)
    try:
        for user, n in (("u-1", 3), ("u/2 odd", 2)):  # the second needs an encoded key
            for _ in range(n):
                await publish(js, *signal(user))

        async def both_seen() -> bool:
            one = await runtime.user_features("u-1")
            two = await runtime.user_features("u/2 odd")
            # both users' every signal: the consumer applies them in batches, so "u/2 odd" may
            # be seen with one of its two before the other lands (a flake of 2026-12-01)
            return bool(
                one
                and two
                and one["signal_counts_total"] == {"task.completed": 3}
                and two["signal_counts_total"] == {"task.completed": 2}
            )

        await eventually(both_seen, what="signals in the replica")
        via_replica = await runtime.user_features("u/2 odd")
        assert via_replica is not None
        assert via_replica["signal_counts_total"] == {"task.completed": 2}
        assert runtime.health()["user_replica"] == (
            True,
            f"watching {USER_FEATURES_BUCKET}: 2 keys",
        )

        # the same answer a KV get gives (the replica is only a faster read path) ...
        replica_watch = runtime._users
        assert replica_watch is not None
        held, replica_watch.replica = replica_watch.replica, None
        via_get = await runtime.user_features("u/2 odd")
        replica_watch.replica = held
        assert via_get is not None
        assert via_get["signal_counts_total"] == via_replica["signal_counts_total"]

        # ... and no KV read is made for it: with the bucket handle gone, reads still answer
        runtime._user_kv = None
        assert (await runtime.user_features("u-1")) is not None
        assert await runtime.user_features("nobody") is None  # unknown: no fallback read

        # a deleted key leaves the replica
        kv = await js.key_value(USER_FEATURES_BUCKET)
        await kv.delete(kv_key("u-1"))

        async def forgotten() -> bool:
            return await runtime.user_features("u-1") is None

        await eventually(forgotten, what="delete reaches the replica")
    finally:
        await runtime.stop()


async def test_without_replica_reads_ask_the_bucket(
    tmp_path: Path, nats: EmbeddedNats, nc: NATS
) -> None:
    js = nc.jetstream()
    runtime = await _started(tmp_path, nats.url)
    try:
        await publish(js, *signal("u-1"))

        async def seen() -> bool:
            return await runtime.user_features("u-1") is not None

        await eventually(seen, what="signal in the bucket")
        assert "user_replica" not in runtime.health()
        runtime._user_kv = None
        assert await runtime.user_features("u-1") is None  # the read path was the bucket
    finally:
        await runtime.stop()


async def test_a_snapshot_view_refreshes_under_a_steady_stream_of_updates(
    tmp_path: Path, nats: EmbeddedNats, nc: NATS
) -> None:
    """The tip view used to be swapped in only after 0.2 s without any update: under steady
    feedback (an update every 50 ms here) serving never saw new aggregates."""
    js = nc.jetstream()
    view = TipStatsView()
    runtime = await _started(tmp_path, nats.url, tip_view=view)
    try:
        kv = await js.key_value(TIP_STATS_BUCKET)
        seen_during: set[int] = set()
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 2.0:
            n += 1
            state = {"n": n, "reward_sum": float(n), "reactions": {}, "last_ts": None}
            await kv.put("tip-a", orjson.dumps({"s": state, "d": {}}))
            await asyncio.sleep(0.05)
            stats = view.snapshot().get("tip-a")
            if stats is not None:
                seen_during.add(stats.impressions)
        # several distinct values were visible while updates kept coming, the last ones recent
        assert len(seen_during) >= 5, seen_during
        assert max(seen_during) >= n - 5
    finally:
        await runtime.stop()

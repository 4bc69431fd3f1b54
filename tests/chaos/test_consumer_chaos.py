"""Chaos: consumer processes SIGKILLed at random points and nats-server restarts while events
flow, with duplicates inside and outside JetStream's duplicate window. Afterwards every user's
count is exact: nothing lost, nothing counted twice, nothing dead-lettered.

CI runs a reduced form (5,000 events, 30 kills, 2 server restarts); the full one —
20,000 events, 100 kills, 5 restarts — runs with ``TIPML_CHAOS_FULL=1``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from tests.events.helpers import consumer_process, events_settings, user_total
from tipml.events.bus import DLQ, EmbeddedNats, connect, provision

FULL = os.environ.get("TIPML_CHAOS_FULL") == "1"
EVENTS = 20_000 if FULL else 5_000
KILLS = 100 if FULL else 30
RESTARTS = 5 if FULL else 2
USERS = [f"chaos-{i}" for i in range(200)]
WINDOW_S = 2.0  # a short duplicate window, so "outside the window" happens within the test


def consumer(url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    return consumer_process(
        url,
        data_dir,
        TIPML_CONSUMER_BATCH="100",
        TIPML_DUPLICATE_WINDOW_S=str(WINDOW_S),
        TIPML_STATE_INTERVAL_S="0.5",
    )


async def publish_until_acked(nc: NATS, subject: str, data: bytes, msg_id: str) -> None:
    js = nc.jetstream(timeout=2)
    while True:
        try:
            await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            return
        except Exception:  # the server is restarting: try again, same message id
            await asyncio.sleep(0.2)


async def run_chaos(tmp_path: Path) -> tuple[Counter[str], dict[str, int], int, int]:
    server = EmbeddedNats(tmp_path / "nats").start()
    settings = events_settings(tmp_path, server.url, duplicate_window_s=WINDOW_S)
    nc = await connect(server.url, "chaos-publisher")
    await provision(nc, settings)
    rng = random.Random(20261128)
    truth: Counter[str] = Counter()
    late: list[tuple[float, bytes, str]] = []  # re-published after the window, same msg id
    duration = KILLS * 0.9  # the kills pace the run; the events are spread over it
    published = asyncio.Event()

    async def publisher() -> None:
        started = time.monotonic()
        for i in range(EVENTS):
            user = rng.choice(USERS)
            eid = str(uuid.uuid4())
            body = orjson.dumps(
                {"event_id": eid, "user_id": user, "ts": "2026-11-28T10:00:00Z", "attrs": {}}
            )
            await publish_until_acked(nc, "signals.task.completed", body, eid)
            truth[user] += 1
            roll = rng.random()
            if roll < 0.08:  # a producer's retry under a new message id, inside the window
                await publish_until_acked(nc, "signals.task.completed", body, f"{eid}-retry")
            elif roll < 0.12:  # the phone uploads it again later: same id, outside the window
                late.append((time.monotonic() + WINDOW_S + 1.0, body, eid))
            while late and late[0][0] <= time.monotonic():
                _, old, old_id = late.pop(0)
                await publish_until_acked(nc, "signals.task.completed", old, old_id)
            ahead = started + duration * (i + 1) / EVENTS - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await asyncio.sleep(WINDOW_S + 1.2)
        for _, old, old_id in late:
            await publish_until_acked(nc, "signals.task.completed", old, old_id)
        published.set()

    async def killer() -> int:
        kills = 0
        data_dir = tmp_path / "consumer"
        restart_at = {round(KILLS * (k + 1) / (RESTARTS + 1)) for k in range(RESTARTS)}
        while kills < KILLS:
            proc = consumer(server.url, data_dir)
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            if kills in restart_at:
                await asyncio.to_thread(server.stop)
                await asyncio.sleep(0.5)
                await asyncio.to_thread(server.start)
        return kills

    kills, _ = await asyncio.gather(killer(), publisher())
    await published.wait()
    final = consumer(server.url, tmp_path / "consumer")
    js = nc.jetstream()
    counts: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                info = await js.consumer_info("SIGNALS", "signals-features")
            except NotFoundError:  # the final consumer is still starting
                await asyncio.sleep(0.5)
                continue
            if info.num_pending == 0 and info.num_ack_pending == 0:
                counts = {u: await user_total(js, u) for u in truth}
                if counts == dict(truth):
                    break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # anything still to be redelivered would show up now
        counts = {u: await user_total(js, u) for u in truth}
        dead = (await js.stream_info(DLQ)).state.messages
    finally:
        final.terminate()
        final.wait(30)
        await nc.close()
        server.stop()
    return truth, counts, int(dead), kills


def test_kills_restarts_and_duplicates_lose_nothing_and_count_nothing_twice(
    tmp_path: Path,
) -> None:
    truth, counts, dead, kills = asyncio.run(run_chaos(tmp_path))
    assert kills == KILLS
    assert sum(truth.values()) == EVENTS
    lost = {u: truth[u] - counts.get(u, 0) for u in truth if counts.get(u, 0) < truth[u]}
    twice = {u: counts[u] - truth[u] for u in truth if counts.get(u, 0) > truth[u]}
    assert lost == {}, f"lost: {lost}"
    assert twice == {}, f"double-counted: {twice}"
    assert dead == 0

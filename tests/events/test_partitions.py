"""Keyed signals and partitioned ownership of users (ADR 0019), against a real nats-server:
the stream stores each user's keyed signals in one partition, two ``tipml consume --member``
processes each own their partitions and write without meeting the other's revisions, a keyed
event whose token is not its user's is dead-lettered while the stream flows on, and an event
sent keyed and unkeyed counts once."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter, defaultdict
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
from tipml.domain.events import keyed_signal_subject, signal_subject
from tipml.events.bus import SIGNALS, EmbeddedNats, provision
from tipml.events.dlq import dead_letters, replay
from tipml.events.runtime import EventsRuntime


def keyed(user: str, kind: str = "task.completed") -> tuple[str, bytes, str]:
    _, data, eid = signal(user, kind)
    return keyed_signal_subject(user, kind), data, eid


async def test_the_stream_stores_each_users_keyed_signals_in_one_partition(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    bus = await provision(nc, events_settings(tmp_path, nats.url, signal_partitions=4))
    users = [f"u{i}" for i in range(40)] + ["Ann Lee", "a.b@example.com"]
    for _ in range(3):
        for user in users:
            await publish(bus.js, *keyed(user))
    await publish(bus.js, *signal("u0"))  # unkeyed: stored as published
    partitions: dict[str, set[int]] = defaultdict(set)
    info = await bus.js.stream_info(SIGNALS)
    subjects = [(await bus.js.get_msg(SIGNALS, seq)).subject for seq in range(1, 1 + 127)]
    assert info.state.messages == 127
    assert subjects[-1] == "signals.task.completed"
    for subject in subjects[:-1]:
        parsed = signal_subject(subject)
        assert subject.startswith("signals-by-partition.")
        assert parsed.partition is not None
        assert parsed.kind == "task.completed"
        assert parsed.user_token is not None
        partitions[parsed.user_token].add(parsed.partition)
    assert all(len(p) == 1 for p in partitions.values())  # a user: always one partition
    used = {p for ps in partitions.values() for p in ps}
    assert used == {0, 1, 2, 3}  # 42 users spread over every partition


async def test_a_process_without_the_setting_keeps_the_streams_partitions(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    """Every process provisions the streams at start: one that leaves
    TIPML_SIGNAL_PARTITIONS unset (a serve replica) must not undo a consumer's setting."""
    first = await provision(nc, events_settings(tmp_path, nats.url))
    assert first.signal_partitions == 1  # a new stream
    assert await provision(nc, events_settings(tmp_path, nats.url, signal_partitions=4))
    unset = await provision(nc, events_settings(tmp_path, nats.url))
    assert unset.signal_partitions == 4
    await publish(unset.js, *keyed("u7"))
    stored = (await unset.js.get_msg(SIGNALS, 1)).subject
    assert signal_subject(stored).partition in {0, 1, 2, 3}
    info = await unset.js.stream_info(SIGNALS)
    assert info.config.subject_transform is not None
    assert "partition(4,1)" in info.config.subject_transform.dest
    # a member that would own none of the stream's partitions is refused at start, by name
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tipml",
        "consume",
        "--only",
        "signals",
        "--member",
        "5/6",
        env={**os.environ, "TIPML_NATS_URL": nats.url, "TIPML_DATA_DIR": str(tmp_path / "d")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, out
    assert b"owns none of the stream's 4 signal partitions" in out


async def test_two_members_own_their_users_and_never_meet_each_others_writes(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    await provision(nc, events_settings(tmp_path, nats.url, signal_partitions=4))
    js = nc.jetstream()
    procs = [
        consumer_process(
            nats.url,
            tmp_path / f"data{k}",
            TIPML_SIGNAL_PARTITIONS="4",
            TIPML_CONSUMER_MEMBER=f"{k}/2",
            TIPML_STATE_INTERVAL_S="0.2",
        )
        for k in range(2)
    ]
    truth: Counter[str] = Counter()
    users = [f"m{i}" for i in range(30)]
    try:
        for round_ in range(20):  # every user in every batch of both members: hot keys
            for user in users:
                await publish(js, *keyed(user))
                truth[user] += 1
            if round_ % 5 == 0:
                await asyncio.sleep(0.2)

        async def counted() -> bool:
            return all([await user_total(js, u) == n for u, n in truth.items()])

        await eventually(counted, timeout_s=60, what="every keyed signal counted once")

        def states() -> dict[str, dict[str, int]]:
            out = {}
            for k in range(2):
                for path in (tmp_path / f"data{k}" / "state").glob("signals-features*.json"):
                    out[f"{k}:{path.stem}"] = json.loads(path.read_text())
            return out

        async def written() -> bool:
            s = states()
            return sum(v["processed"] for v in s.values()) == sum(truth.values())

        await eventually(written, timeout_s=20, what="both members' state files current")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.to_thread(proc.wait)
    final = states()
    # member 0 owns partitions 0 and 2, member 1 owns 1 and 3; both share the unkeyed durable
    assert set(final) == {
        "0:signals-features",
        "0:signals-features-p0",
        "0:signals-features-p2",
        "1:signals-features",
        "1:signals-features-p1",
        "1:signals-features-p3",
    }
    assert all(state["conflicts"] == 0 for state in final.values()), final
    assert sum(final[f"0:signals-features-p{p}"]["processed"] for p in (0, 2)) > 0
    assert sum(final[f"1:signals-features-p{p}"]["processed"] for p in (1, 3)) > 0


async def test_a_keyed_signal_with_another_users_token_is_dead_lettered(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    settings = events_settings(tmp_path, nats.url, signal_partitions=2)
    events = EventsRuntime(settings, CollectorRegistry(), consumers=("signals",))
    await events.start(wait=True)
    try:
        js = nc.jetstream()
        _, data, eid = signal("victim")
        await publish(js, "signals-by-user.mallory.task.completed", data, eid)
        for _ in range(3):
            await publish(js, *keyed("victim"))

        async def flowed() -> bool:
            return await user_total(js, "victim") == 3

        await eventually(flowed, what="the good events after the poison one counted")
        letters = [letter async for _, letter in dead_letters(events.bus)]  # type: ignore[arg-type]
    finally:
        await events.stop()
    assert len(letters) == 1
    assert letters[0]["error"] == "invalid_event"
    assert "subject" in letters[0]["detail"]
    assert "'mallory'" in letters[0]["detail"]
    assert orjson.loads(letters[0]["payload"])["event_id"] == eid
    assert await user_total(js, "mallory") == 0


async def test_an_event_sent_unkeyed_and_keyed_counts_once(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    settings = events_settings(tmp_path, nats.url, signal_partitions=3)
    events = EventsRuntime(settings, CollectorRegistry(), consumers=("signals",))
    await events.start(wait=True)
    try:
        js = nc.jetstream()
        subject, data, eid = signal("twice")
        await publish(js, subject, data, eid)
        # a producer switching to keyed subjects re-sends its queue under new message ids
        await publish(js, keyed_signal_subject("twice", "task.completed"), data, f"{eid}-k")
        await publish(js, *keyed("twice"))

        async def settled() -> bool:
            done = sum(r.state.processed + r.state.duplicates for r in events.runners)
            return done == 3

        await eventually(settled, what="three deliveries handled")
        duplicates = sum(r.state.duplicates for r in events.runners)
    finally:
        await events.stop()
    assert await user_total(js, "twice") == 2
    assert duplicates == 1


async def test_a_replayed_keyed_dead_letter_goes_to_its_users_partition_of_today(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    """A dead letter holds the subject as stored, with the partition of its day. Replayed to
    the subject it was published to, it is partitioned by today's count — and reaches the
    consumer that owns the user now, even after the partitions were shrunk (the old
    partition's durable is no longer read)."""
    js = nc.jetstream()
    _, data, eid = signal("alice", ts="not a time")  # invalid: dead-lettered at once

    async def letters() -> list[dict[str, object]]:
        assert events.bus is not None
        return [letter async for _, letter in dead_letters(events.bus)]

    async def lettered() -> bool:
        return len(await letters()) == 1

    events = EventsRuntime(
        events_settings(tmp_path, nats.url, signal_partitions=4),
        CollectorRegistry(),
        consumers=("signals",),
    )
    await events.start(wait=True)
    try:
        await publish(js, keyed_signal_subject("alice", "task.completed"), data, eid)
        await eventually(lettered, what="the first dead letter")
        (first,) = await letters()
    finally:
        await events.stop()
    events = EventsRuntime(
        events_settings(tmp_path, nats.url, signal_partitions=1),
        CollectorRegistry(),
        consumers=("signals",),
    )
    await events.start(wait=True)
    try:
        assert events.bus is not None
        replayed = await replay(events.bus)
        await eventually(lettered, what="the replayed event dead-lettered again")
        (again,) = await letters()
    finally:
        await events.stop()
    assert replayed[0]["subject"] == "signals-by-user.alice.task.completed"
    assert signal_subject(str(first["subject"])).partition == 3  # alice's of 4 (NATS's hash)
    assert first["consumer"] == "signals-features-p3"
    assert again["subject"] == "signals-by-partition.0.alice.task.completed"
    assert again["consumer"] == "signals-features-p0"

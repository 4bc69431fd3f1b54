"""One archiver group, one log: several archivers share the durable consumers and one location
(``TIPML_ARCHIVE_DIR``, a shared directory, or ``TIPML_ARCHIVE_URL``, an object store), and each
stream sequence is written once across all of them — also when an archiver wrote a batch and
died before acking it, and the batch went to another."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.events.helpers import events_settings, eventually, publish, signal
from tipml.events.archive import Archiver
from tipml.events.bus import SIGNALS, EmbeddedNats, connect, provision
from tipml.events.consumer import ConsumerRunner, consumer_config
from tipml.events.keyed import Item
from tipml.events.location import ArchiveLocation
from tipml.events.metrics import EventMetrics


def archived_seqs(root: ArchiveLocation | Path) -> Counter[int]:
    location = ArchiveLocation.of(root)
    seqs: Counter[int] = Counter()
    for path in location.parts("signals"):
        seqs.update(location.read(path, columns=["stream_seq"]).column("stream_seq").to_pylist())
    return seqs


async def test_two_archivers_write_one_log_exactly_once(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path, archive_settings: dict[str, Any]
) -> None:
    settings = [
        events_settings(tmp_path / name, nats.url, consumer_ack_wait_s=2.0, **archive_settings)
        for name in ("a", "b", "crashed")
    ]
    shared = settings[0].archive
    assert all(s.archive.url == shared.url for s in settings)
    # Two archiver processes start (their own connections and data dirs, one location)
    group = [Archiver(SIGNALS, s.archive) for s in settings[:2]]
    js = nc.jetstream()
    bus = await provision(nc, settings[0])
    await bus.js.add_consumer(SIGNALS, config=consumer_config(group[0], settings[0]))
    ts = ["2026-11-26T10:00:00+00:00", "2026-11-27T10:00:00+00:00"]
    for i in range(300):
        await publish(js, *signal(f"u{i % 7}", ts=ts[i % 2]))

    # A third archiver takes 100 messages, writes them and dies before its ack.
    doomed = await connect(nats.url, "archiver-crashed")
    sub = await doomed.jetstream().pull_subscribe_bind(durable=group[0].name, stream=SIGNALS)
    msgs = await sub.fetch(100, timeout=5)
    crashed = Archiver(SIGNALS, settings[2].archive)
    items = []
    for msg in msgs:
        event_id, event = crashed.parse(msg.subject, msg.data)
        items.append(Item(msg.metadata.sequence.stream, event_id, event))
    written = await crashed.handle(items)
    assert written.applied == 100
    await doomed.close()  # no ack: the 100 are redelivered after ack_wait, to a or b

    runners = []
    connections = []
    for n, (archiver, s) in enumerate(zip(group, settings[:2], strict=True)):
        conn = await connect(nats.url, f"archiver-{n}")
        connections.append(conn)
        runner = ConsumerRunner(
            await provision(conn, s), archiver, s, EventMetrics(CollectorRegistry())
        )
        await runner.start()
        runners.append(runner)
    try:
        for _ in range(10):  # more traffic while both run, in bursts both fetch from
            for i in range(30):
                await publish(js, *signal(f"v{i}", ts=ts[i % 2]))
            await asyncio.sleep(0.05)

        async def done() -> bool:
            return sum(r.state.processed + r.state.duplicates for r in runners) >= 600

        await eventually(done, timeout_s=30, what="every message archived or recognised")
        await asyncio.sleep(2.5)  # anything still to redeliver would come within ack_wait
    finally:
        for runner in runners:
            await runner.stop()
        for conn in connections:
            await conn.close()

    seqs = archived_seqs(shared)
    assert sorted(seqs) == list(range(1, 601))  # nothing lost
    assert [s for s, n in seqs.items() if n > 1] == []  # nothing twice, across three archivers
    assert sum(r.state.processed for r in runners) == 500
    assert sum(r.state.duplicates for r in runners) == 100  # the crashed one's batch, recognised
    assert all(r.state.processed > 0 for r in runners), [r.state.processed for r in runners]
    info = await js.consumer_info(SIGNALS, group[0].name)
    assert info.num_pending == 0
    assert info.num_ack_pending == 0


async def test_a_redelivered_batch_is_checked_against_the_group(
    tmp_path: Path, archive_settings: dict[str, Any]
) -> None:
    """An archiver started before another wrote a batch learns of it when that batch is
    redelivered to it (a first delivery cannot have been written by anyone: no listing)."""
    location = events_settings(tmp_path, "nats://unused", **archive_settings).archive
    archiver = Archiver(SIGNALS, location)
    other = Archiver(SIGNALS, location)
    event = archiver.parse("signals.x", b'{"event_id": "e", "ts": "2026-11-27T10:00:00Z"}')[1]
    first = await archiver.handle([Item(seq, "e", event) for seq in range(11, 21)])
    assert (first.applied, first.duplicates) == (10, 0)
    await other.handle([Item(seq, "e", event) for seq in range(1, 11)])  # after archiver's start
    again = await archiver.handle(
        [Item(seq, "e", event, delivered=2 if seq < 6 else 1) for seq in range(1, 11)]
    )
    assert (again.applied, again.duplicates) == (0, 10)  # seq 1..5 redelivered: the disk read
    assert sorted(archived_seqs(location)) == list(range(1, 21))

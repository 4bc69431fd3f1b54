"""The archiver gathers a batch before writing it (``TIPML_ARCHIVE_LINGER_S``): events that
trickle in become one Parquet part, not one part per pull — fewer, larger files for readers and
less CPU per event (a part's fixed cost, ``bench/bench_score_cpu.py``). Nothing is lost or
written twice, and a process stopped mid-linger loses nothing either."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from tests.conftest import AUTH, GatewayFile, make_settings, wait_gateway
from tests.events.helpers import events_settings, eventually, publish, signal
from tests.events.test_archive_group import archived_seqs
from tipml.events.archive import Archiver
from tipml.events.bus import SIGNALS, EmbeddedNats, provision
from tipml.events.consumer import ConsumerRunner
from tipml.events.location import ArchiveLocation
from tipml.events.metrics import EventMetrics
from tipml.serving.app import create_app
from tipml.settings import Settings


async def _trickle(
    nc: NATS, tmp_path: Path, nats: EmbeddedNats, linger_s: float
) -> ArchiveLocation:
    """Start an archiver with ``linger_s``, publish 120 signals in 12 bursts 30 ms apart (an
    event stream at ~400/s), wait until all are archived; the archive's location."""
    settings = events_settings(
        tmp_path, nats.url, archive_linger_s=linger_s, consumer_ack_wait_s=10
    )
    archiver = Archiver(SIGNALS, settings.archive, linger_s=settings.archive_linger_s)
    runner = ConsumerRunner(
        await provision(nc, settings), archiver, settings, EventMetrics(CollectorRegistry())
    )
    await runner.start()
    js = nc.jetstream()
    try:
        for burst in range(12):
            for i in range(10):
                await publish(js, *signal(f"u{burst}-{i}"))
            await asyncio.sleep(0.03)

        async def archived() -> bool:
            return runner.state.processed >= 120

        await eventually(archived, timeout_s=20, what="120 signals archived")
    finally:
        await runner.stop()
    return settings.archive


async def test_a_trickle_of_events_becomes_one_part(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    location = await _trickle(nc, tmp_path, nats, linger_s=3.0)
    parts = location.parts("signals")
    assert len(parts) == 1, parts  # before: a part per pull, one per burst or more
    seqs = archived_seqs(location)
    assert sorted(seqs) == list(range(1, 121))
    assert max(seqs.values()) == 1
    # zstd throughout; the raw payload (unique per row) without dictionary or statistics
    meta = pq.ParquetFile(parts[0]).metadata
    assert meta.num_rows == 120
    columns = {meta.schema.column(i).name: i for i in range(meta.num_columns)}
    group = meta.row_group(0)
    assert {group.column(i).compression for i in columns.values()} == {"ZSTD"}
    payload = group.column(columns["payload"])
    assert not payload.is_stats_set
    assert "PLAIN_DICTIONARY" not in payload.encodings
    assert "RLE_DICTIONARY" not in payload.encodings
    assert group.column(columns["user_id"]).is_stats_set


async def test_without_linger_each_pull_is_a_part(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    """The contrast that makes the first test mean something: the same trickle with
    ``archive_linger_s=0`` is written as several parts (the old behaviour)."""
    location = await _trickle(nc, tmp_path, nats, linger_s=0.0)
    assert len(location.parts("signals")) > 1
    assert sorted(archived_seqs(location)) == list(range(1, 121))


async def test_stopping_mid_linger_loses_nothing(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    """Stopped while it gathers: what it held is given back (nak'ed) or written, and a second
    archiver on the same durable archives the rest — every sequence once."""
    js = nc.jetstream()
    settings = events_settings(
        tmp_path / "a", nats.url, archive_linger_s=5.0, consumer_ack_wait_s=10
    )
    first = ConsumerRunner(
        await provision(nc, settings),
        Archiver(SIGNALS, settings.archive, linger_s=5.0),
        settings,
        EventMetrics(CollectorRegistry()),
    )
    await first.start()
    for i in range(50):
        await publish(js, *signal(f"u{i}"))
    await asyncio.sleep(0.5)  # the first archiver is lingering over them
    await first.stop()
    later = events_settings(
        tmp_path / "b", nats.url, archive_dir=settings.archive_dir or settings.offline_dir
    )
    second = ConsumerRunner(
        await provision(nc, later),
        Archiver(SIGNALS, later.archive),
        later,
        EventMetrics(CollectorRegistry()),
    )
    await second.start()
    try:

        async def all_archived() -> bool:
            return len(archived_seqs(later.archive)) == 50

        await eventually(all_archived, timeout_s=20, what="every signal archived")
    finally:
        await second.stop()
    seqs = archived_seqs(later.archive)
    assert sorted(seqs) == list(range(1, 51))
    assert max(seqs.values()) == 1


def test_a_linger_must_end_well_inside_ack_wait(tmp_path: Path) -> None:
    """Held past ``ack_wait``, a batch would be redelivered to another archiver while the first
    still writes it."""
    with pytest.raises(ValidationError, match="TIPML_ARCHIVE_LINGER_S"):
        Settings(data_dir=tmp_path, archive_linger_s=20, consumer_ack_wait_s=30)
    assert Settings(data_dir=tmp_path, archive_linger_s=5, consumer_ack_wait_s=30)


def test_unset_the_archiver_lingers_shorter_beside_requests(tmp_path: Path) -> None:
    """A consume process lingers 0.5 s; beside ``/score`` 0.25 s, so each write of a gathered
    batch stays a small burst (ADR 0024) — both within half of ``ack_wait``."""
    unset = Settings(data_dir=tmp_path)
    assert unset.archive_linger(beside_requests=True) == 0.25
    assert unset.archive_linger(beside_requests=False) == 0.5
    short = Settings(data_dir=tmp_path, consumer_ack_wait_s=0.4)
    assert short.archive_linger(beside_requests=False) == 0.2
    assert short.archive_linger(beside_requests=True) == 0.2
    chosen = Settings(data_dir=tmp_path, archive_linger_s=2)
    assert chosen.archive_linger(beside_requests=True) == 2.0


def test_decisions_of_a_serving_process_are_archived_in_few_parts(
    tmp_path: Path, nats: EmbeddedNats, gateway_file: GatewayFile
) -> None:
    """The regression of ADR 0024: with no linger beside ``/score``, the in-process archiver
    wrote what each pull brought — at a steady request rate one Parquet file per decision (at
    200 rps, 200 files a second). 40 requests ~20 ms apart are now archived, each once, in at
    most a part per linger."""
    settings = make_settings(
        tmp_path, gateway_config=gateway_file("ok"), nats_url=nats.url, consumers="inprocess"
    )
    body = {"user_id": "u-parts", "candidates": [{"tip_id": "a"}, {"tip_id": "b"}]}
    with TestClient(create_app(settings)) as client:
        wait_gateway(client)
        ids, began = [], time.monotonic()
        for _ in range(40):
            ids.append(client.post("/score", json=body, headers=AUTH).json()["score_id"])
            time.sleep(0.02)
        elapsed = time.monotonic() - began
        folder = settings.archive.path("decisions")
        deadline = time.monotonic() + 30
        rows: list[str] = []
        while time.monotonic() < deadline:
            parts = list(Path(folder).rglob("*.parquet"))
            rows = [i for p in parts for i in pq.read_table(p).column("decision_id").to_pylist()]
            if len(rows) >= 40:
                break
            time.sleep(0.2)
    assert sorted(rows) == sorted(ids)  # every decision, once
    # a part per 0.25 s linger at most, whatever this machine's speed (no linger: ~30 parts)
    most = int(elapsed / 0.25) + 2
    assert len(parts) <= most, f"{len(parts)} parts for 40 decisions in {elapsed:.2f} s"

"""An object store that goes away pauses the archiver and loses nothing: its batches are kept and
retried (not dead-lettered), the other consumers flow on, and when the store answers again
every event is archived once. (Found by trying: botocore's "could not connect" is not an
``OSError``, so the archiver's batches went the way of a bad event — retried with back-off, then
dead-lettered.)"""

from __future__ import annotations

from pathlib import Path

import fsspec
from moto.server import ThreadedMotoServer
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.events.helpers import events_settings, eventually, publish, signal
from tests.events.test_archive_group import archived_seqs
from tipml.events.bus import EmbeddedNats
from tipml.events.runtime import EventsRuntime
from tipml.net import free_port


async def test_an_object_store_outage_pauses_the_archiver_and_loses_nothing(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path, s3_endpoint: str
) -> None:
    port = free_port()  # nothing listens here yet: the store is down
    options = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    settings = events_settings(
        tmp_path,
        nats.url,
        archive_url="s3://outage-bucket/offline",
        archive_options=options,
        consumer_max_deliver=2,  # events blamed for the failure would be dead-lettered fast
    )
    events = EventsRuntime(settings, CollectorRegistry(), consumers=("signals", "archiver"))
    await events.start(wait=True)  # the store is not read at start: every consumer starts
    store: ThreadedMotoServer | None = None
    try:
        js = nc.jetstream()
        for i in range(30):
            await publish(js, *signal(f"u{i % 4}"))
        features = next(r for r in events.runners if r.handler.name == "signals-features")
        archive = next(r for r in events.runners if r.handler.name == "archive-signals")

        async def paused() -> bool:
            return features.state.processed == 30 and archive.state.paused_retries >= 3

        await eventually(paused, timeout_s=30, what="features applied, the archiver paused")
        assert (archive.state.processed, archive.state.dead_lettered, archive.state.retried) == (
            0,
            0,
            0,
        )
        assert "ArchiveStoreError" in (archive.state.last_error or "")

        store = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        store.start()
        fsspec.filesystem("s3", **options).mkdir("outage-bucket")

        async def archived() -> bool:
            return archive.state.processed == 30

        await eventually(archived, timeout_s=30, what="everything archived once the store is back")
        assert archive.state.dead_lettered == 0
        assert sorted(archived_seqs(settings.archive)) == list(range(1, 31))
    finally:
        await events.stop()
        if store is not None:
            store.stop()

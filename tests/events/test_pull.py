"""``PullStream`` (ADR 0017) against a real nats-server: what the server owes is kept right
when requests expire, when the server restarts, and when nothing answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from tests.events.helpers import events_settings
from tipml.events.bus import SIGNALS, EmbeddedNats, provision
from tipml.events.consumer import consumer_config
from tipml.events.pull import PullStream


class _Durable:
    name = "pull-test"
    stream = SIGNALS
    filter_subject = "signals.>"


async def _stream(nc: NATS, nats: EmbeddedNats, tmp_path: Path, **kw: object) -> PullStream:
    settings = events_settings(tmp_path, nats.url)
    bus = await provision(nc, settings)
    await bus.js.add_consumer(SIGNALS, config=consumer_config(_Durable(), settings))
    pull = PullStream(nc, SIGNALS, _Durable.name, batch=100, **kw)
    await pull.start()
    return pull


async def _send(nc: NATS, *ids: str) -> None:
    js = nc.jetstream()
    for eid in ids:
        await js.publish("signals.x", orjson.dumps({"event_id": eid}))


def _ids(msgs: list[object]) -> list[str]:
    return [orjson.loads(m.data)["event_id"] for m in msgs]


async def test_expired_requests_are_replaced_and_never_pile_up(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    pull = await _stream(nc, nats, tmp_path, expires_s=0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await pull.next_batch(1.0)  # an empty stream: requests expire and are sent again
    assert time.monotonic() - started >= 1.0
    assert pull.requests >= 3  # not one request left to expire unanswered
    assert pull._owed <= pull.batch  # each expiry (408) took back what its request owed
    await _send(nc, "a", "b", "c")
    got: list[object] = []
    while len(got) < 3:
        got += await pull.next_batch(2.0)
    assert _ids(got) == ["a", "b", "c"]
    await pull.close()


async def test_a_restarted_server_is_asked_again(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    """The server forgets its waiting requests when it restarts and never says so: the
    stream writes them off after their expiry and asks again."""
    pull = await _stream(nc, nats, tmp_path, expires_s=0.5)
    await _send(nc, "before")
    before = await pull.next_batch(2.0)
    assert _ids(before) == ["before"]
    await before[0].ack_sync()  # else the restarted server may deliver it again, rightly
    await asyncio.to_thread(nats.stop)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(nats.start)
    for _ in range(100):
        if nc.is_connected:
            break
        await asyncio.sleep(0.1)
    await _send(nc, "after")
    got: list[object] = []
    deadline = time.monotonic() + 15
    while not got and time.monotonic() < deadline:
        try:
            got = await pull.next_batch(1.0)
        except TimeoutError:
            continue
    assert _ids(got) == ["after"]
    await pull.close()


async def test_no_consumer_answering_is_an_error_not_a_silent_wait(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    await provision(nc, events_settings(tmp_path, nats.url))
    pull = PullStream(nc, SIGNALS, "no-such-durable", batch=10)
    await pull.start()
    with pytest.raises(NoRespondersError):
        await pull.next_batch(2.0)
    await pull.close()


async def test_a_request_is_bounded_in_bytes_so_large_messages_never_flood_the_client(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    """A batch of 500 blocks of decisions (ADR 0028) asked the server for ~100 MB at once; a
    busy ``tipml serve`` read it slowly and the server cut the connection as a slow consumer
    (its 64 MiB ``max_pending``), every ten seconds (``scripts/up.sh``, 2026-12-01). Each
    request now asks for at most 8 MiB: 160 messages of 300 KB (48 MB) arrive over several
    requests, each once, in order, on the one connection."""
    pull = await _stream(nc, nats, tmp_path)
    pull.batch = 500
    js = nc.jetstream()
    pad = "x" * 300_000
    for i in range(160):
        await js.publish("signals.x", orjson.dumps({"event_id": f"big-{i:03d}", "pad": pad}))
    got: list[object] = []
    while len(got) < 160:
        got += await pull.next_batch(5.0)
    assert _ids(got) == [f"big-{i:03d}" for i in range(160)]
    assert pull.requests >= 48_000_000 // (8 << 20)  # no request brought more than 8 MiB
    assert nc.stats["reconnects"] == 0
    await pull.close()

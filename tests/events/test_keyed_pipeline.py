"""Pipelined compare-and-set writes (``KeyedStore.write_many``) against a real nats-server:
the same records as one-by-one writes, another writer's revision detected and merged, a stream
that does not answer surfaces as an infrastructure error with nothing remembered wrongly."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from tests.events.helpers import events_settings, signal
from tipml.domain.events import SignalEvent, parse_signal
from tipml.domain.users import apply_signals, empty_user_state
from tipml.events.bus import EmbeddedNats, provision
from tipml.events.consumer import is_transient
from tipml.events.keyed import Item, KeyedStore


def items_for(user: str, n: int, start: int) -> list[Item[SignalEvent]]:
    events = [parse_signal(*signal(user)[:2]) for _ in range(n)]
    return [Item(seq, e.event_id, e) for seq, e in enumerate(events, start=start)]


async def test_pipelined_writes_equal_one_by_one_writes(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    bus = await provision(nc, events_settings(tmp_path, nats.url))
    kv = await bus.kv("user_features")
    piped = KeyedStore(kv, empty_user_state, apply_signals)
    plain = KeyedStore(kv, empty_user_state, apply_signals, pipelined=False)
    rounds = [
        {f"p{u}": items_for(f"p{u}", 3, 100 * r + 10 * u) for u in range(50)} for r in range(3)
    ]
    for groups in rounds:  # round 1: creates (not cached); rounds 2-3: pipelined
        result = await piped.write_many(groups)
        assert (result.applied, result.duplicates, result.conflicts) == (150, 0, 0)
        mirrored = {k.replace("p", "q", 1): v for k, v in groups.items()}
        assert (await plain.write_many(mirrored)).applied == 150
    again = await piped.write_many(rounds[-1])  # a redelivered batch, from the cache
    assert (again.applied, again.duplicates) == (0, 150)
    for u in range(50):
        piped_state = await piped.state(f"p{u}")
        plain_state = await plain.state(f"q{u}")
        assert piped_state is not None
        assert piped_state["total"] == {"task.completed": 9}
        assert piped_state["total"] == plain_state["total"]
        assert piped_state["hours"] == plain_state["hours"]


async def test_another_writers_revision_is_detected_and_merged(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    bus = await provision(nc, events_settings(tmp_path, nats.url))
    kv = await bus.kv("user_features")
    ours = KeyedStore(kv, empty_user_state, apply_signals)
    theirs = KeyedStore(kv, empty_user_state, apply_signals)  # another replica
    users = [f"c{u}" for u in range(20)]
    await ours.write_many({u: items_for(u, 1, 1) for u in users})  # cached here now
    for u in users[::2]:  # the other replica writes half the keys behind our cache's back
        await theirs.write(u, items_for(u, 2, 50))
    result = await ours.write_many({u: items_for(u, 1, 100) for u in users})
    assert result.applied == 20
    assert result.conflicts == 10  # one per key written behind our back, then re-read
    for i, u in enumerate(users):
        state = await ours.state(u)
        assert state is not None
        assert state["total"] == {"task.completed": 4 if i % 2 == 0 else 2}


async def test_an_unanswered_write_is_an_infrastructure_error(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    bus = await provision(nc, events_settings(tmp_path, nats.url))
    kv = await bus.kv("user_features")
    store = KeyedStore(kv, empty_user_state, apply_signals, timeout_s=2.0)
    await store.write_many({"d0": items_for("d0", 1, 1), "d1": items_for("d1", 1, 2)})
    await bus.js.delete_stream("KV_user_features")  # nobody answers $KV.user_features.*
    with pytest.raises(NatsError) as caught:
        await store.write_many({"d0": items_for("d0", 1, 3), "d1": items_for("d1", 1, 4)})
    assert is_transient(caught.value)  # the consumer keeps the batch and retries
    assert store._cache == {}  # unconfirmed: the next write re-reads the record
    assert store._pipeline is not None
    assert store._pipeline._waiting == {}


async def test_records_not_cached_are_read_in_the_pipeline(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> None:
    """A process that did not write a key last (a restart, another replica) reads the record
    in the batch's pipeline: the events already folded in stay counted once; a deleted key
    starts again from empty after its delete marker (its event ids went with it, so the
    redelivered events count again there)."""
    bus = await provision(nc, events_settings(tmp_path, nats.url))
    kv = await bus.kv("user_features")
    first = KeyedStore(kv, empty_user_state, apply_signals)
    held = {f"r{u}": items_for(f"r{u}", 2, 10 * u) for u in range(20)}
    assert (await first.write_many(held)).applied == 40
    await kv.delete("r0")
    restarted = KeyedStore(kv, empty_user_state, apply_signals)  # an empty cache
    more = {u: items + items_for(u, 1, 500) for u, items in held.items()}  # redelivered + 1 new
    result = await restarted.write_many(more)
    assert (result.applied, result.duplicates, result.conflicts) == (19 + 3, 19 * 2, 0)
    assert restarted._pipeline is not None
    assert restarted._pipeline._reading == {}  # every read answered and let go
    for u in range(20):
        state = await restarted.state(f"r{u}")
        assert state is not None
        assert state["total"] == {"task.completed": 3}

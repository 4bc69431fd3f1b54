"""Feast behind the same online-store protocol, and its historical retrieval against the
offline builder. Real Feast (SQLite and Redis — the machine's, or one the tests start), real
bus, real archive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.events.helpers import events_settings, eventually, publish
from tipml.domain.users import USER_FEATURES
from tipml.events.bus import EmbeddedNats
from tipml.events.runtime import EventsRuntime
from tipml.features import feast_store
from tipml.features.offline import users_features_at
from tipml.features.store import OnlineFeatureStore
from tipml.settings import Settings

USERS = ["fa", "fb", "fc"]


def recent_stream() -> list[dict[str, object]]:
    start = datetime.now(UTC) - timedelta(minutes=20)
    out = []
    for i in range(45):
        out.append(
            {
                "event_id": f"fe{i}",
                "user_id": USERS[i % 3],
                "kind": ["app.opened", "task.completed", "sleep.logged"][i % 3 if i % 2 else 0],
                "ts": (start + timedelta(seconds=20 * i)).isoformat(),
                "attrs": {"title": ["Walk", "Deep work", "Nap"][i % 3]},
            }
        )
    return out


@pytest.fixture
async def loaded(
    nats: EmbeddedNats, nc: NATS, tmp_path: Path
) -> AsyncIterator[tuple[Settings, EventsRuntime, list[dict[str, object]]]]:
    settings = events_settings(tmp_path, nats.url)
    events = EventsRuntime(settings, CollectorRegistry(), consumers=("signals", "archiver"))
    await events.start(wait=True)
    stream = recent_stream()
    js = nc.jetstream()
    for e in stream:
        await publish(js, f"signals.{e['kind']}", orjson.dumps(e), str(e["event_id"]))
    runners = {r.handler.name: r for r in events.runners}

    async def done() -> bool:
        return runners["signals-features"].state.processed == len(stream) and runners[
            "archive-signals"
        ].state.processed == len(stream)

    await eventually(done, what="consumed and archived")
    yield settings, events, stream
    await events.stop()


def feast_for(settings: Settings, online: str, redis: str) -> OnlineFeatureStore:
    configured = settings.model_copy(
        update={"feast_online": online, "online_timeout_s": 5.0, "feast_redis": redis}
    )
    rows = feast_store.apply(configured)
    assert rows == 45
    feast_store.materialize(configured)
    return feast_store.FeastOnlineStore(configured)


@pytest.mark.parametrize("online", ["sqlite", "redis"])
async def test_every_online_store_returns_the_same_features(
    loaded: tuple[Settings, EventsRuntime, list[dict[str, object]]],
    online: str,
    redis_address: str,
) -> None:
    settings, events, _ = loaded
    stores: dict[str, OnlineFeatureStore] = {
        "jetstream": events,
        f"feast-{online}": feast_for(settings, online, redis_address),
    }
    for name, store in stores.items():  # the protocol's contract, for every implementation
        assert await store.user_features("nobody-here") is None, name
    values: dict[str, dict[str, Any]] = {}
    for name, store in stores.items():
        for user in USERS:
            got = await store.user_features(user)
            assert got is not None, (name, user)
            assert set(got) == {f.name for f in USER_FEATURES}
            values.setdefault(user, {})[name] = got
    for user in USERS:
        baseline, other = values[user].values()
        assert baseline == other, user
    assert values["fa"]["jetstream"]["signal_counts_total"]["app.opened"] > 0


async def test_feast_historical_retrieval_matches_the_offline_builder(
    loaded: tuple[Settings, EventsRuntime, list[dict[str, object]]],
) -> None:
    settings, _, stream = loaded
    feast_store.apply(settings)
    rows = [(str(e["user_id"]), datetime.fromisoformat(str(e["ts"]))) for e in stream[::4]]
    historical = feast_store.historical(settings, rows)
    assert len(historical) == len(rows)
    root = settings.data_dir / "offline"
    for row in historical:
        at = row["event_timestamp"].to_pydatetime()
        want = users_features_at(root, [row["user_id"]], at)[row["user_id"]]
        for feature in USER_FEATURES:
            assert row[feature.name] == want[feature.name], (row["user_id"], feature.name, at)

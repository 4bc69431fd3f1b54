"""Simulated traffic through the real app, archived by the real consumers: the log every
learning-loop test trains, evaluates, registers and shadows from (built once per module)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.conftest import AUTH, make_settings, wait_gateway
from tipml.domain.rewards import RewardTable
from tipml.events.bus import EmbeddedNats, connect
from tipml.experiments.logs import exposures
from tipml.serving.app import create_app
from tipml.settings import Settings
from tipml.sim.catalog import CATALOG
from tipml.sim.users import make_users
from tipml.testing.stub_llm import IDLE_GATEWAY_YAML

STUB_GATEWAY = IDLE_GATEWAY_YAML


@dataclass
class Traffic:
    settings: Settings
    decisions: int
    reactions: dict[str, tuple[str, str]]  # decision id -> (tip id, reaction)
    finished: datetime  # every simulated decision was made before this


def drive(
    client: TestClient,
    nats_url: str,
    n: int,
    *,
    seed: int = 3,
    candidates: int = 12,
    react_share: float = 1.0,
) -> dict[str, tuple[str, str]]:
    """``n`` /score calls by simulated users; the top tip's reaction published to JetStream."""
    rng = random.Random(seed)
    users = make_users(120, seed)
    clock = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    out: dict[str, tuple[str, str]] = {}
    events: list[tuple[str, dict[str, Any]]] = []
    for _ in range(n):
        user = rng.choice(users)
        clock += timedelta(minutes=rng.randint(1, 15))
        shown = rng.sample(CATALOG, candidates)
        body = {
            "user_id": user.user_id,
            "candidates": [
                {"tip_id": t.tip_id, "category": t.category, "tags": list(t.tags)} for t in shown
            ],
            "profile_features": user.profile_features(rng),
            "context": {"ts": clock.isoformat(), "platform": rng.choice(["ios", "android"])},
            "k": 3,
        }
        r = client.post("/score", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        scored = r.json()
        top = next(t for t in shown if t.tip_id == scored["results"][0]["tip_id"])
        if rng.random() >= react_share:
            continue
        reaction = user.react(top.category, clock, rng)
        out[scored["score_id"]] = (top.tip_id, reaction)
        eid = f"fb-{scored['score_id']}"
        events.append(
            (
                f"feedback.{reaction}",
                {
                    "event_id": eid,
                    "user_id": user.user_id,
                    "tip_id": top.tip_id,
                    "decision_id": scored["score_id"],
                    "reaction": reaction,
                    "ts": datetime.now(UTC).isoformat(),
                },
            )
        )

    async def publish() -> None:
        nc = await connect(nats_url, "sim-feedback")
        js = nc.jetstream()
        for subject, payload in events:
            await js.publish(
                subject, orjson.dumps(payload), headers={"Nats-Msg-Id": str(payload["event_id"])}
            )
        await nc.close()

    asyncio.run(publish())
    return out


def wait_archived(
    settings: Settings, decisions: int, reactions: int, timeout_s: float = 90
) -> None:
    deadline = time.monotonic() + timeout_s
    got: tuple[int, int] = (0, 0)
    while time.monotonic() < deadline:
        items = exposures(settings.archive, RewardTable(), kind="score")
        got = (len(items), sum(1 for e in items if e.reactions))
        if got[0] >= decisions and got[1] >= reactions:
            return
        time.sleep(0.5)
    raise AssertionError(
        f"archived (decisions, reacted) = {got}, wanted ({decisions}, {reactions})"
    )


def run_traffic(tmp: Path, nats: EmbeddedNats, n: int, **overrides: Any) -> Traffic:
    settings = make_settings(
        tmp,
        gateway_config=overrides.pop("gateway_config"),
        nats_url=nats.url,
        consumers="inprocess",
        score_policy="epsilon_greedy:0.3",
        **overrides,
    )
    with TestClient(create_app(settings)) as client:
        wait_gateway(client)
        reactions = drive(client, nats.url, n)
        wait_archived(settings, n, len(reactions))
    return Traffic(settings, n, reactions, datetime.now(UTC))


@pytest.fixture(scope="module")
def module_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory, module_nats: EmbeddedNats) -> Traffic:
    tmp = tmp_path_factory.mktemp("traffic")
    gateway = tmp / "gateway.yaml"
    gateway.write_text(STUB_GATEWAY)
    return run_traffic(tmp, module_nats, 2500, gateway_config=gateway)

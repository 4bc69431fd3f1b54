"""The learner looks up a batch's decisions at most ``LOOKUPS_IN_FLIGHT`` at a time.

A lookup of a ``/score`` decision brings its whole block (ADR 0028, up to 256 KiB). The first
``scripts/up.sh`` after blocks looked up a batch of 432 feedback events at once: ~100 MB asked
of nats-server, which cut the busy ``tipml serve`` as a slow consumer every ten seconds
(2026-12-01 07:25 UTC)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from tipml.domain.rewards import RewardTable
from tipml.events.keyed import Item
from tipml.events.metrics import EventMetrics
from tipml.experiments.config import ExperimentsConfig
from tipml.experiments.learner import LOOKUPS_IN_FLIGHT, Learner


async def test_a_batchs_lookups_are_bounded_in_flight_and_each_answered() -> None:
    in_flight = peak = 0

    async def lookup(decision_id: str) -> dict[str, Any] | None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return {"decision_id": decision_id}

    learner = Learner(
        {},
        lookup,
        ExperimentsConfig(experiments={}),
        RewardTable(),
        EventMetrics(CollectorRegistry()),
        grace_s=0.0,
    )
    items = [
        Item(i, f"e{i}", SimpleNamespace(decision_id=f"d{i}"), time.time()) for i in range(432)
    ]
    found = await learner._decisions(items)
    assert [d["decision_id"] if d else None for d in found] == [f"d{i}" for i in range(432)]
    assert peak == LOOKUPS_IN_FLIGHT

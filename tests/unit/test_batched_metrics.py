"""Batched request metrics (serving/metrics.py, ADR 0025): after ``flush`` the exposition is
what observing every value directly gives — the same buckets, counts and sum."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from tipml.serving.metrics import BatchedCounter, BatchedHistogram, Metrics

BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    direct_reg, batched_reg = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h", "h", ["stage"], buckets=BUCKETS, registry=direct_reg)
    batched = Histogram("h", "h", ["stage"], buckets=BUCKETS, registry=batched_reg)
    return direct_reg, direct, batched_reg, batched


def test_a_flushed_histogram_equals_direct_observation() -> None:
    rng = random.Random(7)
    direct_reg, direct, batched_reg, batched = _pair()
    fast = BatchedHistogram(batched.labels("model"))
    # every bound exactly (le is inclusive), between the bounds, beyond the last, and zero
    values = [*BUCKETS, 0.0, 1.0, 30.0] + [rng.expovariate(1 / 0.002) for _ in range(5000)]
    for i, v in enumerate(values):
        direct.labels("model").observe(v)
        fast.observe(v)
        if i % 997 == 0:
            fast.flush()  # flushes in between add up
    fast.flush()
    want, got = _samples(direct_reg), _samples(batched_reg)
    assert want.keys() == got.keys()
    for key, value in want.items():
        if key[0] == "h_sum":
            assert got[key] == pytest.approx(value, rel=1e-12)
        else:
            assert got[key] == value, key
    assert got[("h_count", (("stage", "model"),))] == len(values)


def test_nothing_reaches_prometheus_before_a_flush_and_a_flush_twice_adds_nothing() -> None:
    _, _, registry, histogram = _pair()
    fast = BatchedHistogram(histogram.labels("x"))
    fast.observe(0.003)
    assert _samples(registry).get(("h_count", (("stage", "x"),)), 0.0) == 0.0
    fast.flush()
    fast.flush()
    assert _samples(registry)[("h_count", (("stage", "x"),))] == 1.0
    assert _samples(registry)[("h_bucket", (("le", "0.005"), ("stage", "x")))] == 1.0


def test_a_batched_counter_adds_up() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", registry=registry)
    fast = BatchedCounter(counter)
    for _ in range(10):
        fast.inc()
    fast.inc(2.5)
    assert registry.get_sample_value("c_total") == 0.0
    fast.flush()
    assert registry.get_sample_value("c_total") == 12.5


def test_request_metrics_are_per_route_method_and_status() -> None:
    metrics = Metrics()
    metrics.request_done("/score", "POST", 200, 0.002)
    metrics.request_done("/score", "POST", 200, 0.004)
    metrics.request_done("/score", "POST", 422, 0.001)
    metrics.stage["model"].observe(0.0001)
    metrics.candidates_per_call.observe(100)
    metrics.flush()
    value = metrics.registry.get_sample_value
    labels = {"route": "/score", "method": "POST", "status": "200"}
    assert value("tipml_http_requests_total", labels) == 2.0
    assert value("tipml_http_requests_total", {**labels, "status": "422"}) == 1.0
    assert value("tipml_http_request_seconds_count", {"route": "/score"}) == 3.0
    assert value("tipml_http_request_seconds_bucket", {"route": "/score", "le": "0.002"}) == 2.0
    assert value("tipml_score_stage_seconds_count", {"stage": "model"}) == 1.0
    assert value("tipml_score_candidates_bucket", {"le": "100.0"}) == 1.0


def test_loop_lag_watch_measures_how_late_its_timer_ran() -> None:
    """An idle loop wakes the watch about on time (the median); a 50 ms blocking call makes
    one wake-up ~50 ms late (at least 40: the call may start part-way through the sleep)."""
    import asyncio
    import time

    from tipml.serving.metrics import watch_loop_lag

    seen: list[float] = []

    async def run() -> None:
        task = asyncio.create_task(watch_loop_lag(seen.append, 0.01))
        await asyncio.sleep(0.1)
        idle = list(seen)
        time.sleep(0.05)  # noqa: ASYNC251 - the point: a call that holds the loop
        await asyncio.sleep(0.05)
        task.cancel()
        assert idle
        assert sorted(idle)[len(idle) // 2] < 0.01, idle
        assert max(seen[len(idle) :]) >= 0.04, seen[len(idle) :]

    asyncio.run(run())

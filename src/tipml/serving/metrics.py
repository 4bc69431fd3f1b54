"""Prometheus metrics, one registry per app (no process-global state, so tests can build
many apps in one process).

The per-request ones (``/score``'s stage clock, the request count and latency per route) are
*batched* (ADR 0025): a request adds to plain Python numbers, and ``Metrics.flush`` adds them
to the Prometheus children in bulk — before every ``/metrics`` exposition of this process and
every ``FLUSH_INTERVAL_S`` (the runtime's task), so another worker's scrape under ``--workers N``
sees this one's requests at most that late. prometheus_client's ``observe`` takes a lock and,
in its multi-process mode, writes two memory-mapped values with a pid check each: ≈ 4 µs, ten
times per ``/score``.

``tipml_event_loop_lag_seconds`` is how late the event loop ran a timer due every
``LOOP_LAG_INTERVAL_S`` (``watch_loop_lag``, the runtime's task): every request of the process
waits behind whatever holds the loop, and no request's own clock (the stage clock, the route
latency) sees that wait — it starts when the request's handler runs.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

FLUSH_INTERVAL_S = 0.25
# how often the loop-lag watch asks to be woken: any stall of the loop longer than this delays
# at least one wake-up, so none goes unseen. On an otherwise idle loop the 100 wake-ups a second
# cost ~1 % of a core here (measured during a test run: the thread's sleep and wake-up); a busy
# loop runs the timer within turns it makes anyway
LOOP_LAG_INTERVAL_S = 0.01
_LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


async def watch_loop_lag(
    observe: Callable[[float], None], interval_s: float = LOOP_LAG_INTERVAL_S
) -> None:
    """Observe, forever, how late the running loop wakes a sleep of ``interval_s``: near 0
    on an idle loop (a median of 0.16 ms here); a callback that holds the loop (or a process
    starved of CPU) for 40 ms makes the next wake-up up to 40 ms late."""
    clock = time.perf_counter
    while True:
        due = clock() + interval_s
        await asyncio.sleep(interval_s)
        observe(max(0.0, clock() - due))


class BatchedHistogram:
    """A histogram child's observations, counted per bucket here and added to ``child`` by
    ``flush``: the same buckets (``le`` is inclusive, like ``Histogram.observe``), count and
    sum as observing each value directly. Not thread-safe: observe and flush on one thread
    (the event loop)."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # ends with +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts, total = self._counts, self._sum
        if not any(counts):
            return
        self._counts, self._sum = [0] * len(self._bounds), 0.0
        # prometheus_client has no bulk observe: these are the two values observe() adds to
        # (pinned version; tests/unit/test_batched_metrics.py compares the exposition)
        child: Any = self._child
        child._sum.inc(total)
        for i, n in enumerate(counts):
            if n:
                child._buckets[i].inc(n)


class BatchedCounter:
    """A counter child's increments, summed here and added to ``child`` by ``flush``."""

    __slots__ = ("_child", "_n")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._n = 0.0

    def inc(self, amount: float = 1) -> None:
        self._n += amount

    def flush(self) -> None:
        if self._n:
            n, self._n = self._n, 0.0
            self._child.inc(n)


# /score's stages in order (README: the per-stage budget): body parse + validation + auth,
# the online-feature read, the feature matrix, the model, the policy (experiment + ranking),
# the response objects, FastAPI's response validation + serialisation, and the decision record
# (with the shadow's scores; after the response when a shadow is loaded)
SCORE_STAGES = (
    "parse_validate",
    "online",
    "features",
    "model",
    "policy",
    "response",
    "serialize",
    "record",
)

_LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
)
_LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13)


class Metrics:
    def __init__(self) -> None:
        self._histograms: list[BatchedHistogram] = []
        self._route_children: dict[tuple[str, str, str], tuple[BatchedCounter, BatchedHistogram]]
        self._route_children = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tipml_http_requests",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tipml_http_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "tipml_generate_fallbacks",
            "Generations answered with the fallback text, by reason.",
            ["reason", "prompt_version"],
            registry=r,
        )
        self.generations = Counter(
            "tipml_generations",
            "Generations by prompt version and outcome.",
            ["prompt_version", "outcome"],
            registry=r,
        )
        self.llm_latency = Histogram(
            "tipml_llm_request_seconds",
            "Latency of LLM calls through the gateway.",
            ["route"],
            buckets=_LLM_BUCKETS,
            registry=r,
        )
        self.llm_tokens = Counter(
            "tipml_llm_tokens",
            "Tokens used by LLM calls.",
            ["route", "kind"],
            registry=r,
        )
        self.unknown_features = Counter(
            "tipml_unknown_profile_features",
            "Profile features received that the schema does not know (ignored).",
            ["feature"],
            registry=r,
        )
        self.scored_candidates = Histogram(
            "tipml_score_candidates",
            "Candidates per /score call.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.score_stage = Histogram(
            "tipml_score_stage_seconds",
            "Time of each /score stage: " + ", ".join(SCORE_STAGES) + ".",
            ["stage"],
            buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.loop_lag = self._batched(
            Histogram(
                "tipml_event_loop_lag_seconds",
                f"How late the event loop woke a timer due every {LOOP_LAG_INTERVAL_S:g} s: the "
                "wait of every request behind whatever held the loop.",
                buckets=_LOOP_LAG_BUCKETS,
                registry=r,
            )
        )
        # bound once: labels() per observation would cost more than the stage it times
        self.stage = {s: self._batched(self.score_stage.labels(s)) for s in SCORE_STAGES}
        self.candidates_per_call = self._batched(self.scored_candidates)
        self.score_online_missing = Counter(
            "tipml_score_online_missing",
            "/score calls whose read of the user's online features exceeded its budget.",
            registry=r,
        )
        self.gateway_ready = Gauge(
            "tipml_gateway_ready",
            "1 when the LLM gateway is configured and reachable.",
            registry=r,
        )

    def _batched(self, child: Histogram) -> BatchedHistogram:
        batched = BatchedHistogram(child)
        self._histograms.append(batched)
        return batched

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency (batched; a bounded label set: routes are
        the app's route templates)."""
        key = (route, method, str(status))
        children = self._route_children.get(key)
        if children is None:
            children = self._route_children[key] = (
                BatchedCounter(self.requests.labels(*key)),
                BatchedHistogram(self.latency.labels(route)),
            )
        children[0].inc()
        children[1].observe(seconds)

    def flush(self) -> None:
        """Add everything batched since the last flush to the Prometheus metrics."""
        for histogram in self._histograms:
            histogram.flush()
        for counter, latency in self._route_children.values():
            counter.flush()
            latency.flush()

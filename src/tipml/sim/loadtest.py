"""A load test a user can run against a running service: the simulator's traffic mix (every
step a ``/score`` of simulated candidates, every Nth also a ``/generate``) at a fixed arrival
rate, open loop — a slow answer does not slow the arrivals, so queueing shows in the
latencies instead of hiding in a lower rate. Talks HTTP only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from tipml.sim.driver import Driver, DriveReport, percentile


async def run_load(
    driver: Driver,
    rate: float,
    duration_s: float,
    *,
    max_connections: int = 256,
    timeout_s: float = 30.0,
    on_tick: Callable[[DriveReport, float], None] | None = None,
    tick_s: float = 0.5,
) -> DriveReport:
    """Start ``rate`` steps a second for ``duration_s`` and wait for all of them."""
    report = DriveReport()
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=64)
    started = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(
        base_url=driver.base_url, timeout=timeout_s, limits=limits
    ) as client:

        async def tick() -> None:
            while True:
                if on_tick is not None:
                    on_tick(report, time.perf_counter() - started)
                await asyncio.sleep(tick_s)

        ticker = asyncio.create_task(tick())
        try:
            for n in range(int(rate * duration_s)):
                delay = started + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(driver.step(client, n, report))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
        finally:
            ticker.cancel()
    report.duration_s = time.perf_counter() - started
    if on_tick is not None:
        on_tick(report, report.duration_s)
    return report


def summarize(report: DriveReport, elapsed_s: float | None = None) -> dict[str, dict[str, Any]]:
    """Per route: requests, answered, errors by status (0: no answer), rps, p50/p99/max ms."""
    elapsed = elapsed_s if elapsed_s is not None else report.duration_s
    out: dict[str, dict[str, Any]] = {}
    for route, stats in report.routes.items():
        lat = stats.latencies_ms
        out[route] = {
            "requests": stats.count,
            "ok": len(lat),
            "errors": {str(code): n for code, n in sorted(stats.errors.items())},
            "error_rate": round(sum(stats.errors.values()) / stats.count, 4) if stats.count else 0,
            "rps": round(stats.count / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": round(percentile(lat, 50), 2) if lat else None,
            "p99_ms": round(percentile(lat, 99), 2) if lat else None,
            "max_ms": round(max(lat), 2) if lat else None,
        }
    return out

"""Helpers shared by the benchmarks: percentiles, the machine they ran on, their result files."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


RESULTS = Path(__file__).parent / "results"


def write_results(name: str, results: dict[str, Any], folder: Path = RESULTS) -> str:
    """``<folder>/<name>-<utc stamp>.json`` and ``<name>-latest.json``; returns the stamp."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for file in (f"{name}-{stamp}.json", f"{name}-latest.json"):
        (folder / file).write_text(json.dumps(results, indent=2) + "\n")
    return stamp


async def add_raw_durable(js: Any, stream: str, name: str, filter_subject: str) -> None:
    """A raw client loop's durable: explicit acks, nothing else (the peer of a tipml consumer)."""
    await js.add_consumer(
        stream,
        config=ConsumerConfig(
            durable_name=name,
            name=name,
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=filter_subject,
            max_ack_pending=20_000,
        ),
    )


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def open_loop(
    send: Callable[[int], Awaitable[bool]], rate: float, duration: float
) -> tuple[list[float], int, float]:
    """Call ``send(i)`` at a fixed arrival rate for ``duration`` seconds, open loop: each
    latency is measured from the request's *scheduled* start, so a stall of the client is not
    hidden. Returns (latencies in ms of the successful calls, failures, elapsed seconds)."""
    latencies: list[float] = []
    errors = 0

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        if await send(i):
            latencies.append((time.perf_counter() - scheduled) * 1000)
        else:
            errors += 1

    start = time.perf_counter()
    tasks = []
    for i in range(int(rate * duration)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    return latencies, errors, time.perf_counter() - start

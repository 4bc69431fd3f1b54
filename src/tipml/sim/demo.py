"""The demo's driving: the simulated app against a running service and its event bus, then
the learning loop's state read back from the bus (what the consumers made of the events).
``tipml demo`` starts the service and prints the result; this module does the driving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from tipml.domain.records import decode_state
from tipml.domain.users import materialize
from tipml.errors import TipmlError
from tipml.events.bus import (
    TIP_STATS_BUCKET,
    USER_FEATURES_BUCKET,
    connect,
    provision,
    running_url,
)
from tipml.events.dlq import dead_letters
from tipml.settings import load_settings
from tipml.sim.driver import Driver, DriveReport


async def drive(
    base_url: str,
    token: str,
    users: int,
    duration: float,
    concurrency: int,
    data_dir: Path,
    *,
    generate_every: int = 1,
    min_generations: int = 0,
) -> tuple[DriveReport, dict[str, Any]]:
    """Run the simulator against the service and its event bus; then read the learning
    loop's state back from the bus (what the consumers made of the events)."""
    settings = load_settings(data_dir=data_dir)
    url = running_url(settings)
    if url is None:
        raise TipmlError("the service's NATS server is not reachable")
    bus = await provision(await connect(url, "tipml-demo"), settings)

    async def publish(subject: str, payload: dict[str, object], msg_id: str) -> None:
        await bus.js.publish(subject, orjson.dumps(payload), headers={"Nats-Msg-Id": msg_id})

    driver = Driver(base_url, token, users=users, events=publish, generate_every=generate_every)
    report = await driver.run(duration, concurrency=concurrency, min_generations=min_generations)
    loop = await loop_summary(bus, base_url, report.events_published)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        resp = await client.get("/experiments/report", headers={"Authorization": f"Bearer {token}"})
        loop["experiments"] = resp.json() if resp.status_code == 200 else None
    loop["bandit_shift"] = bandit_shift(report, "prompt-bandit")
    await bus.close()
    return report, loop


def bandit_shift(report: DriveReport, experiment: str, parts: int = 3) -> list[dict[str, float]]:
    """The bandit's traffic per arm in the first, middle and last third of its decisions:
    share of plays by prompt version."""
    plays = [version for name, version, _ in report.generated if name == experiment]
    out = []
    size = max(1, len(plays) // parts)
    for k in range(parts):
        chunk = plays[k * size : (k + 1) * size if k < parts - 1 else len(plays)]
        total = len(chunk) or 1
        out.append({v: chunk.count(v) / total for v in sorted(set(plays))} | {"n": len(chunk)})
    return out


async def loop_summary(bus: Any, base_url: str, published: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    consumers: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while time.monotonic() < deadline:  # wait until the consumers caught up
            body = (await client.get("/readyz")).json()
            consumers = {
                k.removeprefix("consumer:"): v["detail"]
                for k, v in body["components"].items()
                if k.startswith("consumer:")
            }
            if consumers and all(d.startswith("lag 0,") for d in consumers.values()):
                break
            await asyncio.sleep(0.5)

    async def values(bucket: str) -> dict[str, Any]:
        kv = await bus.kv(bucket)
        out: dict[str, Any] = {}
        try:
            keys = await kv.keys()
        except Exception:
            return out
        for key in keys:
            entry = await kv.get(key)
            if entry.value:
                out[key] = decode_state(entry.value)
        return out

    users = await values(USER_FEATURES_BUCKET)
    sample_user = max(users, key=lambda u: sum(users[u]["total"].values()), default=None)
    return {
        "published": published,
        "consumers": consumers,
        "tips": await values(TIP_STATS_BUCKET),
        "users": len(users),
        "sample_user": sample_user,
        "sample_features": materialize(users[sample_user], time.time()) if sample_user else {},
        "dead_letters": len([x async for x in dead_letters(bus)]),
    }

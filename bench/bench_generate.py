"""/generate under load with the real embedded model (run on demand, not a test).

    .venv/bin/python bench/bench_generate.py [--servers llama-server,llama-cpp-python]
        [--callers 30] [--duration 20] [--single 15] [--score-rate 100]

For each llama.cpp server (``TIPML_LOCAL_LLM_SERVER``), a real ``tipml serve`` on embedded
defaults (its own nats-server and llama.cpp child) is driven through HTTP:

1. one caller, one prompt version: the model's single-caller rate (answers/s);
2. one caller, prompt versions v1/v2/v3 in turn: does switching versions cost a prompt
   re-evaluation (the rate falls) or does each version keep its cached prefix?
3. ``--callers`` concurrent callers for ``--duration`` s, versions mixed: model answers/s,
   fallbacks by reason, latency p50/p99/max, and requests slower than the deadline + 0.5 s;
4. ``/score`` (100 candidates) at ``--score-rate`` rps while 4 callers keep the model
   generating — once with the model at a lower CPU priority (the default, nice 10) and once
   at the API's priority (nice 0, the peer) in the same run.

Writes ``bench/results/generate-<utc>.json`` and ``generate-latest.json``; prints a table.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/<name>.py` puts bench/ on the path, not the repository: make `bench` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.bench_serving import load_score, start_service
from bench.common import machine, pct, write_results
from tipml.net import free_port

RESULTS = Path(__file__).parent / "results"
TOPICS = ("sleep", "focus", "movement", "stress", "mindfulness", "nutrition", "social")
VERSIONS = ("v1", "v2", "v3")
console = Console()


def start(env_extra: dict[str, str], data_dir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port, token = free_port(), secrets.token_urlsafe(24)
    proc = start_service(port, token, {"TIPML_DATA_DIR": str(data_dir), **env_extra}, 240)
    return proc, f"http://127.0.0.1:{port}", token


def body(i: int, version: str) -> dict[str, Any]:
    return {
        "user_id": f"gen-{i % 200}",
        "topic": TOPICS[i % len(TOPICS)],
        "prompt_version": version,
        "profile_features": {"preferred_hour": 7 + i % 12, "completion_rate": 0.5},
        "max_chars": 160,
    }


async def drive(
    base: str, token: str, callers: int, duration: float, versions: tuple[str, ...]
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    rows: list[tuple[float, bool, str | None]] = []
    counter = 0
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
        stop = time.perf_counter() + duration

        async def caller() -> None:
            nonlocal counter
            while time.perf_counter() < stop:
                counter += 1
                i = counter
                t = time.perf_counter()
                resp = await client.post("/generate", json=body(i, versions[i % len(versions)]))
                data = resp.json()
                rows.append(
                    (time.perf_counter() - t, not data["fallback"], data["fallback_reason"])
                )

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
    latencies = [s * 1000 for s, _, _ in rows]
    answered = sum(1 for _, ok, _ in rows if ok)
    return {
        "callers": callers,
        "versions": list(versions),
        "duration_s": round(elapsed, 1),
        "requests": len(rows),
        "model_answers": answered,
        "model_answers_per_s": round(answered / elapsed, 2),
        "fallbacks": dict(Counter(r for _, ok, r in rows if not ok)),
        "p50_ms": round(pct(latencies, 50), 1),
        "p99_ms": round(pct(latencies, 99), 1),
        "max_ms": round(max(latencies), 1) if latencies else None,
    }


async def score_beside_model(base: str, token: str, rate: float, duration: float) -> dict[str, Any]:
    """``/score`` at ``rate`` while 4 callers keep the model generating."""
    headers = {"Authorization": f"Bearer {token}"}
    stop = asyncio.Event()
    generated = 0

    async def keep_generating(client: httpx.AsyncClient, n: int) -> None:
        nonlocal generated
        i = n
        while not stop.is_set():
            i += 4
            resp = await client.post("/generate", json=body(i, VERSIONS[i % 3]))
            generated += not resp.json()["fallback"]

    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
        tasks = [asyncio.create_task(keep_generating(client, n)) for n in range(4)]
        await asyncio.sleep(2)
        score = await load_score(base, token, rate, duration)
        stop.set()
        await asyncio.gather(*tasks)
    return {**score, "model_answers_meanwhile": generated}


def measure(server: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tipml-bench-gen-") as tmp:
        env = {"TIPML_LOCAL_LLM_SERVER": server}
        with console.status(f"{server}: starting tipml serve"):
            proc, base, token = start(env, Path(tmp) / "a")
        try:
            with console.status(f"{server}: one caller, one version"):
                out["single_one_version"] = asyncio.run(drive(base, token, 1, args.single, ("v1",)))
            with console.status(f"{server}: one caller, versions in turn"):
                out["single_mixed_versions"] = asyncio.run(
                    drive(base, token, 1, args.single, VERSIONS)
                )
            with console.status(f"{server}: {args.callers} concurrent callers"):
                out["concurrent"] = asyncio.run(
                    drive(base, token, args.callers, args.duration, VERSIONS)
                )
            with console.status(f"{server}: /score beside the model (nice 10)"):
                out["score_beside_model"] = asyncio.run(
                    score_beside_model(base, token, args.score_rate, args.score_duration)
                )
        finally:
            proc.terminate()
            proc.wait(60)
        if not args.skip_nice_peer:
            env = {"TIPML_LOCAL_LLM_SERVER": server, "TIPML_LOCAL_LLM_NICE": "0"}
            with console.status(f"{server}: /score beside the model (nice 0, the peer)"):
                proc, base, token = start(env, Path(tmp) / "b")
                try:
                    out["score_beside_model_nice0"] = asyncio.run(
                        score_beside_model(base, token, args.score_rate, args.score_duration)
                    )
                finally:
                    proc.terminate()
                    proc.wait(60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", default="llama-server,llama-cpp-python")
    parser.add_argument("--callers", type=int, default=30)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--single", type=float, default=15.0)
    parser.add_argument("--score-rate", type=float, default=100.0)
    parser.add_argument("--score-duration", type=float, default=20.0)
    parser.add_argument("--skip-nice-peer", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "deadline_s": float(os.environ.get("TIPML_GENERATE_DEADLINE_S", "6")),
        "servers": {},
    }
    for server in args.servers.split(","):
        results["servers"][server] = measure(server, args)
    stamp = write_results("generate", results)

    limit_ms = (results["deadline_s"] + 0.5) * 1000
    table = Table("measure", *results["servers"], title=f"/generate under load — {stamp}")

    def row(label: str, fn: Any) -> None:
        table.add_row(label, *(fn(r) for r in results["servers"].values()))

    row(
        "1 caller, v1 only: model answers/s",
        lambda r: str(r["single_one_version"]["model_answers_per_s"]),
    )
    row(
        "1 caller, v1/v2/v3 in turn: answers/s",
        lambda r: str(r["single_mixed_versions"]["model_answers_per_s"]),
    )
    row(
        f"{args.callers} callers: model answers/s",
        lambda r: str(r["concurrent"]["model_answers_per_s"]),
    )
    row(f"{args.callers} callers: requests", lambda r: str(r["concurrent"]["requests"]))
    row(f"{args.callers} callers: fallbacks", lambda r: json.dumps(r["concurrent"]["fallbacks"]))
    row(
        f"{args.callers} callers: p50 / p99 / max ms",
        lambda r: "{p50_ms} / {p99_ms} / {max_ms}".format(**r["concurrent"]),
    )
    row(
        f"over deadline + 0.5 s ({limit_ms:.0f} ms)",
        lambda r: "yes" if (r["concurrent"]["max_ms"] or 0) > limit_ms else "no",
    )
    row(
        f"/score p50 / p99 at {args.score_rate:g} rps beside the model (nice 10)",
        lambda r: "{p50_ms} / {p99_ms} ms".format(**r["score_beside_model"]),
    )
    if not args.skip_nice_peer:
        row(
            "the same with the model at nice 0 (peer)",
            lambda r: "{p50_ms} / {p99_ms} ms".format(**r["score_beside_model_nice0"]),
        )
    console.print(table)
    console.print(f"machine: {results['machine']}")


if __name__ == "__main__":
    main()

"""Serving benchmark (run on demand, not a test).

    .venv/bin/python bench/bench_serving.py [--rate 100] [--duration 20] [--skip-llm]

1. ``/score`` with 100 candidates at a fixed arrival rate (open loop: latency is measured from
   each request's *scheduled* start, so a stall is not hidden by the load generator waiting).
   The service runs as ``tipml serve`` in its own process, on embedded defaults.
2. The LLM gateway's added latency: the same stub provider called directly with httpx vs
   through ``LiteLLMGateway`` (LiteLLM Router), interleaved, in the same run.
3. The local model (Gemma 3 270M, llama.cpp's llama-server, 2 threads): latency, and
   completion tokens per second of *call time* — prompt evaluation included, so it is not
   the decoder's speed — called directly and through the gateway.

Writes ``bench/results/serving-<utc>.json`` and ``bench/results/serving-latest.json`` and
prints a table.
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
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.common import machine, open_loop, pct, write_results
from tipml.features.context import build_context
from tipml.features.profile_schema import validate_profile
from tipml.serving.gateway import LiteLLMGateway, load_gateway_config
from tipml.serving.local_llm import MODEL_ALIAS, LocalLLM, assemble_default_model
from tipml.serving.prompts import VERSIONS
from tipml.sim.catalog import CATALOG
from tipml.testing.stub_llm import free_port

RESULTS = Path(__file__).parent / "results"
console = Console()


# -- 1. /score at a fixed rate ---------------------------------------------------------------


def score_body(i: int) -> dict[str, Any]:
    tips = [CATALOG[(i + j) % len(CATALOG)] for j in range(100)]
    seen: set[str] = set()
    candidates = []
    for j, tip in enumerate(tips):
        tip_id = tip.tip_id if tip.tip_id not in seen else f"{tip.tip_id}-g{j}"
        seen.add(tip_id)
        candidates.append({"tip_id": tip_id, "category": tip.category, "tags": list(tip.tags)})
    return {
        "user_id": f"bench-{i % 500}",
        "candidates": candidates,
        "profile_features": {
            "preferred_hour": i % 24,
            "completion_rate": 0.4,
            "favorite_category": "sleep",
            "timezone": "Europe/Berlin",
            "tip_volume_7d": 12,
            "streak_days": 3,
        },
        "context": {"ts": "2026-11-27T08:00:00Z", "platform": "ios"},
    }


async def load_score(
    base_url: str, token: str, rate: float, duration: float, warmup_s: float = 0.0
) -> dict[str, Any]:
    """``warmup_s``: that long at ``rate`` first, not measured (a fresh service's first seconds
    carry start-up work: the first registry poll, JetStream files, caches)."""
    bodies = [json.dumps(score_body(i)).encode() for i in range(50)]
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    total = int(rate * duration)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
        for i in range(50):  # warm-up
            await client.post("/score", content=bodies[i % 50], headers=headers)

        async def send(i: int) -> bool:
            try:
                resp = await client.post("/score", content=bodies[i % 50], headers=headers)
            except httpx.HTTPError:
                return False
            return resp.status_code == 200

        if warmup_s > 0:
            await open_loop(send, rate, warmup_s)
        latencies, errors, elapsed = await open_loop(send, rate, duration)
        server = server_side_quantiles((await client.get("/metrics")).text, "/score")
    return {
        **server,
        "target_rps": rate,
        "duration_s": round(elapsed, 2),
        "requests": total,
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "errors": errors,
        "p50_ms": round(pct(latencies, 50), 2),
        "p90_ms": round(pct(latencies, 90), 2),
        "p99_ms": round(pct(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "candidates": 100,
    }


def server_side_quantiles(metrics: str, route: str) -> dict[str, float]:
    """p50/p99 upper bounds of the service's own latency histogram (includes the warm-up)."""
    buckets: list[tuple[float, float]] = []
    prefix = 'tipml_http_request_seconds_bucket{le="'
    for line in metrics.splitlines():
        if line.startswith(prefix) and f'route="{route}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out: dict[str, float] = {}
    for q in (50, 99):
        bound = next((le for le, count in buckets if count >= total * q / 100), float("nan"))
        out[f"server_p{q}_le_ms"] = round(bound * 1000, 2)
    return out


def start_service(
    port: int, token: str, env_extra: dict[str, str] | None = None, timeout_s: float = 180
) -> subprocess.Popen[bytes]:
    """``tipml serve`` on embedded defaults in its own process, once ``/readyz`` says 200."""
    env = {
        **os.environ,
        "TIPML_API_TOKENS": token,
        "TIPML_LOG_REQUESTS": "0",
        "TIPML_LOG_LEVEL": "WARNING",
        **(env_extra or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tipml", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"service did not become ready ({env_extra or 'embedded defaults'})")


def one_route_gateway(model: str, api_base: str) -> LiteLLMGateway:
    """A LiteLLM gateway with one completion route, no retries."""
    config_path = RESULTS / f".bench-gateway-{os.getpid()}.yaml"
    route = {
        "model_name": "w",
        "model_info": {"mode": "completion"},
        "litellm_params": {
            "model": f"text-completion-openai/{model}",
            "api_base": api_base,
            "api_key": "k",
            "max_retries": 0,
        },
    }
    config_path.write_text(
        yaml.safe_dump({"model_list": [route], "router_settings": {"num_retries": 0}})
    )
    try:
        return LiteLLMGateway(load_gateway_config(config_path))
    finally:
        config_path.unlink()


# -- 2. gateway overhead against a stub provider --------------------------------------------


async def gateway_overhead(n: int) -> dict[str, Any]:
    port = free_port()
    stub = subprocess.Popen(
        [sys.executable, "-m", "tipml.testing.stub_llm", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert stub.stdout is not None
        api_base = stub.stdout.readline().decode().strip()
        gateway = one_route_gateway("ok", api_base)
        prompt = "Tip:" * 50
        params = {"max_tokens": 40, "temperature": 0.7, "stop": ["\n"]}
        direct: list[float] = []
        routed: list[float] = []
        async with httpx.AsyncClient(timeout=10) as client:

            async def call_direct() -> float:
                t = time.perf_counter()
                resp = await client.post(
                    f"{api_base}/completions", json={"model": "ok", "prompt": prompt, **params}
                )
                resp.json()["choices"][0]["text"]
                return (time.perf_counter() - t) * 1000

            async def call_gateway() -> float:
                t = time.perf_counter()
                await gateway.complete(prompt=prompt, params=params, deadline_s=10)
                return (time.perf_counter() - t) * 1000

            for _ in range(30):
                await call_direct()
                await call_gateway()
            for _ in range(n):
                direct.append(await call_direct())
                routed.append(await call_gateway())
        await gateway.aclose()
    finally:
        stub.terminate()
        stub.wait(10)
    return {
        "calls": n,
        "direct_p50_ms": round(pct(direct, 50), 2),
        "direct_p99_ms": round(pct(direct, 99), 2),
        "gateway_p50_ms": round(pct(routed, 50), 2),
        "gateway_p99_ms": round(pct(routed, 99), 2),
        "overhead_p50_ms": round(pct(routed, 50) - pct(direct, 50), 2),
        "ratio_p50": round(pct(routed, 50) / pct(direct, 50), 2),
    }


# -- 3. the local model ----------------------------------------------------------------------


async def local_model(n: int) -> dict[str, Any]:
    data_dir = Path(os.environ.get("TIPML_DATA_DIR", ".tipml"))
    llm = LocalLLM(assemble_default_model(data_dir), threads=2)
    llm.start()
    try:
        await llm.wait_ready(120)
        gateway = one_route_gateway(MODEL_ALIAS, llm.api_base)
        version = VERSIONS["v1"]
        profile = validate_profile({"preferred_hour": 21, "completion_rate": 0.6})
        prompts = [
            version.render_completion(
                build_context(topic=t, profile=profile, ts=None, max_chars=160, locale=None)
            )
            for t in ("sleep", "focus", "movement", "stress", "social")
        ]
        params = dict(version.params)
        rows: dict[str, list[tuple[float, int]]] = {"direct": [], "gateway": []}
        async with httpx.AsyncClient(timeout=60) as client:
            await client.post(
                f"{llm.api_base}/completions",
                json={"model": MODEL_ALIAS, "prompt": prompts[0], "max_tokens": 1},
            )
            # Alternate direct and gateway calls; every call moves on to the next prompt of the
            # cycle, so neither path gets a fully cached prompt from the call before it.
            for i in range(2 * n):
                prompt = prompts[i % len(prompts)]
                t = time.perf_counter()
                if i % 2 == 0:
                    resp = (
                        await client.post(
                            f"{llm.api_base}/completions",
                            json={"model": MODEL_ALIAS, "prompt": prompt, **params},
                        )
                    ).json()
                    rows["direct"].append(
                        (time.perf_counter() - t, int(resp["usage"]["completion_tokens"]))
                    )
                else:
                    result = await gateway.complete(prompt=prompt, params=params, deadline_s=60)
                    rows["gateway"].append((time.perf_counter() - t, result.completion_tokens))
        await gateway.aclose()
    finally:
        llm.stop()
    out: dict[str, Any] = {"calls": n, "model": "gemma-3-270m Q4_K_M", "threads": 2}
    for name, values in rows.items():
        secs = [s for s, _ in values]
        tokens = sum(k for _, k in values)
        out[f"{name}_p50_ms"] = round(pct([s * 1000 for s in secs], 50), 1)
        out[f"{name}_tokens_per_s"] = round(tokens / sum(secs), 1)
        out[f"{name}_mean_completion_tokens"] = round(statistics.mean(k for _, k in values), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--gateway-calls", type=int, default=300)
    parser.add_argument("--llm-calls", type=int, default=20)
    parser.add_argument("--skip-llm", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }

    port, token = free_port(), secrets.token_urlsafe(24)
    with console.status("starting tipml serve (embedded defaults)"):
        proc = start_service(port, token)
    try:
        with console.status(f"/score: {args.rate:g} rps for {args.duration:g} s"):
            results["score"] = asyncio.run(
                load_score(f"http://127.0.0.1:{port}", token, args.rate, args.duration)
            )
    finally:
        proc.terminate()
        proc.wait(30)
    with console.status("gateway overhead vs direct calls"):
        results["gateway"] = asyncio.run(gateway_overhead(args.gateway_calls))
    if not args.skip_llm:
        with console.status("local model latency and tokens/s"):
            results["local_model"] = asyncio.run(local_model(args.llm_calls))

    stamp = write_results("serving", results)

    s, g = results["score"], results["gateway"]
    table = Table("measure", "value", "target", title=f"tipml serving bench — {stamp}")
    table.add_row("/score p50 (100 candidates)", f"{s['p50_ms']} ms", "")
    table.add_row("/score p99", f"{s['p99_ms']} ms", "≤ 10 ms")
    table.add_row(
        "/score server-side p50 / p99 (histogram bucket)",
        f"≤ {s['server_p50_le_ms']} / ≤ {s['server_p99_le_ms']} ms",
        "",
    )
    table.add_row("/score achieved rps", f"{s['achieved_rps']} / {s['target_rps']:g}", "")
    table.add_row("/score errors", str(s["errors"]), "0")
    table.add_row("stub provider direct p50", f"{g['direct_p50_ms']} ms", "")
    table.add_row("through LiteLLM gateway p50", f"{g['gateway_p50_ms']} ms", "")
    table.add_row(
        "gateway overhead p50", f"{g['overhead_p50_ms']} ms ({g['ratio_p50']}x)", "≤ 2 ms"
    )
    if "local_model" in results:
        m = results["local_model"]
        table.add_row("local model direct p50", f"{m['direct_p50_ms']} ms", "")
        table.add_row("local model via gateway p50", f"{m['gateway_p50_ms']} ms", "")
        table.add_row(
            "completion tokens per second of call time, prompt evaluation included "
            "(direct / gateway)",
            f"{m['direct_tokens_per_s']} / {m['gateway_tokens_per_s']}",
            "",
        )
    console.print(table)
    console.print(f"machine: {results['machine']}")


if __name__ == "__main__":
    main()

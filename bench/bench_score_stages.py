"""Where a ``/score`` request's time goes: the per-stage budget, and a flame graph.

    .venv/bin/python bench/bench_score_stages.py [--rate 200] [--duration 20] [--no-profile]

``tipml serve`` with a trained model from the registry (``bench_model_serving.register_model``)
and 100 candidates per request at a fixed arrival rate. The service times each stage of every
``/score`` (``tipml_score_stage_seconds{stage}``: parse + validation + auth, the online read,
the feature matrix, the model, the policy, the response objects, FastAPI's response validation
and serialisation, the decision record); the benchmark reads the histograms before and after
the measured window (warm-up excluded) and prints the mean per stage. With py-spy installed
(dev extra) it also records the service during the window: ``bench/results/score-flame.svg``
(open it in a browser) — issue 10's "profile first".

``--in-process``: the same stages without HTTP, NATS or a load generator — the validation and
``ScoreService.score`` (and the deferred decision record, serialised as the decision log
does) called one after another in this process, best of 3 x 2,000: the CPU a request costs
when nothing else wants the core.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.bench_model_serving import STUB_GATEWAY, register_model
from bench.bench_serving import load_score, start_service
from bench.common import machine, write_results
from tipml.serving.metrics import SCORE_STAGES
from tipml.testing.stub_llm import free_port

RESULTS = Path(__file__).parent / "results"


def stage_totals(metrics: str) -> dict[str, tuple[float, float]]:
    """stage -> (sum of seconds, count) from a Prometheus text page."""
    out: dict[str, list[float]] = {s: [0.0, 0.0] for s in SCORE_STAGES}
    for line in metrics.splitlines():
        for part, index in (("_sum", 0), ("_count", 1)):
            prefix = f'tipml_score_stage_seconds{part}{{stage="'
            if line.startswith(prefix):
                out[line[len(prefix) :].split('"', 1)[0]][index] = float(line.rsplit(" ", 1)[1])
    return {s: (v[0], v[1]) for s, v in out.items()}


async def measure(base: str, token: str, rate: float, duration: float, warmup: float) -> Any:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        await load_score(base, token, rate, warmup)  # not measured
        before = stage_totals((await client.get("/metrics")).text)
        load = await load_score(base, token, rate, duration)
        after = stage_totals((await client.get("/metrics")).text)
    stages = {}
    for s in SCORE_STAGES:
        total, count = after[s][0] - before[s][0], after[s][1] - before[s][1]
        stages[s] = {"mean_us": round(total / count * 1e6, 1) if count else None, "n": count}
    return load, stages


def in_process(data_dir: Path, model_file: Path, repeat: int = 2000) -> dict[str, float]:
    """Microseconds per call of each piece of a ``/score``, in a quiet process."""
    import timeit

    import orjson

    from bench.bench_serving import score_body
    from tipml.serving.app import create_app
    from tipml.serving.endpoints import validate_json
    from tipml.serving.schemas import ScoreRequest
    from tipml.settings import Settings

    settings = Settings(
        dev=True,
        consumers="off",
        scorer="lightgbm",
        model_path=model_file,
        data_dir=data_dir / "in-process",
        gateway_config=data_dir / "gateway.yaml",
        local_llm="off",
    )
    service = create_app(settings).state.runtime.score_service

    class Serialised:  # what DecisionLog.record costs before its queue: one orjson.dumps
        def record(self, kind: str, decision_id: str, payload: dict[str, Any]) -> None:
            orjson.dumps(payload, default=str)

    service.decisions = Serialised()
    body = json.dumps(score_body(0)).encode()
    req = validate_json(ScoreRequest, body)

    def score() -> None:
        service.score(req, defer=lambda job: None)

    def score_and_record() -> None:
        jobs: list[Any] = []
        service.score(req, defer=jobs.append)
        jobs[0]()

    def whole() -> None:
        jobs: list[Any] = []
        orjson.dumps(service.score(validate_json(ScoreRequest, body), defer=jobs.append))
        jobs[0]()

    pieces = {
        "parse_validate": lambda: validate_json(ScoreRequest, body),
        "candidates": lambda: service._candidates(req),
        "score (features, model, policy, response)": score,
        "score + record": score_and_record,
        "whole request (no HTTP)": whole,
    }
    out = {}
    for name, fn in pieces.items():
        for _ in range(200):
            fn()
        best = min(timeit.repeat(fn, number=repeat, repeat=3)) / repeat
        out[name] = round(best * 1e6, 1)
    out["record"] = round(
        out["score + record"] - out["score (features, model, policy, response)"], 1
    )
    return out


def main_in_process() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        (data_dir / "gateway.yaml").write_text(STUB_GATEWAY)
        _, _, model_file = register_model(data_dir)
        results = in_process(data_dir, model_file)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "when": stamp,
        "machine": machine(),
        "model": "200 trees x 31 leaves, compiled",
        "candidates": 100,
        "us_per_call": results,
    }
    for name in (f"score-inprocess-{stamp}.json", "score-inprocess-latest.json"):
        (RESULTS / name).write_text(json.dumps(doc, indent=2) + "\n")
    table = Table("piece", "µs per call", title=f"/score in a quiet process — {stamp}")
    for name, us in results.items():
        table.add_row(name, f"{us:,.1f}")
    Console().print(table)


def main() -> None:
    if "--in-process" in sys.argv:
        main_in_process()
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--duration", type=float, default=20)
    # 20 s: with --consumers-apart, `tipml consume` starts (imports, catch-up) in this time
    parser.add_argument("--warmup", type=float, default=20)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--in-process", action="store_true", help="time the pieces without HTTP (see above)"
    )
    parser.add_argument(
        "--consumers-apart",
        action="store_true",
        help="run the consumers (archiver included) in a `tipml consume` process beside the "
        "service (TIPML_CONSUMERS=off in it): the production layout",
    )
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    flame = RESULTS / "score-flame.svg"
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        (data_dir / "gateway.yaml").write_text(STUB_GATEWAY)
        register_model(data_dir)
        token = secrets.token_urlsafe(24)
        env = {
            "TIPML_DATA_DIR": str(data_dir),
            "TIPML_SCORER": "registry",
            "TIPML_REGISTRY_REQUIRE_MODEL": "1",
            "TIPML_SHADOW": "0",
            "TIPML_GATEWAY_CONFIG": str(data_dir / "gateway.yaml"),
            "TIPML_LOCAL_LLM": "off",
            "TIPML_CONSUMERS": "off" if args.consumers_apart else "inprocess",
        }
        port = free_port()
        proc = start_service(port, token, env)
        profiler = consumers = None
        try:
            if args.consumers_apart:  # joins the service's embedded nats-server (same data dir)
                consumers = subprocess.Popen(
                    [sys.executable, "-m", "tipml", "consume"],
                    env={**os.environ, **env},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            if spy and not args.no_profile:
                record = [spy, "record", "--pid", str(proc.pid), "--rate", "100"]
                profiler = subprocess.Popen(
                    [
                        *record,
                        "--duration",
                        str(int(args.warmup + args.duration)),
                        "-o",
                        str(flame),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            base = f"http://127.0.0.1:{port}"
            load, stages = asyncio.run(measure(base, token, args.rate, args.duration, args.warmup))
            if profiler is not None:
                profiler.wait(timeout=120)
        finally:
            for p in (consumers, proc):
                if p is not None:
                    p.terminate()
                    p.wait(timeout=30)
    total = sum(v["mean_us"] or 0 for v in stages.values())
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "rate": args.rate,
        "candidates": 100,
        "consumers": "apart" if args.consumers_apart else "in process",
        "load": load,
        "stages": stages,
        "stages_total_us": round(total, 1),
        "flame_graph": flame.name if profiler is not None and flame.exists() else None,
    }
    stamp = write_results("score-stages", results)
    table = Table(
        "stage", "mean µs", "share", title=f"/score stages at {args.rate:g} rps — {stamp}"
    )
    for s, v in stages.items():
        mean = v["mean_us"] or 0.0
        table.add_row(s, f"{mean:.0f}", f"{mean / total:.0%}" if total else "—")
    table.add_row("sum of stages", f"{total:.0f}", "100%")
    Console().print(table)
    Console().print(
        f"end to end (client): p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms at "
        f"{load['achieved_rps']} rps; flame graph: {results['flame_graph'] or 'not recorded'}"
    )


if __name__ == "__main__":
    main()

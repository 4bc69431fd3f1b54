"""Where the CPU of a saturated ``/score`` goes, process by process, against the naive peer.

    .venv/bin/python bench/bench_score_cpu.py [--workers 2] [--connections 16] [--duration 10]
        [--rounds 2] [--variants in-process,one-per-message,consumers-off]

Capacity on a machine whose cores the load generator shares is CPU per answered request: at
saturation each system answers ``cores / (its CPU + the load generator's CPU per request)``.
This benchmark starts ``tipml serve --workers N`` (``TIPML_SCORER=registry``, the 200-tree
model of ``bench_model_serving``) and the naive FastAPI + booster under ``uvicorn --workers N``
(one LightGBM thread each), drives each with ``hey`` closed loop at ``--connections``
connections, rounds alternated, and reads every process's CPU time from ``/proc`` around each
window: the supervisor, each worker, the embedded nats-server, ``hey``. The table gives rps
and CPU µs per answered request per process kind.

Variants of tipml (``--variants``): ``in-process`` (the default layout: consumers and the
archiver run in the workers), ``consumers-off`` (``TIPML_CONSUMERS=off``: the deploy layout,
consumers run elsewhere — here nowhere, so their CPU is not counted) and ``one-per-message``
(the default layout with ``TIPML_DECISION_BATCH_MAX=1``: every decision its own message, as
before ADR 0028's blocks).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.bench_model_serving import (
    Target,
    prepare,
    start_naive,
)
from bench.bench_serving import start_service
from bench.common import cpu_s, machine, write_results
from tipml.testing.stub_llm import free_port


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (parents read from ``/proc/<pid>/stat``)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return found


def kind(pid: int, root: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "nats-server" in cmd:
        return "nats-server"
    if pid == root:
        return "supervisor"
    if "llama" in cmd:
        return "llama"
    return "workers"


def measure(target: Target, root: int, connections: int, duration: float) -> dict[str, Any]:
    pids = tree(root)
    before = {p: cpu_s(p) for p in pids}
    cmd = target._cmd(duration, connections, None)
    with tempfile.TemporaryFile() as sink:  # a file, not a pipe: hey never blocks on it
        hey = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.DEVNULL)
        hey_cpu = 0.0
        while hey.poll() is None:  # hey's own CPU, read just before it exits
            hey_cpu = cpu_s(hey.pid) or hey_cpu
            time.sleep(0.05)
        sink.seek(0)
        out = sink.read()
    after = {p: cpu_s(p) for p in pids}
    ok = sum(1 for line in out.decode().splitlines()[1:] if line.split(",")[6:7] == ["200"])
    errors = sum(1 for line in out.decode().splitlines()[1:] if line.split(",")[6:7] != ["200"])
    per: dict[str, float] = {}
    for p in pids:
        k = kind(p, root)
        per[k] = per.get(k, 0.0) + after[p] - before[p]
    per["hey"] = hey_cpu
    n = max(ok, 1)
    return {
        "rps": round(ok / duration, 1),
        "errors": errors,
        "cpu_us_per_request": {k: round(v / n * 1e6) for k, v in sorted(per.items())},
        "system_us_per_request": round(sum(v for k, v in per.items() if k != "hey") / n * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=8)
    parser.add_argument("--variants", default="in-process,one-per-message,consumers-off")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "workers": args.workers,
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": [],
    }
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        run = prepare(data_dir)
        base = {**run.env, "TIPML_SHADOW": "0", "TIPML_WORKERS": str(args.workers)}
        systems: dict[str, tuple[Target, subprocess.Popen[bytes]]] = {}
        try:
            for variant in variants:
                port = free_port()
                env = {**base, "TIPML_DATA_DIR": str(data_dir / f"svc-{variant}")}
                if variant == "consumers-off":
                    env["TIPML_CONSUMERS"] = "off"
                elif variant == "one-per-message":
                    env["TIPML_DECISION_BATCH_MAX"] = "1"
                elif variant != "in-process":
                    raise SystemExit(f"unknown variant {variant!r}")
                proc = start_service(port, run.token, env)
                procs.append(proc)
                target = Target(f"http://127.0.0.1:{port}/score", run.score_file, run.auth)
                systems[f"tipml {variant}"] = (target, proc)
            port = free_port()
            proc = start_naive(port, run.model_file, data_dir, workers=args.workers)
            procs.append(proc)
            systems["naive"] = (
                Target(f"http://127.0.0.1:{port}/predict", run.rows_file),
                proc,
            )
            for target, _ in systems.values():
                if args.warmup:
                    target.hey(None, args.warmup, args.connections)
            for r in range(args.rounds):
                row: dict[str, Any] = {}
                for name, (target, proc) in systems.items():
                    row[name] = measure(target, proc.pid, args.connections, args.duration)
                    Console().print(f"round {r + 1} {name}: {row[name]}")
                results["rounds"].append(row)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    write_results("bench_score_cpu", results)
    title = (
        f"/score at saturation: CPU µs per answered request ({args.workers} workers, "
        f"{args.connections} connections, {args.duration:g} s windows)"
    )
    table = Table(title=title)
    rows = results["rounds"]
    kinds = sorted({k for row in rows for s in row.values() for k in s["cpu_us_per_request"]})
    for col in ["round", "system", "rps", *kinds, "system total"]:
        table.add_column(col, justify="right" if col not in ("system",) else "left")
    for i, row in enumerate(results["rounds"]):
        for name, s in row.items():
            cpu = s["cpu_us_per_request"]
            table.add_row(
                str(i + 1),
                name,
                f"{s['rps']:,.0f}",
                *[f"{cpu[k]:,}" if k in cpu else "" for k in kinds],
                f"{s['system_us_per_request']:,}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()

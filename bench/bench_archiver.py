"""The archiver of ``/score`` decisions: CPU per decision against the bare client loop.

    .venv/bin/python bench/bench_archiver.py [--decisions 20000] [--rounds 2]
                                             [--loops asyncio,uvloop] [--batch-max 64]

Real decisions first: ``tipml serve`` (consumers off, default scorer) answers ``--decisions``
``/score`` requests of 100 candidates from ``hey`` (eight users' bodies) and its decision log
publishes them to its embedded nats-server (~7.9 KB each; in blocks of up to ``--batch-max``,
ADR 0028 — ``1``: one message per decision, as before it). Decisions of eight bodies are far
more alike than a real log's: zstd stores one in ~120 bytes, so the Parquet bytes (and the
compressor's share of the CPU) are a lower bound. The service stops; the server is started
again on the same store, and each variant drains the whole backlog through a durable
consumer of its own:

- ``raw``: the client's floor for any archiver — nats-py ``fetch(500)`` and an ack per
  message, nothing kept (a block is one message);
- ``raw+parquet``: the same, plus what the archive must do at least — the bodies and
  sequences of each batch as one zstd Parquet file (two columns, built from the bytes);
- ``tipml``: the archiver (``events/archive.py``) under its ``ConsumerRunner``, as
  ``tipml serve`` runs it (linger 0.25 s, batches of 500): every column of the schema, one
  part per day per batch, written off the event loop, acked after the write.

For each: decisions/s, and CPU per decision of this process (every thread: ``process_time``)
and of nats-server (``/proc``), on each event loop of ``--loops`` (asyncio's, the one
``tipml consume`` runs on, and uvloop's, the one ``tipml serve`` runs on), alternated
``--rounds`` times. The archiver's cost per decision is what each ``/score`` pays for it
when the archiver runs beside ``/score`` on the same cores (issue 10: two workers at
saturation are CPU-bound).

Writes ``bench/results/archiver-<utc>.json`` and ``archiver-latest.json`` and prints a table.
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
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import uvloop
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from bench.bench_serving import score_body, start_service
from bench.common import add_raw_durable, cpu_s, machine, write_results
from tipml.events.archive import PARQUET_OPTIONS, Archiver
from tipml.events.bus import DECISIONS, EmbeddedNats, connect, provision
from tipml.events.consumer import ConsumerRunner
from tipml.events.decisions import BATCH_HEADER
from tipml.events.metrics import EventMetrics
from tipml.net import free_port
from tipml.settings import Settings
from tipml.testing.stub_llm import IDLE_GATEWAY_YAML

console = Console()
VARIANTS = ("raw", "raw+parquet", "tipml")
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {
    "asyncio": None,
    "uvloop": uvloop.new_event_loop,
}


def record_decisions(data_dir: Path, n: int, batch_max: int) -> None:
    """``n`` real ``/score`` decisions in ``data_dir``'s embedded nats-server."""
    (data_dir / "gateway.yaml").write_text(IDLE_GATEWAY_YAML)
    token, port = secrets.token_urlsafe(24), free_port()
    env = {
        "TIPML_DATA_DIR": str(data_dir / "svc"),
        "TIPML_CONSUMERS": "off",
        "TIPML_LOCAL_LLM": "off",
        "TIPML_GATEWAY_CONFIG": str(data_dir / "gateway.yaml"),
        "TIPML_DECISION_BATCH_MAX": str(batch_max),
    }
    proc = start_service(port, token, env)
    try:
        # eight users' requests (profiles, hours, candidate orders of their own), not one
        # body's copies (zstd shrank those to ~40 bytes a decision) — still far more alike
        # than a real log's decisions (the docstring)
        heys = []
        for i in range(8):
            body = data_dir / f"score-{i}.json"
            body.write_text(json.dumps(score_body(i * 7)))
            cmd = [
                "hey",
                "-n",
                str(n // 8 + (i < n % 8)),
                "-c",
                "1",
                "-m",
                "POST",
                "-T",
                "application/json",
                "-D",
                str(body),
                "-H",
                f"Authorization: Bearer {token}",
                f"http://127.0.0.1:{port}/score",
            ]
            heys.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        if [h.wait() for h in heys].count(0) != len(heys):
            raise SystemExit("hey failed")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the log publishes behind the requests
            page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            if _buffered(page) == 0:
                break
            time.sleep(0.5)
    finally:
        proc.terminate()  # graceful: the decision log flushes what it holds
        proc.wait(timeout=60)


def _buffered(page: str) -> float:
    for line in page.splitlines():
        if line.startswith("tipml_decisions_buffered"):
            return float(line.rsplit(" ", 1)[-1])
    return 0.0


async def raw_loop(js: Any, name: str, n: int, out: Path | None) -> None:
    await add_raw_durable(js, DECISIONS, name, "ml.>")
    sub = await js.pull_subscribe_bind(durable=name, stream=DECISIONS)
    done = 0
    while done < n:
        msgs = await sub.fetch(500, timeout=5)
        if out is not None:
            table = pa.table(
                {
                    "stream_seq": pa.array([m.metadata.sequence.stream for m in msgs], pa.int64()),
                    "payload": pa.array([m.data for m in msgs], pa.binary()),
                }
            )
            # the archiver's own options: no dictionary or statistics for the raw bodies
            await asyncio.to_thread(
                pq.write_table,
                table,
                out / f"part-{done}.parquet",
                compression="zstd",
                use_dictionary=["stream_seq"],
                write_statistics=["stream_seq"],
            )
        for msg in msgs:
            await msg.ack()
        done += len(msgs)


async def tipml_archiver(bus: Any, settings: Settings, name: str, n: int, out: Path) -> None:
    archiver = Archiver(DECISIONS, out, linger_s=settings.archive_linger(beside_requests=True))
    archiver.name = name
    runner = ConsumerRunner(bus, archiver, settings, EventMetrics(CollectorRegistry()))
    await runner.start()
    while runner.state.processed + runner.state.duplicates < n:
        await asyncio.sleep(0.02)
    await runner.stop()


async def variant(
    kind: str, round_no: int, server: EmbeddedNats, n: int, messages: int, tmp: Path
) -> dict[str, Any]:
    """Drain the backlog (``n`` decisions in ``messages`` messages) one way; per decision."""
    nc = await connect(server.url, "bench-archiver")
    settings = Settings(dev=True, nats_url=server.url, data_dir=tmp / "consumer")
    bus = await provision(nc, settings)
    name = f"{kind.replace('+', '-')}-{round_no}-{type(asyncio.get_running_loop()).__module__}"
    name = name.replace(".", "-")
    out = tmp / "out" / name
    out.mkdir(parents=True)
    pid = server._proc.pid  # type: ignore[union-attr]
    cpu0, srv0, wall0 = time.process_time(), cpu_s(pid), time.perf_counter()
    if kind == "tipml":
        await tipml_archiver(bus, settings, name, n, out)
    else:
        await raw_loop(bus.js, name, messages, out if kind == "raw+parquet" else None)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    srv = cpu_s(pid) - srv0
    await nc.close()
    written = sum(f.stat().st_size for f in out.rglob("*.parquet"))
    return {
        "variant": kind,
        "round": round_no,
        "decisions_per_s": round(n / wall),
        "cpu_us_per_decision": round(cpu / n * 1e6, 1),
        "server_cpu_us_per_decision": round(srv / n * 1e6, 1),
        "parquet_bytes_per_decision": round(written / n, 1),
    }


async def _stream_size(url: str) -> tuple[int, int]:
    """The stream's decisions and messages (a block holds many decisions)."""
    nc = await connect(url, "bench-archiver")
    js = nc.jetstream()
    info = await js.stream_info(DECISIONS)
    decisions = 0
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        headers = (await js.get_msg(DECISIONS, seq)).headers or {}
        decisions += int(headers.get(BATCH_HEADER, "1"))
    await nc.close()
    return decisions, int(info.state.messages)


def run(n: int, rounds: int, loops: list[str], tmp: Path) -> list[dict[str, Any]]:
    """Every variant on every event loop, alternated ``rounds`` times; each on a loop of its
    own (``asyncio.Runner``), all against one nats-server holding the backlog."""
    with EmbeddedNats(tmp / "svc" / "nats") as server:
        held, messages = asyncio.run(_stream_size(server.url))
        if held != n:
            raise SystemExit(f"{held} decisions in the stream, {n} expected")
        console.print(f"{n:,} decisions in {messages:,} messages")
        rows = []
        for round_no in range(rounds):
            for loop in loops:
                for kind in VARIANTS:
                    factory = LOOPS[loop]
                    with asyncio.Runner(loop_factory=factory) as runner:
                        row = runner.run(variant(kind, round_no, server, n, messages, tmp))
                    row["messages"] = messages
                    row = {"loop": loop, **row}
                    console.print(row)
                    rows.append(row)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--loops", default="asyncio,uvloop", help="event loops to run each variant on"
    )
    parser.add_argument(
        "--batch-max",
        type=int,
        default=64,
        help="TIPML_DECISION_BATCH_MAX of the service that logs the decisions (1: a message each)",
    )
    args = parser.parse_args()
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    if not loops or set(loops) - set(LOOPS):
        parser.error(f"--loops: a comma-separated list of {', '.join(LOOPS)}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        record_decisions(tmp, args.decisions, args.batch_max)
        rows = run(args.decisions, args.rounds, loops, tmp)
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "decisions": args.decisions,
        "decision_batch_max": args.batch_max,
        "messages": rows[0]["messages"] if rows else None,
        "parquet_options": {k: str(v) for k, v in PARQUET_OPTIONS.items()},
        "rows": rows,
    }
    write_results("archiver", results)
    table = Table(
        f"{args.decisions:,} /score decisions (batch max {args.batch_max})",
        "loop",
        "round",
        "decisions/s",
        "CPU µs/decision",
        "nats-server µs/decision",
        "Parquet bytes/decision",
    )
    for row in rows:
        table.add_row(
            row["variant"],
            row["loop"],
            str(row["round"]),
            f"{row['decisions_per_s']:,}",
            f"{row['cpu_us_per_decision']:,}",
            f"{row['server_cpu_us_per_decision']:,}",
            f"{row['parquet_bytes_per_decision']:,}",
        )
    console.print(table)


if __name__ == "__main__":
    main()

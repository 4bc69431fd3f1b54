"""Event backbone benchmark (run on demand, not a test).

    .venv/bin/python bench/bench_events.py [--events 50000] [--users 5000] [--rate 1000]

1. Ingest throughput from a backlog on a local nats-server (from the wheel):
   - the peer: a raw nats-py loop — pull fetch(500), parse the JSON, ack — the client's ceiling;
   - tipml: the signals consumer, which also folds every event into the user's online features
     and writes them to the KV bucket with compare-and-set and idempotency bookkeeping.
   The same events, each variant on a fresh server, one run; the ratio is the number that
   survives a noisy machine.
   Then scale-out (``--processes N``): N ``tipml consume`` processes against one, with
   unkeyed signals (the processes share the durable and the users) and with keyed signals in
   N partitions (``--member K/N``: each process the only writer of its users, ADR 0019),
   beside N raw loops against one (what N processes can gain on this machine).
2. Event-to-feature visibility lag at a fixed publish rate: ``tipml consume --only signals`` in
   its own process; this process takes the time from the event's publish to the write of the
   user's record that contains it, seen two ways: a plain subscription to the bucket's
   subjects (the server hands it each write as it is stored — the write itself) and a KV
   watch (nats-py's ordered push consumer, the way serving's replica follows the bucket).

Writes ``bench/results/events-<utc>.json`` and ``events-latest.json`` and prints a table.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/<name>.py` puts bench/ on the path, not the repository: make `bench` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from bench.common import add_raw_durable, machine, pct, write_results
from tipml.domain.events import keyed_signal_subject
from tipml.domain.records import SeenIds, event_digest
from tipml.domain.users import empty_user_state, fold_signals
from tipml.events.bus import SIGNALS, USER_FEATURES_BUCKET, EmbeddedNats, connect, provision
from tipml.events.consumer import ConsumerRunner
from tipml.events.handlers import SignalsHandler
from tipml.events.keyed import KeyedStore
from tipml.events.metrics import EventMetrics
from tipml.settings import Settings

RESULTS = Path(__file__).parent / "results"
console = Console()


def settings_for(url: str, data_dir: Path) -> Settings:
    return Settings(
        dev=True,
        nats_url=url,
        data_dir=data_dir,
        stream_storage="file",
        consumer_batch=500,
        state_interval_s=1.0,
    )


async def publish_backlog(
    js: Any, n: int, users: int, burst: int = 1, *, keyed: bool = False
) -> None:
    """``burst`` consecutive events per user (an app session); 1: every event of a fetched
    batch belongs to a different user (the worst case: one state write per event). ``keyed``:
    on the user's subject (``signals-by-user.<user>.<kind>``, ADR 0019), else
    ``signals.<kind>``."""
    now = datetime.now(UTC).isoformat()
    pending = []
    for i in range(n):
        eid = uuid.uuid4().hex
        user = (i // burst) % users
        body = orjson.dumps(
            {"event_id": eid, "user_id": f"u{user}", "ts": now, "attrs": {"title": "focus session"}}
        )
        kind = "task.completed" if i % 3 else "app.opened"
        subject = keyed_signal_subject(f"u{user}", kind) if keyed else f"signals.{kind}"
        pending.append(await js.publish_async(subject, body, headers={"Nats-Msg-Id": eid}))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def raw_loop(js: Any, n: int) -> float:
    await add_raw_durable(js, SIGNALS, "raw", "signals.>")
    sub = await js.pull_subscribe_bind(durable="raw", stream=SIGNALS)
    done = 0
    start = time.perf_counter()
    while done < n:
        msgs = await sub.fetch(500, timeout=5)
        for msg in msgs:
            orjson.loads(msg.data)
            await msg.ack()
        done += len(msgs)
    return n / (time.perf_counter() - start)


async def tipml_loop(
    bus: Any, settings: Settings, n: int, *, pipelined: bool = True, name: str | None = None
) -> float:
    metrics = EventMetrics(CollectorRegistry())
    kv = await bus.kv(USER_FEATURES_BUCKET)
    store = KeyedStore(kv, empty_user_state, fold_signals, pipelined=pipelined)
    handler = SignalsHandler(store, metrics)
    handler.name = f"signals-features-{name or ('piped' if pipelined else 'requests')}"
    runner = ConsumerRunner(bus, handler, settings, metrics)
    start = time.perf_counter()
    await runner.start()
    while runner.state.processed + runner.state.duplicates < n:
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - start
    await runner.stop()
    return n / elapsed


async def _variant(kind: str, n: int, users: int, burst: int, tmp: Path) -> float:
    """One variant on a fresh server with the same backlog: a variant never inherits the
    previous one's server state (its file store, its consumers, its KV bucket)."""
    with EmbeddedNats(tmp / f"nats-{kind}-{burst}") as server:
        nc = await connect(server.url, "bench")
        settings = settings_for(server.url, tmp / f"data-{kind}-{burst}")
        bus = await provision(nc, settings)
        await publish_backlog(bus.js, n, users, burst)
        await asyncio.sleep(1.0)  # the server settles after the burst of publishes
        after = settings.model_copy(update={"consumer_prefetch": False})
        if kind == "raw":
            rate = await raw_loop(bus.js, n)
        elif kind == "requests":
            rate = await tipml_loop(bus, after, n, pipelined=False)
        elif kind == "no-prefetch":
            rate = await tipml_loop(bus, after, n, name="piped-no-prefetch")
        else:
            rate = await tipml_loop(bus, settings, n)
        await nc.close()
    return rate


async def throughput(n: int, users: int, burst: int, tmp: Path) -> dict[str, Any]:
    # Four variants over the same backlog: the raw loop; tipml with a request per write, asking
    # for more when a request is done (before ADR 0013); pipelined writes, the same; pipelined
    # writes with the next request outstanding (ADR 0017).
    raw = await _variant("raw", n, users, burst, tmp)
    requests = await _variant("requests", n, users, burst, tmp)
    no_prefetch = await _variant("no-prefetch", n, users, burst, tmp)
    ours = await _variant("tipml", n, users, burst, tmp)
    return {
        "events": n,
        "users": users,
        "events_per_user_session": burst,
        "raw_events_per_s": round(raw),
        "tipml_request_per_write_events_per_s": round(requests),
        "tipml_no_prefetch_events_per_s": round(no_prefetch),
        "tipml_events_per_s": round(ours),
        "ratio": round(ours / raw, 3),
        "ratio_request_per_write": round(requests / raw, 3),
        "ratio_no_prefetch": round(no_prefetch / raw, 3),
    }


async def processes(n: int, users: int, count: int, tmp: Path, *, members: bool = False) -> float:
    """``count`` ``tipml consume --only signals`` processes drain a backlog of ``n`` events
    (every event a different user): events/s from the first ack to the last (the
    interpreters' start-up left out). ``members=False``: unkeyed signals, the processes share
    the durable consumer (and the users). ``members=True``: keyed signals in ``count``
    partitions, process K runs ``--member K/count`` — the only writer of its users; one
    process alone consumes every partition."""
    label = f"{'members' if members else 'processes'}-{count}"
    with EmbeddedNats(tmp / f"nats-{label}") as server:
        nc = await connect(server.url, "bench-processes")
        partitions = count if members else 1
        settings = settings_for(server.url, tmp / f"data-{label}").model_copy(
            update={"signal_partitions": partitions}
        )
        bus = await provision(nc, settings)
        await publish_backlog(bus.js, n, users, 1, keyed=members)
        env = {
            **os.environ,
            "TIPML_NATS_URL": server.url,
            "TIPML_LOG_LEVEL": "ERROR",
            "TIPML_CONSUMER_BATCH": "500",
            "TIPML_SIGNAL_PARTITIONS": str(partitions),
        }
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tipml", "consume", "--only", "signals"]
                + (["--member", f"{i}/{count}"] if members and count > 1 else []),
                env={**env, "TIPML_DATA_DIR": str(tmp / f"data-{label}-{i}")},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(count)
        ]
        durables = (
            [f"signals-features-p{p}" for p in range(partitions)]
            if members
            else ["signals-features"]
        )
        try:
            return await _drain_rate(bus, durables, n)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
            await nc.close()


async def _drain_rate(bus: Any, durables: list[str], n: int) -> float:
    """Events/s from the durables' first ack to their acks summing to ``n`` (the processes'
    start-up left out): each durable's ack floor in its own delivery order."""
    start: float | None = None
    while True:
        await asyncio.sleep(0.02)
        acked = 0
        for durable in durables:
            try:
                info = await bus.js.consumer_info(SIGNALS, durable)
            except Exception:  # noqa: S112 — not created yet: the processes are starting
                continue
            acked += (info.ack_floor.consumer_seq or 0) if info.ack_floor else 0
        if start is None and acked > 0:
            start = time.perf_counter()  # the first ack: a process is up
        if acked >= n:
            assert start is not None
            return n / (time.perf_counter() - start)


async def raw_consumer(url: str) -> None:
    """One process of the raw loop on the shared durable ``raw-procs``: fetch(500), parse,
    ack, until the backlog is drained (a fetch that times out)."""
    from tipml.events.bus import connect

    nc = await connect(url, "bench-raw-process")
    sub = await nc.jetstream().pull_subscribe_bind(durable="raw-procs", stream=SIGNALS)
    while True:
        try:
            msgs = await sub.fetch(500, timeout=2)
        except Exception:  # drained (or the bench is over)
            break
        for msg in msgs:
            orjson.loads(msg.data)
            await msg.ack()
    await nc.close()


async def raw_processes(n: int, users: int, count: int, tmp: Path) -> float:
    """The raw loop's ceiling in ``count`` processes sharing one durable (first ack to last):
    what two processes *can* gain on this machine, against which two ``tipml consume``
    processes are measured."""
    with EmbeddedNats(tmp / f"nats-raw-processes-{count}") as server:
        nc = await connect(server.url, "bench-raw-processes")
        settings = settings_for(server.url, tmp / f"data-raw-processes-{count}")
        bus = await provision(nc, settings)
        await publish_backlog(bus.js, n, users, 1)
        await add_raw_durable(bus.js, SIGNALS, "raw-procs", "signals.>")
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--raw-consumer", server.url],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(count)
        ]
        try:
            return await _drain_rate(bus, ["raw-procs"], n)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
            await nc.close()


async def visibility_lag(rate: float, seconds: float, users: int, tmp: Path) -> dict[str, Any]:
    with EmbeddedNats(tmp / "nats-lag") as server:
        nc = await connect(server.url, "bench-lag")
        settings = settings_for(server.url, tmp / "data-lag")
        bus = await provision(nc, settings)
        env = {
            **os.environ,
            "TIPML_NATS_URL": server.url,
            "TIPML_DATA_DIR": str(tmp / "data-lag"),
            "TIPML_LOG_LEVEL": "ERROR",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "tipml", "consume", "--only", "signals"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        published: dict[str, float] = {}
        waiting: dict[bytes, str] = {}  # digest of a published event id -> the id
        lags: list[float] = []
        kv = await bus.kv("user_features")
        watcher = await kv.watchall(include_history=False)
        # Two observers of the same writes: the KV watch (nats-py's ordered push consumer, as
        # serving's replica reads the bucket) and a plain subscription to the bucket's
        # subjects, which the server hands each stored write to at once — the write itself.
        written: dict[bytes, str] = {}
        written_lags: list[float] = []

        async def on_write(msg: Any) -> None:
            now = time.perf_counter()
            if not msg.data:
                return
            ids = SeenIds.decode(orjson.loads(msg.data))
            for digest, eid in list(written.items()):
                if digest in ids:
                    del written[digest]
                    written_lags.append((now - published[eid]) * 1000)

        await nc.subscribe("$KV.user_features.>", cb=on_write)

        async def watch() -> None:
            seen: set[str] = set()
            while True:
                try:
                    entry = await watcher.updates(timeout=1.0)
                except TimeoutError:
                    continue
                if entry is None or not entry.value:
                    continue
                now = time.perf_counter()
                ids = SeenIds.decode(orjson.loads(entry.value))
                for digest, eid in list(waiting.items()):
                    if digest in ids and eid not in seen:
                        seen.add(eid)
                        del waiting[digest]
                        lags.append((now - published[eid]) * 1000)

        watch_task = asyncio.create_task(watch())
        await asyncio.sleep(3.0)  # the consumer process starts
        total = int(rate * seconds)
        start = time.perf_counter()
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            eid = uuid.uuid4().hex
            body = orjson.dumps(
                {
                    "event_id": eid,
                    "user_id": f"u{i % users}",
                    "ts": datetime.now(UTC).isoformat(),
                    "attrs": {},
                }
            )
            published[eid] = time.perf_counter()
            waiting[event_digest(eid)] = eid
            written[event_digest(eid)] = eid
            await bus.js.publish_async("signals.app.opened", body, headers={"Nats-Msg-Id": eid})
        achieved = total / (time.perf_counter() - start)
        deadline = time.monotonic() + 30
        while len(lags) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        watch_task.cancel()
        proc.terminate()
        proc.wait(10)
        await nc.close()
    return {
        "target_rate": rate,
        "achieved_rate": round(achieved, 1),
        "events": total,
        "seen": len(lags),
        "p50_ms": round(pct(lags, 50), 1),
        "p99_ms": round(pct(lags, 99), 1),
        "p999_ms": round(pct(lags, 99.9), 1),
        "max_ms": round(max(lags), 1) if lags else None,
        "written_p50_ms": round(pct(written_lags, 50), 1),
        "written_p99_ms": round(pct(written_lags, 99), 1),
        "written_p999_ms": round(pct(written_lags, 99.9), 1),
        "written_max_ms": round(max(written_lags), 1) if written_lags else None,
        "written_seen": len(written_lags),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--burst", type=int, default=5, help="Events per user session.")
    parser.add_argument(
        "--lag-runs", type=int, default=3, help="Lag windows, one after another (issue 10: 3)."
    )
    parser.add_argument("--lag-only", action="store_true", help="Skip the ingest runs.")
    parser.add_argument(
        "--processes", type=int, default=2, help="Also drain with 1 and N consume processes."
    )
    parser.add_argument("--raw-consumer", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_consumer:
        asyncio.run(raw_consumer(args.raw_consumer))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if not args.lag_only:
            with console.status("ingest throughput: raw fetch-and-ack vs tipml signals consumer"):
                results["throughput"] = asyncio.run(
                    throughput(args.events, args.users, 1, Path(tmp))
                )
                results["throughput_sessions"] = asyncio.run(
                    throughput(args.events, args.users, args.burst, Path(tmp))
                )
            if args.processes > 1:
                scale: dict[str, Any] = {}
                for count in (1, args.processes):
                    with console.status(f"ingest with {count} tipml consume process(es)"):
                        scale[str(count)] = round(
                            asyncio.run(processes(args.events, args.users, count, Path(tmp)))
                        )
                scale["ratio"] = round(scale[str(args.processes)] / scale["1"], 2)
                for count in (1, args.processes):
                    with console.status(f"keyed ingest with {count} member process(es)"):
                        scale[f"members_{count}"] = round(
                            asyncio.run(
                                processes(args.events, args.users, count, Path(tmp), members=True)
                            )
                        )
                scale["members_ratio"] = round(
                    scale[f"members_{args.processes}"] / scale["members_1"], 2
                )
                for count in (1, args.processes):
                    with console.status(f"ingest with {count} raw nats-py process(es)"):
                        scale[f"raw_{count}"] = round(
                            asyncio.run(raw_processes(args.events, args.users, count, Path(tmp)))
                        )
                scale["raw_ratio"] = round(scale[f"raw_{args.processes}"] / scale["raw_1"], 2)
                results["processes"] = scale
        runs = []
        for run in range(args.lag_runs):
            with console.status(f"visibility lag at {args.rate:g} events/s, run {run + 1}"):
                runs.append(
                    asyncio.run(
                        visibility_lag(args.rate, args.seconds, args.users, Path(tmp) / f"r{run}")
                    )
                )
        results["lag_runs"] = runs
        if runs:
            results["lag"] = max(runs, key=lambda r: r["written_p99_ms"])  # the worst run
    stamp = write_results("events", results)
    table = Table("measure", "value", "target", title=f"tipml events bench — {stamp}")
    for label, t in (
        ("every event a new user", results.get("throughput")),
        (f"sessions of {args.burst}", results.get("throughput_sessions")),
    ):
        if t is None:
            continue
        table.add_row(
            f"raw nats-py fetch+parse+ack ({label})", f"{t['raw_events_per_s']:,} events/s", ""
        )
        table.add_row(
            f"tipml, a request per KV write ({label})",
            f"{t['tipml_request_per_write_events_per_s']:,} events/s "
            f"({t['ratio_request_per_write']:.0%})",
            "",
        )
        table.add_row(
            f"tipml, pipelined writes, ask again when a request is done ({label})",
            f"{t['tipml_no_prefetch_events_per_s']:,} events/s ({t['ratio_no_prefetch']:.0%})",
            "",
        )
        table.add_row(
            f"tipml signals → online features, pipelined, next request outstanding ({label})",
            f"{t['tipml_events_per_s']:,} events/s",
            "≥ 10,000",
        )
        goal = "≥ 50 %" if t["events_per_user_session"] == 1 else "≥ 75 %"
        table.add_row(f"ratio tipml / raw ({label})", f"{t['ratio']:.0%}", goal)
    if "processes" in results:
        p = results["processes"]
        table.add_row(
            f"tipml consume, unkeyed signals: 1 process / {args.processes} sharing the durable "
            "(backlog, first ack to last)",
            f"{p['1']:,} / {p[str(args.processes)]:,} events/s ({p['ratio']:.2f}x)",
            "",
        )
        table.add_row(
            f"tipml consume, keyed signals: 1 process / {args.processes} members "
            f"(--member K/{args.processes}, {args.processes} partitions)",
            f"{p['members_1']:,} / {p[f'members_{args.processes}']:,} events/s "
            f"({p['members_ratio']:.2f}x)",
            "≥ 1.6x",
        )
        table.add_row(
            f"raw nats-py loop: 1 process / {args.processes} processes (the machine's ceiling)",
            f"{p['raw_1']:,} / {p[f'raw_{args.processes}']:,} events/s ({p['raw_ratio']:.2f}x)",
            "",
        )
    for n, lag in enumerate(results["lag_runs"], 1):
        table.add_row(
            f"run {n}: event → written to the user's record (a subscription to the bucket's "
            f"subjects) p50 / p99 / p99.9 / max at {lag['achieved_rate']:g}/s",
            f"{lag['written_p50_ms']} / {lag['written_p99_ms']} / {lag['written_p999_ms']} / "
            f"{lag['written_max_ms']} ms",
            "p99 ≤ 50 ms",
        )
        table.add_row(
            f"run {n}: event → seen by a KV watch (as serving's replica) p50 / p99 / p99.9 / max",
            f"{lag['p50_ms']} / {lag['p99_ms']} / {lag['p999_ms']} / {lag['max_ms']} ms",
            "",
        )
        table.add_row(
            f"run {n}: events seen written / in the watch",
            f"{lag['written_seen']} / {lag['seen']} of {lag['events']}",
            "",
        )
    console.print(table)
    console.print(f"machine: {results['machine']}")


if __name__ == "__main__":
    main()

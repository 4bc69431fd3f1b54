"""Feature-assembly benchmark (run on demand, not a test).

    .venv/bin/python bench/bench_features.py [--n 2000]

The feature stages, each over the same number of calls: reading a user's online features
(KV get, decode, materialize — what ``/generate`` does; the peer is a bare nats-py KV get of
the same record, interleaved), the same read from Feast's SQLite online store, building
``/score``'s feature matrix for 100 candidates, and ``/generate``'s context assembly and
render. Writes ``bench/results/features-*.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/<name>.py` puts bench/ on the path, not the repository: make `bench` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from bench.common import machine, pct, write_results
from tipml.domain.events import SignalEvent
from tipml.domain.records import kv_key
from tipml.domain.tips import TipStats
from tipml.domain.users import empty_user_state, fold_signals
from tipml.events.bus import USER_FEATURES_BUCKET, EmbeddedNats
from tipml.events.keyed import Item, KeyedStore
from tipml.events.runtime import EventsRuntime
from tipml.features import feast_store
from tipml.features.context import build_context
from tipml.features.profile_schema import validate_profile
from tipml.features.tip_features import Candidate, feature_matrix
from tipml.serving.prompts import VERSIONS
from tipml.settings import Settings
from tipml.sim.catalog import CATALOG


async def run(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp) / "nats") as server:
        settings = Settings(dev=True, nats_url=server.url, data_dir=Path(tmp) / "data")
        events = EventsRuntime(settings, CollectorRegistry())
        await events.start(wait=True)
        assert events.bus is not None
        kv = await events.bus.kv(USER_FEATURES_BUCKET)
        store = KeyedStore(kv, empty_user_state, fold_signals)
        now = datetime.now(UTC)
        signals = [
            SignalEvent(
                event_id=f"e{i}", user_id="bench-user", kind=k, ts=now, attrs={"title": "Deep work"}
            )
            for i, k in enumerate(["app.opened", "task.completed"] * 40)
        ]
        await store.write(
            kv_key("bench-user"), [Item(i + 1, s.event_id, s) for i, s in enumerate(signals)]
        )
        candidates = [Candidate(t.tip_id, t.category, t.tags) for t in CATALOG]
        candidates = (candidates * 2)[:100]
        stats = {t.tip_id: TipStats(20, 7.0) for t in CATALOG}
        profile = validate_profile(
            {
                "preferred_hour": 8,
                "favorite_category": "focus",
                "timezone": "Europe/Berlin",
                "completion_rate": 0.5,
            }
        )
        # Every stage is timed over the same number of calls, interleaved, so the p99s compare.
        raw: list[float] = []
        online_read: list[float] = []
        matrix: list[float] = []
        for _ in range(n):
            t = time.perf_counter()
            await kv.get("bench-user")
            raw.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await events.user_features("bench-user")
            online_read.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            feature_matrix(candidates, profile, 9, stats)
            matrix.append((time.perf_counter() - t) * 1000)
        online = await events.user_features("bench-user")
        assert online is not None
        feast_settings = settings.model_copy(update={"online_timeout_s": 5.0})
        feast_store.apply(feast_settings)
        feast = feast_store.FeastOnlineStore(feast_settings)
        feast.push([{"user_id": "bench-user", "event_timestamp": now, **online}])
        assert await feast.user_features("bench-user") == online
        feast_times: list[float] = []
        for _ in range(n):
            t = time.perf_counter()
            await feast.user_features("bench-user")
            feast_times.append((time.perf_counter() - t) * 1000)
        context: list[float] = []
        for _ in range(n):
            t = time.perf_counter()
            ctx = build_context(
                topic="focus", profile=profile, ts=None, max_chars=160, locale=None, online=online
            )
            VERSIONS["v3"].render_completion(ctx)
            context.append((time.perf_counter() - t) * 1000)
        await events.stop()
    return {
        "calls": n,
        "raw_kv_get_p50_ms": round(pct(raw, 50), 3),
        "raw_kv_get_p99_ms": round(pct(raw, 99), 3),
        "online_read_kv_p50_ms": round(pct(online_read, 50), 3),
        "online_read_kv_p99_ms": round(pct(online_read, 99), 3),
        "online_read_feast_sqlite_p50_ms": round(pct(feast_times, 50), 3),
        "online_read_feast_sqlite_p99_ms": round(pct(feast_times, 99), 3),
        "matrix_100_p50_ms": round(pct(matrix, 50), 3),
        "matrix_100_p99_ms": round(pct(matrix, 99), 3),
        "context_assembly_p50_ms": round(pct(context, 50), 3),
        "context_assembly_p99_ms": round(pct(context, 99), 3),
        "recent_signals_in_state": 20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "jetstream_kv": asyncio.run(run(args.n)),
    }
    stamp = write_results("features", results)
    r = results["jetstream_kv"]
    table = Table(
        "measure (JetStream KV store)",
        "p50",
        "p99",
        "target",
        title=f"tipml feature assembly — {stamp}",
    )
    table.add_row(
        "bare nats-py KV get (peer)",
        f"{r['raw_kv_get_p50_ms']} ms",
        f"{r['raw_kv_get_p99_ms']} ms",
        "",
    )
    table.add_row(
        "user's online features: KV get + decode + materialize",
        f"{r['online_read_kv_p50_ms']} ms",
        f"{r['online_read_kv_p99_ms']} ms",
        "",
    )
    table.add_row(
        "the same from Feast (SQLite online store)",
        f"{r['online_read_feast_sqlite_p50_ms']} ms",
        f"{r['online_read_feast_sqlite_p99_ms']} ms",
        "",
    )
    table.add_row(
        "/score: 100-candidate feature matrix",
        f"{r['matrix_100_p50_ms']} ms",
        f"{r['matrix_100_p99_ms']} ms",
        "",
    )
    table.add_row(
        "/generate: context assembly + render",
        f"{r['context_assembly_p50_ms']} ms",
        f"{r['context_assembly_p99_ms']} ms",
        "",
    )
    Console().print(table)


if __name__ == "__main__":
    main()

"""Training-set build + training: time and peak memory for N logged decisions.

A synthetic archive in the archiver's exact Parquet layout (``offline/decisions`` and
``offline/feedback``, one file per day) holds N ``/score`` decisions of simulated users — each
with ``--candidates`` candidates, the tip aggregates serving saw and, for the decisions the
skew check samples, the real feature hash — and one reaction per decision. Each size runs in
its own process (peak RSS is the process's own): compact → ``build_training_set`` → LightGBM
``train``. Goal (issue 9): 1M decisions in ≤ 60 s and ≤ 4 GB on this 2-core machine.

    .venv/bin/python bench/bench_training.py --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results

CHUNK = 50_000


def generate(root: Path, n: int, candidates: int, seed: int = 7) -> None:
    from tipml.domain.rewards import DEFAULT_REWARDS
    from tipml.events.archive import SCHEMA
    from tipml.features.tip_features import FEATURE_SET, feature_hash
    from tipml.pipelines.skew import rebuild_matrix
    from tipml.sim.catalog import CATALOG
    from tipml.sim.users import make_users

    rng = random.Random(seed)
    users = make_users(2000, seed)
    impressions = {t.tip_id: 0 for t in CATALOG}
    rewards = {t.tip_id: 0.0 for t in CATALOG}
    start = datetime(2026, 11, 1, tzinfo=UTC)
    step = max(1, n // 2000)  # the decisions the skew check will sample get their real hash
    seq = 0
    for part in range(0, n, CHUNK):
        d_rows: list[dict[str, Any]] = []
        f_rows: list[dict[str, Any]] = []
        for i in range(part, min(n, part + CHUNK)):
            user = rng.choice(users)
            ts = start + timedelta(seconds=i * 2)
            shown = rng.sample(CATALOG, candidates)
            profile = user.profile_features(rng)
            hour = user.local_hour(ts)
            scores = [rng.random() for _ in shown]
            order = sorted(range(candidates), key=lambda j: -scores[j])
            rank = {j: r + 1 for r, j in enumerate(order)}
            decision_id = str(uuid.UUID(int=rng.getrandbits(128)))
            payload: dict[str, Any] = {
                "decision_id": decision_id,
                "kind": "score",
                "user_id": user.user_id,
                "ts": ts.isoformat(),
                "platform": rng.choice(["ios", "android"]),
                "model_version": "baseline-1",
                "policy": "greedy",
                "k": 5,
                "local_hour": hour,
                "feature_set": FEATURE_SET,
                "user_online": {"user_signals_24h": float(rng.randint(0, 40))},
                "profile_features": profile,
                "candidates": [
                    {
                        "tip_id": t.tip_id,
                        "category": t.category,
                        "source": "curated",
                        "tags": list(t.tags),
                        "tip_impressions": impressions[t.tip_id],
                        "tip_reward_sum": rewards[t.tip_id],
                        "score": scores[j],
                        "propensity": 1.0 if rank[j] == 1 else 0.0,
                        "rank": rank[j],
                    }
                    for j, t in enumerate(shown)
                ],
            }
            if i % step == 0:
                payload["feature_hash"] = feature_hash(rebuild_matrix(payload))
            top = shown[order[0]]
            reaction = user.react(top.category, ts, rng)
            impressions[top.tip_id] += 1
            rewards[top.tip_id] += DEFAULT_REWARDS[reaction]
            seq += 1
            d_rows.append(
                {
                    "stream_seq": seq,
                    "subject": f"ml.decisions.score.{decision_id}",
                    "event_id": decision_id,
                    "user_id": user.user_id,
                    "ts": ts,
                    "kind": "score",
                    "tip_id": None,
                    "decision_id": decision_id,
                    "reaction": None,
                    "prompt_version": None,
                    "valid": True,
                    "payload": orjson.dumps(payload).decode(),
                }
            )
            event_id = f"fb-{decision_id}"
            f_rows.append(
                {
                    "stream_seq": seq,
                    "subject": f"feedback.{reaction}",
                    "event_id": event_id,
                    "user_id": user.user_id,
                    "ts": ts + timedelta(seconds=30),
                    "kind": None,
                    "tip_id": top.tip_id,
                    "decision_id": decision_id,
                    "reaction": reaction,
                    "prompt_version": None,
                    "valid": True,
                    "payload": "{}",
                }
            )
        for stream, rows in (("decisions", d_rows), ("feedback", f_rows)):
            day = rows[0]["ts"].strftime("%Y-%m-%d")
            folder = root / stream / f"date={day}"  # the archiver's layout (ADR 0015)
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(rows, schema=SCHEMA)
            pq.write_table(
                table, folder / f"part-{rows[0]['stream_seq']}-{rows[-1]['stream_seq']}.parquet"
            )


def build_and_train(root: Path) -> dict[str, Any]:
    """In a fresh process: compact, build the training set, train (timed; peak RSS)."""
    from tipml.domain.rewards import RewardTable
    from tipml.events.archive import compact
    from tipml.pipelines.dataset import DatasetSpec, build_training_set
    from tipml.pipelines.train import TrainParams, train

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    compact(root)
    compacted = time.perf_counter() - t0
    t0 = time.perf_counter()
    ts = build_training_set(
        root, RewardTable(), DatasetSpec(wait_s=600), as_of=datetime(2030, 1, 1, tzinfo=UTC)
    )
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = train(ts.x, ts.y, TrainParams())
    trained = time.perf_counter() - t0
    return {
        "rows": ts.n,
        "skew_checked": ts.skew.checked,
        "skew_mismatches": ts.skew.mismatches,
        "compact_s": round(compacted, 2),
        "build_s": round(built, 2),
        "train_s": round(trained, 2),
        "total_s": round(compacted + built + trained, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_after_imports_mb": round(base_rss),
        "model_bytes": len(model.text),
    }


def run_one(n: int, candidates: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "offline"
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--generate",
                str(root),
                "--one",
                str(n),
                "--candidates",
                str(candidates),
            ],
            check=True,
        )
        generated = time.perf_counter() - t0
        out = subprocess.run(
            [sys.executable, __file__, "--build", str(root)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"decisions": n, "candidates": candidates, "generate_s": round(generated, 1), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        import os

        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        generate(args.generate, args.one, args.candidates)
        return
    if args.build:
        print(json.dumps(build_and_train(args.build)))
        return
    runs = []
    for size in (int(s) for s in args.sizes.split(",")):
        runs.append(run_one(size, args.candidates))
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "goal": "1M decisions: build + train <= 60 s, <= 4 GB",
        "runs": runs,
    }
    stamp = write_results("training", results)
    table = Table(
        "decisions",
        "rows",
        "compact s",
        "build s",
        "train s",
        "total s",
        "peak RSS MB",
        "skew",
        title=f"training set + LightGBM — {stamp}",
    )
    for r in runs:
        table.add_row(
            f"{r['decisions']:,}",
            f"{r['rows']:,}",
            str(r["compact_s"]),
            str(r["build_s"]),
            str(r["train_s"]),
            str(r["total_s"]),
            str(r["peak_rss_mb"]),
            f"{r['skew_mismatches']}/{r['skew_checked']}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()

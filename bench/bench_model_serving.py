"""``/score`` with a trained, registered model vs the same model behind ``mlflow models serve``.

    .venv/bin/python bench/bench_model_serving.py [--rate 200] [--duration 20]

A LightGBM ranker is trained on a synthetic decision log (``bench_training.generate``),
registered in an MLflow registry (SQLite) and made ``champion`` and ``shadow``. Then, at a
fixed arrival rate (open loop: latency from each request's *scheduled* start), 100 candidates
per request:

1. ``tipml serve`` with ``TIPML_SCORER=registry`` — validation, the feature matrix, the model,
   the ranking policy and the decision log, plus the shadow model's scores (``TIPML_SHADOW=1``);
2. the same without the shadow (``TIPML_SHADOW=0``): the shadow's cost;
3. the peer: ``mlflow models serve`` of the same registered version (``--env-manager local``),
   sent the same 100 rows as a ``dataframe_split`` — the model alone, no features or logging.

Goal (issue 9): ``/score`` p99 ≤ 5 ms at 200 rps; the shadow adds ≤ 1 ms p99.
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
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.bench_serving import load_score, score_body, start_service
from bench.bench_training import generate
from bench.common import machine, open_loop, pct
from tipml.testing.stub_llm import IDLE_GATEWAY_YAML, free_port

RESULTS = Path(__file__).parent / "results"
STUB_GATEWAY = IDLE_GATEWAY_YAML


def register_model(data_dir: Path) -> tuple[str, list[str]]:
    """Train on a synthetic log, register, alias champion + shadow; the model's inputs."""
    from tipml.domain.rewards import RewardTable
    from tipml.pipelines.dataset import DatasetSpec, build_training_set
    from tipml.pipelines.train import TrainParams, train
    from tipml.registry.cards import ModelCard
    from tipml.registry.store import Registry

    root = data_dir / "synthetic-offline"
    generate(root, 50_000, 20)
    ts = build_training_set(
        root, RewardTable(), DatasetSpec(wait_s=600), as_of=datetime(2030, 1, 1, tzinfo=UTC)
    )
    model = train(ts.x, ts.y, TrainParams())
    registry = Registry(f"sqlite:///{data_dir / 'mlflow.db'}", data_dir / "mlflow-artifacts")
    card = ModelCard(
        name=registry.name,
        version="",
        sha256="",
        training_window=ts.window,
        training_set_hash=ts.content_hash,
        training_rows=ts.n,
        metrics={},
        fairness={},
        gaps={},
        ope={},
        params=TrainParams().as_dict(),
        inputs=ModelCard.inputs_for(model.feature_names),
    )
    cols = [ts.feature_names.index(n) for n in model.feature_names]
    version = registry.register(
        model.text, model.feature_names, card, params={}, example=ts.x[:5, cols]
    )
    for alias in ("champion", "shadow"):
        registry.set_alias(alias, version, by="bench", reason="benchmark")
    return version, list(model.feature_names)


def rows_for_peer(names: list[str]) -> list[bytes]:
    from tipml.features.profile_schema import validate_profile
    from tipml.features.tip_features import FEATURE_NAMES, Candidate, feature_matrix

    out = []
    for i in range(50):
        body = score_body(i)
        cands = [
            Candidate(c["tip_id"], c["category"], tuple(c["tags"])) for c in body["candidates"]
        ]
        x = feature_matrix(cands, validate_profile(body["profile_features"]), 9, {})
        x = x[:, [FEATURE_NAMES.index(n) for n in names]]
        data = [[None if np.isnan(v) else float(v) for v in row] for row in x]
        out.append(json.dumps({"dataframe_split": {"columns": names, "data": data}}).encode())
    return out


async def load_peer(
    url: str, bodies: list[bytes], rate: float, duration: float, warmup_s: float = 0.0
) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        for i in range(50):
            r = await client.post("/invocations", content=bodies[i % 50], headers=headers)
            r.raise_for_status()

        async def send(i: int) -> bool:
            try:
                r = await client.post("/invocations", content=bodies[i % 50], headers=headers)
            except httpx.HTTPError:
                return False
            return r.status_code == 200

        if warmup_s > 0:  # the same treatment as tipml's
            await open_loop(send, rate, warmup_s)
        latencies, errors, elapsed = await open_loop(send, rate, duration)
    return {
        "target_rps": rate,
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "errors": errors,
        "p50_ms": round(pct(latencies, 50), 2),
        "p99_ms": round(pct(latencies, 99), 2),
        "candidates": 100,
    }


def start_peer(port: int, data_dir: Path, version: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{data_dir / 'mlflow.db'}",
        # it execs `uvicorn` by name: the venv's
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/tipml-ranker/{version}",
            "-p",
            str(port),
            "--env-manager",
            "local",
            "-w",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(data_dir / "mlflow-serve.log").open("wb"),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    log = (data_dir / "mlflow-serve.log").read_text()[-2000:]
    raise SystemExit(f"mlflow models serve did not come up:\n{log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument(
        "--warmup", type=float, default=10, help="seconds at the rate first, not measured"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "goal": "/score p99 <= 5 ms at 200 rps with the trained model; shadow adds <= 1 ms p99",
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        (data_dir / "gateway.yaml").write_text(STUB_GATEWAY)
        version, names = register_model(data_dir)
        token = secrets.token_urlsafe(24)
        base = {
            "TIPML_DATA_DIR": str(data_dir),
            "TIPML_SCORER": "registry",
            "TIPML_REGISTRY_REQUIRE_MODEL": "1",
            "TIPML_GATEWAY_CONFIG": str(data_dir / "gateway.yaml"),
            "TIPML_LOCAL_LLM": "off",
        }
        for label, shadow in (("tipml_with_shadow", "1"), ("tipml_no_shadow", "0")):
            port = free_port()
            proc = start_service(port, token, {**base, "TIPML_SHADOW": shadow})
            try:
                results[label] = asyncio.run(
                    load_score(
                        f"http://127.0.0.1:{port}", token, args.rate, args.duration, args.warmup
                    )
                )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        port = free_port()
        peer = start_peer(port, data_dir, version)
        try:
            results["mlflow_models_serve"] = asyncio.run(
                load_peer(
                    f"http://127.0.0.1:{port}",
                    rows_for_peer(names),
                    args.rate,
                    args.duration,
                    args.warmup,
                )
            )
        finally:
            peer.terminate()
            peer.wait(timeout=30)
    ours, peer_r = results["tipml_with_shadow"], results["mlflow_models_serve"]
    results["p50_ratio_peer_over_tipml"] = round(peer_r["p50_ms"] / ours["p50_ms"], 2)
    results["p99_ratio_peer_over_tipml"] = round(peer_r["p99_ms"] / ours["p99_ms"], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"model-serving-{stamp}.json", "model-serving-latest.json"):
        (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
    table = Table(
        "at 100 candidates", "rps", "errors", "p50 ms", "p99 ms", title=f"model serving — {stamp}"
    )
    for label, key in (
        ("tipml /score: trained model + shadow + features + decision log", "tipml_with_shadow"),
        ("tipml /score without the shadow", "tipml_no_shadow"),
        ("mlflow models serve (model only)", "mlflow_models_serve"),
    ):
        r = results[key]
        table.add_row(
            label, str(r["achieved_rps"]), str(r["errors"]), str(r["p50_ms"]), str(r["p99_ms"])
        )
    Console().print(table)
    Console().print(
        f"peer/tipml latency: p50 x{results['p50_ratio_peer_over_tipml']}, "
        f"p99 x{results['p99_ratio_peer_over_tipml']}"
    )


if __name__ == "__main__":
    main()

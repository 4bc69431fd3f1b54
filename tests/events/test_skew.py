"""The skew check (issue 9, item 1): real traffic through the app — varied profiles, time
zones, tags, generated tips, and tip aggregates that change under feedback between
decisions — then every logged /score decision's feature matrix is rebuilt from the decision
log alone and must hash to what serving logged: 0 mismatches. A tampered log is caught."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient

from tests.conftest import AUTH, GatewayFile, make_settings, wait_gateway
from tipml.domain.rewards import RewardTable
from tipml.events.bus import EmbeddedNats, connect
from tipml.experiments.logs import exposures
from tipml.features.tip_features import FEATURE_NAMES, MODEL_COLUMNS
from tipml.pipelines.skew import skew_report
from tipml.serving.app import create_app

PROFILES: list[dict[str, Any]] = [
    {},
    {"favorite_category": "sleep", "preferred_hour": 22, "timezone": "Asia/Kolkata"},
    {"completion_rate": 0.4, "streak_days": 3, "notifications_enabled": True},
    {"favorite_category": "focus", "timezone": "America/Los_Angeles", "tip_volume_7d": 12},
]


def test_every_logged_decision_rebuilds_to_the_hash_serving_logged(
    tmp_path: Path, nats: EmbeddedNats, gateway_file: GatewayFile
) -> None:
    settings = make_settings(
        tmp_path, gateway_config=gateway_file("ok"), nats_url=nats.url, consumers="inprocess"
    )
    candidates = [
        {"tip_id": "a", "category": "sleep", "tags": ["night"]},
        {"tip_id": "b", "category": "focus"},
        {"tip_id": "c", "source": "generated", "tags": ["x", "y"]},
        {"tip_id": "d", "category": "movement"},
    ]

    async def feedback(i: int) -> None:
        nc = await connect(nats.url, "fb")
        js = nc.jetstream()
        for j, tip in enumerate(("a", "b", "a")):
            payload = {
                "event_id": f"f-{i}-{j}",
                "user_id": "u",
                "tip_id": tip,
                "ts": "2026-11-28T10:00:00Z",
            }
            await js.publish(
                "feedback.completed", orjson.dumps(payload), headers={"Nats-Msg-Id": f"f-{i}-{j}"}
            )
        await nc.close()

    with TestClient(create_app(settings)) as client:
        wait_gateway(client)
        deadline = time.monotonic() + 30
        while not client.get("/readyz").json()["ready"] and time.monotonic() < deadline:
            time.sleep(0.1)
        for i in range(40):
            body = {
                "user_id": f"u-{i % 5}",
                "candidates": candidates,
                "profile_features": PROFILES[i % len(PROFILES)],
                "context": {"ts": f"2026-11-28T{i % 24:02d}:15:00+01:00"},
            }
            r = client.post("/score", json=body, headers=AUTH)
            assert r.status_code == 200, r.text
            if i % 10 == 0:  # the tip aggregates change between decisions
                asyncio.run(feedback(i))
                time.sleep(0.5)
        deadline = time.monotonic() + 30
        items: list[Any] = []
        while time.monotonic() < deadline:
            items = exposures(settings.data_dir / "offline", RewardTable(), kind="score")
            if len(items) == 40:
                break
            time.sleep(0.3)
    assert len(items) == 40
    impressions = {c["tip_impressions"] for e in items for c in e.payload["candidates"]}
    assert len(impressions) > 1  # decisions really saw different aggregates
    report = skew_report(e.payload for e in items)
    assert (report.decisions, report.checked, report.mismatches) == (40, 40, 0)

    tampered = copy.deepcopy(items[7].payload)
    tampered["candidates"][0]["tip_impressions"] += 1  # a value from after the decision
    report = skew_report([tampered, items[8].payload])
    assert (report.checked, report.mismatches) == (2, 1)
    assert report.examples == [tampered["decision_id"]]

    cli = subprocess.run(
        [sys.executable, "-m", "tipml", "features", "skew", "--json"],
        env={**os.environ, "TIPML_DATA_DIR": str(settings.data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["mismatches"] == 0


def test_one_list_describes_every_column_a_model_sees() -> None:
    assert tuple(c.name for c in MODEL_COLUMNS) == FEATURE_NAMES
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert all(c.source and c.description for c in MODEL_COLUMNS)

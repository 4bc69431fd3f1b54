"""The whole loop in one process: /score logs its decision, feedback changes the next score."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from fastapi.testclient import TestClient

from tests.conftest import AUTH, GatewayFile, make_settings, wait_gateway
from tests.events.helpers import logged_decisions
from tipml.events.bus import EmbeddedNats, connect
from tipml.serving.app import create_app


def test_decisions_are_logged_and_feedback_reaches_the_scorer(
    tmp_path: Path, nats: EmbeddedNats, gateway_file: GatewayFile
) -> None:
    settings = make_settings(
        tmp_path,
        gateway_config=gateway_file("ok"),
        nats_url=nats.url,
        consumers="inprocess",
        state_interval_s=0.3,
    )
    body = {
        "user_id": "u-loop",
        "candidates": [{"tip_id": "a", "category": "sleep"}, {"tip_id": "b", "category": "sleep"}],
    }
    with TestClient(create_app(settings)) as client:
        ready = wait_gateway(client)
        deadline = time.monotonic() + 20
        while not ready["ready"] and time.monotonic() < deadline:
            time.sleep(0.1)
            ready = client.get("/readyz").json()
        assert ready["ready"], ready
        assert ready["components"]["nats"]["ok"]
        assert ready["components"]["consumer:signals-features"]["ok"]
        assert ready["components"]["consumer:feedback-rewards"]["ok"]

        first = client.post("/score", json=body, headers=AUTH).json()
        assert [r["tip_id"] for r in first["results"]] == ["a", "b"]  # a tie: input order

        async def feedback_for_b() -> None:
            nc = await connect(nats.url, "test")
            js = nc.jetstream()
            for i in range(20):
                payload = {
                    "event_id": f"fb-{i}",
                    "user_id": "x",
                    "tip_id": "b",
                    "decision_id": first["score_id"],
                    "ts": "2026-11-27T10:00:00Z",
                }
                await js.publish(
                    "feedback.completed", orjson.dumps(payload), headers={"Nats-Msg-Id": f"fb-{i}"}
                )
            await nc.close()

        asyncio.run(feedback_for_b())
        deadline = time.monotonic() + 20
        ranked: list[str] = []
        while time.monotonic() < deadline:  # the tip view follows the bucket
            ranked = [
                r["tip_id"]
                for r in client.post("/score", json=body, headers=AUTH).json()["results"]
            ]
            if ranked[0] == "b":
                break
            time.sleep(0.2)
        assert ranked == ["b", "a"]
        generated = client.post(
            "/generate", json={"user_id": "u-loop", "topic": "sleep"}, headers=AUTH
        ).json()

    async def decisions() -> list[dict[str, object]]:
        nc = await connect(nats.url, "reader")
        js = nc.jetstream()
        out = await logged_decisions(js)
        await nc.close()
        return out

    logged = asyncio.run(decisions())
    by_id = {d["decision_id"]: d for d in logged}
    score = by_id[first["score_id"]]
    assert score["kind"] == "score"
    assert score["policy"] == "greedy"
    assert [c["tip_id"] for c in score["candidates"]] == ["a", "b"]  # type: ignore[index]
    assert [c["propensity"] for c in score["candidates"]] == [1.0, 0.0]  # type: ignore[index]
    gen = by_id[generated["generation_id"]]
    assert gen["prompt_version"] == "v1"
    assert gen["text"] == generated["text"]
    assert len(logged) == len(by_id)  # each decision once


def test_generate_prompts_are_built_from_real_signals(
    tmp_path: Path, nats: EmbeddedNats, gateway_file: GatewayFile
) -> None:
    settings = make_settings(
        tmp_path, gateway_config=gateway_file("ok"), nats_url=nats.url, consumers="inprocess"
    )

    async def signals() -> None:
        nc = await connect(nats.url, "signals")
        js = nc.jetstream()
        for i, title in enumerate(["Deep work", "Inbox zero", "Deep work"]):
            payload = {
                "event_id": f"s-{i}",
                "user_id": "u-ctx",
                "ts": datetime.now(UTC).isoformat(),
                "attrs": {"title": title},
            }
            await js.publish(
                "signals.task.completed", orjson.dumps(payload), headers={"Nats-Msg-Id": f"s-{i}"}
            )
        await nc.close()

    with TestClient(create_app(settings)) as client:
        wait_gateway(client)
        deadline = time.monotonic() + 20
        while not client.get("/readyz").json()["ready"] and time.monotonic() < deadline:
            time.sleep(0.1)
        asyncio.run(signals())
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        online: dict[str, object] | None = None
        while time.monotonic() < deadline:
            online = client.portal.call(runtime.events.user_features, "u-ctx")  # type: ignore[union-attr]
            if online and online["signal_counts_total"] == {"task.completed": 3}:
                break
            time.sleep(0.1)
        generated = client.post(
            "/generate",
            json={"user_id": "u-ctx", "topic": "focus", "prompt_version": "v3"},
            headers=AUTH,
        ).json()
        assert generated["prompt_version"] == "v3"

    async def decision() -> dict[str, object]:
        nc = await connect(nats.url, "reader")
        js = nc.jetstream()
        found = {}
        for d in await logged_decisions(js):
            if d["decision_id"] == generated["generation_id"]:
                found = d
        await nc.close()
        return found

    logged = asyncio.run(decision())
    assert "task completed 3 times in the last 24 hours" in logged["context_facts"]  # type: ignore[operator]
    assert logged["context_recent"] == [
        "task completed - Deep work",  # oldest to newest
        "task completed - Inbox zero",
        "task completed - Deep work",
    ]

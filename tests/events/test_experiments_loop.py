"""Experiments through serving (issue 8, items 3 and 4), on a real nats-server:

* ``DEFAULT_PROMPT_VERSION=experiment:<bandit>`` — /generate plays the bandit's arms and says
  so (experiment, variant, propensity), the decision log carries them;
* the learner folds each decision's first reaction into the bandit's parameters in the
  ``policies`` bucket — once per decision: a re-published event under a new message id and a
  second reaction to the same decision change nothing; feedback for an unknown decision is
  counted unmatched after the grace period;
* serving's watched view follows the bucket, so the next choice uses what was learnt;
* ``TIPML_SCORE_POLICY=epsilon_greedy:<ε>`` logs exact propensities on every candidate.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from fastapi.testclient import TestClient

from tests.conftest import AUTH, GatewayFile, make_settings, wait_gateway
from tipml.domain.decisions import decode_decision
from tipml.domain.records import decode_state, kv_key
from tipml.domain.rewards import RewardTable
from tipml.events.bus import DECISIONS, POLICIES_BUCKET, EmbeddedNats, connect
from tipml.events.decisions import message_decisions
from tipml.experiments import ope
from tipml.experiments.logs import exposures, logged_scores
from tipml.serving.app import create_app

BANDIT = {
    "experiments": {
        "arms": {
            "target": "prompt_version",
            "kind": "bandit",
            "policy": "thompson",
            "arms": ["v1", "v2", "v3"],
        }
    }
}


def _ready(client: TestClient) -> None:
    wait_gateway(client)
    deadline = time.monotonic() + 30
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get("/readyz").json()
        if body["ready"]:
            return
        time.sleep(0.1)
    raise AssertionError(body)


async def _publish(url: str, events: list[tuple[str, str, dict[str, Any]]]) -> None:
    nc = await connect(url, "test-feedback")
    js = nc.jetstream()
    for subject, msg_id, payload in events:
        await js.publish(subject, orjson.dumps(payload), headers={"Nats-Msg-Id": msg_id})
    await nc.close()


async def _policy_state(url: str, key: str) -> dict[str, Any] | None:
    nc = await connect(url, "test-reader")
    try:
        kv = await nc.jetstream().key_value(POLICIES_BUCKET)
        try:
            entry = await kv.get(kv_key(key))
        except Exception:
            return None
        return decode_state(entry.value) if entry.value else None
    finally:
        await nc.close()


async def _decisions(url: str) -> dict[str, dict[str, Any]]:
    nc = await connect(url, "test-decisions")
    js = nc.jetstream()
    info = await js.stream_info(DECISIONS)
    out = {}
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(DECISIONS, seq)
        for subject, data in message_decisions(msg.subject, msg.data or b"{}", msg.headers):
            body = decode_decision(data)
            assert subject == f"ml.decisions.{body['kind']}.{body['decision_id']}"
            out[body["decision_id"]] = body
    await nc.close()
    return out


def test_the_bandit_learns_each_decision_once_and_serving_follows(
    tmp_path: Path, nats: EmbeddedNats, gateway_file: GatewayFile
) -> None:
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text(yaml.safe_dump(BANDIT))
    settings = make_settings(
        tmp_path,
        gateway_config=gateway_file("ok"),
        nats_url=nats.url,
        consumers="inprocess",
        experiments_config=experiments,
        default_prompt_version="experiment:arms",
        learner_grace_s=1.0,
        state_interval_s=0.3,
    )
    with TestClient(create_app(settings)) as client:
        _ready(client)
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        key = runtime.experiments.get("arms").state_key
        generated = []
        for i in range(30):
            r = client.post("/generate", json={"user_id": f"u-{i}", "topic": "sleep"}, headers=AUTH)
            assert r.status_code == 200, r.text
            generated.append(r.json())
        for g in generated:
            assert g["experiment"] == "arms"
            assert g["variant"] == g["prompt_version"] in ("v1", "v2", "v3")
            assert 0.2 < g["propensity"] < 0.47  # the uniform prior, estimated by Monte Carlo
        # an explicit prompt_version in the body still wins, outside the experiment
        explicit = client.post(
            "/generate",
            json={"user_id": "u-0", "topic": "sleep", "prompt_version": "v1"},
            headers=AUTH,
        ).json()
        assert (explicit["experiment"], explicit["variant"], explicit["propensity"]) == (
            None,
            None,
            None,
        )

        def reaction(g: dict[str, Any]) -> str:
            return "completed" if g["variant"] == "v2" else "dismissed"

        events = [
            (
                f"feedback.{reaction(g)}",
                f"fb-{i}",
                {
                    "event_id": f"fb-{i}",
                    "user_id": f"u-{i}",
                    "tip_id": f"gen-{i}",
                    "decision_id": g["generation_id"],
                    "prompt_version": g["prompt_version"],
                    "ts": "2026-11-28T10:00:00Z",
                },
            )
            for i, g in enumerate(generated)
        ]
        asyncio.run(_publish(nats.url, events))
        # the same events again under new message ids, a second reaction to one decision,
        # and feedback naming a decision that does not exist
        again = [(s, f"retry-{m}", p) for s, m, p in events[:10]]
        second = (
            "feedback.liked",
            "fb-second",
            {**events[0][2], "event_id": "fb-second", "reaction": "liked"},
        )
        unknown = (
            "feedback.completed",
            "fb-unknown",
            {**events[1][2], "event_id": "fb-unknown", "decision_id": "no-such-decision"},
        )
        asyncio.run(_publish(nats.url, [*again, second, unknown]))

        plays = {v: sum(g["variant"] == v for g in generated) for v in ("v1", "v2", "v3")}
        deadline = time.monotonic() + 30
        state = None
        learner = next(r for r in runtime.events.runners if r.handler.name == "experiments-learner")
        while time.monotonic() < deadline:
            state = asyncio.run(_policy_state(nats.url, key))
            if state and learner.handler.counts.get("unmatched") == 1:
                break
            time.sleep(0.2)
        assert state is not None
        a, b = state["state"]["a"], state["state"]["b"]
        # Beta(1, 1) prior + one reward per decision: v2 always completed, the rest dismissed
        assert a == [1.0, 1.0 + plays["v2"], 1.0]
        assert b == [1.0 + plays["v1"], 1.0, 1.0 + plays["v3"]]
        counts = learner.handler.counts
        assert counts["learnt"] == 30
        assert counts["duplicate"] == 11  # ten re-published events, one second reaction
        assert counts["unmatched"] == 1

        # serving's view follows the bucket, and the bandit now prefers v2
        deadline = time.monotonic() + 10
        # (the watch delivers the bucket's revisions in order; wait for the last one)
        while time.monotonic() < deadline and (
            runtime.policy_view.snapshot().get(key, {}).get("state", {}).get("a") != a
        ):
            time.sleep(0.1)
        assert runtime.policy_view.snapshot()[key]["state"]["a"] == a
        later = [
            client.post(
                "/generate", json={"user_id": f"w-{i}", "topic": "sleep"}, headers=AUTH
            ).json()
            for i in range(20)
        ]
        if plays["v2"] >= 3:
            assert sum(g["variant"] == "v2" for g in later) >= 12
        health = client.get("/readyz").json()["components"]
        assert health["policy_view"]["ok"], health["policy_view"]

        # the report counts every exposure and every reaction once, from the archive
        deadline = time.monotonic() + 30
        report: dict[str, Any] = {}
        while time.monotonic() < deadline:
            report = client.get("/experiments/report", headers=AUTH).json()
            if report.get("decisions") == 51 and report.get("reactions") == 31:
                break
            time.sleep(0.3)
        assert (report["decisions"], report["reactions"]) == (51, 31), report
        arms = report["experiments"]["arms"]
        assert arms["exposures"] == 50
        assert arms["kind"] == "bandit"
        rows = {r["name"]: r for r in arms["variants"]}
        for v in ("v1", "v2", "v3"):
            shown = plays[v] + sum(g["variant"] == v for g in later)
            assert rows[v]["exposures"] == shown
        assert rows["v2"]["reactions"].get("completed", 0) == plays["v2"]
        first_variant = generated[0]["variant"]
        assert rows[first_variant]["reactions"].get("liked") == 1  # the second reaction
        assert client.get("/experiments/report").status_code == 401

    logged = asyncio.run(_decisions(nats.url))
    for g in generated:
        d = logged[g["generation_id"]]
        assert (d["experiment"], d["variant"], d["policy_key"]) == ("arms", g["variant"], key)
        assert d["variant_propensity"] == g["propensity"]


def test_epsilon_greedy_scores_log_exact_propensities(
    tmp_path: Path, nats: EmbeddedNats, gateway_file: GatewayFile
) -> None:
    settings = make_settings(
        tmp_path,
        gateway_config=gateway_file("ok"),
        nats_url=nats.url,
        consumers="inprocess",
        score_policy="epsilon_greedy:0.2",
    )
    body = {
        "user_id": "u-eps",
        "candidates": [{"tip_id": t, "category": "sleep"} for t in ("a", "b", "c", "d")],
        "profile_features": {"favorite_category": "sleep"},
    }
    firsts = []
    responses = []
    with TestClient(create_app(settings)) as client:
        _ready(client)
        for _ in range(200):
            r = client.post("/score", json=body, headers=AUTH).json()
            responses.append(r)
            assert r["policy"] == "epsilon_greedy:0.2"
            assert r["experiment"] is None
            props = {x["tip_id"]: x["propensity"] for x in r["results"]}
            # 1-ε+ε/n for the greedy top, ε/n for the others
            assert props == pytest.approx({"a": 0.85, "b": 0.05, "c": 0.05, "d": 0.05})
            firsts.append(r["results"][0]["tip_id"])
        # the user completes tip "b" whenever it is shown first: the log says greedy (which
        # shows "a") would earn 0 and uniform 1/4 of what "b" earns
        events = [
            (
                f"feedback.{'completed' if r['results'][0]['tip_id'] == 'b' else 'dismissed'}",
                f"f-{i}",
                {
                    "event_id": f"f-{i}",
                    "user_id": "u-eps",
                    "tip_id": r["results"][0]["tip_id"],
                    "decision_id": r["score_id"],
                    "ts": "2026-11-28T10:00:00Z",
                },
            )
            for i, r in enumerate(responses)
        ]
        asyncio.run(_publish(nats.url, events))
        deadline = time.monotonic() + 30
        items: list[Any] = []
        while time.monotonic() < deadline:
            items = exposures(settings.data_dir / "offline", RewardTable())
            if len(items) == 200 and sum(len(e.reactions) for e in items) == 200:
                break
            time.sleep(0.3)
    share = firsts.count("a") / len(firsts)
    assert 0.75 < share < 0.95  # it explores
    assert len(items) == 200
    data = logged_scores(items)
    greedy = ope.report(data, "greedy", n_boot=200)["estimates"]
    uniform = ope.report(data, "uniform", n_boot=200)["estimates"]
    assert greedy["ips"]["value"] == 0.0  # type: ignore[index]
    # IPS from the logged propensities, exactly: each row where "b" came first (logged
    # propensity ε/n = 0.05) weighs (1/4) / 0.05 = 5; in expectation 0.25, but with ~10 such
    # rows in 200 the draw moves it by ±0.08 — so compare with this log's own count
    b_first = firsts.count("b")
    assert b_first > 0
    assert uniform["ips"]["value"] == pytest.approx(b_first * 5 / 200)  # type: ignore[index]
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tipml",
            "experiments",
            "evaluate",
            "--policy",
            "uniform",
            "--estimators",
            "ips,dr",
            "--n-boot",
            "200",
            "--json",
        ],
        env={**os.environ, "TIPML_DATA_DIR": str(settings.data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["n"] == 200
    logged = asyncio.run(_decisions(nats.url))
    assert len(logged) == 200
    for d in logged.values():
        assert d["policy"] == "epsilon_greedy:0.2"
        got = sorted(c["propensity"] for c in d["candidates"])
        assert got == pytest.approx([0.05, 0.05, 0.05, 0.85])

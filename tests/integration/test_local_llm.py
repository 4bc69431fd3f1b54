"""Real generation: Gemma 3 270M in llama.cpp, through LiteLLM, through the app. CI runs it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import AUTH, make_settings, wait_gateway
from tipml.serving.app import create_app
from tipml.serving.local_llm import MODEL_ALIAS
from tipml.serving.runtime import Runtime
from tipml.settings import DEFAULT_GATEWAY_CONFIG

pytestmark = pytest.mark.llm


@pytest.fixture(scope="module")
def llm_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("llm")
    # the packaged experiments as the default (the demo's setting): the model warms up and
    # serves with it (a regression: warm-up once resolved the setting as a version)
    settings = make_settings(
        tmp,
        gateway_config=DEFAULT_GATEWAY_CONFIG,
        generate_deadline_s=20,
        default_prompt_version="experiment:prompt-version,prompt-bandit",
    )
    with TestClient(create_app(settings)) as client:
        ready = wait_gateway(client, timeout_s=180)
        assert ready["ready"], ready
        yield client


def test_readyz_reports_the_local_model(llm_client: TestClient) -> None:
    body = llm_client.get("/readyz").json()
    assert body["components"]["local_llm"]["ok"] is True
    assert "(completion) via local llama.cpp" in body["components"]["gateway"]["detail"]


def test_the_experiments_choose_the_version_when_the_body_does_not(
    llm_client: TestClient,
) -> None:
    seen = set()
    for i in range(6):
        data = llm_client.post(
            "/generate", json={"user_id": f"u-exp-{i}", "topic": "sleep"}, headers=AUTH
        ).json()
        assert data["usage"]["completion_tokens"] > 0
        if data["experiment"] is not None:  # else: the user is in the 5 % holdout (v1)
            assert data["experiment"] in ("prompt-version", "prompt-bandit")
            assert data["variant"] == data["prompt_version"]
            assert 0 < data["propensity"] <= 1
            seen.add(data["experiment"])
    assert seen


def test_generates_real_tips_with_the_local_model(llm_client: TestClient) -> None:
    accepted: list[str] = []
    for version in ("v1", "v2"):
        for topic in ("sleep", "movement", "stress"):
            resp = llm_client.post(
                "/generate",
                json={
                    "user_id": "u-llm",
                    "topic": topic,
                    "prompt_version": version,
                    "profile_features": {"preferred_hour": 21, "completion_rate": 0.7},
                    "max_chars": 160,
                },
                headers=AUTH,
            )
            assert resp.status_code == 200
            data = resp.json()
            assert data["prompt_version"] == version
            assert data["usage"]["completion_tokens"] > 0  # the model really answered ...
            assert 0 < len(data["text"]) <= 160
            if not data["fallback"]:
                assert data["model"] == MODEL_ALIAS
                accepted.append(data["text"])
            else:  # ... and only the guard may turn its answer into the fallback
                assert data["fallback_reason"].startswith("guard_")
                assert data["model"] == "fallback"
    assert accepted, "the guard rejected every generated tip"
    assert len(set(accepted)) == len(accepted) or len(accepted) == 1


def test_the_llama_server_stops_with_the_app(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, gateway_config=DEFAULT_GATEWAY_CONFIG)
    app = create_app(settings)
    runtime: Runtime = app.state.runtime
    with TestClient(app) as client:
        wait_gateway(client, timeout_s=180)
        llm = runtime.gateway_state.local_llm
        assert llm is not None
        assert llm.running
    assert runtime.gateway_state.local_llm is not None
    assert not runtime.gateway_state.local_llm.running


def test_a_dead_model_server_is_restarted_and_readyz_says_so_meanwhile(
    llm_client: TestClient,
) -> None:
    runtime: Runtime = llm_client.app.state.runtime  # type: ignore[attr-defined]
    llm = runtime.gateway_state.local_llm
    assert llm is not None
    assert llm.pid is not None
    os.kill(llm.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    down: dict[str, object] = {}
    while time.monotonic() < deadline:
        down = llm_client.get("/readyz").json()["components"]["local_llm"]
        if not down["ok"]:
            break
        time.sleep(0.1)
    assert down["ok"] is False, down
    deadline = time.monotonic() + 90
    back: dict[str, object] = {}
    while time.monotonic() < deadline:
        back = llm_client.get("/readyz").json()["components"]["local_llm"]
        if back["ok"]:
            break
        time.sleep(0.2)
    assert back["ok"] is True, back
    assert "restarted 1x" in str(back["detail"])
    resp = llm_client.post(
        "/generate", json={"user_id": "u-llm", "topic": "sleep", "max_chars": 160}, headers=AUTH
    )
    assert resp.json()["usage"]["completion_tokens"] > 0

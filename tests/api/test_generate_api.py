from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import AUTH, GatewayFile, make_settings, wait_gateway
from tipml.serving.app import create_app
from tipml.serving.prompts import VERSIONS
from tipml.settings import Settings
from tipml.testing.stub_llm import StubLLM


def test_generates_with_the_llm(client: TestClient, stub_llm: StubLLM) -> None:
    resp = client.post(
        "/generate",
        json={"user_id": "u-1", "topic": "movement", "profile_features": {"preferred_hour": 7}},
        headers=AUTH,
    )
    assert resp.status_code == 200
    data = resp.json()
    assert data["text"] == stub_llm.text
    assert data["fallback"] is False
    assert data["fallback_reason"] is None
    assert data["prompt_version"] == "v1"
    assert data["model"] == "ok"
    assert data["usage"]["completion_tokens"] > 0
    assert data["usage"]["total_tokens"] == (
        data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
    )
    assert data["latency_ms"] > 0
    assert len(data["generation_id"]) == 36


def test_prompt_version_from_body(client: TestClient) -> None:
    data = client.post(
        "/generate", json={"user_id": "u", "prompt_version": "v2"}, headers=AUTH
    ).json()
    assert data["prompt_version"] == "v2"


def test_prompt_version_from_env_default(
    tmp_path: Path, gateway_file: GatewayFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEFAULT_PROMPT_VERSION", "v2")
    settings = Settings(
        api_tokens="test-token-0123456789abcdef",  # type: ignore[arg-type]
        gateway_config=gateway_file("ok"),
        data_dir=tmp_path,
    )
    assert settings.default_prompt_version == "v2"
    with TestClient(create_app(settings)) as c:
        wait_gateway(c)
        assert (
            c.post("/generate", json={"user_id": "u"}, headers=AUTH).json()["prompt_version"]
            == "v2"
        )
        assert (
            c.post("/generate", json={"user_id": "u", "prompt_version": "v1"}, headers=AUTH).json()[
                "prompt_version"
            ]
            == "v1"
        )


def test_unknown_prompt_version_is_422_listing_known(client: TestClient) -> None:
    resp = client.post("/generate", json={"user_id": "u", "prompt_version": "v999"}, headers=AUTH)
    assert resp.status_code == 422
    data = resp.json()
    assert data["error"] == "unknown_prompt_version"
    assert data["field"] == "prompt_version"
    for key in VERSIONS:
        assert key in data["detail"]


def test_unknown_default_prompt_version_refuses_to_start(
    tmp_path: Path, gateway_file: GatewayFile
) -> None:
    from tipml.errors import UnknownPromptVersion

    settings = make_settings(
        tmp_path, default_prompt_version="v999", gateway_config=gateway_file("ok")
    )
    with pytest.raises(UnknownPromptVersion, match="DEFAULT_PROMPT_VERSION"):
        create_app(settings)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "user_id"),
        ({"user_id": "u", "max_chars": 5}, "max_chars"),
        ({"user_id": "u", "max_chars": 5000}, "max_chars"),
        ({"user_id": "u", "prompt_version": ""}, "prompt_version"),
        ({"user_id": "u", "topic": 3}, "topic"),
        ({"user_id": "u", "profile_features": {"streak_days": -2}}, "profile_features.streak_days"),
        ({"user_id": "u", "bogus": 1}, "bogus"),
    ],
)
def test_bad_generate_input_names_the_field(
    client: TestClient, payload: dict[str, Any], field: str
) -> None:
    resp = client.post("/generate", json=payload, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == field


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("error-500", "provider_error"),
        ("error-429", "rate_limited"),
        ("hang", "deadline"),
        ("drip", "deadline"),
        ("say:Visit_https://example.com_for_more_tips_today.", "guard_url"),
        ("say:<b>Drink</b>_more_water_today.", "guard_html"),
        ("say:", "guard_empty"),
        (
            "say:Try_dimming_the_lights_and_putting_your_phone_away_before_bed.",
            "guard_copied_example",
        ),
    ],
)
def test_llm_problems_end_in_fallback_never_5xx(
    tmp_path: Path, gateway_file: GatewayFile, behaviour: str, reason: str
) -> None:
    settings = make_settings(
        tmp_path, gateway_config=gateway_file(behaviour, timeout=30), generate_deadline_s=1.5
    )
    with TestClient(create_app(settings)) as c:
        wait_gateway(c)
        resp = c.post(
            "/generate",
            json={
                "user_id": "u",
                "topic": "sleep",
                "max_chars": 120,
                "context": {"ts": "2026-11-27T19:30:00Z"},
            },
            headers=AUTH,
        )
        assert resp.status_code == 200
        data = resp.json()
        assert data["fallback"] is True
        assert data["fallback_reason"] == reason
        assert data["model"] == "fallback"  # a guard rejection serves no model text
        assert data["text"] == VERSIONS["v1"].fallback["sleep"].format(day_part="evening")
        assert data["latency_ms"] < 1500 + 500
        metrics = c.get("/metrics").text
        assert (
            f'tipml_generate_fallbacks_total{{prompt_version="v1",reason="{reason}"}} 1.0'
            in metrics
        )


def test_gateway_not_ready_serves_fallback_and_readyz_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIPML_LOCAL_LLM_API_BASE", raising=False)
    config = tmp_path / "gw.yaml"
    config.write_text(
        "model_list:\n  - model_name: tip-writer\n    litellm_params:\n"
        "      model: text-completion-openai/x\n      api_base: ${TIPML_LOCAL_LLM_API_BASE}\n"
    )
    settings = make_settings(tmp_path, gateway_config=config, local_llm="off")
    with TestClient(create_app(settings)) as c:
        ready = wait_gateway(c)
        assert ready["ready"] is False
        assert "TIPML_LOCAL_LLM=off" in ready["components"]["gateway"]["detail"]
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200
        data = c.post(
            "/generate",
            json={"user_id": "u", "topic": "focus", "context": {"ts": "2026-11-27T07:00:00Z"}},
            headers=AUTH,
        ).json()
        assert data["fallback"] is True
        assert data["fallback_reason"] == "gateway_not_ready"
        assert data["text"] == VERSIONS["v1"].fallback["focus"].format(day_part="early morning")
        # /score does not depend on the gateway
        assert (
            c.post(
                "/score", json={"user_id": "u", "candidates": [{"tip_id": "a"}]}, headers=AUTH
            ).status_code
            == 200
        )


def test_metrics_cover_requests_llm_latency_and_tokens(client: TestClient) -> None:
    client.post("/generate", json={"user_id": "u", "topic": "sleep"}, headers=AUTH)
    client.post("/score", json={"user_id": "u", "candidates": [{"tip_id": "a"}]}, headers=AUTH)
    text = client.get("/metrics").text
    assert 'tipml_http_requests_total{method="POST",route="/generate",status="200"} 1.0' in text
    assert 'tipml_http_requests_total{method="POST",route="/score",status="200"} 1.0' in text
    assert 'tipml_http_request_seconds_count{route="/score"} 1.0' in text
    assert 'tipml_llm_request_seconds_count{route="tip-writer"} 1.0' in text
    assert 'tipml_llm_tokens_total{kind="completion",route="tip-writer"} 8.0' in text
    assert 'tipml_llm_tokens_total{kind="prompt",route="tip-writer"} 20.0' in text
    assert 'tipml_generations_total{outcome="llm",prompt_version="v1"} 1.0' in text
    assert "tipml_gateway_ready 1.0" in text

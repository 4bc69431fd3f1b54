"""The real LiteLLM Router against a stub of a hosted provider (the one allowed mock)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import GatewayFile, stub_route
from tipml.errors import ConfigError, GatewayError
from tipml.serving.gateway import LiteLLMGateway, load_gateway_config
from tipml.testing.stub_llm import StubLLM

PARAMS = {"max_tokens": 20, "stop": ["\n"]}


async def complete(path: Path, deadline_s: float = 3.0, **kw: object) -> object:
    gateway = LiteLLMGateway(load_gateway_config(path))
    try:
        return await gateway.complete(prompt="Tip:", params=PARAMS, deadline_s=deadline_s, **kw)
    finally:
        await gateway.aclose()


async def test_completion_route(gateway_file: GatewayFile, stub_llm: StubLLM) -> None:
    result = await complete(gateway_file("say:Stretch_for_two_minutes."))
    assert result.text == "Stretch for two minutes."  # type: ignore[attr-defined]
    assert result.finish_reason == "stop"  # type: ignore[attr-defined]
    assert result.completion_tokens == 4  # type: ignore[attr-defined]


async def test_chat_route(gateway_file: GatewayFile, stub_llm: StubLLM) -> None:
    gateway = LiteLLMGateway(load_gateway_config(gateway_file("say:Drink_water.", mode="chat")))
    assert gateway.mode == "chat"
    result = await gateway.complete(
        messages=[{"role": "user", "content": "hi"}], params=PARAMS, deadline_s=3
    )
    assert result.text == "Drink water."
    await gateway.aclose()


async def test_retries_recover_a_flaky_provider(
    gateway_file: GatewayFile, stub_llm: StubLLM
) -> None:
    result = await complete(gateway_file("flaky-1", num_retries=1), deadline_s=10)
    assert result.text == stub_llm.text  # type: ignore[attr-defined]
    assert stub_llm.calls["flaky-1"] == 2


async def test_fallback_route_answers_when_primary_fails(
    gateway_file: GatewayFile, stub_llm: StubLLM
) -> None:
    path = gateway_file(
        "error-503",
        extra_routes=[stub_route(stub_llm, "backup", "say:From_the_backup.")],
        fallbacks=[{"tip-writer": ["backup"]}],
    )
    result = await complete(path, deadline_s=10)
    assert result.text == "From the backup."  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("behaviour", "reason", "route_timeout"),
    [
        ("error-500", "provider_error", 5.0),
        ("error-429", "rate_limited", 5.0),
        ("slow:3", "provider_timeout", 0.5),  # the per-route timeout fires first
        ("hang", "deadline", 30.0),  # the outer deadline fires
        ("drip", "deadline", 30.0),  # bytes keep arriving: only the outer deadline helps
    ],
)
async def test_failures_raise_one_error_within_the_deadline(
    gateway_file: GatewayFile,
    stub_llm: StubLLM,
    behaviour: str,
    reason: str,
    route_timeout: float,
) -> None:
    path = gateway_file(behaviour, timeout=route_timeout)
    started = time.perf_counter()
    with pytest.raises(GatewayError) as info:
        await complete(path, deadline_s=1.5)
    elapsed = time.perf_counter() - started
    assert info.value.reason == reason
    assert elapsed < 1.5 + 0.5


async def test_unreachable_provider(tmp_path: Path) -> None:
    from tipml.testing.stub_llm import free_port

    path = tmp_path / "gw.yaml"
    path.write_text(
        "model_list:\n  - model_name: w\n    litellm_params:\n"
        "      model: text-completion-openai/x\n"
        f"      api_base: http://127.0.0.1:{free_port()}/v1\n      api_key: k\n"
        "      max_retries: 0\nrouter_settings:\n  num_retries: 0\n"
    )
    with pytest.raises(GatewayError) as info:
        await complete(path, deadline_s=3)
    assert info.value.reason == "provider_unreachable"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_list: []", "model_list must be a non-empty list"),
        ("- just a list", "expected a mapping"),
        ("model_list: [{litellm_params: {model: x}}]", "needs model_name"),
        ("model_list: [{model_name: a}]", "litellm_params.model"),
        (
            "default_route: b\nmodel_list: [{model_name: a, litellm_params: {model: x}}]",
            "default_route 'b'",
        ),
        (
            "model_list: [{model_name: a, litellm_params: {model: x}}]\n"
            "router_settings: {fallbacks: [{a: [zzz]}]}",
            "fallback target 'zzz'",
        ),
        (
            "model_list: [{model_name: a, litellm_params: {model: x, api_key: '${NOPE_VAR}'}}]",
            "NOPE_VAR is not set",
        ),
        ("model_list: [", "not valid YAML"),
    ],
)
def test_bad_config_is_a_clear_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_gateway_config(path, env={})


def test_env_substitution_and_local_llm_detection(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "# ${IN_A_COMMENT} is not substituted\n"
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: x\n"
        "      api_key: ${MY_KEY}\n      api_base: ${TIPML_LOCAL_LLM_API_BASE}\n"
    )
    config = load_gateway_config(path, env={"MY_KEY": "secret"})
    assert config.uses_local_llm
    assert config.model_list[0]["litellm_params"]["api_key"] == "secret"
    external = load_gateway_config(
        path, env={"MY_KEY": "k", "TIPML_LOCAL_LLM_API_BASE": "http://h:1/v1"}
    )
    assert not external.uses_local_llm
    assert external.model_list[0]["litellm_params"]["api_base"] == "http://h:1/v1"


def test_packaged_default_config_uses_the_local_model() -> None:
    from tipml.settings import DEFAULT_GATEWAY_CONFIG

    config = load_gateway_config(DEFAULT_GATEWAY_CONFIG, env={})
    assert config.uses_local_llm
    assert config.mode == "completion"
    assert config.default_route == "tip-writer"

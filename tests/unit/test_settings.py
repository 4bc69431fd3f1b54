from __future__ import annotations

import pytest

from tipml.errors import ConfigError
from tipml.settings import load_settings

TOKEN = "a-long-enough-token-123"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TIPML_API_TOKENS",
        "TIPML_DEV",
        "DEFAULT_PROMPT_VERSION",
        "TIPML_SCORER",
        "TIPML_MODEL_PATH",
    ):
        monkeypatch.delenv(name, raising=False)


def test_refuses_to_start_without_tokens_unless_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="TIPML_API_TOKENS"):
        load_settings().check_serving()
    monkeypatch.setenv("TIPML_DEV", "1")
    load_settings().check_serving()
    monkeypatch.delenv("TIPML_DEV")
    monkeypatch.setenv("TIPML_API_TOKENS", TOKEN)
    load_settings().check_serving()


def test_tokens_are_comma_separated_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIPML_API_TOKENS", f"{TOKEN}, {TOKEN}-two ,")
    settings = load_settings()
    assert settings.token_values() == [TOKEN.encode(), f"{TOKEN}-two".encode()]
    assert TOKEN not in repr(settings)


def test_short_tokens_are_refused_outside_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIPML_API_TOKENS", "short")
    with pytest.raises(ConfigError, match="at least 16"):
        load_settings()


def test_default_prompt_version_uses_the_contract_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIPML_API_TOKENS", TOKEN)
    assert load_settings().default_prompt_version == "v1"
    monkeypatch.setenv("DEFAULT_PROMPT_VERSION", "v2")
    assert load_settings().default_prompt_version == "v2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TIPML_MAX_CANDIDATES": "0"}, "max_candidates"),
        ({"TIPML_GENERATE_DEADLINE_S": "-1"}, "generate_deadline_s"),
        ({"TIPML_SCORER": "lightgbm"}, "TIPML_MODEL_PATH"),
        ({"TIPML_SCORER": "magic"}, "scorer"),
        ({"TIPML_LOG_LEVEL": "LOUD"}, "log_level"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("TIPML_API_TOKENS", TOKEN)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_consumer_members_split_the_signal_partitions() -> None:
    assert load_settings().owned_partitions(8) == list(range(8))  # no member: every partition
    owned = [load_settings(consumer_member=f"{k}/3").owned_partitions(8) for k in range(3)]
    assert owned == [[0, 3, 6], [1, 4, 7], [2, 5]]
    with pytest.raises(ConfigError, match=r"K must be 0\.\.N-1"):
        load_settings(consumer_member="3/3")
    with pytest.raises(ConfigError, match="consumer_member"):
        load_settings(consumer_member="one of two")
    with pytest.raises(ConfigError, match="owns none of the stream's 2 signal partitions"):
        load_settings(consumer_member="2/3").owned_partitions(2)

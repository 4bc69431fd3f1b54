from __future__ import annotations

import pytest

from tipml.errors import UnknownPromptVersion
from tipml.features.context import PromptContext
from tipml.serving.prompts import CANARY, VERSIONS, FewShot, PromptVersion, resolve_version

# Released versions are immutable. If this fails you changed a released prompt: add a new
# version instead (rewards measured for the old key must keep meaning the same prompt).
PINNED = {
    "v1": "c7038e706fcdeff9fa69661a609016efc6a2312ba3aa8965fb6c8214e3843ac6",
    "v2": "e212f3aa6b89c60e45e6e3965dd09a950c33ce3c555731c1134cc09ca22e724e",
    "v3": "99c6760e7b06d6c0370ecc0b6b1ebd914bc73a40b0531630eb19d4b1d51fc6bf",
}

CTX = PromptContext(
    topic="sleep",
    local_hour=22,
    day_part="late evening",
    weekday="Friday",
    facts=("usually active around 22:00", "on a 3-day streak"),
    max_chars=120,
    locale="en",
)


@pytest.mark.parametrize("key", sorted(PINNED))
def test_released_versions_are_pinned(key: str) -> None:
    assert VERSIONS[key].content_hash == PINNED[key]


def test_every_version_is_pinned_and_differs() -> None:
    assert set(VERSIONS) == set(PINNED)
    assert VERSIONS["v1"].system != VERSIONS["v2"].system


def test_precedence_body_then_default_then_v1() -> None:
    assert resolve_version("v2", "v1").key == "v2"
    assert resolve_version(None, "v2").key == "v2"
    assert resolve_version(None, "").key == "v1"


def test_unknown_version_names_known_ones_and_the_source() -> None:
    with pytest.raises(UnknownPromptVersion) as info:
        resolve_version("v7", "v1")
    assert info.value.field == "prompt_version"
    assert "v1" in info.value.detail
    assert "v2" in info.value.detail
    with pytest.raises(UnknownPromptVersion) as info:
        resolve_version(None, "nope")
    assert info.value.field == "DEFAULT_PROMPT_VERSION"


@pytest.mark.parametrize("key", sorted(VERSIONS))
def test_completion_prompt_is_few_shot_and_ends_open(key: str) -> None:
    version = VERSIONS[key]
    prompt = version.render_completion(CTX)
    assert prompt.startswith(version.system)
    assert prompt.endswith("Tip:")
    assert prompt.count("Tip:") == len(version.examples) + 1
    assert "sleep" in prompt.split("\n\n")[-1]
    assert all(ex.tip in prompt for ex in version.examples)
    assert CANARY in prompt


@pytest.mark.parametrize("key", sorted(VERSIONS))
def test_chat_messages(key: str) -> None:
    messages = VERSIONS[key].render_chat(CTX)
    assert messages[0]["role"] == "system"
    assert messages[-1]["role"] == "user"
    assert "sleep" in messages[-1]["content"]
    assert len(messages) == 2 + 2 * len(VERSIONS[key].examples)


@pytest.mark.parametrize("key", sorted(VERSIONS))
def test_fallback_is_deterministic_and_fits(key: str) -> None:
    version = VERSIONS[key]
    first = version.render_fallback(CTX)
    assert first == version.render_fallback(CTX)
    assert first
    assert len(first) <= CTX.max_chars
    short = PromptContext(**{**CTX.__dict__, "max_chars": 20, "topic": "unknown-topic"})
    assert len(version.render_fallback(short)) <= 20


def test_a_version_must_declare_exactly_its_variables() -> None:
    base = dict(
        key="vx", description="", system=f"s {CANARY}", examples=(), fallback={"default": "x"}
    )
    with pytest.raises(ValueError, match="declares"):
        PromptVersion(user_template="{topic} {facts}", variables=("topic",), **base)
    with pytest.raises(ValueError, match="unknown variables"):
        PromptVersion(user_template="{secret}", variables=("secret",), **base)
    with pytest.raises(ValueError, match="canary"):
        PromptVersion(
            **{**base, "system": "no canary"}, user_template="{topic}", variables=("topic",)
        )
    ok = PromptVersion(
        user_template="T: {topic}",
        variables=("topic",),
        **{**base, "examples": (FewShot("a", "b", "c", "d"),)},
    )
    assert ok.render_user(CTX) == "T: sleep"

"""``/score``'s fast lane (serving/score_decoder.py, ADR 0025) accepts nothing the contract
refuses and reads what it accepts exactly as the contract's model does: over generated bodies
near the schema's edges, whenever ``decode_score`` answers, ``ScoreRequest`` accepts the body
and gives the same request. What the lane declines is still answered through the real app:
a 422 naming the field, or a 200 when the contract allows it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.conftest import AUTH
from tipml.serving.schemas import ScoreRequest
from tipml.serving.score_decoder import decode_score
from tipml.serving.service import ScoreInput

# characters at the edges of the id pattern and of JSON: controls, space, DEL, C1, no-break
# space, a line separator, non-Latin letters, an astral character, a lone surrogate
EDGE_CHARS = [" ", "\x00", "\t", "\n", "\x1f", "\x7f", "\x85", "\xa0", "\u2028", "é", "語", "🙂"]
edge_text = st.text(
    alphabet=st.one_of(st.sampled_from(EDGE_CHARS), st.characters(codec="utf-8")),
    max_size=6,
)
ids = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
    st.builds(lambda a, b, c: a + b + c, edge_text, st.text(max_size=3), edge_text),
    st.text(min_size=126, max_size=130),
    st.just(""),
    st.just("\ud800"),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner)
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value of ``strategy``, or one time in eight anything else (a wrong type)."""
    return st.integers(0, 7).flatmap(lambda i: anything if i == 0 else strategy)


candidate = st.fixed_dictionaries(
    {"tip_id": maybe(ids)},
    optional={
        "category": maybe(st.one_of(st.none(), st.text(max_size=66))),
        "tags": maybe(st.lists(maybe(st.text(max_size=66)), max_size=34)),
        "source": maybe(st.sampled_from(["curated", "generated", "Curated", "other"])),
        "weight": anything,
    },
)
timestamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "2026-11-27T07:15:00Z",
            "2026-11-27T07:15:00+14:00",
            "2026-11-27T07:15:00.123456789Z",
            "2026-11-27",
            "1969-12-31T23:59:59Z",
            "2200-01-01T00:00:00Z",
            "2199-12-31T23:59:59-12:00",
            "1700000000",
            "today",
        ]
    ),
)
context = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "ts": maybe(st.one_of(st.none(), timestamps)),
            "platform": maybe(st.sampled_from(["ios", "android", "web", "tv", None])),
            "locale": anything,
        },
    ),
)
profile = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["preferred_hour", "completion_rate", "timezone", "x", ""]), anything
    ),
)
bodies = st.fixed_dictionaries(
    {"user_id": maybe(ids), "candidates": maybe(st.lists(candidate, max_size=4))},
    optional={
        "profile_features": maybe(profile),
        "context": maybe(context),
        "k": st.one_of(
            st.none(),
            st.integers(min_value=-1, max_value=1002),
            st.sampled_from([2.0, 2.5, True, "2", 1e300]),
        ),
        "extra": anything,
    },
)


def _contract(body: bytes) -> ScoreInput | None:
    try:
        return ScoreInput.of(ScoreRequest.model_validate_json(body))
    except ValidationError:
        return None


def _same(body: bytes) -> tuple[ScoreInput | None, ScoreInput | None]:
    fast = decode_score(body)
    if fast is not None:
        contract = _contract(body)
        assert contract is not None, f"the fast lane accepted what the contract refuses: {body!r}"
        assert fast == contract, body
    return fast, _contract(body)


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies, st.booleans())
def test_what_the_fast_lane_accepts_the_contract_accepts_with_the_same_values(
    body: dict[str, Any], ascii_only: bool
) -> None:
    _same(json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


VALID = b'{"user_id": "u-1", "candidates": [{"tip_id": "a"}, {"tip_id": "b", "tags": ["x"]}]'

RAW = [
    VALID + b"}",
    VALID + b', "user_id": "u-2"}',  # a repeated key: the last one counts, in both
    VALID + b', "k": 1, "k": 2}',
    VALID + b', "profile_features": {"x": 1, "x": 2}}',
    VALID + b', "profile_features": {"x": 123456789012345678901234567890}}',
    VALID + b', "profile_features": {"x": 1e400}}',
    VALID + b', "profile_features": {"x": NaN}}',
    VALID + b', "profile_features": {"x": -0.0, "y": 5e-324}}',
    VALID + b', "context": {"ts": "2026-11-27T07:15:00Z", "ts": 5}}',
    VALID + b"} trailing",
    VALID + b"}\n\t ",
    b"\xef\xbb\xbf" + VALID + b"}",
    b'{"user_id": "u\\ud800", "candidates": [{"tip_id": "a"}]}',
    b'{"user_id": "u\\ud83d\\ude42", "candidates": [{"tip_id": "a"}]}',
    b'{"user_id": "u\xff", "candidates": [{"tip_id": "a"}]}',
    b'{"user_id": "u", "candidates": [{"tip_id": "a\\u0000"}]}',
    b'{"user_id": "u", "candidates": [{"tip_id": "a\\n"}]}',
    b'{"user_id": "u", "candidates": [{"tip_id": "a", "tip_id": " b"}]}',
    # a space at either end of each id in turn: the ids are checked all at once
    b'{"user_id": "u ", "candidates": [{"tip_id": "a"}, {"tip_id": "b"}]}',
    b'{"user_id": " u", "candidates": [{"tip_id": "a"}, {"tip_id": "b"}]}',
    b'{"user_id": "u", "candidates": [{"tip_id": "a "}, {"tip_id": "b"}]}',
    b'{"user_id": "u", "candidates": [{"tip_id": "a"}, {"tip_id": " b"}]}',
    b'{"user_id": "u", "candidates": [{"tip_id": "a"}, {"tip_id": "b "}]}',
    b'{"user_id": "u", "candidates": [{"tip_id": " "}, {"tip_id": "b"}]}',
    b'{"user_id": "u v", "candidates": [{"tip_id": "a b"}, {"tip_id": "c\\u00a0"}]}',
    b"[]",
    b"",
]


@pytest.mark.parametrize("body", RAW, ids=range(len(RAW)))
def test_raw_bodies_at_the_edges_of_json(body: bytes) -> None:
    _same(body)


def test_the_benchmark_body_takes_the_fast_lane() -> None:
    body = json.dumps(
        {
            "user_id": "u-42",
            "candidates": [
                {"tip_id": f"sleep-{i:03d}", "category": "sleep", "tags": ["indoor"]}
                for i in range(100)
            ],
            "profile_features": {"preferred_hour": 7, "timezone": "Europe/Berlin"},
            "context": {"ts": "2026-11-27T07:15:00Z", "platform": "ios"},
            "k": 10,
        }
    ).encode()
    fast, contract = _same(body)
    assert fast is not None
    assert fast == contract


# (body, status, the field a 422 names): declined by the fast lane, answered by the contract
DECLINED: list[tuple[str, int, str | None]] = [
    ('"candidates": [{"tip_id": "a", "weight": 1}]', 422, "candidates.0.weight"),
    ('"candidates": [{"tip_id": "a "}]', 422, "candidates.0.tip_id"),
    ('"candidates": [{"tip_id": "a"}], "k": 0', 422, "k"),
    ('"candidates": [{"tip_id": "a"}], "context": {"ts": 0}', 422, "context.ts"),
    ('"candidates": [{"tip_id": "a"}], "k": 1.0', 200, None),  # JSON Schema's integer
    ('"candidates": [{"tip_id": "a\\u00a0b"}]', 200, None),  # a no-break space inside
    ('"candidates": [{"tip_id": "a"}], "profile_features": {"x": 1e400}', 200, None),
]


def test_what_the_fast_lane_declines_the_app_answers_by_the_contract(client: TestClient) -> None:
    for fields, status, field in DECLINED:
        body = ('{"user_id": "u-1", ' + fields + "}").encode()
        assert decode_score(body) is None, body
        r = client.post(
            "/score", content=body, headers={**AUTH, "content-type": "application/json"}
        )
        assert r.status_code == status, (body, r.text)
        if field is not None:
            assert r.json()["field"] == field, r.json()

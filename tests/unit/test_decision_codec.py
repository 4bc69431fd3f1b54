"""The decision codec (``domain.decisions``, ADR 0022): score decisions log their candidates as
columns; every reader gets rows, whichever way a decision was logged."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from tipml.domain.decisions import CANDIDATE_FIELDS, candidate_rows, decode_decision


def _rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "tip_id": f"tip-{i}",
            "category": rng.choice([None, "sleep", "focus"]),
            "source": rng.choice(["curated", "generated"]),
            "tags": rng.sample(["a", "morning", "évening", "x" * 64], rng.randint(0, 3)),
            "tip_impressions": rng.randint(0, 10**6),
            "tip_reward_sum": rng.random() * 100,
            "score": rng.uniform(-3, 3),
            "propensity": rng.random(),
            "rank": i + 1,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [1, 2, 100, 1000])
def test_columns_decode_to_the_rows_the_old_format_logged(n: int) -> None:
    rows = _rows(n, random.Random(n))
    columns = {name: [r[name] for r in rows] for name in CANDIDATE_FIELDS}
    new = orjson.dumps({"decision_id": "d", "kind": "score", "candidates": columns})
    old = orjson.dumps({"decision_id": "d", "kind": "score", "candidates": rows})
    assert decode_decision(new) == decode_decision(old) == orjson.loads(old)
    if n >= 2:  # the field names once, not once per candidate
        assert len(new) < len(old)
    if n >= 100:
        assert len(new) < 0.7 * len(old)


def test_other_payloads_pass_unchanged() -> None:
    generate = {"decision_id": "g", "kind": "generate", "text": "Sleep.", "candidates": None}
    assert decode_decision(orjson.dumps(generate)) == generate
    assert decode_decision(b"[1, 2]") == [1, 2]
    assert decode_decision('{"candidates": []}') == {"candidates": []}


def test_columns_that_do_not_line_up_are_refused() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        candidate_rows({"tip_id": ["a", "b"], "score": [0.5]})
    with pytest.raises(ValueError, match="different lengths"):
        decode_decision(b'{"candidates": {"tip_id": ["a"], "rank": []}}')
    with pytest.raises(orjson.JSONDecodeError):
        decode_decision(b"{not json")

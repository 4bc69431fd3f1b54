"""A ``/score`` decision is published with its time and user in headers — or, in a block of
decisions (ADR 0028), in the block's index — and the archiver files it from them without
parsing the body: the row must be the one parsing the body gives."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import make_settings
from tipml.events.archive import Archiver
from tipml.events.bus import DECISIONS
from tipml.events.decisions import (
    BATCH_HEADER,
    TS_HEADER,
    USER_HEADER,
    DecisionLog,
    Record,
    block_key,
    block_rows,
    decision_headers,
)
from tipml.serving.app import create_app
from tipml.serving.endpoints import validate_json
from tipml.serving.schemas import ScoreRequest


def score_body(user: str) -> dict[str, Any]:
    return {
        "user_id": user,
        "candidates": [
            {"tip_id": f"t{i}", "category": "sleep", "tags": ["evening"]} for i in range(20)
        ],
        "profile_features": {"preferred_hour": 21, "favorite_category": "sleep"},
        "context": {"ts": "2026-11-27T08:00:00Z", "platform": "ios"},
    }


def _logged(tmp_path: Path, bodies: list[dict[str, Any]], batch_max: int) -> list[Record]:
    """What the real ``ScoreService`` puts in its decision log's queue for ``bodies``, scored
    one after the other (its blocks closed, as the publisher closes them)."""
    settings = make_settings(tmp_path, local_llm="off", decision_batch_max=batch_max)
    service = create_app(settings).state.runtime.score_service
    log: DecisionLog = service.decisions
    for body in bodies:
        service.score(validate_json(ScoreRequest, orjson.dumps(body)))
    log._take_blocks(time.monotonic())
    return list(log._queue)


@pytest.mark.parametrize("user", ["u-1", "Ünïcode user", "a: b", "x" * 128])
def test_the_archiver_files_a_score_decision_from_its_headers_as_from_its_body(
    tmp_path: Path, user: str
) -> None:
    body = score_body(user)
    [(subject, decision_id, payload, headers)] = _logged(tmp_path, [body], batch_max=1)
    assert headers["Nats-Msg-Id"] == decision_id
    assert subject == f"ml.decisions.score.{decision_id}"
    archiver = Archiver(DECISIONS, tmp_path / "offline")
    by_headers = archiver.parse(subject, payload, headers)
    by_body = archiver.parse(subject, payload, None)
    assert by_headers == by_body
    assert by_body[1]["user_id"] == user
    assert by_body[1]["valid"] is True
    assert (USER_HEADER in headers) == user.isascii()  # else the body is parsed for it
    assert TS_HEADER in headers


def test_a_header_is_never_a_value_that_breaks_the_protocol() -> None:
    for user in ("two\nlines", "cr\r", "nul\x00", "x" * 300, "Ünïcode", "", 42):
        headers = decision_headers("d1", {"ts": "2026-11-30T08:00:00+00:00", "user_id": user})
        assert USER_HEADER not in headers
        assert headers[TS_HEADER] == "2026-11-30T08:00:00+00:00"


def test_a_body_that_is_not_the_object_the_headers_vouch_for_is_parsed(tmp_path: Path) -> None:
    archiver = Archiver(DECISIONS, tmp_path / "offline")
    headers = decision_headers("d1", {"ts": "2026-11-30T08:00:00+00:00", "user_id": "u"})
    _, row = archiver.parse("ml.decisions.score.d1", b"not json", headers)
    assert row["valid"] is False  # the body decides, not the headers
    _, row = archiver.parse("ml.decisions.generate.d1", b'{"prompt_version": "v2"}', headers)
    assert row["prompt_version"] == "v2"  # a /generate decision's columns come from its body


def test_a_block_is_one_message_and_the_archiver_files_each_decision_as_from_its_body(
    tmp_path: Path,
) -> None:
    users = ["u-1", "Ünïcode user", "a: b", "x" * 128, "u-5"]
    [(subject, key, payload, headers)] = _logged(
        tmp_path, [score_body(u) for u in users], batch_max=64
    )
    assert headers == {"Nats-Msg-Id": key, BATCH_HEADER: "5"}
    assert subject == f"ml.decisions.score.{key}"
    decisions = block_rows(payload)
    assert [block_key(i) for i, _, _, _ in decisions] == [key] * 5
    assert [orjson.loads(line)["user_id"] for _, _, _, line in decisions] == users
    archiver = Archiver(DECISIONS, tmp_path / "offline")
    event_id, event = archiver.parse(subject, payload, headers)
    assert event_id == key
    by_body = [
        archiver.parse(f"ml.decisions.score.{i}", line, None)[1] for i, _, _, line in decisions
    ]
    assert event["rows"] == by_body
    assert [r["user_id"] for r in by_body] == users
    assert all(r["valid"] and r["decision_id"] == r["event_id"] for r in by_body)
    assert event["ts"] == by_body[0]["ts"]


def test_a_block_holds_at_most_batch_max_decisions(tmp_path: Path) -> None:
    records = _logged(tmp_path, [score_body(f"u{i}") for i in range(7)], batch_max=3)
    assert [r[3][BATCH_HEADER] for r in records] == ["3", "3", "1"]
    ids = [i for r in records for i, _, _, _ in block_rows(r[2])]
    assert len(set(ids)) == 7


def test_a_block_that_is_not_one_is_archived_as_an_invalid_row(tmp_path: Path) -> None:
    archiver = Archiver(DECISIONS, tmp_path / "offline")
    headers = {"Nats-Msg-Id": "k", BATCH_HEADER: "2"}
    for body in (b"not json\n{}", b'[["a-0", "", ""]]\n{}\n{}', b""):
        _, row = archiver.parse("ml.decisions.score.k", body, headers)
        assert row["valid"] is False
        assert row["payload"] == body.decode()

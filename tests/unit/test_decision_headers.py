"""A ``/score`` decision is published with its time and user in headers, and the archiver files
it from them without parsing the body — the row must be the one parsing the body gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import make_settings
from tipml.events.archive import Archiver
from tipml.events.bus import DECISIONS
from tipml.events.decisions import TS_HEADER, USER_HEADER, DecisionLog, decision_headers
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


def _logged(tmp_path: Path, body: dict[str, Any]) -> tuple[str, str, bytes, dict[str, str]]:
    """What the real ``ScoreService`` puts in its decision log's queue for ``body``."""
    service = create_app(make_settings(tmp_path, local_llm="off")).state.runtime.score_service
    log: DecisionLog = service.decisions
    service.score(validate_json(ScoreRequest, orjson.dumps(body)))
    assert len(log._queue) == 1
    return log._queue.popleft()


@pytest.mark.parametrize("user", ["u-1", "Ünïcode user", "a: b", "x" * 128])
def test_the_archiver_files_a_score_decision_from_its_headers_as_from_its_body(
    tmp_path: Path, user: str
) -> None:
    body = score_body(user)
    subject, decision_id, payload, headers = _logged(tmp_path, body)
    assert headers["Nats-Msg-Id"] == decision_id
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

"""The signals' subject forms (domain/events.py, ADR 0019): unkeyed, keyed as published, keyed
as the SIGNALS stream stores it — what each says, and what a consumer refuses."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tipml.domain.events import (
    InvalidEvent,
    SignalSubject,
    keyed_signal_subject,
    parse_signal,
    published_subject,
    signal_subject,
    user_token,
)
from tipml.events.archive import Archiver
from tipml.events.bus import SIGNALS


def body(user: str, **extra: object) -> bytes:
    return orjson.dumps({"event_id": "e1", "user_id": user, "ts": "2026-11-30T10:00:00Z", **extra})


def test_a_user_token_is_the_id_when_safe_else_a_stable_digest() -> None:
    assert user_token("u-42_Ab") == "u-42_Ab"
    for unsafe in ("a.b", "alice smith", "a*", "x>", "é", "u" * 65):
        token = user_token(unsafe)
        assert token.startswith("h")
        assert len(token) == 33
        assert token == user_token(unsafe)  # stable: the same user, the same partition
    assert user_token("a.b") != user_token("a.c")
    assert keyed_signal_subject("a.b", "task.completed") == (
        f"signals-by-user.{user_token('a.b')}.task.completed"
    )


def test_each_form_of_a_subject_says_kind_token_and_partition() -> None:
    assert signal_subject("signals.task.completed") == SignalSubject("task.completed")
    assert signal_subject("signals-by-user.u1.app.opened") == SignalSubject("app.opened", "u1")
    assert signal_subject("signals-by-partition.3.u1.app.opened") == SignalSubject(
        "app.opened", "u1", 3
    )
    assert signal_subject("signals-by-user.u1") == SignalSubject(None, "u1")


def test_a_stored_keyed_subject_replays_to_the_subject_it_was_published_to() -> None:
    assert published_subject("signals-by-partition.3.u1.app.opened") == (
        "signals-by-user.u1.app.opened"
    )
    for unchanged in ("signals.app.opened", "feedback.liked", "signals-by-user.u1.app.opened"):
        assert published_subject(unchanged) == unchanged


def test_the_kind_comes_from_any_form_and_the_token_must_be_the_users() -> None:
    for subject in (
        "signals.task.completed",
        "signals-by-user.u1.task.completed",
        "signals-by-partition.0.u1.task.completed",
    ):
        assert parse_signal(subject, body("u1")).kind == "task.completed"
    unsafe = "Ann Lee"
    event = parse_signal(keyed_signal_subject(unsafe, "app.opened"), body(unsafe))
    assert event.user_id == unsafe
    with pytest.raises(InvalidEvent) as caught:
        parse_signal("signals-by-partition.1.u2.task.completed", body("u1"))
    assert caught.value.field == "subject"
    assert "'u2'" in str(caught.value)
    assert "'u1'" in str(caught.value)


def test_the_archive_reads_the_kind_from_a_partitioned_subject(tmp_path: Path) -> None:
    archiver = Archiver(SIGNALS, str(tmp_path))
    assert archiver.filter_subject == ""  # the whole stream: all three roots
    _, row = archiver.parse("signals-by-partition.2.u1.focus.started", body("u1"))
    assert row["kind"] == "focus.started"
    assert row["valid"]


FIXTURE = Path(__file__).parents[2] / "clients/typescript/test/fixtures/signal_subjects.json"


def test_the_typescript_fixture_holds_tipmls_keyed_subjects() -> None:
    """The recommender's ``keyedSignalSubject`` is tested against this fixture (client test)."""
    cases = orjson.loads(FIXTURE.read_bytes())
    assert len(cases) >= 40
    assert any(user == "abc\n" for user, _, _ in cases)  # a trailing newline is not token-safe
    for user, kind, subject in cases:
        assert keyed_signal_subject(user, kind) == subject, user

"""Event times are UTC from the edge on (issue 7, finding 10): the hour-of-day histogram and
the archive's date partitions must not depend on the producer's UTC offset."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from tipml.domain.events import InvalidEvent, parse_signal
from tipml.domain.users import empty_user_state, fold_signals, materialize
from tipml.events.archive import Archiver
from tipml.events.bus import SIGNALS
from tipml.events.keyed import Item


def _signal(ts: str, eid: str = "e1") -> bytes:
    return orjson.dumps({"event_id": eid, "user_id": "u", "ts": ts})


@pytest.mark.parametrize(
    ("ts", "utc"),
    [
        ("2026-11-27T02:00:00+05:30", datetime(2026, 11, 26, 20, 30, tzinfo=UTC)),
        ("2026-11-27T20:00:00-08:00", datetime(2026, 11, 28, 4, 0, tzinfo=UTC)),
        ("2026-11-27T20:00:00", datetime(2026, 11, 27, 20, 0, tzinfo=UTC)),
    ],
)
def test_event_time_is_normalised_to_utc(ts: str, utc: datetime) -> None:
    event = parse_signal("signals.app.opened", _signal(ts))
    assert event.ts == utc
    assert event.ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_active_hours_count_the_utc_hour() -> None:
    events = [
        parse_signal("signals.app.opened", _signal("2026-11-27T02:00:00+05:30", "a")),
        parse_signal("signals.app.opened", _signal("2026-11-27T20:00:00-08:00", "b")),
    ]
    state = fold_signals(empty_user_state(), events)
    hours = materialize(state, datetime(2026, 11, 29, tzinfo=UTC).timestamp())["active_hours"]
    assert hours[20] == 1  # 02:00 +05:30 is 20:30 UTC
    assert hours[4] == 1  # 20:00 -08:00 is 04:00 UTC the next day
    assert sum(hours) == 2


def test_archive_partitions_by_utc_date(tmp_path: Path) -> None:
    archiver = Archiver(SIGNALS, tmp_path)
    _, row = archiver.parse("signals.app.opened", _signal("2026-11-27T20:00:00-08:00"))
    asyncio.run(archiver.handle([Item(1, "e1", row)]))
    assert [p.name for p in (tmp_path / "signals").iterdir()] == ["date=2026-11-28"]


def test_an_event_time_that_overflows_utc_is_invalid() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_signal("signals.app.opened", _signal("0001-01-01T00:00:00+05:00"))
    assert info.value.field == "ts"


def test_only_infrastructure_errors_are_transient() -> None:
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import APIError, BadRequestError, ServiceUnavailableError

    from tipml.events.consumer import is_transient
    from tipml.events.keyed import ConflictError

    assert is_transient(NatsTimeout())
    assert is_transient(NoRespondersError())
    assert is_transient(ServiceUnavailableError(code=503))
    assert is_transient(ConflictError("busy key"))
    assert is_transient(ConnectionResetError())
    assert not is_transient(BadRequestError(code=400))  # the request is wrong: no retry helps
    assert not is_transient(APIError(code=None))
    assert not is_transient(ValueError("a bug"))
    assert not is_transient(InvalidEvent("bad", field="ts"))

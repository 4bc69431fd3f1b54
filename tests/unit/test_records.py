"""The record envelope's event-id set: membership only on whole digests, unchanged hours kept
as they were read, the horizon applied on encode."""

from __future__ import annotations

import orjson

from tipml.domain.records import HOUR, SeenIds, encode_record, event_digest


def test_membership_is_on_whole_digests() -> None:
    a, b = event_digest("a"), event_digest("b")
    seen = SeenIds({10: a + b})
    assert a in seen
    assert b in seen
    straddling = a[4:] + b[:4]  # present in the bytes, but not a digest that was added
    assert straddling not in seen
    assert event_digest("c") not in seen


def test_round_trip_keeps_unchanged_hours_and_adds_new_ones() -> None:
    seen = SeenIds({})
    for i in range(5):
        seen.add(100 + i % 2, event_digest(f"e{i}"))
    record = orjson.loads(encode_record({"n": 5}, seen, horizon_s=7 * 86400))
    again = SeenIds.decode(record)
    assert all(event_digest(f"e{i}") in again for i in range(5))
    again.add(101, event_digest("e5"))
    encoded = again.encode(7 * 86400)
    assert encoded["100"] == record["d"]["100"]  # untouched hour: the text read
    assert SeenIds.decode({"d": encoded}).buckets[101].endswith(event_digest("e5"))


def test_the_horizon_drops_old_hours() -> None:
    seen = SeenIds({})
    seen.add(1, event_digest("old"))
    seen.add(1 + 3, event_digest("new"))
    assert set(seen.encode(horizon_s=2 * HOUR)) == {"4"}
    assert set(seen.encode(horizon_s=3 * HOUR)) == {"1", "4"}

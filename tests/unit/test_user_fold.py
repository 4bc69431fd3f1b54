"""The user fold's recent-signal list: appending in the common (in-order) case must give what
sorting every time gave — the newest ``RECENT`` by event time, ties in arrival order — for any
arrival order, late events included."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import orjson
import pytest

from tipml.domain.events import parse_signal
from tipml.domain.users import RECENT, empty_user_state, fold_signals


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def reference_recent(stamps: list[int]) -> list[tuple[float, str]]:
    """What the fold did before: sort the list with the new entry, keep the last RECENT."""
    recent: list[tuple[float, str]] = []
    for i, t in enumerate(stamps):
        recent = sorted([*recent, (float(t), f"t{i}")], key=lambda r: r[0])[-RECENT:]
    return recent


@pytest.mark.parametrize("seed", range(20))
def test_recent_is_the_newest_by_event_time(seed: int) -> None:
    rng = random.Random(seed)
    base = 1_764_400_000
    stamps = sorted(base + rng.randrange(0, 3600) for _ in range(60))
    for _ in range(rng.randrange(0, 15)):  # some late arrivals, some equal times
        i, j = rng.randrange(60), rng.randrange(60)
        stamps[i], stamps[j] = stamps[j], stamps[i]
    events = [
        parse_signal(
            "signals.task.completed",
            orjson.dumps(
                {"event_id": f"e{i}", "user_id": "u", "ts": _iso(t), "attrs": {"title": f"t{i}"}}
            ),
        )
        for i, t in enumerate(stamps)
    ]
    state = empty_user_state()
    for event in events:  # one write per event, as the consumer does for a busy user
        fold_signals(state, [event])
    assert [(r["ts"], r["text"]) for r in state["recent"]] == reference_recent(stamps)

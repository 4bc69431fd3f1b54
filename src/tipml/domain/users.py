"""User features from signals: one pure state update, one pure read-out.

``fold_signals(state, events)`` folds signals into a user's state; ``materialize(state, at)``
reads the features as of time ``at`` using the definitions in ``USER_FEATURES``. The signals
consumer uses both online; an offline builder replaying the Parquet log in stream order uses the
very same functions, so a feature means the same thing at train and serve time.

Windows are bucketed so that they are exact and replayable: the 1 h window sums twelve
5-minute buckets, the 24 h and 7 d windows sum hourly buckets — each ending at the bucket that
contains ``at``. Events after ``at`` never count (point-in-time correct).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from tipml.domain.definitions import FeatureDef
from tipml.domain.events import SignalEvent
from tipml.domain.text import clean_user_text

UserState = dict[str, Any]

B5 = 300  # seconds in a 5-minute bucket
B1H = 3600
KEEP_5M = 12  # one hour of 5-minute buckets
KEEP_1H = 168  # seven days of hourly buckets
KEEP_DAYS = 60  # active days remembered for the streak
RECENT = 20  # recent signal summaries kept for the context assembler


def empty_user_state() -> UserState:
    return {
        "total": {},
        "b5": {},
        "b1h": {},
        "last_seen": None,
        "hours": [0] * 24,
        "days": [],
        "recent": [],
    }


def _summary(event: SignalEvent) -> str:
    for key in ("title", "name", "label", "category"):
        value = event.attrs.get(key)
        if isinstance(value, str) and value.strip():
            return clean_user_text(value, 40)
    return ""


def _bump(buckets: dict[str, int], bucket: int, keep: int) -> None:
    key = str(bucket)
    buckets[key] = buckets.get(key, 0) + 1
    if len(buckets) > keep:
        newest = max(int(b) for b in buckets)
        for b in [b for b in buckets if int(b) <= newest - keep]:
            del buckets[b]


def apply_signals(state: UserState, events: list[SignalEvent]) -> UserState:
    """A new state with ``events`` folded in, in order (``state`` is not modified)."""
    return fold_signals(copy.deepcopy(state), events)


def fold_signals(state: UserState, events: list[SignalEvent]) -> UserState:
    """Fold ``events`` into ``state`` in place (for callers that own a private copy, like the
    key-value writer, which decodes one per write) and return it."""
    for event in events:
        _fold(state, event)
    return state


def _fold(new: UserState, event: SignalEvent) -> None:
    t = event.epoch()
    kind = event.kind
    new["total"][kind] = new["total"].get(kind, 0) + 1
    _bump(new["b5"].setdefault(kind, {}), int(t // B5), KEEP_5M)
    _bump(new["b1h"].setdefault(kind, {}), int(t // B1H), KEEP_1H)
    if new["last_seen"] is None or t > new["last_seen"]:
        new["last_seen"] = t
    new["hours"][event.ts_utc().hour] += 1
    day = int(t // 86400)
    if day not in new["days"]:
        new["days"] = sorted([*new["days"], day])[-KEEP_DAYS:]
    entry = {"kind": kind, "ts": t, "text": _summary(event)}
    recent = new["recent"]
    if recent and t < recent[-1]["ts"]:  # out of order: sorted in (stable, as before)
        new["recent"] = sorted([*recent, entry], key=lambda r: r["ts"])[-RECENT:]
    else:  # the common case: appended, the oldest dropped
        recent.append(entry)
        del recent[:-RECENT]


# -- read-out --------------------------------------------------------------------------------


def _window(state: UserState, at: float, level: str, size: int, span: int) -> dict[str, int]:
    end = int(at // size)
    out: dict[str, int] = {}
    for kind, buckets in state[level].items():
        n = sum(c for b, c in buckets.items() if end - span < int(b) <= end)
        if n:
            out[kind] = n
    return out


def _streak(state: UserState, at: float) -> int:
    today = int(at // 86400)
    days = {d for d in state["days"] if d <= today}
    start = today if today in days else today - 1
    streak = 0
    while start - streak in days:
        streak += 1
    return streak


def _last_seen(state: UserState, at: float) -> str | None:
    seen = state["last_seen"]
    if seen is None or seen > at:
        seen = max((r["ts"] for r in state["recent"] if r["ts"] <= at), default=None)
    return None if seen is None else datetime.fromtimestamp(seen, UTC).isoformat()


USER_FEATURES: tuple[FeatureDef, ...] = (
    FeatureDef(
        "signal_counts_1h",
        "map<str,int>",
        "user",
        timedelta(hours=1),
        "count per kind, 12 x 5-min buckets",
        "Signals per kind in the last hour.",
        lambda s, at: _window(s, at, "b5", B5, KEEP_5M),
    ),
    FeatureDef(
        "signal_counts_24h",
        "map<str,int>",
        "user",
        timedelta(hours=24),
        "count per kind, 24 x 1-h buckets",
        "Signals per kind in the last 24 hours.",
        lambda s, at: _window(s, at, "b1h", B1H, 24),
    ),
    FeatureDef(
        "signal_counts_7d",
        "map<str,int>",
        "user",
        timedelta(days=7),
        "count per kind, 168 x 1-h buckets",
        "Signals per kind in the last 7 days.",
        lambda s, at: _window(s, at, "b1h", B1H, KEEP_1H),
    ),
    FeatureDef(
        "signal_counts_total",
        "map<str,int>",
        "user",
        None,
        "count per kind",
        "Signals per kind since the first one.",
        lambda s, at: dict(s["total"]),
    ),
    FeatureDef(
        "last_seen", "timestamp", "user", None, "max(ts)", "Time of the latest signal.", _last_seen
    ),
    FeatureDef(
        "active_hours",
        "list<int>",
        "user",
        None,
        "count per UTC hour of day",
        "Histogram of signal hours (UTC).",
        lambda s, at: list(s["hours"]),
    ),
    FeatureDef(
        "streak_days",
        "int",
        "user",
        timedelta(days=KEEP_DAYS),
        "consecutive active UTC days ending today or yesterday",
        "Current streak of days with at least one signal.",
        _streak,
    ),
    FeatureDef(
        "recent_signals",
        "list<struct>",
        "user",
        None,
        f"last {RECENT} by ts",
        "Recent signal summaries for the prompt context.",
        lambda s, at: [r for r in s["recent"] if r["ts"] <= at],
    ),
)


def materialize(state: UserState, at: float) -> dict[str, Any]:
    return {f.name: f.compute(state, at) for f in USER_FEATURES}

"""Offline, point-in-time user features from the Parquet log — the same definitions as online.

``users_features_at(root, user_ids, at)`` replays each user's signals whose timestamp is at or
before ``at``, in stream order, through the very fold the signals consumer uses
(``domain.users.fold_signals``), then reads them out with ``materialize``. So the value a
model is trained on for (user, t) is the value serving would have seen at t.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from tipml.domain.events import (
    FeedbackEvent,
    InvalidEvent,
    SignalEvent,
    parse_feedback,
    parse_signal,
)
from tipml.domain.rewards import RewardTable
from tipml.domain.tips import empty_aggregate, fold_feedback, materialize_tip
from tipml.domain.users import empty_user_state, fold_signals, materialize
from tipml.events.location import ArchiveLocation


def signals_by_user(
    offline: ArchiveLocation | Path | str, user_ids: Iterable[str] | None
) -> dict[str, list[SignalEvent]]:
    root = ArchiveLocation.of(offline)
    pattern = root.files("signals")
    if not pattern:
        return {}
    con = root.connect()
    query = (
        "SELECT user_id, subject, payload FROM read_parquet(?) "
        "WHERE valid {users} ORDER BY stream_seq"
    )
    params: list[Any] = [pattern]
    users = list(user_ids) if user_ids is not None else None
    if users is not None:
        query = query.format(users="AND list_contains(?, user_id)")
        params.append(users)
    else:
        query = query.format(users="")
    out: dict[str, list[SignalEvent]] = {}
    seen: set[str] = set()
    for user_id, subject, payload in con.execute(query, params).fetchall():
        event = parse_signal(subject, payload.encode())
        if event.event_id in seen:  # a duplicate publish outside the duplicate window
            continue
        seen.add(event.event_id)
        out.setdefault(user_id, []).append(event)
    return out


def users_features_at(
    root: ArchiveLocation | Path | str, user_ids: Iterable[str] | None, at: datetime
) -> dict[str, dict[str, Any]]:
    """Features of each user as of ``at`` (UTC if naive)."""
    moment = at if at.tzinfo else at.replace(tzinfo=UTC)
    t = moment.timestamp()
    out: dict[str, dict[str, Any]] = {}
    for user_id, events in signals_by_user(root, user_ids).items():
        state = fold_signals(empty_user_state(), [e for e in events if e.epoch() <= t])
        out[user_id] = materialize(state, t)
    return out


def tips_features_at(
    offline: ArchiveLocation | Path | str, at: datetime, rewards: RewardTable | None = None
) -> dict[str, dict[str, Any]]:
    """Tip features as of ``at`` from the feedback log, folded like the feedback consumer
    (stream order; events with a reaction outside the reward table are skipped — online they
    are dead-lettered)."""
    table = rewards or RewardTable()
    moment = at if at.tzinfo else at.replace(tzinfo=UTC)
    t = moment.timestamp()
    root = ArchiveLocation.of(offline)
    files = root.files("feedback")
    if not files:
        return {}
    con = root.connect()
    rows = con.execute(
        "SELECT subject, payload FROM read_parquet(?) WHERE valid ORDER BY stream_seq", [files]
    ).fetchall()
    by_tip: dict[str, list[FeedbackEvent]] = {}
    seen: set[str] = set()
    for subject, payload in rows:
        try:
            event = parse_feedback(subject, payload.encode())
            table.reward(event.reaction)
        except InvalidEvent:
            continue
        if event.event_id in seen or event.epoch() > t:
            continue
        seen.add(event.event_id)
        by_tip.setdefault(event.tip_id, []).append(event)
    return {
        tip: materialize_tip(fold_feedback(empty_aggregate(), events, table), t)
        for tip, events in by_tip.items()
    }


def as_json(features: dict[str, Any]) -> bytes:
    return orjson.dumps(features, option=orjson.OPT_SORT_KEYS)

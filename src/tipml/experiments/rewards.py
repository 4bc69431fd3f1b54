"""Rewards: the configured reaction → reward table and the aggregates feedback updates.

Pure. The feedback consumer folds each event into a per-tip aggregate (read by ``/score``'s
baseline scorer and, later, the bandits) and a per-prompt-version aggregate (read by the
product's "which prompt earns more reward?" analytics).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tipml.errors import ConfigError
from tipml.events.schemas import FeedbackEvent, InvalidEvent
from tipml.features.tip_features import TipStats

DEFAULT_REWARDS: Mapping[str, float] = {
    "completed": 1.0,
    "liked": 0.8,
    "snoozed": 0.2,
    "dismissed": 0.0,
    "reported": 0.0,
}

Aggregate = dict[str, Any]


class RewardTable:
    def __init__(self, table: Mapping[str, float] | None = None) -> None:
        table = dict(DEFAULT_REWARDS if table is None else table)
        for reaction, reward in table.items():
            if not 0.0 <= float(reward) <= 1.0:
                raise ConfigError(f"reward of {reaction!r} must be in [0, 1], got {reward}")
        self.table = {k: float(v) for k, v in table.items()}

    def reward(self, reaction: str) -> float:
        try:
            return self.table[reaction]
        except KeyError:
            raise InvalidEvent(
                f"reaction: {reaction!r} is not in the reward table "
                f"({', '.join(sorted(self.table))})",
                field="reaction",
            ) from None


def empty_aggregate() -> Aggregate:
    return {"n": 0, "reward_sum": 0.0, "reactions": {}, "last_ts": None}


def fold_feedback(new: Aggregate, events: list[FeedbackEvent], rewards: RewardTable) -> Aggregate:
    """Fold ``events`` into ``new`` in place and return it."""
    for event in events:
        new["n"] += 1
        new["reward_sum"] += rewards.reward(event.reaction)
        new["reactions"][event.reaction] = new["reactions"].get(event.reaction, 0) + 1
        t = event.epoch()
        if new["last_ts"] is None or t > new["last_ts"]:
            new["last_ts"] = t
    return new


def tip_stats(agg: Aggregate) -> TipStats:
    return TipStats(impressions=int(agg["n"]), reward_sum=float(agg["reward_sum"]))

"""Tip aggregates: the feedback fold, its feature definitions and the smoothed reward rate.

The feedback consumer folds each event into a per-tip aggregate (read by ``/score``) and a
per-prompt-version aggregate (the "which prompt earns more reward?" analytics); the offline
builder replays the log through the same fold. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from tipml.domain.definitions import FeatureDef
from tipml.domain.events import FeedbackEvent
from tipml.domain.rewards import RewardTable

Aggregate = dict[str, Any]

# Prior of the smoothed per-tip reward rate: a tip with no history scores PRIOR_MEAN, and
# needs about PRIOR_STRENGTH impressions before its own data outweighs the prior.
PRIOR_MEAN = 0.3
PRIOR_STRENGTH = 10.0

_N = TypeVar("_N", float, npt.NDArray[np.float64])


def smoothed_rate(reward_sum: _N, impressions: _N) -> _N:
    """(reward_sum + prior_mean · prior_strength) / (impressions + prior_strength): one
    formula for a tip (floats) and for a whole candidate list (arrays)."""
    return (reward_sum + PRIOR_MEAN * PRIOR_STRENGTH) / (impressions + PRIOR_STRENGTH)


@dataclass(frozen=True)
class TipStats:
    """Aggregated feedback for one tip (all users): fed by the feedback consumer."""

    impressions: int = 0
    reward_sum: float = 0.0

    def smoothed_rate(self) -> float:
        return smoothed_rate(float(self.reward_sum), float(self.impressions))


NO_STATS = TipStats()


class TipStatsView:
    """Read-only view of per-tip aggregates shared by every request of a process.

    Whoever keeps it fresh (the feedback consumer's KV watch) swaps in a whole new mapping,
    so a request always reads one consistent snapshot.
    """

    def __init__(self, initial: Mapping[str, TipStats] | None = None) -> None:
        self._current: Mapping[str, TipStats] = dict(initial or {})

    def snapshot(self) -> Mapping[str, TipStats]:
        return self._current

    def replace(self, stats: Mapping[str, TipStats]) -> None:
        self._current = dict(stats)


def empty_aggregate() -> Aggregate:
    return {"n": 0, "reward_sum": 0.0, "reactions": {}, "last_ts": None}


def fold_feedback(new: Aggregate, events: list[FeedbackEvent], rewards: RewardTable) -> Aggregate:
    """Fold ``events`` into ``new`` in place and return it (each event is one shown tip's
    outcome)."""
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


# All-time, shared by every user: read from the aggregate ``{"n", "reward_sum", "reactions",
# "last_ts"}``.
TIP_FEATURES: tuple[FeatureDef, ...] = (
    FeatureDef(
        "tip_impressions",
        "int",
        "tip",
        None,
        "count of feedback events",
        "Times the tip was shown and reacted to.",
        lambda s, at: int(s["n"]),
    ),
    FeatureDef(
        "tip_reward_sum",
        "float",
        "tip",
        None,
        "sum of reaction rewards",
        "Reward earned by the tip.",
        lambda s, at: float(s["reward_sum"]),
    ),
    FeatureDef(
        "tip_reward_rate",
        "float",
        "tip",
        None,
        "(reward_sum + prior_mean * prior_strength) / (n + prior_strength)",
        "Smoothed reward rate: what the baseline scorer reads.",
        lambda s, at: tip_stats(s).smoothed_rate(),
    ),
    FeatureDef(
        "tip_reactions",
        "map<str,int>",
        "tip",
        None,
        "count per reaction",
        "Reactions to the tip.",
        lambda s, at: dict(s["reactions"]),
    ),
)


def materialize_tip(agg: Aggregate, at: float) -> dict[str, Any]:
    return {f.name: f.compute(agg, at) for f in TIP_FEATURES}

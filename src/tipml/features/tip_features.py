"""Per-(user, candidate) model features: one definition used by every scorer.

``feature_matrix`` turns a scoring request into a dense float matrix with named columns.
The baseline scorer reads three of its columns; a trained LightGBM model reads the columns
it was trained on (by name). Training builds the same matrix from logged requests, so a
feature means the same thing at train and serve time. Missing values are ``NaN``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tipml.domain.tips import NO_STATS, TipStats, smoothed_rate
from tipml.features.profile_schema import CATEGORIES, ValidatedProfile


@dataclass(frozen=True)
class Candidate:
    tip_id: str
    category: str | None = None
    tags: tuple[str, ...] = ()
    source: str = "curated"


_PROFILE_NUMERIC = (
    "completion_rate",
    "dismiss_rate",
    "preferred_hour",
    "tip_volume_7d",
    "streak_days",
    "days_since_signup",
    "avg_session_minutes",
)

FEATURE_NAMES: tuple[str, ...] = (
    "tip_reward_rate",
    "tip_log_impressions",
    "hour_match",
    "category_match",
    "is_generated",
    "n_tags",
    "local_hour",
    "notifications_enabled",
    *(f"profile_{n}" for n in _PROFILE_NUMERIC),
    *(f"category_is_{c}" for c in CATEGORIES),
)
COLUMN: Mapping[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}


def hour_match(local_hour: int, preferred_hour: float | None) -> float:
    """1 when the local hour is the preferred hour, falling linearly to 0 twelve hours away
    (circular); 0.5 when the preferred hour is unknown."""
    if preferred_hour is None:
        return 0.5
    diff = abs(local_hour - int(preferred_hour)) % 24
    return 1.0 - min(diff, 24 - diff) / 12.0


def feature_matrix(
    candidates: Sequence[Candidate],
    profile: ValidatedProfile,
    local_hour: int,
    stats: Mapping[str, TipStats],
) -> npt.NDArray[np.float64]:
    n = len(candidates)
    x = np.full((n, len(FEATURE_NAMES)), np.nan, dtype=np.float64)
    # User-level columns are the same for every row.
    x[:, COLUMN["hour_match"]] = hour_match(local_hour, profile.get_float("preferred_hour"))
    x[:, COLUMN["local_hour"]] = float(local_hour)
    notif = profile.values.get("notifications_enabled")
    if isinstance(notif, bool):
        x[:, COLUMN["notifications_enabled"]] = float(notif)
    for name in _PROFILE_NUMERIC:
        value = profile.get_float(name)
        if value is not None:
            x[:, COLUMN[f"profile_{name}"]] = value
    # Candidate-level columns, one vectorised assignment per column.
    tips = [stats.get(c.tip_id, NO_STATS) for c in candidates]
    impressions = np.array([t.impressions for t in tips], dtype=np.float64)
    reward = np.array([t.reward_sum for t in tips], dtype=np.float64)
    x[:, COLUMN["tip_reward_rate"]] = smoothed_rate(reward, impressions)
    x[:, COLUMN["tip_log_impressions"]] = np.log1p(impressions)
    x[:, COLUMN["is_generated"]] = [c.source == "generated" for c in candidates]
    x[:, COLUMN["n_tags"]] = [len(c.tags) for c in candidates]
    categories = np.array([c.category or "" for c in candidates], dtype=object)
    known = categories != ""
    for cat in CATEGORIES:
        x[known, COLUMN[f"category_is_{cat}"]] = categories[known] == cat
    favorite = profile.get_str("favorite_category")
    if favorite is not None:
        x[known, COLUMN["category_match"]] = categories[known] == favorite
    return x

"""Per-(user, candidate) model features: one definition used by every scorer.

``feature_matrix`` turns a scoring request into a dense float matrix with named columns.
The baseline scorer reads three of its columns; a trained LightGBM model reads the columns
it was trained on (by name). Training builds the same matrix from logged requests, so a
feature means the same thing at train and serve time. Missing values are ``NaN``.
"""

from __future__ import annotations

import hashlib
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


@dataclass(frozen=True)
class ColumnDef:
    """One column of the model matrix: what a model sees, where it comes from."""

    name: str
    source: str  # the definition it is computed from (a feature, a profile field, the request)
    description: str
    dtype: str = "float64"  # NaN when missing


MODEL_COLUMNS: tuple[ColumnDef, ...] = (
    ColumnDef(
        "tip_reward_rate",
        "tip_stats: domain.tips.smoothed_rate",
        "the tip's reward per impression over all users, shrunk toward the prior",
    ),
    ColumnDef("tip_log_impressions", "tip_stats: impressions", "log(1 + impressions)"),
    ColumnDef(
        "hour_match",
        "request context.ts + profile preferred_hour",
        "1 at the preferred local hour, 0 twelve hours away, 0.5 if unknown",
    ),
    ColumnDef(
        "category_match",
        "candidate category + profile favorite_category",
        "1 if the tip's category is the favorite, 0 if another, missing if unknown",
    ),
    ColumnDef("is_generated", "candidate source", "1 for an LLM-generated tip"),
    ColumnDef("n_tags", "candidate tags", "number of tags"),
    ColumnDef("local_hour", "request context.ts + profile timezone", "hour in the user's zone"),
    ColumnDef("notifications_enabled", "profile notifications_enabled", "1/0, missing if unset"),
    *(
        ColumnDef(f"profile_{n}", f"profile {n}", f"the profile feature {n}")
        for n in _PROFILE_NUMERIC
    ),
    *(
        ColumnDef(f"category_is_{c}", "candidate category", f"1 if the category is {c}")
        for c in CATEGORIES
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(c.name for c in MODEL_COLUMNS)
COLUMN: Mapping[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}


def feature_hash(x: npt.NDArray[np.float64]) -> str:
    """A short, stable hash of a feature matrix (rows = candidates in request order, columns
    = ``FEATURE_NAMES``): serving logs it with each decision, the training-set builder
    rebuilds the matrix from the log and compares (the skew check). NaN is one value."""
    canonical = np.where(np.isnan(x), np.nan, x).astype("<f8", copy=False)
    digest = hashlib.blake2b(np.ascontiguousarray(canonical).tobytes(), digest_size=8)
    digest.update(str(x.shape).encode())
    return digest.hexdigest()


def hour_match(local_hour: int, preferred_hour: float | None) -> float:
    """1 when the local hour is the preferred hour, falling linearly to 0 twelve hours away
    (circular); 0.5 when the preferred hour is unknown."""
    if preferred_hour is None:
        return 0.5
    diff = abs(local_hour - int(preferred_hour)) % 24
    return 1.0 - min(diff, 24 - diff) / 12.0


def _user_columns(profile: ValidatedProfile, local_hour: int) -> dict[int, float]:
    """The user-level columns (the same for every candidate of one request)."""
    out = {
        COLUMN["hour_match"]: hour_match(local_hour, profile.get_float("preferred_hour")),
        COLUMN["local_hour"]: float(local_hour),
    }
    notif = profile.values.get("notifications_enabled")
    if isinstance(notif, bool):
        out[COLUMN["notifications_enabled"]] = float(notif)
    for name in _PROFILE_NUMERIC:
        value = profile.get_float(name)
        if value is not None:
            out[COLUMN[f"profile_{name}"]] = value
    return out


def _candidate_columns(
    x: npt.NDArray[np.float64],
    candidates: Sequence[Candidate],
    impressions: npt.NDArray[np.float64],
    reward: npt.NDArray[np.float64],
    favorites: npt.NDArray[np.object_],
) -> None:
    """The candidate-level columns, one vectorised assignment per column. ``favorites``: each
    row's favourite category ("" when unknown)."""
    x[:, COLUMN["tip_reward_rate"]] = smoothed_rate(reward, impressions)
    x[:, COLUMN["tip_log_impressions"]] = np.log1p(impressions)
    x[:, COLUMN["is_generated"]] = [c.source == "generated" for c in candidates]
    x[:, COLUMN["n_tags"]] = [len(c.tags) for c in candidates]
    categories = np.array([c.category or "" for c in candidates], dtype=object)
    known = categories != ""
    for cat in CATEGORIES:
        x[known, COLUMN[f"category_is_{cat}"]] = categories[known] == cat
    both = known & (favorites != "")
    x[both, COLUMN["category_match"]] = categories[both] == favorites[both]


def feature_matrix(
    candidates: Sequence[Candidate],
    profile: ValidatedProfile,
    local_hour: int,
    stats: Mapping[str, TipStats],
) -> npt.NDArray[np.float64]:
    """One request's matrix: rows = its candidates in request order."""
    n = len(candidates)
    x = np.full((n, len(FEATURE_NAMES)), np.nan, dtype=np.float64)
    for col, value in _user_columns(profile, local_hour).items():
        x[:, col] = value
    tips = [stats.get(c.tip_id, NO_STATS) for c in candidates]
    favorite = profile.get_str("favorite_category") or ""
    _candidate_columns(
        x,
        candidates,
        np.array([t.impressions for t in tips], dtype=np.float64),
        np.array([t.reward_sum for t in tips], dtype=np.float64),
        np.full(n, favorite, dtype=object),
    )
    return x


def feature_rows(
    candidates: Sequence[Candidate],
    profiles: Sequence[ValidatedProfile],
    local_hours: Sequence[int],
    impressions: Sequence[float],
    reward_sums: Sequence[float],
) -> npt.NDArray[np.float64]:
    """Rows of many requests at once (row i: candidate i of a request with profile i, local
    hour i and the tip aggregates it saw) — the training-set builder's batch path through
    the same column definitions as ``feature_matrix``."""
    n = len(candidates)
    x = np.full((n, len(FEATURE_NAMES)), np.nan, dtype=np.float64)
    cache: dict[tuple[int, int], dict[int, float]] = {}
    for i, (profile, hour) in enumerate(zip(profiles, local_hours, strict=True)):
        key = (id(profile), hour)
        cols = cache.get(key)
        if cols is None:
            cols = cache[key] = _user_columns(profile, hour)
        for col, value in cols.items():
            x[i, col] = value
    favorites = np.array([p.get_str("favorite_category") or "" for p in profiles], dtype=object)
    _candidate_columns(
        x,
        candidates,
        np.asarray(impressions, dtype=np.float64),
        np.asarray(reward_sums, dtype=np.float64),
        favorites,
    )
    return x

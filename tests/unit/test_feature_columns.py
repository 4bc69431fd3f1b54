"""The candidate columns are gathered from one table row per distinct (category, source, tag
count, favourite) (fast at 100 candidates): they must equal what the object-array version
computed — the reference below, kept as it was —
for any mix of known, unlisted, empty and missing categories and favourites, on both the
serving path (``feature_matrix``) and the training path (``feature_rows``)."""

from __future__ import annotations

import random

import numpy as np
import numpy.typing as npt
import pytest

from tipml.domain.tips import TipStats, smoothed_rate
from tipml.features.profile_schema import CATEGORIES, validate_profile
from tipml.features.tip_features import (
    COLUMN,
    FEATURE_NAMES,
    Candidate,
    feature_matrix,
    feature_rows,
)


def reference_columns(
    candidates: list[Candidate],
    impressions: npt.NDArray[np.float64],
    reward: npt.NDArray[np.float64],
    favorites: npt.NDArray[np.object_],
) -> npt.NDArray[np.float64]:
    """The candidate columns as the object-array version set them (NaN elsewhere)."""
    x = np.full((len(candidates), len(FEATURE_NAMES)), np.nan)
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
    return x


CANDIDATE_COLUMNS = [
    COLUMN[n]
    for n in FEATURE_NAMES
    if n.startswith("category_")
    or n in ("tip_reward_rate", "tip_log_impressions")
    or n in ("is_generated", "n_tags")
]


def _random_candidates(rng: random.Random, n: int) -> list[Candidate]:
    pool = [*CATEGORIES, None, "", "other", "Sleep"]
    return [
        Candidate(
            f"t{i}",
            rng.choice(pool),
            tuple(f"g{j}" for j in range(rng.randrange(4))),
            rng.choice(["curated", "generated"]),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", range(25))
def test_feature_matrix_candidate_columns_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    candidates = _random_candidates(rng, rng.randrange(1, 120))
    favorite = rng.choice([*CATEGORIES, None])
    profile = validate_profile({"favorite_category": favorite} if favorite else None)
    stats = {
        c.tip_id: TipStats(rng.randrange(0, 50), rng.random() * 10)
        for c in candidates
        if rng.random() < 0.7
    }
    x = feature_matrix(candidates, profile, rng.randrange(24), stats)
    tips = [stats.get(c.tip_id, TipStats()) for c in candidates]
    want = reference_columns(
        candidates,
        np.array([t.impressions for t in tips], dtype=float),
        np.array([t.reward_sum for t in tips], dtype=float),
        np.full(len(candidates), profile.get_str("favorite_category") or "", dtype=object),
    )
    np.testing.assert_array_equal(x[:, CANDIDATE_COLUMNS], want[:, CANDIDATE_COLUMNS])


@pytest.mark.parametrize("seed", range(10))
def test_feature_rows_candidate_columns_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(1, 300)
    candidates = _random_candidates(rng, n)
    favorites = [rng.choice([*CATEGORIES, None]) for _ in range(n)]
    profiles = [validate_profile({"favorite_category": f} if f else None) for f in favorites]
    impressions = [float(rng.randrange(0, 30)) for _ in range(n)]
    rewards = [rng.random() * 5 for _ in range(n)]
    x = feature_rows(
        candidates, profiles, [rng.randrange(24) for _ in range(n)], impressions, rewards
    )
    want = reference_columns(
        candidates,
        np.array(impressions),
        np.array(rewards),
        np.array([f or "" for f in favorites], dtype=object),
    )
    np.testing.assert_array_equal(x[:, CANDIDATE_COLUMNS], want[:, CANDIDATE_COLUMNS])

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

from tipml.features.profile_schema import CATEGORIES, validate_profile
from tipml.sim.catalog import CATALOG
from tipml.sim.users import make_users


def test_catalog_size_and_categories() -> None:
    assert len(CATALOG) >= 60
    assert len({t.category for t in CATALOG}) >= 6
    assert len({t.tip_id for t in CATALOG}) == len(CATALOG)
    assert {t.category for t in CATALOG} <= set(CATEGORIES)


def test_users_are_seeded_and_profiles_are_valid() -> None:
    assert make_users(20, seed=3) == make_users(20, seed=3)
    assert make_users(20, seed=3) != make_users(20, seed=4)
    rng = random.Random(0)
    for user in make_users(50):
        validate_profile(user.profile_features(rng))  # never rejected by our own schema


def test_reactions_follow_hidden_preferences() -> None:
    user = make_users(1, seed=11)[0]
    best = max(user.affinity, key=lambda c: user.affinity[c])
    worst = min(user.affinity, key=lambda c: user.affinity[c])
    at_peak = datetime(2026, 11, 27, 12, tzinfo=UTC)
    probs = user.reaction_probs(best, at_peak)
    assert abs(sum(probs.values()) - 1.0) < 1e-9
    assert min(probs.values()) >= 0
    assert user.expected_reward(best, at_peak) > user.expected_reward(worst, at_peak)
    rng = random.Random(1)
    good = Counter(user.react(best, at_peak, rng) for _ in range(2000))
    bad = Counter(user.react(worst, at_peak, rng) for _ in range(2000))
    assert good["completed"] > bad["completed"]

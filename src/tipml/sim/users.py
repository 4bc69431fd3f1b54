"""Synthetic users with hidden preferences, and how they react to a tip.

The simulator knows each user's true category affinity and active hours; the service only
sees the noisy profile features the recommender would compute. Seeded: the same seed gives
the same population and the same reactions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from tipml.features.profile_schema import CATEGORIES

TIMEZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Asia/Tokyo",
    "Europe/London",
    "America/Los_Angeles",
    "Australia/Sydney",
)

# Reward per reaction, as the feedback consumer's configured table will map them.
REACTION_REWARD: dict[str, float] = {
    "completed": 1.0,
    "liked": 0.8,
    "snoozed": 0.2,
    "dismissed": 0.0,
    "reported": 0.0,
}


@dataclass(frozen=True)
class SimUser:
    user_id: str
    affinity: dict[str, float]  # hidden: probability weight per category, sums to 1
    active_hour: int  # hidden: local hour of peak activity
    diligence: float  # hidden: base probability of acting on a liked tip
    timezone: str
    days_since_signup: int

    def profile_features(self, rng: random.Random) -> dict[str, object]:
        """What the recommender would send: noisy, partial views of the hidden traits."""
        favorite = max(self.affinity, key=lambda c: self.affinity[c])
        if rng.random() < 0.2:
            favorite = rng.choice(CATEGORIES)
        features: dict[str, object] = {
            "completion_rate": round(min(1.0, max(0.0, self.diligence + rng.gauss(0, 0.05))), 3),
            "dismiss_rate": round(min(1.0, max(0.0, 0.6 - self.diligence)), 3),
            "preferred_hour": (self.active_hour + rng.choice((-1, 0, 0, 1))) % 24,
            "tip_volume_7d": rng.randint(0, 30),
            "streak_days": rng.randint(0, 12),
            "days_since_signup": self.days_since_signup,
            "favorite_category": favorite,
            "timezone": self.timezone,
        }
        if rng.random() < 0.3:
            del features["preferred_hour"]  # missing features happen
        return features

    def local_hour(self, ts: datetime) -> int:
        return ts.astimezone(ZoneInfo(self.timezone)).hour

    def reaction_probs(self, category: str, ts: datetime) -> dict[str, float]:
        """The true probability of each reaction to a tip of ``category`` shown at ``ts``."""
        diff = abs(self.local_hour(ts) - self.active_hour) % 24
        hour_fit = math.exp(-(min(diff, 24 - diff) ** 2) / 18.0)
        like = min(1.0, self.affinity.get(category, 0.0) * len(CATEGORIES) * 0.5)
        completed = self.diligence * like * (0.4 + 0.6 * hour_fit)
        rest = 1.0 - completed
        liked = rest * 0.1 * like
        snoozed = rest * 0.15
        reported = rest * 0.005
        return {
            "completed": completed,
            "liked": liked,
            "snoozed": snoozed,
            "reported": reported,
            "dismissed": 1.0 - completed - liked - snoozed - reported,
        }

    def expected_reward(self, category: str, ts: datetime) -> float:
        probs = self.reaction_probs(category, ts)
        return sum(REACTION_REWARD[r] * p for r, p in probs.items())

    def react(self, category: str, ts: datetime, rng: random.Random) -> str:
        """Sample a reaction to a tip of ``category`` shown at ``ts``."""
        probs = self.reaction_probs(category, ts)
        u, acc = rng.random(), 0.0
        for reaction, p in probs.items():
            acc += p
            if u < acc:
                return reaction
        return "dismissed"


def make_users(n: int, seed: int = 7) -> list[SimUser]:
    rng = random.Random(seed)
    users: list[SimUser] = []
    for i in range(n):
        weights = [rng.gammavariate(0.5, 1.0) for _ in CATEGORIES]
        total = sum(weights) or 1.0
        users.append(
            SimUser(
                user_id=f"sim-{i:04d}",
                affinity={c: w / total for c, w in zip(CATEGORIES, weights, strict=True)},
                active_hour=rng.choice((6, 7, 8, 12, 13, 18, 19, 20, 21, 22)),
                diligence=rng.uniform(0.3, 0.9),
                timezone=rng.choice(TIMEZONES),
                days_since_signup=rng.randint(0, 400),
            )
        )
    return users

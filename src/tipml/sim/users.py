"""Synthetic users with hidden preferences, and how they react to a tip.

The simulator knows each user's true category affinity and active hours; the service only
sees the noisy profile features the recommender would compute. Seeded: the same seed gives
the same population and the same reactions.

Hidden preferences the experiments have to find (documented so tests and the demo can check
that they do):

* **Prompt style** — every user belongs to a cohort whose chance of completing a generated
  tip is multiplied by ``PROMPT_LIFT[cohort][version]``: ``doers`` (60 %) like v2's direct
  coaching (x1.8) and are lukewarm to v3 (x0.9); ``reflectors`` (40 %) like v3's use of
  their recent activity (x1.6) and v2 a little (x1.2). Over the population v2 is the best
  prompt version (expected lift 1.56, vs 1.18 for v3 and 1.0 for v1): the A/B test should
  find v2 > v1 and the bandit should move its traffic to v2. A fallback text (no model)
  gets x0.6.
* **Exploration** — users tire of seeing the same tip: each earlier showing of a tip to
  the same user multiplies the chance of completing it by the user's ``fatigue``
  (0.55 to 0.9). A ranking that always shows a user the same best tip loses reward that a
  ranking which explores keeps (``Driver`` remembers what each user was shown).
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


COHORTS = ("doers", "reflectors")
COHORT_SHARE = {"doers": 0.6, "reflectors": 0.4}
PROMPT_LIFT: dict[str, dict[str, float]] = {
    "doers": {"v1": 1.0, "v2": 1.8, "v3": 0.9},
    "reflectors": {"v1": 1.0, "v2": 1.2, "v3": 1.6},
}
FALLBACK_LIFT = 0.6


def population_lift(version: str) -> float:
    """The expected completion lift of ``version`` over the population (the true answer)."""
    return sum(COHORT_SHARE[c] * PROMPT_LIFT[c].get(version, 1.0) for c in COHORTS)


@dataclass(frozen=True)
class SimUser:
    user_id: str
    affinity: dict[str, float]  # hidden: probability weight per category, sums to 1
    active_hour: int  # hidden: local hour of peak activity
    diligence: float  # hidden: base probability of acting on a liked tip
    timezone: str
    days_since_signup: int
    cohort: str = "doers"  # hidden: prompt-style preference (PROMPT_LIFT)
    fatigue: float = 0.8  # hidden: reward multiplier per earlier showing of the same tip

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

    def lift(
        self, *, prompt_version: str | None = None, fallback: bool = False, seen: int = 0
    ) -> float:
        """The hidden multiplier on completing: prompt style, fallback text, fatigue."""
        out = self.fatigue**seen
        if prompt_version is not None:
            out *= PROMPT_LIFT[self.cohort].get(prompt_version, 1.0)
        if fallback:
            out *= FALLBACK_LIFT
        return out

    def reaction_probs(self, category: str, ts: datetime, lift: float = 1.0) -> dict[str, float]:
        """The true probability of each reaction to a tip of ``category`` shown at ``ts``
        (``lift``: see ``lift()``)."""
        diff = abs(self.local_hour(ts) - self.active_hour) % 24
        hour_fit = math.exp(-(min(diff, 24 - diff) ** 2) / 18.0)
        like = min(1.0, self.affinity.get(category, 0.0) * len(CATEGORIES) * 0.5)
        completed = min(0.95, self.diligence * like * (0.4 + 0.6 * hour_fit) * lift)
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

    def expected_reward(self, category: str, ts: datetime, lift: float = 1.0) -> float:
        probs = self.reaction_probs(category, ts, lift)
        return sum(REACTION_REWARD[r] * p for r, p in probs.items())

    def react(self, category: str, ts: datetime, rng: random.Random, lift: float = 1.0) -> str:
        """Sample a reaction to a tip of ``category`` shown at ``ts``."""
        probs = self.reaction_probs(category, ts, lift)
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
                cohort="doers" if rng.random() < COHORT_SHARE["doers"] else "reflectors",
                fatigue=rng.uniform(0.55, 0.9),
            )
        )
    return users

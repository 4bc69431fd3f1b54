"""Ranking policies for ``/score``: scores in, a ranking and each candidate's propensity out.

The propensity is the probability that the policy puts the candidate *first*; it is logged
with every candidate of every decision so off-policy evaluation can reweight later. The
exploring policies draw from a random generator the caller owns (one per serving process), so
two replicas never explore in lockstep.

* ``greedy`` — highest score first (ties keep input order); propensity 1 for the top.
* ``epsilon_greedy:<ε>`` — with probability 1-ε the greedy ranking; with ε a uniformly random
  candidate moves to the top (the rest keep the greedy order). Exact: ``1-ε+ε/n`` for the
  greedy top, ``ε/n`` for every other candidate.
* ``softmax:<t>`` — a Plackett-Luce ranking with weights ``exp(score/t)`` (Gumbel-max trick):
  the first place is exactly ``softmax(score/t)``, which is the propensity.
* ``thompson`` — each candidate's reward rate has a Beta posterior (its smoothed rate and
  impressions, the prior of ``domain.tips``); a posterior draw replaces the mean in the score:
  ``score + (θ̃ - rate)``, so a tip with few impressions explores and one with many is ranked
  by its score. The first-place probabilities have no closed form: they are estimated from
  ``thompson_samples(n)`` joint draws (4,000 for up to 100 candidates, then fewer so that
  samples x candidates stays ≤ 400,000 — at least 400); the draw that ranks is one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tipml.domain.tips import PRIOR_STRENGTH
from tipml.errors import ConfigError

Vector = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Ranking:
    order: npt.NDArray[np.intp]  # candidate indices, best first
    propensities: Vector  # per candidate (input order): P(first), sums to 1


@dataclass(frozen=True)
class Uncertainty:
    """What an exploring policy may know beyond the scores: each candidate's smoothed reward
    rate and impressions (columns of the feature matrix)."""

    rate: Vector
    impressions: Vector


class RankingPolicy(Protocol):
    @property
    def name(self) -> str: ...

    def rank(
        self,
        scores: Vector,
        rng: np.random.Generator,
        uncertainty: Uncertainty | None = None,
    ) -> Ranking: ...


def _greedy_order(scores: Vector) -> npt.NDArray[np.intp]:
    # A stable sort of the negated scores keeps input order among ties.
    return np.argsort(-scores, kind="stable")


class Greedy:
    name = "greedy"

    def rank(
        self,
        scores: Vector,
        rng: np.random.Generator | None = None,
        uncertainty: Uncertainty | None = None,
    ) -> Ranking:
        order = _greedy_order(scores)
        propensities = np.zeros(len(scores), dtype=np.float64)
        if len(scores):
            propensities[order[0]] = 1.0
        return Ranking(order=order, propensities=propensities)


class EpsilonGreedy:
    def __init__(self, epsilon: float) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ConfigError(f"epsilon_greedy: ε must be in [0, 1], got {epsilon:g}")
        self.epsilon = epsilon
        self.name = f"epsilon_greedy:{epsilon:g}"

    def rank(
        self, scores: Vector, rng: np.random.Generator, uncertainty: Uncertainty | None = None
    ) -> Ranking:
        n = len(scores)
        order = _greedy_order(scores)
        propensities = np.full(n, self.epsilon / n if n else 0.0)
        if n:
            propensities[order[0]] += 1.0 - self.epsilon
            if rng.random() < self.epsilon:
                first = int(rng.integers(n))
                order = np.concatenate(([first], order[order != first])).astype(np.intp)
        return Ranking(order=order, propensities=propensities)


class Softmax:
    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise ConfigError(f"softmax: the temperature must be > 0, got {temperature:g}")
        self.temperature = temperature
        self.name = f"softmax:{temperature:g}"

    def rank(
        self, scores: Vector, rng: np.random.Generator, uncertainty: Uncertainty | None = None
    ) -> Ranking:
        logits = scores / self.temperature
        z = np.exp(logits - logits.max()) if len(scores) else logits
        propensities: Vector = z / z.sum() if len(scores) else z
        order = np.argsort(-(logits + rng.gumbel(size=len(scores))), kind="stable")
        return Ranking(order=order, propensities=propensities)


def thompson_samples(n: int) -> int:
    return int(min(4000, max(400, 400_000 // max(n, 1))))


class ThompsonRanking:
    name = "thompson"

    def rank(
        self, scores: Vector, rng: np.random.Generator, uncertainty: Uncertainty | None = None
    ) -> Ranking:
        n = len(scores)
        if uncertainty is None or n == 0:
            return Greedy().rank(scores)
        rate = np.clip(uncertainty.rate, 1e-6, 1 - 1e-6)
        strength = uncertainty.impressions + PRIOR_STRENGTH
        samples = thompson_samples(n)
        draws = rng.beta(rate * strength, (1 - rate) * strength, size=(samples, n))
        perturbed = scores + (draws - rate)
        counts = np.bincount(perturbed.argmax(axis=1), minlength=n)
        propensities: Vector = counts / samples
        order = np.argsort(-perturbed[0], kind="stable")  # the ranking is one of the draws
        return Ranking(order=order, propensities=propensities)


SCORE_POLICIES = ("greedy", "epsilon_greedy", "softmax", "thompson")


def parse_score_policy(spec: str) -> RankingPolicy:
    """``greedy``, ``epsilon_greedy:<ε>``, ``softmax:<temperature>`` or ``thompson``."""
    kind, _, arg = spec.partition(":")
    if kind in ("greedy", "thompson"):
        if arg:
            raise ConfigError(f"score policy {spec!r}: {kind} takes no parameter")
        return Greedy() if kind == "greedy" else ThompsonRanking()
    if kind in ("epsilon_greedy", "softmax"):
        try:
            value = float(arg)
        except ValueError:
            what = "ε" if kind == "epsilon_greedy" else "temperature"
            raise ConfigError(
                f"score policy {spec!r}: expected {kind}:<{what}>, a number"
            ) from None
        return EpsilonGreedy(value) if kind == "epsilon_greedy" else Softmax(value)
    raise ConfigError(
        f"unknown score policy {spec!r}; known: greedy, epsilon_greedy:<ε>, "
        "softmax:<temperature>, thompson"
    )

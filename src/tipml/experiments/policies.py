"""Ranking policies: turn scores into a ranking plus the propensity of each candidate.

The propensity is the probability that the policy puts the candidate first; it is logged on
every decision so off-policy evaluation can reweight later. Exploration policies (epsilon-
greedy, Thompson sampling, …) join here behind the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Ranking:
    order: npt.NDArray[np.intp]  # candidate indices, best first
    propensities: npt.NDArray[np.float64]  # per candidate (input order), sums to 1


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def rank(self, scores: npt.NDArray[np.float64]) -> Ranking: ...


class Greedy:
    """Highest score first; ties keep input order. Deterministic: propensity 1 for the top."""

    name = "greedy"

    def rank(self, scores: npt.NDArray[np.float64]) -> Ranking:
        # A stable sort of the negated scores keeps input order among ties.
        order = np.argsort(-scores, kind="stable")
        propensities = np.zeros(len(scores), dtype=np.float64)
        if len(scores):
            propensities[order[0]] = 1.0
        return Ranking(order=order, propensities=propensities)

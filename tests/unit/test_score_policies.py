"""Ranking policies of /score (issue 8, item 4): each candidate's propensity is its exact
probability of being ranked first — checked against the closed form and against the
empirical first-place frequencies of the rankings the policy really produces."""

from __future__ import annotations

import numpy as np
import pytest

from tipml.errors import ConfigError
from tipml.experiments.policies import (
    EpsilonGreedy,
    Greedy,
    Softmax,
    ThompsonRanking,
    Uncertainty,
    parse_score_policy,
    thompson_samples,
)

SCORES = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
UNCERTAIN = Uncertainty(
    rate=np.array([0.3, 0.6, 0.5, 0.55, 0.2]), impressions=np.array([0, 500, 3, 10, 1.0])
)


def _first_place(policy: object, n: int = 20_000, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(SCORES))
    for _ in range(n):
        ranking = policy.rank(SCORES, rng, UNCERTAIN)  # type: ignore[attr-defined]
        counts[ranking.order[0]] += 1
        assert sorted(ranking.order.tolist()) == list(range(len(SCORES)))  # a permutation
    return counts / n


def test_epsilon_greedy_propensities_are_exact() -> None:
    ranking = EpsilonGreedy(0.2).rank(SCORES, np.random.default_rng(0))
    n = len(SCORES)
    expected = np.full(n, 0.2 / n)
    expected[1] = 1 - 0.2 + 0.2 / n  # the greedy top (ties keep input order: index 1)
    assert np.allclose(ranking.propensities, expected)
    assert np.allclose(_first_place(EpsilonGreedy(0.2)), expected, atol=0.01)


def test_softmax_first_place_is_the_softmax_of_the_scores() -> None:
    policy = Softmax(0.25)
    ranking = policy.rank(SCORES, np.random.default_rng(0))
    z = np.exp(SCORES / 0.25)
    assert np.allclose(ranking.propensities, z / z.sum())
    assert np.allclose(_first_place(policy), z / z.sum(), atol=0.01)


def test_thompson_propensities_match_its_rankings() -> None:
    policy = ThompsonRanking()
    rng = np.random.default_rng(1)
    estimated = policy.rank(SCORES, rng, UNCERTAIN).propensities
    assert estimated.sum() == pytest.approx(1.0)
    assert np.allclose(_first_place(policy, 1_500), estimated, atol=0.04)
    # close scores: the tip nobody has seen explores, the well-known one keeps its score
    close = np.array([0.50, 0.52])
    known = Uncertainty(rate=np.array([0.5, 0.5]), impressions=np.array([0.0, 5000.0]))
    p = policy.rank(close, rng, known).propensities
    assert 0.3 < p[0] < 0.5 < p[1]
    assert thompson_samples(10) == 4000
    assert thompson_samples(1000) == 400


def test_greedy_is_deterministic_and_names_itself() -> None:
    ranking = Greedy().rank(SCORES)
    assert ranking.order.tolist() == [1, 3, 2, 0, 4]
    assert ranking.propensities.tolist() == [0, 1, 0, 0, 0]
    assert parse_score_policy("epsilon_greedy:0.2").name == "epsilon_greedy:0.2"
    assert parse_score_policy("softmax:0.1").name == "softmax:0.1"
    assert parse_score_policy("thompson").name == "thompson"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("epsilon_greedy:2", "ε must be in"),
        ("epsilon_greedy:x", "a number"),
        ("softmax:0", "temperature must be > 0"),
        ("greedy:1", "takes no parameter"),
        ("bogus", "unknown score policy 'bogus'"),
    ],
)
def test_bad_policy_settings_are_named(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_score_policy(spec)

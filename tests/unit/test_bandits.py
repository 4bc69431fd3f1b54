"""One contract test over every bandit policy (issue 8, item 2): same seed → same choices;
probabilities sum to 1 and match the empirical choice frequencies; state round-trips; it
converges to the best arm on a stationary simulated problem."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tipml.errors import ConfigError
from tipml.experiments.bandits import Policy, make_policy

D = 5
ARMS = [f"a{i}" for i in range(6)]
CONFIGS: dict[str, dict[str, Any]] = {
    "epsilon_greedy": {"epsilon": 0.1},
    "ucb1": {},
    "softmax": {"temperature": 0.05},
    "thompson": {},
    "linucb": {"d": D, "alpha": 0.5},
    "lin_thompson": {"d": D, "v": 0.2},
}


def test_every_registered_policy_is_under_contract() -> None:
    assert set(Policy.REGISTRY) == set(CONFIGS)


class Problem:
    """Stationary: context-free arms with fixed Bernoulli means, or linear arms whose mean
    reward is clip(x·θₐ) for a context x drawn afresh each round."""

    def __init__(self, contextual: bool, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.contextual = contextual
        self.means = np.array([0.2, 0.3, 0.8, 0.4, 0.35, 0.25])
        self.theta = self.rng.uniform(0, 0.3, size=(len(ARMS), D))
        self.theta[2] += 0.25  # arm a2 is best for most contexts

    def context(self) -> np.ndarray | None:
        return self.rng.uniform(0, 1, size=D) / np.sqrt(D) * 2 if self.contextual else None

    def expected(self, x: np.ndarray | None) -> np.ndarray:
        return self.means if x is None else np.clip(self.theta @ x, 0, 1)

    def reward(self, arm: int, x: np.ndarray | None) -> float:
        return float(self.rng.random() < self.expected(x)[arm])


def run(policy: Policy, problem: Problem, rounds: int) -> list[tuple[str, bool]]:
    out = []
    for _ in range(rounds):
        x = problem.context()
        choice = policy.choose(x)
        best = int(np.argmax(problem.expected(x)))
        out.append((choice.arm, choice.arm == ARMS[best]))
        policy.update(choice.arm, problem.reward(ARMS.index(choice.arm), x), x)
    return out


@pytest.fixture(params=sorted(CONFIGS))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(name: str, seed: int = 3) -> Policy:
    return make_policy(name, ARMS, seed=seed, **CONFIGS[name])


def test_same_seed_same_choices(name: str) -> None:
    one = run(make(name), Problem(make(name).contextual), 200)
    two = run(make(name), Problem(make(name).contextual), 200)
    assert one == two


def test_probabilities_sum_to_one_and_match_choice_frequencies(name: str) -> None:
    policy = make(name)
    problem = Problem(policy.contextual)
    run(policy, problem, 300)  # a policy with some history
    x = problem.context()
    probs = np.array(list(policy.choose(x).probabilities.values()))
    assert probs.min() >= 0
    assert probs.sum() == pytest.approx(1.0, abs=1e-9)
    counts = np.zeros(len(ARMS))
    for _ in range(3000):  # no updates: the distribution stays the same
        counts[ARMS.index(policy.choose(x).arm)] += 1
    assert np.abs(counts / 3000 - probs).max() < 0.04


def test_state_round_trips(name: str) -> None:
    policy = make(name)
    problem = Problem(policy.contextual)
    run(policy, problem, 150)
    clone = Policy.from_bytes(policy.to_bytes())
    x = problem.context()
    assert clone.choose(x) == policy.choose(x)  # same parameters and random state
    rest = [problem.context() for _ in range(50)]
    assert [clone.choose(c).arm for c in rest] == [policy.choose(c).arm for c in rest]


def test_converges_to_the_best_arm(name: str) -> None:
    policy = make(name)
    history = run(policy, Problem(policy.contextual, seed=11), 3000)
    best_share = sum(ok for _, ok in history[-500:]) / 500
    assert best_share > 0.6, best_share


def test_bad_configuration_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'greedyish'"):
        make_policy("greedyish", ARMS)
    with pytest.raises(ConfigError, match="epsilon"):
        make_policy("epsilon_greedy", ARMS, epsilon=2)
    with pytest.raises(ConfigError, match="linucb"):
        make_policy("linucb", ARMS, dd=3)
    with pytest.raises(ConfigError, match="context"):
        make_policy("linucb", ARMS, d=3).choose()
    with pytest.raises(ConfigError, match="reward"):
        make_policy("thompson", ARMS).update("a0", 1.5)


def test_epsilon_greedy_propensities_are_exact() -> None:
    policy = make_policy("epsilon_greedy", ["x", "y", "z"], seed=0, epsilon=0.2)
    for arm, reward in (("x", 0.0), ("y", 1.0), ("z", 0.0)):  # burn-in: one pull each
        policy.update(arm, reward)
    probs = policy.choose().probabilities
    assert probs == pytest.approx({"x": 0.2 / 3, "y": 1 - 0.2 + 0.2 / 3, "z": 0.2 / 3})


@pytest.mark.parametrize("arms", [2, 5, 50])
def test_thompson_keeps_its_draws_consistent_through_updates(arms: int) -> None:
    """Thompson refreshes one column of its kept posterior draws per update and re-ranks only
    the draws that need it; the bookkeeping must equal ranking every draw from scratch, and
    the reported probabilities must be the share of draws each arm leads."""
    names = [f"a{i}" for i in range(arms)]
    policy = make_policy("thompson", names, seed=3)
    rng = np.random.default_rng(1)
    means = rng.random(arms)
    for step in range(600):
        choice = policy.choose()
        policy.update(choice.arm, float(rng.random() < means[choice.index]))
        if step % 37 == 0:
            draws = policy._draws  # type: ignore[attr-defined]
            best = draws.argmax(axis=1)
            assert (best == policy._best).all()  # type: ignore[attr-defined]
            assert np.allclose(np.partition(draws, -2, axis=1)[:, -2], policy._second)  # type: ignore[attr-defined]
            shares = np.bincount(best, minlength=arms) / len(best)
            assert np.allclose(policy.choose().probs, shares)

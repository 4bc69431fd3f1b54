"""Bandit policy benchmark against MABWiser (run on demand, not a test).

    .venv/bin/python bench/bench_bandits.py [--steps 400] [--arms 10,100,1000]

Throughput: one step = choose (tipml: with every arm's probability, which MABWiser does not
compute) + update with the reward of the chosen arm, on a stationary Bernoulli problem
(contextual ones: d = 20, reward ~ Bernoulli(sigmoid(x·θ_arm))). Both libraries run the same
policy on the same problem in the same process, after the same warm-up (every arm once);
their steps are timed in alternating blocks so machine noise hits both. The ratio is
MABWiser's time per step over tipml's.

Regret: every policy of ``experiments/bandits.py`` against the oracle on a 10-arm problem
(contextual ones on a contextual problem), cumulative regret over ``--horizon`` steps,
drawn to ``bench/results/bandits-regret.png``.

Writes ``bench/results/bandits-*.json`` and prints the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/<name>.py` puts bench/ on the path, not the repository: make `bench` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import time
import warnings
from datetime import UTC, datetime
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bench.common import machine
from tipml.experiments.bandits import Policy, make_policy

D = 20


def _mabwiser_policies() -> dict[str, Any]:
    from mabwiser.mab import LearningPolicy

    return {
        "epsilon_greedy": lambda: LearningPolicy.EpsilonGreedy(epsilon=0.1),
        "ucb1": lambda: LearningPolicy.UCB1(alpha=1.0),
        "softmax": lambda: LearningPolicy.Softmax(tau=0.1),
        "thompson": lambda: LearningPolicy.ThompsonSampling(),
        "linucb": lambda: LearningPolicy.LinUCB(alpha=1.0, l2_lambda=1.0),
        "lin_thompson": lambda: LearningPolicy.LinTS(alpha=0.5, l2_lambda=1.0),
    }


PARAMS: dict[str, dict[str, Any]] = {
    "epsilon_greedy": {"epsilon": 0.1},
    "ucb1": {"c": 2.0},
    "softmax": {"temperature": 0.1},
    "thompson": {},
    "linucb": {"d": D, "alpha": 1.0},
    "lin_thompson": {"d": D, "v": 0.5},
}


class Problem:
    """A stationary problem: Bernoulli arms, or logistic-linear arms for contextual policies."""

    def __init__(self, arms: int, contextual: bool, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.arms = [f"a{i}" for i in range(arms)]
        self.contextual = contextual
        self.means = rng.beta(1.0, 4.0, size=arms)
        self.theta = rng.normal(0, 1, size=(arms, D)) / np.sqrt(D)
        self.rng = np.random.default_rng(seed + 1)

    def context(self) -> np.ndarray | None:
        return self.rng.normal(0, 1, size=D) if self.contextual else None

    def expected(self, x: np.ndarray | None) -> np.ndarray:
        if x is None:
            return self.means
        return 1 / (1 + np.exp(-(self.theta @ x)))

    def reward(self, arm: int, x: np.ndarray | None) -> float:
        return float(self.rng.random() < self.expected(x)[arm])


def _tipml_steps(policy: Policy, problem: Problem, steps: int) -> float:
    index = {a: i for i, a in enumerate(problem.arms)}
    started = time.perf_counter()
    for _ in range(steps):
        x = problem.context()
        choice = policy.choose(x)
        policy.update(choice.arm, problem.reward(index[choice.arm], x), x)
    return (time.perf_counter() - started) / steps


def _mabwiser_steps(mab: Any, problem: Problem, steps: int) -> float:
    index = {a: i for i, a in enumerate(problem.arms)}
    started = time.perf_counter()
    for _ in range(steps):
        x = problem.context()
        if x is None:
            arm = mab.predict()
            mab.partial_fit([arm], [problem.reward(index[arm], None)])
        else:
            arm = mab.predict([x])
            mab.partial_fit([arm], [problem.reward(index[arm], x)], [x])
    return (time.perf_counter() - started) / steps


def throughput(name: str, arms: int, steps: int, blocks: int) -> dict[str, Any]:
    from mabwiser.mab import MAB

    contextual = name in ("linucb", "lin_thompson")
    problem = Problem(arms, contextual, seed=arms)
    ours = make_policy(name, problem.arms, seed=1, **PARAMS[name])
    theirs = MAB(arms=list(problem.arms), learning_policy=_mabwiser_policies()[name](), seed=1)
    warm_x = [problem.context() for _ in problem.arms]
    warm_r = [problem.reward(i, x) for i, x in enumerate(warm_x)]
    for arm, r, x in zip(problem.arms, warm_r, warm_x, strict=True):
        ours.update(arm, r, x)
    if contextual:
        theirs.fit(list(problem.arms), warm_r, np.array(warm_x))
    else:
        theirs.fit(list(problem.arms), warm_r)
    t_ours: list[float] = []
    t_theirs: list[float] = []
    per_block = max(1, steps // blocks)
    for _ in range(blocks):
        t_ours.append(_tipml_steps(ours, problem, per_block))
        t_theirs.append(_mabwiser_steps(theirs, problem, max(1, per_block // 4)))
    ours_s = float(np.median(t_ours))
    theirs_s = float(np.median(t_theirs))
    return {
        "policy": name,
        "arms": arms,
        "d": D if contextual else None,
        "tipml_steps_per_s": 1 / ours_s,
        "mabwiser_steps_per_s": 1 / theirs_s,
        "ratio": theirs_s / ours_s,
    }


def regret(name: str, horizon: int, seed: int = 0) -> list[float]:
    contextual = name in ("linucb", "lin_thompson")
    problem = Problem(10, contextual, seed=100 + seed)
    policy = make_policy(name, problem.arms, seed=seed, **PARAMS[name])
    index = {a: i for i, a in enumerate(problem.arms)}
    total, curve = 0.0, []
    for _ in range(horizon):
        x = problem.context()
        expected = problem.expected(x)
        choice = policy.choose(x)
        i = index[choice.arm]
        total += float(expected.max() - expected[i])
        policy.update(choice.arm, problem.reward(i, x), x)
        curve.append(total)
    return curve


def plot_regret(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        ax.plot(curve, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("cumulative regret vs the oracle")
    ax.set_title("10 arms: Bernoulli (context-free), logistic in a d = 20 context (linear)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="tipml steps per cell")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--arms", default="10,100,1000")
    parser.add_argument("--horizon", type=int, default=3000)
    parser.add_argument("--policies", default=",".join(PARAMS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    names = [p for p in args.policies.split(",") if p]
    rows = []
    for arms in [int(a) for a in args.arms.split(",")]:
        for name in names:
            rows.append(throughput(name, arms, args.steps, args.blocks))
            print(f"{name} x {arms}: ratio {rows[-1]['ratio']:.1f}", file=sys.stderr)
    curves = {name: regret(name, args.horizon) for name in names}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    png = out / "bandits-regret.png"
    plot_regret(curves, png)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "bench": "bandits",
        "at": stamp,
        "machine": machine(),
        "args": vars(args),
        "throughput": rows,
        "final_regret": {n: c[-1] for n, c in curves.items()},
        "regret_png": str(png.relative_to(Path(__file__).parents[1])),
    }
    for path in (out / f"bandits-{stamp}.json", out / "bandits-latest.json"):
        path.write_text(json.dumps(doc, indent=2))
    table = Table(
        "policy",
        "arms",
        "tipml steps/s",
        "MABWiser steps/s",
        "ratio",
        title="choose (+ every arm's probability) + update, same problem, same run",
    )
    for r in rows:
        table.add_row(
            r["policy"],
            str(r["arms"]),
            f"{r['tipml_steps_per_s']:,.0f}",
            f"{r['mabwiser_steps_per_s']:,.0f}",
            f"{r['ratio']:.1f}x",
        )
    Console().print(table)
    regrets = Table("policy", f"cumulative regret after {args.horizon} steps")
    for n, c in curves.items():
        regrets.add_row(n, f"{c[-1]:.1f}")
    Console().print(regrets)


if __name__ == "__main__":
    main()

"""Off-policy evaluation (issue 8, item 5), validated twice:

* in the simulator, where the true value of the target policy is known: over seeded runs the
  intervals of IPS, SNIPS and DR cover it in at least 90 % of runs;
* on real logs (Open Bandit Dataset): the uniform-random policy estimated from the Thompson
  sampling logs agrees with the click rate the random policy's own logs observed.

Plus the command's contract: JSON shape, and bad tables refused with a one-line reason.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tipml.experiments.ope import LoggedData, OPEError, evaluate, report, target_probabilities
from tipml.experiments.policies import Softmax
from tipml.sim.catalog import CATALOG
from tipml.sim.users import REACTION_REWARD, make_users

OBD = Path(__file__).parents[1] / "data" / "obd"


def simulated_log(seed: int, n: int = 1500, k: int = 8) -> tuple[LoggedData, float]:
    """Simulated users react to the top tip of a softmax(1.0) ranking (a gentle explorer)
    over a noisy model's scores; returns the log and the true value of the greedy policy on
    the same contexts."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    users = make_users(300, seed)
    start = datetime(2026, 11, 23, 5, tzinfo=UTC)
    names: dict[str, int] = {}
    ids = np.zeros((n, k), dtype=np.int64)
    scores = np.zeros((n, k))
    taken = np.zeros(n, dtype=np.int64)
    props = np.zeros(n)
    rewards = np.zeros(n)
    truth = 0.0
    logging = Softmax(1.0)
    for i in range(n):
        user = rng.choice(users)
        ts = start + timedelta(minutes=37 * i)
        tips = rng.sample(CATALOG, k)
        expected = np.array([user.expected_reward(t.category, ts) for t in tips])
        s = expected + nrng.normal(0, 0.1, size=k)  # the model: right on average, noisy
        ranking = logging.rank(s, nrng)
        a = int(ranking.order[0])
        ids[i] = [names.setdefault(t.tip_id, len(names)) for t in tips]
        scores[i], taken[i], props[i] = s, a, ranking.propensities[a]
        rewards[i] = REACTION_REWARD[user.react(tips[a].category, ts, rng)]
        truth += expected[int(np.argmax(s))]
    data = LoggedData(ids, taken, rewards, props, scores, tuple(names))
    return data, truth / n


def test_intervals_cover_the_true_value_in_the_simulator() -> None:
    runs = 40
    covered = {"ips": 0, "snips": 0, "dr": 0}
    for seed in range(runs):
        data, truth = simulated_log(seed)
        pi = target_probabilities(data, "greedy")
        est = evaluate(data, pi, estimators=list(covered), n_boot=400, seed=seed)
        for name, e in est.items():
            covered[name] += e.ci[0] <= truth <= e.ci[1]
    coverage = {name: c / runs for name, c in covered.items()}
    assert all(c >= 0.9 for c in coverage.values()), coverage


def test_uniform_from_thompson_logs_matches_the_random_logs_click_rate() -> None:
    import csv

    def table(name: str) -> LoggedData:
        rows = list(csv.DictReader((OBD / f"{name}-men.csv").open()))
        return LoggedData.from_table(
            [r["item_id"] for r in rows],
            [float(r["click"]) for r in rows],
            [float(r["propensity_score"]) for r in rows],
        )

    bts = table("bts")
    random_logs = table("random")
    assert len(bts.actions) == 34
    est = report(bts, "uniform", n_boot=1000, seed=0)["estimates"]
    observed = float(random_logs.rewards.mean())  # 0.0046 over 10,000 impressions
    for name in ("ips", "snips", "dr"):
        lo, hi = est[name]["ci"]  # type: ignore[index]
        assert lo <= observed <= hi, (name, est[name], observed)  # type: ignore[index]


def test_the_command_prints_json_and_refuses_bad_tables(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tipml", "experiments", "evaluate", *args],
            capture_output=True,
            text=True,
            env={
                "TIPML_DATA_DIR": str(tmp_path / "data"),
                "PATH": "/usr/bin:/bin",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            },
            timeout=120,
        )

    ok = run(
        str(OBD / "bts-men.csv"),
        "--action-col",
        "item_id",
        "--reward-col",
        "click",
        "--propensity-col",
        "propensity_score",
        "--estimators",
        "ips,snips",
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    body = json.loads(ok.stdout)
    assert body["n"] == 10_000
    assert set(body["estimates"]) == {"ips", "snips"}
    lo, hi = body["estimates"]["ips"]["ci"]
    assert lo <= body["estimates"]["ips"]["value"] <= hi

    bad = tmp_path / "bad.csv"
    bad.write_text("action,reward,propensity\na,1,0.5\nb,0,0\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("action,reward,propensity\n")
    cases = [
        ((str(OBD / "bts-men.csv"),), "--action-col: no column 'action'"),
        ((str(bad),), "propensities must be in (0, 1]: row 1 has 0.0"),
        ((str(empty),), "no rows"),
        ((str(tmp_path / "missing.csv"),), "no such file"),
        (
            (
                str(OBD / "bts-men.csv"),
                "--action-col",
                "item_id",
                "--reward-col",
                "click",
                "--propensity-col",
                "propensity_score",
                "--policy",
                "bogus",
            ),
            "unknown policy 'bogus'",
        ),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.returncode != 0, args
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert message in lines[0], result.stderr


def test_estimators_agree_with_hand_computed_values() -> None:
    data = LoggedData.from_table(["a", "b", "a", "b"], [1.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.8, 0.2])
    pi = target_probabilities(data, "uniform")
    est = evaluate(data, pi, estimators=["ips", "snips"], n_boot=50)
    w = np.array([0.5 / 0.5, 0.5 / 0.5, 0.5 / 0.8, 0.5 / 0.2])
    r = np.array([1.0, 0.0, 1.0, 1.0])
    assert est["ips"].value == pytest.approx(float((w * r).mean()))
    assert est["snips"].value == pytest.approx(float((w * r).sum() / w.sum()))
    with pytest.raises(OPEError, match="unknown estimator 'x'"):
        evaluate(data, pi, estimators=["x"])
    with pytest.raises(OPEError, match="at least 1 resample"):
        evaluate(data, pi, n_boot=0)
    with pytest.raises(OPEError, match=r"confidence level must be in \(0, 1\)"):
        evaluate(data, pi, level=1.5)
    with pytest.raises(OPEError, match="n-actions 1 is below the 2"):
        LoggedData.from_table(["a", "b"], [1.0, 0.0], [0.5, 0.5], n_actions=1)
    wider = LoggedData.from_table(["a", "b"], [1.0, 0.0], [0.5, 0.5], n_actions=4)
    assert target_probabilities(wider, "uniform")[0].tolist() == [0.25] * 4

"""Which experiment decides for a unit, with which propensity (issue 8, item 4)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tipml.errors import ConfigError
from tipml.experiments.config import parse_experiments
from tipml.experiments.live import PolicyView, router_for

CONFIG = parse_experiments(
    {
        "holdout": {"share": 0.1, "seed": "h"},
        "layers": {"prompts": {}},
        "experiments": {
            "ab": {
                "target": "prompt_version",
                "kind": "ab",
                "variants": ["v1", "v2"],
                "weights": [0.3, 0.7],
                "layer": "prompts",
                "range": [0, 0.5],
            },
            "bandit": {
                "target": "prompt_version",
                "kind": "bandit",
                "policy": "thompson",
                "arms": ["v1", "v2", "v3"],
                "layer": "prompts",
                "range": [0.5, 1],
            },
            "ranking": {
                "target": "score_policy",
                "kind": "ab",
                "variants": ["greedy", "epsilon_greedy:0.2"],
            },
        },
    },
    ["v1", "v2", "v3"],
)
UNITS = [f"u-{i}" for i in range(4000)]


def _router(value: str, target: str = "prompt_version", view: PolicyView | None = None):  # type: ignore[no-untyped-def]
    return router_for(
        "DEFAULT_PROMPT_VERSION",
        value,
        target,  # type: ignore[arg-type]
        CONFIG,
        view or PolicyView(),
        np.random.default_rng(0),
    )


def test_a_plain_value_is_not_an_experiment() -> None:
    assert _router("v2") is None


def test_ab_then_bandit_then_default_with_honest_propensities() -> None:
    router = _router("experiment:ab,bandit")
    assert router is not None
    seen: Counter[tuple[str | None, str | None]] = Counter()
    for unit in UNITS:
        d = router.decide(unit)
        assert d == router.decide(unit) or d.experiment == "bandit"  # A/B is sticky
        seen[(d.experiment, d.value if d.experiment == "ab" else None)] += 1
        if d.holdout:
            assert (d.value, d.experiment, d.propensity) == (None, None, None)
        elif d.experiment == "ab":
            assert d.propensity == (0.3 if d.value == "v1" else 0.7)
            assert d.policy_key is None
        else:
            assert d.experiment == "bandit"
            assert d.value in ("v1", "v2", "v3")
            assert d.policy_key == CONFIG.get("bandit").state_key
            assert 0 < (d.propensity or 0) <= 1
    n = len(UNITS)
    holdout = sum(router.decide(u).holdout for u in UNITS) / n
    assert abs(holdout - 0.1) < 0.02
    assert abs(seen[("ab", "v2")] / n - 0.9 * 0.5 * 0.7) < 0.03
    assert abs(seen[("bandit", None)] / n - 0.9 * 0.5) < 0.03


def test_the_bandit_plays_from_the_shared_state() -> None:
    view = PolicyView()
    spec = CONFIG.get("bandit")
    policy = spec.new_policy()
    for _ in range(200):  # v3 is clearly best in the stored state
        policy.update("v3", 1.0)
        policy.update("v1", 0.0)
        policy.update("v2", 0.0)
    view.replace({spec.state_key: policy.to_state()})
    router = _router("experiment:bandit", view=view)
    assert router is not None
    plays = Counter(router.decide(u).value for u in UNITS[:2000] if not CONFIG.in_holdout(u))
    assert plays["v3"] > 0.95 * sum(v for k, v in plays.items() if k is not None)


@pytest.mark.parametrize(
    ("value", "target", "message"),
    [
        ("experiment:nope", "prompt_version", "unknown experiment 'nope'"),
        ("experiment:", "prompt_version", "name at least one"),
        ("experiment:ranking", "prompt_version", "decides score_policy, not prompt_version"),
        ("experiment:ab", "score_policy", "decides prompt_version, not score_policy"),
    ],
)
def test_a_bad_setting_is_a_start_up_error_naming_it(value: str, target: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _router(value, target)

"""Reward analytics per variant (issue 8, item 6): exact counts, intervals, SRM."""

from __future__ import annotations

import random

import pytest

from tipml.experiments.config import parse_experiments
from tipml.experiments.logs import Exposure
from tipml.experiments.report import build_report, srm

CONFIG = parse_experiments(
    {
        "holdout": {"share": 0.05},
        "layers": {"p": {}},
        "experiments": {
            "ab": {
                "target": "prompt_version",
                "kind": "ab",
                "variants": ["v1", "v2"],
                "layer": "p",
                "range": [0, 0.5],
            },
            "band": {
                "target": "prompt_version",
                "kind": "bandit",
                "policy": "thompson",
                "arms": ["v1", "v2", "v3"],
                "layer": "p",
                "range": [0.5, 1],
            },
        },
    },
    ["v1", "v2", "v3"],
)


def _exposure(
    i: int,
    experiment: str | None,
    variant: str,
    reward: float,
    reactions: list[str],
    holdout: bool = False,
) -> Exposure:
    return Exposure(
        decision_id=f"d-{i}",
        kind="generate",
        user_id=f"u-{i % 400}",
        payload={
            "experiment": experiment,
            "variant": variant if experiment else None,
            "prompt_version": variant,
            "holdout": holdout,
        },
        reactions=reactions,
        reward=reward,
    )


def test_counts_are_exact_and_the_better_variant_shows() -> None:
    rng = random.Random(0)
    items = []
    truth = {"v1": 0.2, "v2": 0.5}
    for i in range(2000):
        v = "v1" if i % 2 else "v2"
        reacted = rng.random() < truth[v]
        reactions = ["completed"] if reacted else (["dismissed"] if i % 3 else [])
        if reacted and i % 10 == 0:
            reactions.append("liked")  # a second reaction: counted, not rewarded again
        items.append(_exposure(i, "ab", v, 1.0 if reacted else 0.0, reactions))
    items.append(_exposure(9000, None, "v1", 0.0, [], holdout=True))
    out = build_report(items, CONFIG)
    assert out["decisions"] == 2001
    assert out["reactions"] == sum(len(e.reactions) for e in items)
    ab = out["experiments"]["ab"]
    assert ab["exposures"] == 2000
    assert ab["control"] == "v1"
    rows = {r["name"]: r for r in ab["variants"]}
    assert rows["v1"]["exposures"] == rows["v2"]["exposures"] == 1000
    completed = sum(1 for e in items if e.payload["variant"] == "v2" and "completed" in e.reactions)
    assert rows["v2"]["reactions"]["completed"] == completed
    lo, hi = rows["v2"]["reward"]["ci"]
    assert lo < 0.5 < hi
    assert hi - lo < 0.07
    diff = rows["v2"]["diff_vs_control"]
    assert diff["ci"][0] > 0.2
    assert diff["ci"][1] < 0.4
    assert ab["srm"]["mismatch"] is False
    band = out["experiments"]["band"]
    assert band["exposures"] == 0
    assert band["control"] == "holdout"
    versions = {r["name"]: r for r in out["prompt_versions"]}
    assert versions["v1"]["exposures"] == 1001  # the holdout's v1 too


def test_a_broken_split_is_flagged() -> None:
    assert srm([500, 500], [0.5, 0.5])["mismatch"] is False  # type: ignore[index]
    broken = srm([5000, 4600], [0.5, 0.5])
    assert broken is not None
    assert broken["mismatch"] is True
    assert broken["p_value"] == pytest.approx(4.4e-5, rel=0.1)
    assert srm([0, 0], [0.5, 0.5]) is None

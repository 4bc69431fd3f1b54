"""Sticky assignment bit-compatible with GrowthBook (issue 8, item 1): 10,000 ids, several
experiment shapes, the same variant (and bucket) as GrowthBook's own Python SDK."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from growthbook import Experiment as GBExperiment
from growthbook import GrowthBook

from tipml.errors import ConfigError
from tipml.experiments.assignment import HOLDOUT, Experiment, Namespace, assign, fnv1a32
from tipml.experiments.config import load_experiments, packaged_experiments, parse_experiments
from tipml.serving.prompts import known_versions

IDS = [f"user-{i}" for i in range(9_990)] + [
    "é",
    "ü-42",
    "日本",
    "😀",
    "a b",
    "",
    "0",
    "-",
    "x" * 300,
    "ß",
]

SHAPES = [
    Experiment("prompt-version", ("v1", "v2")),
    Experiment("weighted", ("a", "b", "c"), weights=(0.5, 0.3, 0.2), seed="s-2026"),
    Experiment("partial", ("a", "b"), coverage=0.4),
    Experiment("layered", ("a", "b"), namespace=Namespace("layer-1", 0.25, 0.75)),
]


def _sdk(exp: Experiment, unit: str) -> tuple[str | None, float | None, bool]:
    gb = GrowthBook(attributes={"id": unit})
    result = gb.run(
        GBExperiment(
            key=exp.key,
            variations=list(exp.variants),
            weights=list(exp.weights) if exp.weights else None,
            coverage=exp.coverage,
            seed=exp.seed or exp.key,
            hashVersion=2,
            namespace=(exp.namespace.layer, exp.namespace.start, exp.namespace.end)
            if exp.namespace
            else None,
        )
    )
    in_exp = bool(result.inExperiment)
    return (result.value if in_exp else None), (result.bucket if in_exp else None), in_exp


@pytest.mark.parametrize("exp", SHAPES, ids=lambda e: e.key)
def test_the_same_assignment_as_the_growthbook_sdk_for_10000_ids(exp: Experiment) -> None:
    mismatches = []
    for unit in IDS:
        if unit == "":
            continue  # GrowthBook skips units without an id; so does our caller
        ours = assign(exp, unit)
        theirs = _sdk(exp, unit)
        if (
            ours.variant,
            ours.bucket if ours.in_experiment else None,
            ours.in_experiment,
        ) != theirs:
            mismatches.append((unit, ours, theirs))
    assert mismatches == []


def test_weights_coverage_and_layers_split_traffic_as_configured() -> None:
    units = IDS[:9_990]
    weighted = Counter(assign(SHAPES[1], u).variant for u in units)
    assert abs(weighted["a"] / len(units) - 0.5) < 0.02
    assert abs(weighted["c"] / len(units) - 0.2) < 0.02
    partial = sum(assign(SHAPES[2], u).in_experiment for u in units) / len(units)
    assert abs(partial - 0.4) < 0.02
    other_half = Experiment("other", ("x", "y"), namespace=Namespace("layer-1", 0.75, 1.0))
    for u in units:  # one layer: disjoint slices never share a unit
        assert not (assign(SHAPES[3], u).in_experiment and assign(other_half, u).in_experiment)


def test_a_new_seed_reshuffles_only_that_experiment() -> None:
    before = [assign(SHAPES[0], u).variant for u in IDS[:2000]]
    reseeded = Experiment("prompt-version", ("v1", "v2"), seed="new-seed")
    after = [assign(reseeded, u).variant for u in IDS[:2000]]
    assert 0.4 < sum(a != b for a, b in zip(before, after, strict=True)) / 2000 < 0.6
    assert [assign(SHAPES[1], u).variant for u in IDS[:2000]] == [
        assign(SHAPES[1], u).variant for u in IDS[:2000]
    ]


def test_fnv1a_reference_values() -> None:
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("") == 0x811C9DC5


def test_bad_experiments_name_the_key() -> None:
    with pytest.raises(ConfigError, match="'e1': weights must sum to 1"):
        Experiment("e1", ("a", "b"), weights=(0.6, 0.6))
    with pytest.raises(ConfigError, match="'e2': variants"):
        Experiment("e2", ("a",))


# -- the recommender's side: @growthbook/growthbook computes the same (clients/typescript) ----

FIXTURE = Path(__file__).parents[2] / "clients/typescript/test/fixtures/assignments.json"
EXTRA_IDS = IDS[9_990:]


def _fixture_now() -> dict[str, object]:
    """Every packaged experiment (and the holdout) as GrowthBook definitions, with the
    variation index tipml assigns to each of 10,000 ids (``-`` when not in the experiment)."""
    config = load_experiments(packaged_experiments(), known_versions())
    definitions = config.growthbook()
    experiments = {**{n: s.experiment for n, s in config.experiments.items()}}
    assert config.holdout is not None
    experiments[HOLDOUT] = config.holdout
    expected = {}
    for name, exp in experiments.items():
        marks = []
        for unit in IDS:
            result = assign(exp, unit)
            marks.append("-" if result.variation_id is None else str(result.variation_id))
        expected[name] = "".join(marks)
    return {
        "ids": {"prefix": "user-", "count": 9_990, "extra": EXTRA_IDS},
        "experiments": definitions,
        "expected": expected,
    }


def test_the_typescript_fixture_is_what_tipml_assigns_today() -> None:
    """``clients/typescript/test/growthbook.test.ts`` runs GrowthBook's JavaScript SDK over
    this fixture; here the fixture is checked against tipml's own assignment of the packaged
    experiments. ``TIPML_WRITE_FIXTURES=1`` rewrites it after a change of the packaged file."""
    now = _fixture_now()
    if os.environ.get("TIPML_WRITE_FIXTURES") == "1":
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(now, ensure_ascii=False) + "\n")
    stored = json.loads(FIXTURE.read_text())
    assert stored == now


def test_the_holdout_keeps_its_share_out_of_every_experiment() -> None:
    config = parse_experiments(
        {
            "holdout": {"share": 0.1, "seed": "h"},
            "experiments": {
                "e": {"target": "prompt_version", "kind": "ab", "variants": ["v1", "v2"]}
            },
        },
        ["v1", "v2"],
    )
    units = IDS[:9_990]
    held = [u for u in units if config.in_holdout(u)]
    assert abs(len(held) / len(units) - 0.1) < 0.015
    for u in held[:200]:
        a = config.assign("e", u)
        assert (a.holdout, a.in_experiment, a.variant) == (True, False, None)
    outside = next(u for u in units if not config.in_holdout(u))
    assert config.assign("e", outside).in_experiment
    with pytest.raises(ConfigError, match=r"holdout\.share"):
        parse_experiments({"holdout": {"share": 1.5}}, ["v1"])
    with pytest.raises(ConfigError, match="reserved"):
        parse_experiments(
            {
                "experiments": {
                    "holdout": {"target": "prompt_version", "kind": "ab", "variants": ["v1", "v2"]}
                }
            },
            ["v1", "v2"],
        )

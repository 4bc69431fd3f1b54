"""The experiments file (issue 8, item 1): the packaged default, and a bad key refused at
start-up with a message naming it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import make_settings
from tipml.errors import ConfigError
from tipml.experiments.config import load_experiments, parse_experiments
from tipml.serving.app import create_app
from tipml.serving.prompts import known_versions
from tipml.settings import DEFAULT_EXPERIMENTS_CONFIG

VERSIONS = known_versions()


def test_the_packaged_file_has_the_prompt_experiments_in_disjoint_slices() -> None:
    config = load_experiments(DEFAULT_EXPERIMENTS_CONFIG, VERSIONS)
    ab, bandit = config.get("prompt-version"), config.get("prompt-bandit")
    assert ab.kind == "ab"
    assert ab.experiment.variants == ("v1", "v2")
    assert (bandit.kind, bandit.policy, bandit.arms) == ("bandit", "thompson", ("v1", "v2", "v3"))
    units = [f"u{i}" for i in range(4000)]
    in_ab = {u for u in units if ab.assign(u).in_experiment}
    in_bandit = {u for u in units if bandit.assign(u).in_experiment}
    assert not in_ab & in_bandit
    assert 0.45 < len(in_ab) / 4000 < 0.55
    assert 0.45 < len(in_bandit) / 4000 < 0.55
    assert all(bandit.assign(u).variant is None for u in in_bandit)  # the policy picks


def _ab(**overrides: Any) -> dict[str, Any]:
    entry = {"target": "prompt_version", "kind": "ab", "variants": ["v1", "v2"], **overrides}
    return {"layers": {"l": {}}, "experiments": {"e": entry}}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_ab(weights=[0.7, 0.7]), "experiments.e.weights"),
        (_ab(variants=["v1", "v9"]), "experiments.e.variants: unknown prompt version 'v9'"),
        (_ab(colour="red"), "experiments.e.colour: unknown key"),
        (_ab(kind="mab"), "experiments.e.kind"),
        (_ab(layer="nope"), "experiments.e.layer: unknown layer 'nope'"),
        (
            {
                "layers": {"l": {}},
                "experiments": {
                    "a": {**_ab()["experiments"]["e"], "layer": "l", "range": [0, 0.6]},
                    "b": {**_ab()["experiments"]["e"], "layer": "l", "range": [0.5, 1]},
                },
            },
            "experiments.b.range: overlaps 'a' in layer 'l'",
        ),
        (
            {
                "experiments": {
                    "b": {
                        "target": "prompt_version",
                        "kind": "bandit",
                        "policy": "greedyish",
                        "arms": ["v1", "v2"],
                    }
                }
            },
            "experiments.b.policy: unknown policy 'greedyish'",
        ),
        (
            {
                "experiments": {
                    "b": {
                        "target": "prompt_version",
                        "kind": "bandit",
                        "policy": "thompson",
                        "arms": ["v1", "v7"],
                    }
                }
            },
            "experiments.b.arms: unknown prompt version 'v7'",
        ),
        (
            {
                "experiments": {
                    "b": {
                        "target": "score_policy",
                        "kind": "ab",
                        "variants": ["greedy", "random_walk:3"],
                    }
                }
            },
            "experiments.b.variants: unknown score policy 'random_walk:3'",
        ),
    ],
)
def test_a_bad_key_is_refused_by_name(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_experiments(doc, VERSIONS)


def test_start_up_refuses_a_bad_experiments_file(tmp_path: Path) -> None:
    bad = tmp_path / "experiments.yaml"
    bad.write_text(yaml.safe_dump(_ab(weights=[0.2, 0.2])))
    settings = make_settings(tmp_path, experiments_config=bad, local_llm="off")
    with pytest.raises(ConfigError, match=re.escape("experiments.e.weights")):
        create_app(settings)


def test_cli_assign_prints_the_assignment_as_json() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tipml",
            "experiments",
            "assign",
            "prompt-version",
            "user-1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"experiment", "variant", "bucket", "in_experiment", "holdout"}
    assert out["experiment"] == "prompt-version"
    assert out["variant"] in ("v1", "v2")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"default_prompt_version": "experiment:nope"},
            "DEFAULT_PROMPT_VERSION: unknown experiment 'nope'",
        ),
        (
            {"score_policy": "experiment:prompt-version"},
            "TIPML_SCORE_POLICY: experiment 'prompt-version' decides prompt_version",
        ),
        (
            {"score_policy": "epsilon_greedy:1.5"},
            r"TIPML_SCORE_POLICY: epsilon_greedy: ε must be in \[0, 1\]",
        ),
        ({"score_policy": "random"}, "TIPML_SCORE_POLICY: unknown score policy 'random'"),
    ],
)
def test_a_bad_experiment_setting_stops_start_up_naming_it(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app(make_settings(tmp_path, **overrides))

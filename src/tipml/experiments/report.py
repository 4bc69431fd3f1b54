"""Reward analytics per experiment variant and per prompt version. Pure: exposures in, a JSON
document out (``tipml experiments report``, ``GET /experiments/report``).

For each group (a variant of an experiment, or a prompt version):

* ``exposures`` — decisions logged (each once), ``units`` — distinct users among them;
* ``reactions`` — reaction events by type (each once);
* ``reward`` — mean reward per exposure (first reaction's reward; none → 0) with a 95 %
  Bayesian interval: the posterior of the mean under a Beta(1, 1) prior, the rewards (in
  [0, 1]) counted as fractional successes — for 0/1 rewards exactly the Beta-Binomial
  posterior;
* ``diff`` — against the control (an A/B test's first variant, the holdout for a bandit,
  v1 for prompt versions): difference of the means with a 95 % normal interval from the two
  groups' sample variances.

An A/B experiment also gets a sample-ratio-mismatch check: chi-square of the units per
variant against the configured weights (p < 0.001 means the split is broken, not the
variant better). Bandits move traffic on purpose and get none.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from tipml.experiments.config import ExperimentsConfig
from tipml.experiments.logs import Exposure

LEVEL = 0.95
SRM_ALPHA = 0.001


@dataclass
class Group:
    rewards: list[float] = field(default_factory=list)
    units: set[str] = field(default_factory=set)
    reactions: Counter[str] = field(default_factory=Counter)

    def add(self, e: Exposure) -> None:
        self.rewards.append(e.reward)
        if e.user_id:
            self.units.add(e.user_id)
        self.reactions.update(e.reactions)

    @property
    def n(self) -> int:
        return len(self.rewards)

    @property
    def mean(self) -> float:
        return sum(self.rewards) / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        if self.n < 2:
            return 0.25  # the largest a [0, 1] reward can have
        m = self.mean
        return sum((r - m) ** 2 for r in self.rewards) / (self.n - 1)

    def summary(self) -> dict[str, Any]:
        s = sum(self.rewards)
        lo, hi = stats.beta.ppf([(1 - LEVEL) / 2, (1 + LEVEL) / 2], 1 + s, 1 + self.n - s)
        return {
            "exposures": self.n,
            "units": len(self.units),
            "reactions": dict(sorted(self.reactions.items())),
            "reward": {"mean": self.mean, "ci": [float(lo), float(hi)]},
        }


def _diff(group: Group, control: Group) -> dict[str, Any] | None:
    if group.n == 0 or control.n == 0:
        return None
    d = group.mean - control.mean
    se = math.sqrt(group.variance / group.n + control.variance / control.n)
    z = stats.norm.ppf((1 + LEVEL) / 2)
    return {"mean": d, "ci": [d - z * se, d + z * se]}


def _groups(items: Iterable[Exposure], key: Any) -> dict[str, Group]:
    out: dict[str, Group] = {}
    for e in items:
        k = key(e)
        if k is not None:
            out.setdefault(str(k), Group()).add(e)
    return out


def _table(groups: Mapping[str, Group], order: Sequence[str], control: str | None) -> list[Any]:
    rows = []
    base = groups.get(control) if control else None
    for name in [*order, *sorted(set(groups) - set(order))]:
        g = groups.get(name, Group())
        row = {"name": name, **g.summary()}
        if base is not None and name != control:
            row["diff_vs_control"] = _diff(g, base)
        rows.append(row)
    return rows


def srm(units: Sequence[int], weights: Sequence[float]) -> dict[str, Any] | None:
    total = sum(units)
    if total == 0:
        return None
    expected = [w * total for w in weights]
    chi2, p = stats.chisquare(units, expected)
    return {"chi2": float(chi2), "p_value": float(p), "mismatch": bool(p < SRM_ALPHA)}


def build_report(items: Sequence[Exposure], config: ExperimentsConfig) -> dict[str, Any]:
    experiments: dict[str, Any] = {}
    holdout = _groups(
        (e for e in items if e.payload.get("holdout")), lambda e: e.kind
    )  # per decision kind
    for name, spec in config.experiments.items():
        mine = [e for e in items if e.payload.get("experiment") == name]
        groups = _groups(mine, lambda e: e.payload.get("variant"))
        kind = "generate" if spec.target == "prompt_version" else "score"
        control: str | None
        if spec.kind == "ab":
            variants = list(spec.experiment.variants)
            control = variants[0]
        else:
            variants = list(spec.arms)
            control = "holdout" if kind in holdout else None
            if control:
                groups = {**groups, "holdout": holdout[kind]}
        entry: dict[str, Any] = {
            "target": spec.target,
            "kind": spec.kind,
            "control": control,
            "exposures": sum(g.n for name_, g in groups.items() if name_ != "holdout"),
            "variants": _table(groups, variants, control),
        }
        if spec.kind == "ab":
            weights = spec.experiment.weights or [1 / len(variants)] * len(variants)
            entry["srm"] = srm([len(groups.get(v, Group()).units) for v in variants], weights)
        else:
            entry["policy"] = spec.policy
        experiments[name] = entry
    generated = [e for e in items if e.kind == "generate"]
    versions = _groups(generated, lambda e: e.payload.get("prompt_version"))
    return {
        "decisions": len(items),
        "reactions": sum(len(e.reactions) for e in items),
        "experiments": experiments,
        "prompt_versions": _table(versions, sorted(versions), "v1" if "v1" in versions else None),
    }

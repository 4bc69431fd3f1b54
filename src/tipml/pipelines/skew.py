"""The skew check: rebuild, from the decision log alone, the feature matrix each ``/score``
decision was scored with, and compare its hash with the one serving logged.

The rebuild uses the very definitions serving uses (``features.tip_features``): the
validated profile features, the local hour, each candidate's category, source and tags, and
the tip aggregates as serving saw them at decision time (logged per candidate) — never a
value from after the decision. A mismatch means serving and training would see different
features for the same decision: a definition changed, a field is not logged, or a value is
computed differently offline. The training-set builder refuses to train on a log with
mismatches. Pure, given the decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tipml.domain.tips import TipStats
from tipml.errors import TipmlError
from tipml.features.profile_schema import validate_profile
from tipml.features.tip_features import (
    FEATURE_SET,
    Candidate,
    feature_hash,
    feature_matrix,
    hash_scheme,
)


def rebuild_matrix(decision: Mapping[str, Any]) -> npt.NDArray[np.float64]:
    """The feature matrix of a logged ``/score`` decision, from the log alone."""
    candidates = []
    stats: dict[str, TipStats] = {}
    for c in decision["candidates"]:
        candidates.append(
            Candidate(c["tip_id"], c.get("category"), tuple(c.get("tags", ())), c["source"])
        )
        stats[c["tip_id"]] = TipStats(int(c["tip_impressions"]), float(c["tip_reward_sum"]))
    profile = validate_profile(decision.get("profile_features") or {})
    online = decision.get("user_online") or {}
    return feature_matrix(candidates, profile, int(decision["local_hour"]), stats, online)


@dataclass
class SkewReport:
    decisions: int = 0  # /score decisions seen
    checked: int = 0  # of those, logged with a feature hash under the current column set
    other_feature_set: int = 0  # logged under another column set: not comparable
    mismatches: int = 0
    examples: list[str] = field(default_factory=list)  # decision ids, at most 10

    @property
    def rate(self) -> float:
        return self.mismatches / self.checked if self.checked else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "checked": self.checked,
            "mismatches": self.mismatches,
            "other_feature_set": self.other_feature_set,
            "mismatch_rate": self.rate,
            "examples": self.examples,
        }


def skew_report(decisions: Iterable[Mapping[str, Any]]) -> SkewReport:
    report = SkewReport()
    for d in decisions:
        if d.get("kind") != "score":
            continue
        report.decisions += 1
        logged = d.get("feature_hash")
        if not logged:
            continue  # logged before serving hashed its features
        if d.get("feature_set") != FEATURE_SET:
            report.other_feature_set += 1  # columns added or changed since: not comparable
            continue
        report.checked += 1
        try:
            rebuilt = feature_hash(rebuild_matrix(d), hash_scheme(str(logged)))
        except (KeyError, TypeError, ValueError, TipmlError):
            rebuilt = None
        if rebuilt != logged:
            report.mismatches += 1
            if len(report.examples) < 10:
                report.examples.append(str(d.get("decision_id")))
    return report

"""Shadow vs champion on live traffic, from the decision log alone.

Every ``/score`` decision made while a shadow was loaded logs the shadow's scores of the same
feature matrix (``shadow.scores``, candidate order) next to the champion's. The report, per
shadow version: how often both would put the same tip first (top-1 agreement), the mean
Spearman correlation of the two rankings, and the off-policy value (DR and SNIPS with
bootstrap intervals) of ranking by the shadow vs the champion's logged ranking — on exactly
the decisions the shadow saw. Pure, given the exposures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from tipml.errors import TipmlError
from tipml.experiments import ope
from tipml.experiments.logs import Exposure


def shadow_report(items: Sequence[Exposure], *, n_boot: int = 500, seed: int = 0) -> dict[str, Any]:
    by_version: dict[str, list[Exposure]] = {}
    for e in items:
        shadow = e.payload.get("shadow") if e.kind == "score" else None
        if shadow and shadow.get("scores"):
            by_version.setdefault(str(shadow["model_version"]), []).append(e)
    if not by_version:
        raise TipmlError("no /score decision in the log was shadow-scored")
    out: dict[str, Any] = {}
    for version, rows in by_version.items():
        out[version] = _compare(rows, n_boot, seed)
    return out


def _compare(rows: Sequence[Exposure], n_boot: int, seed: int) -> dict[str, Any]:
    names: dict[str, int] = {}
    width = max(len(e.payload["candidates"]) for e in rows)
    n = len(rows)
    ids = np.full((n, width), -1, dtype=np.int64)
    champion = np.full((n, width), np.nan)
    shadow = np.full((n, width), np.nan)
    taken = np.zeros(n, dtype=np.int64)
    props = np.ones(n)
    corr = []
    for i, e in enumerate(rows):
        cands = e.payload["candidates"]
        s = e.payload["shadow"]["scores"]
        for j, c in enumerate(cands):
            ids[i, j] = names.setdefault(str(c["tip_id"]), len(names))
            champion[i, j] = float(c["score"])
            shadow[i, j] = float(s[j])
            if int(c["rank"]) == 1:
                taken[i] = j
                props[i] = float(c.get("propensity", 1.0))
        if len(cands) >= 2:
            rho = spearmanr(champion[i, : len(cands)], shadow[i, : len(cands)]).statistic
            if rho == rho:
                corr.append(float(rho))
    rewards = np.array([e.reward for e in rows])
    logged = ope.LoggedData(ids, taken, rewards, props, champion, tuple(names))
    shadowed = ope.LoggedData(ids, taken, rewards, props, shadow, tuple(names))
    pi_champion = ope.target_probabilities(logged, "greedy")
    pi_shadow = ope.target_probabilities(shadowed, "greedy")
    est = ("snips", "dr")
    return {
        "decisions": n,
        "logged_reward": float(rewards.mean()),
        "top1_agreement": float((pi_shadow.argmax(1) == pi_champion.argmax(1)).mean()),
        "rank_correlation": float(np.mean(corr)) if corr else None,
        "shadow": {
            k: v.as_dict()
            for k, v in ope.evaluate(
                logged, pi_shadow, estimators=est, n_boot=n_boot, seed=seed
            ).items()
        },
        "champion": {
            k: v.as_dict()
            for k, v in ope.evaluate(
                logged, pi_champion, estimators=est, n_boot=n_boot, seed=seed
            ).items()
        },
        "champion_versions": sorted({str(e.payload.get("model_version")) for e in rows}),
    }

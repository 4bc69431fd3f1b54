"""Evaluation gates: is a trained model good enough, fair enough and better than the champion?

On the held-out decisions — the latest ``holdout`` share by decision time, never a random
split — it measures:

* **offline metrics** of the predicted reward against the logged reward: AUC (reward ≥
  ``POSITIVE_REWARD`` is a positive), log loss (cross-entropy with the reward as the soft
  label), expected calibration error (``ECE_BINS`` equal-width bins) and NDCG@k per user
  (each user's held-out tips ranked by the model, the rewards as gains);
* **fairness**: the same metrics per cohort (platform, region, tenure) with fairlearn's
  ``MetricFrame``; the gap of a metric is its largest between-group difference over groups with
  at least ``min_group_rows`` rows;
* **off-policy value** of "rank by this model" (greedy) against the champion's logged ranking,
  both with the experiments' DR estimator and bootstrap intervals on the same rows, and their
  difference with a paired bootstrap interval: the gate refuses a model that is confidently
  worse (the interval's upper end below ``-ope_tolerance``), not one that is merely not yet
  proven better on a few hundred decisions — that is what the shadow is for.

``gates`` turns them into pass/fail with margins. A model that fails any gate is not
registered; the report names the gate and by how much.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from tipml.errors import TipmlError
from tipml.experiments import ope
from tipml.pipelines.dataset import POSITIVE_REWARD, TrainingSet
from tipml.pipelines.skew import rebuild_matrix

Vector = npt.NDArray[np.float64]
ECE_BINS = 10
_EPS = 1e-7


# -- metrics (pure) ----------------------------------------------------------------------


def auc(y: Vector, p: Vector) -> float:
    """Area under the ROC curve of ``p`` for ``y ≥ POSITIVE_REWARD`` (Mann-Whitney, ties
    averaged); NaN when only one class is present."""
    pos = y >= POSITIVE_REWARD
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y: Vector, p: Vector) -> float:
    q = np.clip(p, _EPS, 1 - _EPS)
    return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean()) if len(y) else math.nan


def ece(y: Vector, p: Vector, bins: int = ECE_BINS) -> float:
    """Expected calibration error: Σ_bins (rows in bin / rows) · |mean reward - mean p|."""
    if not len(y):
        return math.nan
    idx = np.minimum((np.clip(p, 0, 1) * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    gap = np.abs(
        np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=p, minlength=bins)
    )
    return float(gap.sum() / counts.sum())


def ndcg_at_k(groups: Sequence[str], y: Vector, p: Vector, k: int = 5) -> float:
    """Mean NDCG@k over groups (users) with ≥ 2 rows and some gain; NaN if there are none."""
    by: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for rows in by.values():
        if len(rows) < 2:
            continue
        gains = y[rows]
        ideal = np.sort(gains)[::-1][:k]
        best = float((ideal * discounts[: len(ideal)]).sum())
        if best <= 0:
            continue
        got = gains[np.argsort(-p[rows], kind="mergesort")][:k]
        values.append(float((got * discounts[: len(got)]).sum()) / best)
    return float(np.mean(values)) if values else math.nan


METRICS: Mapping[str, Callable[[Vector, Vector], float]] = {
    "auc": auc,
    "log_loss": log_loss,
    "ece": ece,
}


# -- configuration and report ------------------------------------------------------------


@dataclass(frozen=True)
class GateConfig:
    holdout: float = 0.2  # the latest share of decisions held out
    ndcg_k: int = 5
    min_auc: float = 0.55
    max_log_loss: float = 0.69  # a coin flip's is ln 2
    max_ece: float = 0.1
    max_gap: Mapping[str, float] = field(
        default_factory=lambda: {"auc": 0.2, "log_loss": 0.25, "ece": 0.15}
    )
    min_group_rows: int = 100  # smaller groups are reported, not gated (too noisy)
    ope_tolerance: float = 0.0  # challenger DR ≥ champion DR - this
    ope_max_decisions: int = 20_000  # the latest held-out decisions OPE reads back
    n_boot: int = 300
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["max_gap"] = dict(self.max_gap)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GateConfig:
        """Defaults overridden by ``raw`` (``tipml train --gates``, a deployment's JSON);
        an unknown key is refused by name."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise TipmlError(f"gates: unknown key(s) {unknown}; known: {sorted(names)}")
        return cls(**dict(raw))


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    threshold: float
    passed: bool
    higher_is_better: bool

    @property
    def margin(self) -> float:
        """How far inside (positive) or outside (negative) the threshold the value is."""
        d = self.value - self.threshold
        return d if self.higher_is_better else -d

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "margin": self.margin}

    def describe(self) -> str:
        op = "≥" if self.higher_is_better else "≤"
        return (
            f"{self.name} = {self.value:.4f}, needs {op} {self.threshold:.4f} "
            f"(off by {-self.margin:.4f})"
        )


@dataclass
class EvaluationReport:
    rows: dict[str, int]
    metrics: dict[str, float]
    champion_metrics: dict[str, float]
    fairness: dict[str, dict[str, dict[str, float]]]  # cohort -> group -> metric/rows
    gaps: dict[str, dict[str, float]]  # cohort -> metric -> gap
    ope: dict[str, Any]
    gates: list[Gate]
    config: GateConfig

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]

    def reason(self) -> str:
        return "; ".join(g.describe() for g in self.failed) or "all gates passed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason(),
            "rows": self.rows,
            "metrics": self.metrics,
            "champion_metrics": self.champion_metrics,
            "fairness": self.fairness,
            "gaps": self.gaps,
            "ope": self.ope,
            "gates": [g.as_dict() for g in self.gates],
            "config": self.config.as_dict(),
        }


# -- the evaluation ----------------------------------------------------------------------


def time_split(ts: TrainingSet, holdout: float) -> tuple[npt.NDArray[np.bool_], float]:
    """Rows before the cut train, rows at or after it are held out; the cut is the decision
    time below which ``1 - holdout`` of the decisions fall."""
    times = np.sort(np.unique(ts.ts))
    cut = float(times[min(len(times) - 1, int(len(times) * (1 - holdout)))])
    return ts.ts < cut, cut


def _metrics(y: Vector, p: Vector, users: Sequence[str], k: int) -> dict[str, float]:
    out = {name: fn(y, p) for name, fn in METRICS.items()}
    out[f"ndcg@{k}"] = ndcg_at_k(users, y, p, k)
    out["mean_reward"] = float(y.mean())
    out["mean_prediction"] = float(p.mean())
    return out


def fairness_table(
    y: Vector, p: Vector, cohorts: Mapping[str, Sequence[str]], min_rows: int
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, float]]]:
    from fairlearn.metrics import MetricFrame, count

    table: dict[str, dict[str, dict[str, float]]] = {}
    gaps: dict[str, dict[str, float]] = {}
    for cohort, values in cohorts.items():
        frame = MetricFrame(
            metrics={**METRICS, "rows": count},
            y_true=y,
            y_pred=p,
            sensitive_features=np.asarray(values, dtype=object),
        )
        by = frame.by_group
        table[cohort] = {
            str(group): {m: float(by.loc[group, m]) for m in by.columns} for group in by.index
        }
        big = by[by["rows"] >= min_rows]
        gaps[cohort] = {}
        for metric in METRICS:
            col = big[metric].dropna()
            gaps[cohort][metric] = float(col.max() - col.min()) if len(col) >= 2 else 0.0
    return table, gaps


def _logged(decisions: Sequence[Mapping[str, Any]], rewards: Sequence[float]) -> ope.LoggedData:
    names: dict[str, int] = {}
    width = max(len(d["candidates"]) for d in decisions)
    n = len(decisions)
    ids = np.full((n, width), -1, dtype=np.int64)
    scores = np.full((n, width), np.nan)
    taken = np.zeros(n, dtype=np.int64)
    props = np.ones(n)
    for i, d in enumerate(decisions):
        for j, c in enumerate(d["candidates"]):
            ids[i, j] = names.setdefault(str(c["tip_id"]), len(names))
            scores[i, j] = float(c.get("score", np.nan))
            if int(c["rank"]) == 1:
                taken[i] = j
                props[i] = float(c.get("propensity", 1.0))
    return ope.LoggedData(
        ids=ids,
        taken=taken,
        rewards=np.asarray(rewards, dtype=np.float64),
        propensities=props,
        scores=scores,
        actions=tuple(names),
    )


def ope_versus_champion(
    decisions: Sequence[Mapping[str, Any]],
    rewards: Sequence[float],
    predict: Callable[[npt.NDArray[np.float64]], Vector],
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """DR (and SNIPS) value of ranking by ``predict`` vs the champion's logged ranking, on the
    same logged decisions, each with a bootstrap interval."""
    logged = _logged(decisions, rewards)
    champion_pi = ope.target_probabilities(logged, "greedy")
    challenger_scores = np.full(logged.scores.shape, np.nan)
    for i, d in enumerate(decisions):
        s = predict(rebuild_matrix(d))
        challenger_scores[i, : len(s)] = s
    challenger = ope.LoggedData(
        ids=logged.ids,
        taken=logged.taken,
        rewards=logged.rewards,
        propensities=logged.propensities,
        scores=challenger_scores,
        actions=logged.actions,
    )
    challenger_pi = ope.target_probabilities(challenger, "greedy")
    est = ("snips", "dr")
    ch = ope.evaluate(logged, challenger_pi, estimators=est, n_boot=n_boot, seed=seed)
    champ = ope.evaluate(logged, champion_pi, estimators=est, n_boot=n_boot, seed=seed)
    agree = float((challenger_pi.argmax(axis=1) == champion_pi.argmax(axis=1)).mean())
    diff = ope.difference(logged, challenger_pi, champion_pi, n_boot=n_boot, seed=seed)
    return {
        "difference_dr": diff.as_dict(),
        "decisions": logged.n,
        "logged_reward": float(logged.rewards.mean()),
        "top1_agreement": agree,
        "challenger": {k: v.as_dict() for k, v in ch.items()},
        "champion": {k: v.as_dict() for k, v in champ.items()},
    }


def evaluate_model(
    ts: TrainingSet,
    predict: Callable[[npt.NDArray[np.float64]], Vector],
    test: npt.NDArray[np.bool_],
    config: GateConfig = GateConfig(),
) -> EvaluationReport:
    """Metrics, fairness and OPE on the held-out rows ``test`` of ``ts``; gates applied."""
    y, x = ts.y[test], ts.x[test]
    p = predict(x)
    users = [u for u, t in zip(ts.users, test, strict=True) if t]
    k = config.ndcg_k
    metrics = _metrics(y, p, users, k)
    held = list(dict.fromkeys(np.asarray(ts.decision_ids)[test].tolist()))  # time order
    held = held[-config.ope_max_decisions :]
    pairs = [(d, ts.decision_labels[d["decision_id"]]) for d in ts.load_decisions(held)]
    champion_scores = []
    for d in (d for d, _ in pairs):
        top = min(d["candidates"], key=lambda c: int(c["rank"]))
        champion_scores.append(float(top.get("score", np.nan)))
    champion_metrics = {
        "auc": auc(np.asarray([r for _, r in pairs]), np.asarray(champion_scores)),
    }
    cohorts = {
        name: [v for v, t in zip(col, test, strict=True) if t] for name, col in ts.cohorts.items()
    }
    fairness, gaps = fairness_table(y, p, cohorts, config.min_group_rows)
    ope_report = ope_versus_champion(
        [d for d, _ in pairs],
        [r for _, r in pairs],
        predict,
        n_boot=config.n_boot,
        seed=config.seed,
    )
    gates = [
        Gate("auc", metrics["auc"], config.min_auc, metrics["auc"] >= config.min_auc, True),
        Gate(
            "log_loss",
            metrics["log_loss"],
            config.max_log_loss,
            metrics["log_loss"] <= config.max_log_loss,
            False,
        ),
        Gate("ece", metrics["ece"], config.max_ece, metrics["ece"] <= config.max_ece, False),
    ]
    for cohort, by_metric in gaps.items():
        for metric, gap in by_metric.items():
            limit = config.max_gap.get(metric)
            if limit is not None:
                gates.append(Gate(f"{metric} gap by {cohort}", gap, limit, gap <= limit, False))
    # refused only when confidently worse: the paired interval's upper end below -tolerance
    upper = ope_report["difference_dr"]["ci"][1]
    gates.append(
        Gate(
            "ope dr vs champion (upper 95% bound of the difference)",
            upper,
            -config.ope_tolerance,
            upper >= -config.ope_tolerance,
            True,
        )
    )
    return EvaluationReport(
        rows={"train": int((~test).sum()), "test": int(test.sum())},
        metrics=metrics,
        champion_metrics=champion_metrics,
        fairness=fairness,
        gaps=gaps,
        ope=ope_report,
        gates=gates,
        config=config,
    )

"""Off-policy evaluation: what would a target policy have earned on the logged traffic?

The log is one row per decision: the candidates it had (their action ids and, where logged,
their scores), the action taken, the probability the logging policy gave that action (the
logged propensity) and the reward that followed. The target policy gives every row a
distribution over its candidates (``target_probabilities``). Four estimators
(Dudík, Langford & Li 2011; Swaminathan & Joachims 2015):

* ``ips``   — inverse propensity scoring: mean of w·r with w = π(a|x) / p(a|x). Unbiased.
* ``snips`` — self-normalised IPS: Σ w·r / Σ w. Slightly biased, far less variance.
* ``dm``    — direct method: mean over rows of Σ_a π(a|x) q̂(a), with q̂ the mean reward of
  each action, shrunk toward the overall mean by one pseudo-observation and cross-fitted
  (rows alternate between two halves; each half's q̂ comes from the other). It ignores context:
  where the reward depends on the user, DM is biased (the simulator check shows it) and DR
  is the one to trust.
* ``dr``    — doubly robust: DM plus the IPS-weighted residual w·(r - q̂(a)).

Each estimate comes with a percentile bootstrap interval (rows resampled with replacement;
``n_boot`` resamples from a seeded generator; the reward model refitted on each resample).
Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tipml.errors import TipmlError

Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]
ESTIMATORS = ("ips", "snips", "dm", "dr")


class OPEError(TipmlError):
    """The logged data cannot be evaluated: a missing column, a bad propensity, no rows."""

    code = "invalid_data"


@dataclass(frozen=True)
class LoggedData:
    """``ids[i, j]``: candidate j of decision i as an action code (-1: no candidate there);
    ``taken[i]``: the column of the action taken; ``scores``: the logged scores (NaN if
    none)."""

    ids: npt.NDArray[np.int64]
    taken: npt.NDArray[np.int64]
    rewards: Vector
    propensities: Vector
    scores: Matrix
    actions: tuple[str, ...]  # action code -> name

    def __post_init__(self) -> None:
        n = len(self.rewards)
        if n == 0:
            raise OPEError("no logged decisions to evaluate")
        p = self.propensities
        bad = np.flatnonzero(~((p > 0) & (p <= 1)))
        if bad.size:
            raise OPEError(
                f"propensities must be in (0, 1]: row {int(bad[0])} has {float(p[bad[0]])!r}"
            )
        if not np.isfinite(self.rewards).all():
            row = int(np.flatnonzero(~np.isfinite(self.rewards))[0])
            raise OPEError(f"rewards must be numbers: row {row} has {self.rewards[row]!r}")

    @property
    def n(self) -> int:
        return len(self.rewards)

    @property
    def mask(self) -> npt.NDArray[np.bool_]:
        return self.ids >= 0

    @property
    def taken_ids(self) -> npt.NDArray[np.int64]:
        return self.ids[np.arange(self.n), self.taken]

    @classmethod
    def from_table(
        cls,
        actions: Sequence[object],
        rewards: Sequence[float] | Vector,
        propensities: Sequence[float] | Vector,
        *,
        n_actions: int | None = None,
    ) -> LoggedData:
        """A flat log (one action column): every decision could have taken any action seen
        in the data — or ``n_actions`` actions, the unseen ones with no logged reward."""
        names = sorted({str(a) for a in actions})
        if n_actions is not None:
            if n_actions < len(names):
                raise OPEError(
                    f"--n-actions {n_actions} is below the {len(names)} distinct actions logged"
                )
            names += [f"<unseen {i}>" for i in range(n_actions - len(names))]
        code = {name: i for i, name in enumerate(names)}
        taken = np.array([code[str(a)] for a in actions], dtype=np.int64)
        n, k = len(taken), len(names)
        return cls(
            ids=np.tile(np.arange(k, dtype=np.int64), (n, 1)),
            taken=taken,
            rewards=np.asarray(rewards, dtype=np.float64),
            propensities=np.asarray(propensities, dtype=np.float64),
            scores=np.full((n, k), np.nan),
            actions=tuple(names),
        )


# -- the reward model --------------------------------------------------------------------


def _q_table(codes: npt.NDArray[np.int64], rewards: Vector, k: int) -> Vector:
    """Per action code: mean reward shrunk toward the overall mean by one observation."""
    overall = float(rewards.mean())
    sums = np.bincount(codes, weights=rewards, minlength=k)
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    out: Vector = (sums + overall) / (counts + 1.0)
    return out


def reward_model(data: LoggedData) -> Matrix:
    """q̂ for every (row, candidate): the candidate action's mean logged reward, shrunk toward
    the overall mean by one pseudo-observation (an action never taken gets the overall
    mean)."""
    q = _q_table(data.taken_ids, data.rewards, len(data.actions))
    out: Matrix = np.where(data.mask, q[np.where(data.mask, data.ids, 0)], 0.0)
    return out


def action_means(data: LoggedData) -> tuple[Vector, Vector]:
    """Per action code: mean logged reward (shrunk as in ``reward_model``) and count."""
    k = len(data.actions)
    counts = np.bincount(data.taken_ids, minlength=k).astype(np.float64)
    return _q_table(data.taken_ids, data.rewards, k), counts


# -- target policies ---------------------------------------------------------------------


def _masked_scores(data: LoggedData, fallback: Vector | None) -> Matrix:
    scores = data.scores.copy()
    if fallback is not None:
        missing = np.isnan(scores) & data.mask
        scores[missing] = fallback[np.where(data.ids >= 0, data.ids, 0)][missing]
    scores[~data.mask] = -np.inf
    return scores


def target_probabilities(data: LoggedData, policy: str) -> Matrix:
    """π(candidate | decision) for every row: ``uniform`` over the row's candidates, or a
    ranking policy's first-place probabilities over the logged scores (where a row has none:
    the actions' mean logged rewards) — ``greedy`` (ties: the first, as /score ranks),
    ``epsilon_greedy:<ε>``, ``softmax:<t>``. ``thompson`` has no closed form and is refused:
    shadow it instead."""
    mask = data.mask.astype(np.float64)
    if policy == "uniform":
        out: Matrix = mask / mask.sum(axis=1, keepdims=True)
        return out
    means, _ = action_means(data)
    scores = _masked_scores(data, means)
    kind, _, arg = policy.partition(":")
    n, k = scores.shape
    greedy = np.zeros((n, k))
    greedy[np.arange(n), np.argmax(scores, axis=1)] = 1.0
    if kind == "greedy" and not arg:
        return greedy
    if kind == "epsilon_greedy":
        eps = _param(policy, arg, 0.0, 1.0)
        out = (1 - eps) * greedy + eps * mask / mask.sum(axis=1, keepdims=True)
        return out
    if kind == "softmax":
        t = _param(policy, arg, 1e-9, float("inf"))
        z = scores / t
        z = np.exp(z - z.max(axis=1, keepdims=True))
        out = z / z.sum(axis=1, keepdims=True)
        return out
    if kind == "thompson":
        raise OPEError("thompson has no closed-form probabilities to evaluate; shadow it")
    raise OPEError(
        f"unknown policy {policy!r}; known: uniform, greedy, epsilon_greedy:<ε>, softmax:<t>"
    )


def _param(policy: str, arg: str, lo: float, hi: float) -> float:
    try:
        value = float(arg)
    except ValueError:
        raise OPEError(f"policy {policy!r}: expected a number after ':'") from None
    if not lo <= value <= hi:
        raise OPEError(f"policy {policy!r}: the parameter must be in [{lo:g}, {hi:g}]")
    return value


# -- the estimators ----------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    value: float
    ci: tuple[float, float]

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "ci": [self.ci[0], self.ci[1]]}


def _estimates(
    data: LoggedData, pi: Matrix, rows: npt.NDArray[np.int64], estimators: Sequence[str]
) -> dict[str, Vector]:
    """Each estimator on the resamples ``rows`` (shape: resamples x n), the reward model
    refitted (cross-fitted over two halves) on every resample, so DM's and DR's intervals
    carry its uncertainty too."""
    b, n = rows.shape
    k = len(data.actions)
    r = data.rewards[rows]
    w = pi[rows, data.taken[rows]] / data.propensities[rows]
    out: dict[str, Vector] = {}
    if "ips" in estimators:
        out["ips"] = (w * r).mean(axis=1)
    if "snips" in estimators:
        out["snips"] = (w * r).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)
    if "dm" in estimators or "dr" in estimators:
        # cross-fitted: the rows in even positions get q̂ from the odd ones and vice versa
        dm = np.zeros((b, n))
        q_taken = np.zeros((b, n))
        parity = np.arange(n) % 2
        offset = (np.arange(b) * k)[:, None]
        for f in (0, 1):
            fit, use = parity != f, parity == f
            if not fit.any():
                fit = use
            codes = data.taken_ids[rows[:, fit]]
            r_fit = r[:, fit]
            overall = r_fit.mean(axis=1, keepdims=True)
            flat = (codes + offset).ravel()
            sums = np.bincount(flat, weights=r_fit.ravel(), minlength=b * k).reshape(b, k)
            counts = np.bincount(flat, minlength=b * k).reshape(b, k)
            q = (sums + overall) / (counts + 1.0)
            ids = data.ids[rows[:, use]]  # b x rows used x candidates
            mask = ids >= 0
            safe = np.where(mask, ids, 0).reshape(b, -1)
            q_rows = np.where(mask, np.take_along_axis(q, safe, 1).reshape(ids.shape), 0.0)
            dm[:, use] = (pi[rows[:, use]] * q_rows).sum(axis=2)
            q_taken[:, use] = np.take_along_axis(q, data.taken_ids[rows[:, use]], 1)
        if "dm" in estimators:
            out["dm"] = dm.mean(axis=1)
        if "dr" in estimators:
            out["dr"] = (dm + w * (r - q_taken)).mean(axis=1)
    return out


def evaluate(
    data: LoggedData,
    pi: Matrix,
    *,
    estimators: Sequence[str] = ESTIMATORS,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate]:
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise OPEError(f"unknown estimator {unknown[0]!r}; known: {', '.join(ESTIMATORS)}")
    if not 0 < level < 1:
        raise OPEError(f"the confidence level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise OPEError(f"--n-boot: at least 1 resample, got {n_boot}")
    n = data.n
    point = _estimates(data, pi, np.arange(n, dtype=np.int64)[None, :], estimators)
    rng = np.random.default_rng(seed)
    boot: dict[str, list[Vector]] = {e: [] for e in estimators}
    chunk = max(1, min(n_boot, 4_000_000 // (n * data.ids.shape[1])))
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        for e, values in _estimates(
            data, pi, rng.integers(0, n, size=(size, n)), estimators
        ).items():
            boot[e].append(values)
        done += size
    alpha = (1 - level) / 2
    out: dict[str, Estimate] = {}
    for e in estimators:
        lo, hi = np.quantile(np.concatenate(boot[e]), [alpha, 1 - alpha])
        out[e] = Estimate(float(point[e][0]), (float(lo), float(hi)))
    return out


def difference(
    data: LoggedData,
    pi_new: Matrix,
    pi_old: Matrix,
    *,
    estimator: str = "dr",
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Estimate:
    """V(new) - V(old) on the same log, with a *paired* bootstrap interval: both policies are
    evaluated on every same resample, so what they share (the rows, the reward model) cancels
    and the interval is the difference's own, far narrower than two separate intervals."""
    if estimator not in ESTIMATORS:
        raise OPEError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    n = data.n
    full = np.arange(n, dtype=np.int64)[None, :]
    point = float(
        _estimates(data, pi_new, full, (estimator,))[estimator][0]
        - _estimates(data, pi_old, full, (estimator,))[estimator][0]
    )
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 4_000_000 // (n * data.ids.shape[1])))
    diffs: list[Vector] = []
    done = 0
    while done < n_boot:
        rows = rng.integers(0, n, size=(min(chunk, n_boot - done), n))
        new = _estimates(data, pi_new, rows, (estimator,))[estimator]
        old = _estimates(data, pi_old, rows, (estimator,))[estimator]
        diffs.append(new - old)
        done += len(rows)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(np.concatenate(diffs), [alpha, 1 - alpha])
    return Estimate(point, (float(lo), float(hi)))


Report = dict[str, object]


def report(
    data: LoggedData,
    policy: str,
    *,
    estimators: Sequence[str] = ESTIMATORS,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> Report:
    """``{"n", "policy", "level", "logged_reward", "estimates": {name: {value, ci}}}``."""
    pi = target_probabilities(data, policy)
    estimates = evaluate(data, pi, estimators=estimators, level=level, n_boot=n_boot, seed=seed)
    return {
        "n": data.n,
        "policy": policy,
        "level": level,
        "logged_reward": float(data.rewards.mean()),
        "estimates": {name: e.as_dict() for name, e in estimates.items()},
    }

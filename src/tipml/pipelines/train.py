"""Training: LightGBM on the reward of a shown tip, given user, tip and context features.

The objective is ``cross_entropy``: labels are rewards in [0, 1] (a "liked" is 0.8, a "snoozed"
0.2), and the model predicts the expected reward — a probability, so log loss and calibration
mean what they say. Missing values stay ``NaN`` (LightGBM learns which side of a split they
go). Seeded and deterministic (``deterministic``, ``force_row_wise``, one thread per seed), so
the same training set gives the same model text. The model is kept in LightGBM's native text
format — the only format serving loads. Two pieces of domain knowledge shape it (``EXCLUDED``,
``MONOTONE``; ADR 0010): unbounded counts are not inputs, and the favourite category and a
higher population reward rate may only raise a score.

Scale-out: with ``dask_scheduler`` (``TIPML_DASK_SCHEDULER``: a ``tcp://host:port`` address)
the same task runs through ``lightgbm.dask`` on that cluster, the rows partitioned over its
workers; the result is the same kind of booster text.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tipml.features.tip_features import FEATURE_NAMES

# Counts that grow without bound (a tip's impressions) put serving-time values outside every
# value seen in training, where a tree's answer is an arbitrary end leaf: not a model input.
EXCLUDED = ("tip_log_impressions",)
# What we know holds: a tip of the user's favourite category, or one with a higher reward rate
# over everyone, is not worse — the trees may only use these columns in that direction.
MONOTONE = (("category_match", 1), ("tip_reward_rate", 1))


@dataclass(frozen=True)
class TrainParams:
    num_boost_round: int = 80
    learning_rate: float = 0.05
    num_leaves: int = 7
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.9
    lambda_l2: float = 1.0
    seed: int = 7
    exclude: tuple[str, ...] = EXCLUDED
    monotone: tuple[tuple[str, int], ...] = MONOTONE

    def columns(self, names: tuple[str, ...] = FEATURE_NAMES) -> tuple[str, ...]:
        return tuple(n for n in names if n not in self.exclude)

    def lightgbm(self, names: tuple[str, ...] = FEATURE_NAMES) -> dict[str, Any]:
        signs = dict(self.monotone)
        return {
            "monotone_constraints": [signs.get(n, 0) for n in self.columns(names)],
            "objective": "cross_entropy",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["exclude"] = list(self.exclude)
        out["monotone"] = dict(self.monotone)
        return out


@dataclass(frozen=True)
class TrainedModel:
    text: str  # LightGBM's native text format
    feature_names: tuple[str, ...]
    params: TrainParams
    backend: str  # "local" or "dask"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def booster(self) -> Any:
        import lightgbm

        return lightgbm.Booster(model_str=self.text)

    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Scores of full model matrices (every ``FEATURE_NAMES`` column, as serving builds)."""
        cols = [FEATURE_NAMES.index(n) for n in self.feature_names]
        return np.asarray(self.booster().predict(x[:, cols], num_threads=1), dtype=np.float64)


def train(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    params: TrainParams = TrainParams(),
    *,
    dask_scheduler: str | None = None,
    feature_names: tuple[str, ...] = FEATURE_NAMES,
) -> TrainedModel:
    """Train on the columns of ``x`` (named ``feature_names``) that ``params`` does not
    exclude; the model names its inputs, and serving feeds it exactly those."""
    keep = [i for i, n in enumerate(feature_names) if n not in params.exclude]
    x, names = x[:, keep], params.columns(feature_names)
    if dask_scheduler:
        return _train_dask(x, y, params, dask_scheduler, names)
    import lightgbm

    data = lightgbm.Dataset(
        x, label=y, feature_name=list(names), free_raw_data=True, params={"verbose": -1}
    )
    booster = lightgbm.train(
        {**params.lightgbm(names), "num_threads": 2},
        data,
        num_boost_round=params.num_boost_round,
    )
    return TrainedModel(booster.model_to_string(), names, params, "local")


def _train_dask(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    params: TrainParams,
    scheduler: str,
    feature_names: tuple[str, ...],
) -> TrainedModel:
    import dask.array as da
    import lightgbm
    from distributed import Client

    with Client(scheduler) as client:  # type: ignore[no-untyped-call]
        workers = max(1, len(client.scheduler_info()["workers"]))
        chunk = max(1, -(-len(y) // workers))
        dx = da.from_array(x, chunks=(chunk, x.shape[1]))  # type: ignore[no-untyped-call]
        dy = da.from_array(y, chunks=chunk)  # type: ignore[no-untyped-call]
        lgb = params.lightgbm(feature_names)
        model = lightgbm.DaskLGBMRegressor(
            client=client,
            n_estimators=params.num_boost_round,
            random_state=params.seed,
            tree_learner="data",
            **{k: v for k, v in lgb.items() if k != "seed"},
        )
        with warnings.catch_warnings():
            # the sklearn wrapper always passes n_jobs; lightgbm.dask sets threads per worker
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            model.fit(dx, dy, feature_name=list(feature_names))
        text = model.to_local().booster_.model_to_string()
    return TrainedModel(text, feature_names, params, "dask")

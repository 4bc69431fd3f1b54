"""Scorers: one protocol, a baseline that needs no model, and a LightGBM loader.

Every scorer maps the shared feature matrix (``features/tip_features.py``) to one score per
candidate, higher is better. Scorers are stateless after construction, so any replica can
serve any request. The registry issue plugs MLflow in by constructing a ``LightGBMScorer``
from a registered artifact; routes never change.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from tipml.errors import ModelLoadError
from tipml.features.tip_features import COLUMN, FEATURE_NAMES

if TYPE_CHECKING:
    from tipml.settings import Settings

Matrix = npt.NDArray[np.float64]


@runtime_checkable
class Scorer(Protocol):
    """Maps a feature matrix (rows = candidates, columns = ``FEATURE_NAMES``) to scores."""

    @property
    def version(self) -> str: ...

    def score(self, features: Matrix) -> npt.NDArray[np.float64]: ...


class BaselineScorer:
    """A transparent score that works with no trained model.

    ``score = w_reward * smoothed_reward_rate + w_hour * hour_match + w_category * affinity``

    * ``smoothed_reward_rate``: the tip's reward sum over impressions, shrunk toward a prior
      (``domain.tips.PRIOR_MEAN`` with the weight of ``PRIOR_STRENGTH`` impressions);
    * ``hour_match``: 1 at the user's ``preferred_hour``, 0 twelve hours away, 0.5 if unknown;
    * ``affinity``: 1 when the tip's category is the user's ``favorite_category``, 0 when it
      is another category, 0.5 when either is unknown.
    """

    def __init__(
        self, w_reward: float = 0.6, w_hour: float = 0.15, w_category: float = 0.25
    ) -> None:
        self.weights = (w_reward, w_hour, w_category)
        self._version = f"baseline-1:{w_reward:g}/{w_hour:g}/{w_category:g}"

    @property
    def version(self) -> str:
        return self._version

    def score(self, features: Matrix) -> npt.NDArray[np.float64]:
        w_reward, w_hour, w_category = self.weights
        affinity = np.nan_to_num(features[:, COLUMN["category_match"]], nan=0.5)
        return (
            w_reward * features[:, COLUMN["tip_reward_rate"]]
            + w_hour * features[:, COLUMN["hour_match"]]
            + w_category * affinity
        )


class LightGBMScorer:
    """A trained LightGBM booster in native text format, served in process.

    The model's feature names must all be serving features: a model that needs a feature we
    cannot compute is refused at load time rather than served with silent NaNs.
    """

    def __init__(self, booster: object, version: str) -> None:
        self._booster = booster
        self._version = version
        names: list[str] = list(booster.feature_name())  # type: ignore[attr-defined]
        unknown = [n for n in names if n not in COLUMN]
        if unknown:
            raise ModelLoadError(
                f"model needs features serving does not compute: {', '.join(unknown)}; "
                f"known: {', '.join(FEATURE_NAMES)}"
            )
        self._columns = np.array([COLUMN[n] for n in names], dtype=np.intp)
        self.feature_names = tuple(names)

    @property
    def version(self) -> str:
        return self._version

    @classmethod
    def from_file(cls, path: Path, version: str | None = None) -> LightGBMScorer:
        import lightgbm

        try:
            text = path.read_text()
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        try:
            booster = lightgbm.Booster(model_str=text)
        except lightgbm.basic.LightGBMError as exc:
            raise ModelLoadError(f"{path} is not a LightGBM text model: {exc}") from exc
        return cls(booster, version or f"lightgbm:{path.stem}:{digest}")

    def score(self, features: Matrix) -> npt.NDArray[np.float64]:
        rows = features[:, self._columns]
        out = self._booster.predict(rows, num_threads=1)  # type: ignore[attr-defined]
        return np.asarray(out, dtype=np.float64)


def build_scorer(settings: Settings) -> Scorer:
    if settings.scorer == "lightgbm":
        assert settings.model_path is not None  # guaranteed by Settings validation
        return LightGBMScorer.from_file(settings.model_path, settings.model_version)
    return BaselineScorer()  # "registry": the baseline until the watcher loads a champion

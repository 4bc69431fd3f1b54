from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tipml.domain.tips import PRIOR_MEAN, TipStats
from tipml.errors import ModelLoadError
from tipml.experiments.policies import Greedy
from tipml.features.profile_schema import CATEGORIES, validate_profile
from tipml.features.tip_features import (
    COLUMN,
    FEATURE_NAMES,
    Candidate,
    feature_matrix,
    hour_match,
)
from tipml.serving.scoring import BaselineScorer, LightGBMScorer, Scorer


def cands(*categories: str | None) -> list[Candidate]:
    return [Candidate(f"t{i}", c) for i, c in enumerate(categories)]


def test_hour_match_is_circular() -> None:
    assert hour_match(7, 7) == 1.0
    assert hour_match(19, 7) == 0.0
    assert hour_match(23, 1) == hour_match(3, 1) == pytest.approx(1 - 2 / 12)
    assert hour_match(5, None) == 0.5


def test_smoothed_reward_rate_shrinks_to_the_prior() -> None:
    assert TipStats().smoothed_rate() == PRIOR_MEAN
    few = TipStats(impressions=2, reward_sum=2.0).smoothed_rate()
    many = TipStats(impressions=1000, reward_sum=1000.0).smoothed_rate()
    assert PRIOR_MEAN < few < many < 1.0


def test_feature_matrix_columns() -> None:
    profile = validate_profile(
        {
            "favorite_category": "sleep",
            "preferred_hour": 8,
            "completion_rate": 0.4,
            "notifications_enabled": True,
        }
    )
    x = feature_matrix(cands("sleep", "focus", None), profile, 8, {})
    assert x.shape == (3, len(FEATURE_NAMES))
    assert x[:, COLUMN["category_match"]][:2].tolist() == [1.0, 0.0]
    assert np.isnan(x[2, COLUMN["category_match"]])
    assert np.all(x[:, COLUMN["hour_match"]] == 1.0)
    assert np.all(x[:, COLUMN["profile_completion_rate"]] == 0.4)
    assert np.isnan(x[0, COLUMN["profile_streak_days"]])  # missing stays missing
    assert x[0, COLUMN["category_is_sleep"]] == 1.0
    assert x[1, COLUMN["category_is_sleep"]] == 0


def test_baseline_prefers_reward_then_category() -> None:
    scorer = BaselineScorer()
    profile = validate_profile({"favorite_category": "focus"})
    stats = {"t0": TipStats(impressions=200, reward_sum=180.0)}
    x = feature_matrix(cands("sleep", "focus", "sleep"), profile, 12, stats)
    scores = scorer.score(x)
    assert scores[0] > scores[1] > scores[2]  # proven tip > favourite category > neither


def test_greedy_policy_is_stable_and_deterministic() -> None:
    ranking = Greedy().rank(np.array([0.2, 0.9, 0.9, 0.1]))
    assert ranking.order.tolist() == [1, 2, 0, 3]
    assert ranking.propensities.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert Greedy().rank(np.array([])).propensities.size == 0


def _train_booster(path: Path, names: list[str]) -> Path:
    import lightgbm

    rng = np.random.default_rng(0)
    x = rng.random((400, len(names)))
    y = (x[:, 0] > 0.5).astype(float)  # the label follows the first named feature
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 4},
        lightgbm.Dataset(x, y, feature_name=names),
        num_boost_round=10,
    )
    booster.save_model(str(path))
    return path


def test_lightgbm_scorer_reads_columns_by_name(tmp_path: Path) -> None:
    path = _train_booster(tmp_path / "m.txt", ["category_match", "hour_match"])
    scorer = LightGBMScorer.from_file(path)
    assert scorer.version.startswith("lightgbm:m:")
    profile = validate_profile({"favorite_category": "focus"})
    scores = scorer.score(feature_matrix(cands("sleep", "focus"), profile, 12, {}))
    assert scores[1] > scores[0]  # the matching category
    assert LightGBMScorer.from_file(path, "champion-3").version == "champion-3"


def test_lightgbm_refuses_models_needing_unknown_features(tmp_path: Path) -> None:
    path = _train_booster(tmp_path / "m.txt", ["category_match", "user_zodiac_sign"])
    with pytest.raises(ModelLoadError, match="user_zodiac_sign"):
        LightGBMScorer.from_file(path)


def test_lightgbm_refuses_garbage_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("not a model")
    with pytest.raises(ModelLoadError):
        LightGBMScorer.from_file(bad)
    with pytest.raises(ModelLoadError, match="cannot read"):
        LightGBMScorer.from_file(tmp_path / "absent.txt")


# -- one contract over every Scorer implementation -----------------------------------------


def _baseline(tmp_path: Path) -> Scorer:
    return BaselineScorer()


def _lightgbm(tmp_path: Path) -> Scorer:
    return LightGBMScorer.from_file(_train_booster(tmp_path / "m.txt", list(FEATURE_NAMES)))


@pytest.mark.parametrize("factory", [_baseline, _lightgbm], ids=["baseline", "lightgbm"])
def test_scorer_contract(factory: Callable[[Path], Scorer], tmp_path: Path) -> None:
    scorer = factory(tmp_path)
    assert isinstance(scorer, Scorer)
    assert scorer.version
    rng = np.random.default_rng(1)
    candidates = [Candidate(f"t{i}", CATEGORIES[i % len(CATEGORIES)]) for i in range(100)]
    stats = {
        f"t{i}": TipStats(int(rng.integers(0, 50)), float(rng.random() * 10))
        for i in range(0, 100, 3)
    }
    profile = validate_profile({"preferred_hour": 9, "favorite_category": "sleep"})
    x = feature_matrix(candidates, profile, 10, stats)
    scores = scorer.score(x)
    assert scores.shape == (100,)
    assert np.all(np.isfinite(scores))
    assert np.array_equal(scores, scorer.score(x.copy()))  # deterministic, no hidden state
    assert scorer.score(x[:1]).shape == (1,)
    bare = feature_matrix(cands(None, None), validate_profile(None), 0, {})
    assert np.all(np.isfinite(scorer.score(bare)))  # every feature missing still scores

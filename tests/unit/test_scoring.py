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
from tipml.serving.scoring import (
    BaselineScorer,
    CompiledScorer,
    LightGBMScorer,
    Scorer,
    load_model,
)


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


def _train_booster(
    path: Path, names: list[str], *, trees: int = 10, leaves: int = 4, objective: str = "binary"
) -> Path:
    import lightgbm

    rng = np.random.default_rng(0)
    x = rng.random((400 * max(1, leaves // 4), len(names)))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) + 0.3 * rng.random(len(x)) > 0.6).astype(float)
    booster = lightgbm.train(
        {"objective": objective, "verbose": -1, "num_leaves": leaves, "min_data_in_leaf": 5},
        lightgbm.Dataset(x, y, feature_name=names),
        num_boost_round=trees,
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


def _compiled(tmp_path: Path) -> Scorer:
    path = _train_booster(tmp_path / "m.txt", list(FEATURE_NAMES))
    return load_model(path.read_text(), "m", runtime="compiled", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    "factory", [_baseline, _lightgbm, _compiled], ids=["baseline", "lightgbm", "compiled"]
)
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


# -- the compiled runtime ----------------------------------------------------------------


def test_compiled_model_scores_like_lightgbm_on_10000_random_rows(tmp_path: Path) -> None:
    """Issue 10's parity bar: a 200-tree / 31-leaf model (the cross-entropy objective the
    trainer uses), 10,000 random rows with a fifth of the values missing, equal within 1e-9."""
    path = _train_booster(
        tmp_path / "m.txt", list(FEATURE_NAMES), trees=200, leaves=31, objective="cross_entropy"
    )
    text = path.read_text()
    compiled = load_model(text, "v", runtime="compiled", cache_dir=tmp_path / "cache")
    reference = load_model(text, "v", runtime="lightgbm")
    assert isinstance(compiled, CompiledScorer)
    assert isinstance(reference, LightGBMScorer)
    rng = np.random.default_rng(42)
    x = rng.normal(0.5, 1.0, size=(10_000, len(FEATURE_NAMES)))
    x[rng.random(x.shape) < 0.2] = np.nan
    ours, theirs = compiled.score(x), reference.score(x)
    assert np.max(np.abs(ours - theirs)) <= 1e-9
    assert np.std(theirs) > 0.01  # the rows reach different leaves: the check means something

    # the object code is cached: a second load (a restart, another replica) does not compile
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert [n for n in cached if n.endswith(".o")]
    assert not [n for n in cached if n.startswith(".")]  # no private (half-written) files
    again = load_model(text, "v", runtime="compiled", cache_dir=tmp_path / "cache")
    assert np.array_equal(again.score(x[:100]), ours[:100])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cached


def test_a_model_that_cannot_be_compiled_is_served_by_lightgbm(tmp_path: Path) -> None:
    path = _train_booster(tmp_path / "m.txt", list(FEATURE_NAMES))
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache directory should be")
    scorer = load_model(path.read_text(), "v", runtime="compiled", cache_dir=blocked)
    assert isinstance(scorer, LightGBMScorer)  # logged, not refused: same scores, slower


def test_load_model_refuses_garbage() -> None:
    with pytest.raises(ModelLoadError, match="not a LightGBM text model"):
        load_model("not a model", "v", runtime="compiled")

"""``feature_hash`` is versioned (ADR 0025): new decisions log ``s2:<hex>`` (SHA-256), and
the skew check still verifies decisions logged before with the unprefixed BLAKE2b hash."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from tipml.features.tip_features import FEATURE_SET, feature_hash, hash_scheme
from tipml.pipelines.skew import rebuild_matrix, skew_report


def _decision() -> dict[str, Any]:
    return {
        "kind": "score",
        "decision_id": "d-1",
        "feature_set": FEATURE_SET,
        "local_hour": 7,
        "profile_features": {"preferred_hour": 7, "completion_rate": 0.5},
        "user_online": {},
        "candidates": [
            {
                "tip_id": f"t{i}",
                "category": ["sleep", "focus", None][i % 3],
                "tags": ["morning"] if i % 2 else [],
                "source": "curated",
                "tip_impressions": 10 * i,
                "tip_reward_sum": 0.5 * i,
            }
            for i in range(12)
        ],
    }


def _blake2b(x: np.ndarray[Any, Any]) -> str:
    """The first scheme, as decisions logged before ADR 0025 carry it."""
    digest = hashlib.blake2b(np.ascontiguousarray(x, dtype="<f8").tobytes(), digest_size=8)
    digest.update(str(x.shape).encode())
    return digest.hexdigest()


def test_the_current_scheme_is_prefixed_and_sees_every_value_and_the_shape() -> None:
    x = rebuild_matrix(_decision())
    h = feature_hash(x)
    assert h.startswith("s2:")
    assert len(h) == 3 + 16
    assert hash_scheme(h) == "s2"
    changed = x.copy()
    changed[3, 2] = np.nextafter(changed[3, 2], np.inf)
    assert feature_hash(changed) != h
    assert feature_hash(x.reshape(x.shape[1], x.shape[0])) != h  # same bytes, other shape
    with_nan = x.copy()
    with_nan[0, 0] = np.nan
    other_nan = x.copy()
    other_nan[0, 0] = -np.float64("nan")  # another NaN bit pattern: one value
    assert feature_hash(with_nan) == feature_hash(other_nan)


def test_an_unprefixed_hash_is_the_blake2b_scheme() -> None:
    x = rebuild_matrix(_decision())
    assert hash_scheme(_blake2b(x)) == "b2"
    assert feature_hash(x, "b2") == _blake2b(x)
    with pytest.raises(ValueError, match="unknown scheme"):
        feature_hash(x, "md5")


def test_the_skew_check_verifies_decisions_of_both_schemes() -> None:
    new, old, tampered, unknown = _decision(), _decision(), _decision(), _decision()
    new["feature_hash"] = feature_hash(rebuild_matrix(new))
    old["feature_hash"] = _blake2b(rebuild_matrix(old))
    tampered["feature_hash"] = feature_hash(rebuild_matrix(tampered))
    tampered["candidates"][4]["tip_impressions"] += 1  # not what serving saw
    unknown["feature_hash"] = "x9:" + new["feature_hash"][3:]
    tampered["decision_id"], unknown["decision_id"] = "d-tampered", "d-unknown"
    report = skew_report([new, old, tampered, unknown])
    assert (report.checked, report.mismatches) == (4, 2)
    assert report.examples == ["d-tampered", "d-unknown"]

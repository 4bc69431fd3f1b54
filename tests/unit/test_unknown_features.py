"""Unknown profile feature names cannot fill the metric's label set (issue 7, finding 8)."""

from __future__ import annotations

from tipml.serving.metrics import Metrics
from tipml.serving.service import UnknownFeatureCounter


def _labels(metrics: Metrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in metrics.registry.collect():
        if family.name == "tipml_unknown_profile_features":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["feature"]] = sample.value
    return out


def test_one_request_with_20000_names_takes_at_most_21_labels() -> None:
    metrics = Metrics()
    counter = UnknownFeatureCounter(metrics)
    counter.count(tuple(f"f{i}" for i in range(20_000)), route="/score")
    labels = _labels(metrics)
    assert len(labels) == 21
    assert labels["_other"] == 20_000 - 20
    assert sum(labels.values()) == 20_000  # every name counted, just not every one labelled


def test_labels_age_out_and_give_their_slot_back() -> None:
    now = [0.0]
    metrics = Metrics()
    counter = UnknownFeatureCounter(metrics, clock=lambda: now[0])
    for i in range(200):
        counter.count((f"old{i}",), route="/score")
    counter.count(("fresh",), route="/score")
    assert "fresh" not in _labels(metrics)  # full: the new name is counted as _other
    now[0] = 3601.0
    counter.count(("fresh",), route="/score")
    labels = _labels(metrics)
    assert labels["fresh"] == 1
    assert "old0" not in labels  # the least recently seen label gave its slot back
    assert len([k for k in labels if k.startswith("old")]) == 199

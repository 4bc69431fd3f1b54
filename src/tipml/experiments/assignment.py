"""Sticky experiment assignment, bit-compatible with GrowthBook's SDKs.

A unit (a user id) is hashed with the experiment's seed into a bucket in [0, 1); the bucket
falls in one variant's range (weights), or in none (coverage: the share of traffic that takes
part). A namespace (a layer) gives each experiment a slice of [0, 1) of a second hash, so
experiments in one layer never share a unit. Deterministic: the same unit gets the same
variant in every process and after restarts; changing one experiment's seed reshuffles only
that experiment. The hashing is GrowthBook's (``hashVersion`` 2 for buckets, 1 for
namespaces, FNV-1a over UTF-16 code units like the JavaScript SDK), so the recommender's
``@growthbook/growthbook`` computes the same assignment — a test checks 10,000 ids against the
Python SDK. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tipml.errors import ConfigError

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a over the string's UTF-16 code units (JavaScript's ``charCodeAt``)."""
    h = _FNV_OFFSET
    if text.isascii():
        units: Sequence[int] = text.encode()
    else:
        raw = text.encode("utf-16-le", "surrogatepass")
        units = [raw[i] | (raw[i + 1] << 8) for i in range(0, len(raw), 2)]
    for unit in units:
        h = ((h ^ unit) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def bucket(seed: str, unit: str, version: int = 2) -> float:
    """GrowthBook's hash of a unit into [0, 1): version 2 (4 decimals) or 1 (3 decimals)."""
    if version == 2:
        return (fnv1a32(str(fnv1a32(seed + unit))) % 10000) / 10000
    if version == 1:
        return (fnv1a32(unit + seed) % 1000) / 1000
    raise ConfigError(f"hash version must be 1 or 2, got {version}")


def bucket_ranges(
    n: int, coverage: float = 1.0, weights: Sequence[float] | None = None
) -> list[tuple[float, float]]:
    """Each variant's slice of [0, 1): its weight, of which ``coverage`` takes part."""
    coverage = min(max(coverage, 0.0), 1.0)
    if weights is None or len(weights) != n or abs(sum(weights) - 1) > 0.01:
        weights = [1.0 / n] * n
    out, start = [], 0.0
    for w in weights:
        out.append((start, start + coverage * w))
        start += w
    return out


@dataclass(frozen=True)
class Namespace:
    """A layer: experiments in the same layer with disjoint ``[start, end)`` never overlap."""

    layer: str
    start: float
    end: float

    def contains(self, unit: str) -> bool:
        return self.start <= bucket("__" + self.layer, unit, 1) < self.end

    def growthbook(self) -> list[object]:
        return [self.layer, self.start, self.end]


@dataclass(frozen=True)
class Experiment:
    key: str
    variants: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    coverage: float = 1.0
    seed: str | None = None  # default: the key
    namespace: Namespace | None = None

    def __post_init__(self) -> None:
        if len(self.variants) < 2:
            raise ConfigError(f"experiment {self.key!r}: variants: at least two")
        if self.weights is not None:
            if len(self.weights) != len(self.variants):
                raise ConfigError(f"experiment {self.key!r}: weights: one per variant")
            if abs(sum(self.weights) - 1) > 1e-6 or min(self.weights) < 0:
                raise ConfigError(f"experiment {self.key!r}: weights must sum to 1")
        if not 0 <= self.coverage <= 1:
            raise ConfigError(f"experiment {self.key!r}: coverage must be in [0, 1]")

    def growthbook(self) -> dict[str, object]:
        """This experiment as GrowthBook's SDKs take it (``gb.run(experiment)``, hashing on
        the ``id`` attribute): the recommender computes the same assignment from it."""
        out: dict[str, object] = {
            "key": self.key,
            "variations": list(self.variants),
            "coverage": self.coverage,
            "seed": self.seed or self.key,
            "hashVersion": 2,
            "hashAttribute": "id",
        }
        if self.weights is not None:
            out["weights"] = list(self.weights)
        if self.namespace is not None:
            out["namespace"] = self.namespace.growthbook()
        return out


@dataclass(frozen=True)
class Assignment:
    experiment: str
    variant: str | None  # None: not in the experiment (namespace, coverage or holdout)
    bucket: float | None
    in_experiment: bool
    holdout: bool = False  # in the global holdout: no experiment applies to this unit
    variation_id: int | None = None  # GrowthBook's variationId: the index of the variant


HOLDOUT, RELEASED = "holdout", "released"


def holdout_experiment(share: float, seed: str) -> Experiment:
    """The global holdout as a two-variant GrowthBook experiment: a unit whose bucket falls in
    the first ``share`` of [0, 1) gets ``holdout`` and takes part in no experiment (it keeps
    the defaults), so its reward is the baseline every experiment's lift is measured against."""
    return Experiment(HOLDOUT, (HOLDOUT, RELEASED), (share, 1.0 - share), 1.0, seed)


def assign(experiment: Experiment, unit: str) -> Assignment:
    """The variant ``unit`` gets, the way GrowthBook's SDKs assign it."""
    if experiment.namespace is not None and not experiment.namespace.contains(unit):
        return Assignment(experiment.key, None, None, False)
    n = bucket(experiment.seed or experiment.key, unit, 2)
    ranges = bucket_ranges(len(experiment.variants), experiment.coverage, experiment.weights)
    for i, (lo, hi) in enumerate(ranges):
        if lo <= n < hi:
            return Assignment(experiment.key, experiment.variants[i], n, True, variation_id=i)
    return Assignment(experiment.key, None, n, False)

"""The experiments file: loaded and checked once, at start-up; a bad key stops start-up with a
message naming it (``experiments.<name>.<key>: …``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tipml.errors import ConfigError
from tipml.experiments.assignment import (
    HOLDOUT,
    Assignment,
    Experiment,
    Namespace,
    assign,
    holdout_experiment,
)
from tipml.experiments.bandits import Policy, make_policy
from tipml.experiments.policies import parse_score_policy

Target = Literal["prompt_version", "score_policy"]


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    target: Target
    kind: Literal["ab", "bandit"]
    experiment: Experiment  # the sticky part: which units take part (and, for ab, the variant)
    policy: str | None = None
    arms: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def state_key(self) -> str | None:
        """A bandit's key in the shared policy store: its name and a fingerprint of policy,
        arms and parameters, so a changed configuration starts from a fresh state instead of
        reading parameters learnt for other arms."""
        if self.kind != "bandit":
            return None
        doc = json.dumps([self.policy, self.arms, dict(self.params)], sort_keys=True)
        return f"{self.name}.{hashlib.blake2b(doc.encode(), digest_size=4).hexdigest()}"

    def new_policy(self) -> Policy:
        assert self.policy is not None
        return make_policy(self.policy, self.arms, seed=0, **self.params)

    def assign(self, unit: str) -> Assignment:
        """For an A/B test, the unit's variant; for a bandit, whether the unit takes part
        (the policy picks the arm per decision, so ``variant`` is None)."""
        result = assign(self.experiment, unit)
        if self.kind == "bandit":
            return Assignment(self.name, None, result.bucket, result.in_experiment)
        return result


@dataclass(frozen=True)
class ExperimentsConfig:
    experiments: Mapping[str, ExperimentSpec]
    holdout: Experiment | None = None

    def in_holdout(self, unit: str) -> bool:
        return self.holdout is not None and assign(self.holdout, unit).variant == HOLDOUT

    def assign(self, name: str, unit: str) -> Assignment:
        """The unit's assignment in experiment ``name``, the global holdout first."""
        spec = self.get(name)
        if self.in_holdout(unit):
            return Assignment(name, None, None, False, holdout=True)
        return spec.assign(unit)

    def growthbook(self) -> dict[str, object]:
        """Every experiment (and the holdout) as GrowthBook experiment definitions."""
        out: dict[str, object] = {
            name: spec.experiment.growthbook() for name, spec in self.experiments.items()
        }
        if self.holdout is not None:
            out[HOLDOUT] = self.holdout.growthbook()
        return out

    def get(self, name: str) -> ExperimentSpec:
        spec = self.experiments.get(name)
        if spec is None:
            known = ", ".join(sorted(self.experiments)) or "none"
            raise ConfigError(f"unknown experiment {name!r}; configured: {known}")
        return spec


def _where(name: str, key: str) -> str:
    return f"experiments.{name}.{key}"


def _floats(value: object, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
        raise ConfigError(f"{where}: expected a list of numbers")
    return tuple(float(v) for v in value)


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a non-empty list of names")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: names must be distinct")
    return tuple(value)


def _released(values: Sequence[str], prompt_versions: Sequence[str], where: str) -> None:
    for v in values:
        if v not in prompt_versions:
            raise ConfigError(
                f"{where}: unknown prompt version {v!r}; known: {', '.join(prompt_versions)}"
            )


def _score_policies(values: Sequence[str], where: str) -> None:
    for v in values:
        try:
            parse_score_policy(v)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.detail}") from None


def parse_experiments(raw: object, prompt_versions: Sequence[str]) -> ExperimentsConfig:
    """Check a parsed experiments document; ``prompt_versions``: the released versions."""
    if not isinstance(raw, dict):
        raise ConfigError("experiments file: expected a mapping at the top level")
    unknown_top = set(raw) - {"layers", "experiments", "holdout"}
    if unknown_top:
        raise ConfigError(
            f"{sorted(unknown_top)[0]}: unknown key (known: layers, experiments, holdout)"
        )
    holdout = _holdout(raw.get("holdout"))
    layers = raw.get("layers") or {}
    if not isinstance(layers, dict):
        raise ConfigError("layers: expected a mapping of layer names")
    entries = raw.get("experiments") or {}
    if not isinstance(entries, dict):
        raise ConfigError("experiments: expected a mapping of experiment names")
    specs: dict[str, ExperimentSpec] = {}
    slices: dict[str, list[tuple[float, float, str]]] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"experiments.{name}: expected a mapping")
        allowed = {
            "target",
            "kind",
            "variants",
            "weights",
            "coverage",
            "seed",
            "layer",
            "range",
            "policy",
            "arms",
            "params",
        }
        extra = sorted(set(entry) - allowed)
        if extra:
            raise ConfigError(f"{_where(name, extra[0])}: unknown key")
        target = entry.get("target")
        if target not in ("prompt_version", "score_policy"):
            raise ConfigError(f"{_where(name, 'target')}: prompt_version or score_policy")
        kind = entry.get("kind")
        if kind not in ("ab", "bandit"):
            raise ConfigError(f"{_where(name, 'kind')}: ab or bandit")
        namespace = None
        if "layer" in entry:
            layer = entry["layer"]
            if layer not in layers:
                raise ConfigError(f"{_where(name, 'layer')}: unknown layer {layer!r}")
            lo, hi = _floats(entry.get("range", [0, 1]), _where(name, "range"))
            if not 0 <= lo < hi <= 1:
                raise ConfigError(f"{_where(name, 'range')}: need 0 ≤ start < end ≤ 1")
            for other_lo, other_hi, other in slices.get(layer, []):
                if lo < other_hi and other_lo < hi:
                    raise ConfigError(
                        f"{_where(name, 'range')}: overlaps {other!r} in layer {layer!r}"
                    )
            slices.setdefault(layer, []).append((lo, hi, name))
            namespace = Namespace(str(layer), lo, hi)
        seed = str(entry.get("seed", name))
        coverage = float(entry.get("coverage", 1.0))
        if kind == "ab":
            variants = _strings(entry.get("variants"), _where(name, "variants"))
            if target == "prompt_version":
                _released(variants, prompt_versions, _where(name, "variants"))
            if target == "score_policy":
                _score_policies(variants, _where(name, "variants"))
            weights = None
            if "weights" in entry:
                weights = _floats(entry["weights"], _where(name, "weights"))
                if len(weights) != len(variants) or abs(sum(weights) - 1) > 1e-6:
                    raise ConfigError(f"{_where(name, 'weights')}: one per variant, summing to 1")
            try:
                experiment = Experiment(name, variants, weights, coverage, seed, namespace)
            except ConfigError as exc:
                raise ConfigError(f"experiments.{name}: {exc.detail}") from None
            specs[name] = ExperimentSpec(name, target, kind, experiment)
        else:
            policy = entry.get("policy")
            if policy not in Policy.REGISTRY:
                raise ConfigError(
                    f"{_where(name, 'policy')}: unknown policy {policy!r}; "
                    f"known: {', '.join(sorted(Policy.REGISTRY))}"
                )
            if Policy.REGISTRY[policy].contextual:
                raise ConfigError(
                    f"{_where(name, 'policy')}: {policy} needs a context vector, and serving "
                    "has no context definition for experiments yet; use a context-free policy"
                )
            arms = _strings(entry.get("arms"), _where(name, "arms"))
            if target == "prompt_version":
                _released(arms, prompt_versions, _where(name, "arms"))
            else:
                _score_policies(arms, _where(name, "arms"))
            params = entry.get("params") or {}
            if not isinstance(params, dict):
                raise ConfigError(f"{_where(name, 'params')}: expected a mapping")
            try:
                make_policy(policy, arms, seed=0, **params)
            except ConfigError as exc:
                raise ConfigError(f"{_where(name, 'params')}: {exc.detail}") from None
            gate = Experiment(name, ("in", "in"), None, coverage, seed, namespace)
            specs[name] = ExperimentSpec(name, target, kind, gate, policy, arms, params)
    if HOLDOUT in specs:
        raise ConfigError(f"experiments.{HOLDOUT}: the name is reserved for the global holdout")
    return ExperimentsConfig(specs, holdout)


def _holdout(raw: object) -> Experiment | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("holdout: expected a mapping with share (and seed)")
    extra = sorted(set(raw) - {"share", "seed"})
    if extra:
        raise ConfigError(f"holdout.{extra[0]}: unknown key (known: share, seed)")
    share = raw.get("share")
    if not isinstance(share, int | float) or not 0 <= share < 1:
        raise ConfigError("holdout.share: a number in [0, 1)")
    if share == 0:
        return None
    return holdout_experiment(float(share), str(raw.get("seed", HOLDOUT)))


def packaged_experiments() -> Path:
    """The experiments file that ships with tipml (``TIPML_EXPERIMENTS_CONFIG`` replaces it)."""
    return Path(__file__).parent / "experiments.yaml"


def load_experiments(path: Path, prompt_versions: Sequence[str]) -> ExperimentsConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"experiments file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"experiments file {path}: not valid YAML: {exc}") from exc
    try:
        return parse_experiments(raw or {}, prompt_versions)
    except ConfigError as exc:
        raise ConfigError(f"experiments file {path}: {exc.detail}") from None

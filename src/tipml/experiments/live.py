"""What serving asks of the experiments: which prompt version, which score policy — and with
which probability, so every decision logs an honest propensity.

Configuration names the experiments: ``DEFAULT_PROMPT_VERSION=experiment:<name>[,<name>…]``
and ``TIPML_SCORE_POLICY=experiment:<name>[,<name>…]``. The first listed experiment the unit
takes part in decides (experiments of one layer never share a unit); a unit in the global
holdout, or in none of them, gets the built-in default (``v1`` / ``greedy``).

* An A/B experiment gives the unit its sticky variant; the logged propensity is the
  variant's share of the experiment's traffic (its weight) — the probability that a unit of
  the experiment sees it.
* A bandit's policy chooses per decision from the parameters in the shared policy store (a
  ``PolicyView`` the event runtime keeps in step with the ``policies`` bucket; a bandit with
  nothing learnt yet starts from its prior), drawing from this process's own generator; the
  propensity is the chosen arm's probability. The decision records the policy's state key so
  the learner (``experiments.learner``) updates the arm that was played.

Pure apart from the random generator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tipml.errors import ConfigError
from tipml.experiments.bandits import Policy
from tipml.experiments.config import ExperimentsConfig, ExperimentSpec, Target

PREFIX = "experiment:"


class PolicyView:
    """The serving process's read-only copy of the shared bandit parameters: state key →
    policy state, replaced whole by the watch of the ``policies`` bucket."""

    def __init__(self) -> None:
        self._states: Mapping[str, Any] = {}
        self._built: dict[str, tuple[object, Policy]] = {}
        self._fresh: dict[str, Policy] = {}

    def replace(self, states: Mapping[str, Any]) -> None:
        self._states = dict(states)

    def snapshot(self) -> Mapping[str, Any]:
        return self._states

    def policy(self, spec: ExperimentSpec) -> Policy:
        """The bandit's current policy: rebuilt when its stored state changed, its prior
        while nothing is stored. Never updated here — only the learner writes."""
        key = spec.state_key
        assert key is not None
        state = self._states.get(key)
        if state is None:
            fresh = self._fresh.get(key)
            if fresh is None:
                fresh = self._fresh[key] = spec.new_policy()
            return fresh
        built = self._built.get(key)
        if built is None or built[0] is not state:
            built = (state, Policy.from_state(state))
            self._built[key] = built
        return built[1]


@dataclass(frozen=True)
class Decision:
    value: str | None  # the prompt version / score policy chosen; None: use the default
    experiment: str | None = None
    variant: str | None = None
    propensity: float | None = None
    holdout: bool = False
    policy_key: str | None = None  # a bandit's state key: where the learner updates

    def log_fields(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "variant": self.variant,
            "variant_propensity": self.propensity,
            "holdout": self.holdout,
            "policy_key": self.policy_key,
        }


NO_EXPERIMENT = Decision(None)


def experiment_names(setting: str) -> tuple[str, ...] | None:
    """``experiment:a,b`` → ``("a", "b")``; anything else → None (not an experiment)."""
    if not setting.startswith(PREFIX):
        return None
    names = tuple(n.strip() for n in setting.removeprefix(PREFIX).split(",") if n.strip())
    return names


class ExperimentRouter:
    """Decides for one target (``prompt_version`` or ``score_policy``) from the experiments
    a setting names, checked against the experiments file at construction (start-up)."""

    def __init__(
        self,
        config: ExperimentsConfig,
        names: Sequence[str],
        target: Target,
        view: PolicyView,
        rng: np.random.Generator,
        *,
        setting: str,
    ) -> None:
        if not names:
            raise ConfigError(f"{setting}: name at least one experiment after {PREFIX!r}")
        specs = []
        for name in names:
            try:
                spec = config.get(name)
            except ConfigError as exc:
                raise ConfigError(f"{setting}: {exc.detail}") from None
            if spec.target != target:
                raise ConfigError(
                    f"{setting}: experiment {name!r} decides {spec.target}, not {target}"
                )
            specs.append(spec)
        self.config = config
        self.specs = tuple(specs)
        self.view = view
        self.rng = rng

    def decide(self, unit: str) -> Decision:
        if self.config.in_holdout(unit):
            return Decision(None, holdout=True)
        for spec in self.specs:
            assignment = spec.assign(unit)
            if not assignment.in_experiment:
                continue
            if spec.kind == "ab":
                variants = spec.experiment.variants
                i = variants.index(assignment.variant) if assignment.variant else 0
                weights = spec.experiment.weights or (1.0 / len(variants),) * len(variants)
                return Decision(variants[i], spec.name, variants[i], float(weights[i]))
            choice = self.view.policy(spec).choose(rng=self.rng)
            return Decision(
                choice.arm,
                spec.name,
                choice.arm,
                choice.propensity,
                policy_key=spec.state_key,
            )
        return NO_EXPERIMENT


def router_for(
    setting_name: str,
    value: str,
    target: Literal["prompt_version", "score_policy"],
    config: ExperimentsConfig,
    view: PolicyView,
    rng: np.random.Generator,
) -> ExperimentRouter | None:
    names = experiment_names(value)
    if names is None:
        return None
    return ExperimentRouter(config, names, target, view, rng, setting=setting_name)

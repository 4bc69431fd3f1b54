"""The learning loop's steps: compact → training set → train → evaluate → register the
challenger → put it in shadow, and promote.

Each step is a plain function of its inputs, testable alone; ``pipelines/flows.py`` runs them
as Prefect tasks. A step that finds the data unusable raises a ``TipmlError`` with a one-line
reason and nothing is registered.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from tipml.errors import TipmlError
from tipml.pipelines.dataset import DatasetSpec, TrainingSet, build_training_set
from tipml.pipelines.evaluate import EvaluationReport, GateConfig, evaluate_model, time_split
from tipml.pipelines.train import TrainedModel, TrainParams, train

DEFAULT_SPEC, DEFAULT_PARAMS, DEFAULT_GATES = DatasetSpec(), TrainParams(), GateConfig()


class GateFailed(TipmlError):
    code = "gate_failed"


@dataclass
class TrainResult:
    dataset: dict[str, Any]
    evaluation: dict[str, Any]
    version: str | None = None  # the registered version (None: a gate failed)
    aliases: dict[str, str] = field(default_factory=dict)
    model: TrainedModel | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "aliases": self.aliases,
            "dataset": self.dataset,
            "evaluation": self.evaluation,
        }


def fit_and_evaluate(
    ts: TrainingSet,
    params: TrainParams,
    gates: GateConfig,
    *,
    dask_scheduler: str | None = None,
) -> tuple[TrainedModel, EvaluationReport]:
    train_rows, _ = time_split(ts, gates.holdout)
    test_rows = ~train_rows
    for part, rows in (("training", train_rows), ("held-out", test_rows)):
        if rows.sum() == 0:
            raise TipmlError(f"the {part} split is empty: too few decision times to split")
    model = train(ts.x[train_rows], ts.y[train_rows], params, dask_scheduler=dask_scheduler)
    booster = model.booster()
    cols = [ts.feature_names.index(n) for n in model.feature_names]

    def predict(x: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.asarray(booster.predict(x[:, cols], num_threads=1), dtype=np.float64)

    return model, evaluate_model(ts, predict, test_rows, gates)


def compact_archive(settings: Any) -> int:
    """Merge the archiver's small files (idempotent); the number of day folders merged."""
    from tipml.events.archive import compact

    return len(compact(settings.archive))


def build_dataset(settings: Any, spec: DatasetSpec, as_of: datetime | None = None) -> TrainingSet:
    """``as_of``: the time whose passed waits decide which decisions are labelled (now)."""
    from tipml.domain.rewards import RewardTable

    return build_training_set(settings.archive, RewardTable(settings.rewards), spec, as_of=as_of)


def register_challenger(
    settings: Any,
    ts: TrainingSet,
    model: TrainedModel,
    report: EvaluationReport,
    params: TrainParams,
    *,
    shadow: bool = True,
) -> tuple[str, dict[str, str]]:
    """Register a model that passed the gates with its card; alias it ``challenger`` (and
    ``shadow``). Returns the version and the aliases after the change."""
    from tipml.registry.cards import ModelCard
    from tipml.registry.store import Registry

    if not report.passed:
        raise GateFailed(f"not registered: {report.reason()}")
    registry = Registry.from_settings(settings)
    card = ModelCard(
        name=registry.name,
        version="",
        sha256="",
        training_window=ts.window,
        training_set_hash=ts.content_hash,
        training_rows=int(report.rows["train"]),
        metrics=report.metrics,
        fairness=report.fairness,
        gaps=report.gaps,
        ope=report.ope,
        params=params.as_dict(),
        inputs=ModelCard.inputs_for(model.feature_names),
    )
    cols = [ts.feature_names.index(n) for n in model.feature_names]
    version = registry.register(
        model.text, model.feature_names, card, params=params.as_dict(), example=ts.x[:5, cols]
    )
    who = _who()
    registry.set_alias("challenger", version, by=who, reason="passed the evaluation gates")
    if shadow:
        registry.set_alias(
            "shadow", version, by=who, reason="new challenger: shadow on live traffic"
        )
    return version, registry.aliases()


def promote(
    settings: Any, version: str, *, to: str = "champion", reason: str, by: str | None = None
) -> dict[str, Any]:
    """Move alias ``to`` to ``version`` (appending to the rollout history); a version promoted
    to champion leaves shadow."""
    from tipml.registry.store import Registry

    registry = Registry.from_settings(settings)
    event = registry.set_alias(to, version, by=by or _who(), reason=reason)
    if to == "champion" and registry.aliases().get("shadow") == event.version:
        registry.set_alias(
            "shadow", None, by=by or _who(), reason=f"promoted to champion: {reason}"
        )
    return {"alias": to, "version": event.version, "previous": event.previous}


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

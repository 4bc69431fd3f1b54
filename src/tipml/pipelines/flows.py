"""The learning loop as Prefect 3 flows: ``tipml-train`` (compact → training set → train →
evaluate → register the challenger → put it in shadow) and ``tipml-promote``.

They run in process by default: with no ``PREFECT_API_URL``, Prefect starts its own temporary
server for the run's states (its SQLite file under ``<data_dir>/prefect``), and ``tipml train``
shows each task as it runs. With ``PREFECT_API_URL`` pointing at a Prefect server the runs
appear there, and ``tipml train --serve --cron '0 3 * * *'`` registers a scheduled deployment
and runs it (``serving/README.md``). The steps themselves are plain functions in
``pipelines/steps.py``; this is the only module that imports prefect (a test checks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast


def _prefect_defaults() -> None:
    """Prefect reads its settings at import: keep its state beside tipml's, never phone home,
    and give its temporary server time to start on a busy 2-core machine."""
    home = Path(os.environ.get("TIPML_DATA_DIR", ".tipml")).absolute() / "prefect"
    if "PREFECT_HOME" not in os.environ:
        home.mkdir(parents=True, exist_ok=True)
    for key, value in {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the server's usage reports
        "DO_NOT_TRACK": "true",  # the client's (MLflow too reads it, as "true")
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }.items():
        os.environ.setdefault(key, value)


_prefect_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Failed  # noqa: E402

from tipml.errors import TipmlError  # noqa: E402
from tipml.pipelines import steps  # noqa: E402
from tipml.pipelines.dataset import DatasetError, DatasetSpec, TrainingSet  # noqa: E402
from tipml.pipelines.evaluate import EvaluationReport, GateConfig  # noqa: E402
from tipml.pipelines.steps import GateFailed, TrainResult  # noqa: E402
from tipml.pipelines.train import TrainedModel, TrainParams  # noqa: E402

__all__ = ["GateFailed", "TrainResult", "promote_flow", "train_flow"]
Progress = Callable[[str], None]


# the tasks pass training sets and boosters in memory: nothing to cache or persist
@task(name="compact-archive", cache_policy=NO_CACHE, persist_result=False)
def compact_task(settings: Any) -> int:
    return steps.compact_archive(settings)


@task(name="build-training-set", cache_policy=NO_CACHE, persist_result=False)
def dataset_task(
    settings: Any, spec: DatasetSpec, as_of: datetime | None
) -> TrainingSet | DatasetError:
    """A log that cannot make a training set is this task's answer, not its failure: the flow
    ends Failed with the one-line reason, and no traceback fills the run's log."""
    try:
        return steps.build_dataset(settings, spec, as_of)
    except DatasetError as exc:
        return exc


@task(name="train-and-evaluate", cache_policy=NO_CACHE, persist_result=False)
def fit_task(
    ts: TrainingSet, params: TrainParams, gates: GateConfig, dask_scheduler: str | None
) -> tuple[TrainedModel, EvaluationReport]:
    return steps.fit_and_evaluate(ts, params, gates, dask_scheduler=dask_scheduler)


@task(name="register-challenger", cache_policy=NO_CACHE, persist_result=False)
def register_task(
    settings: Any,
    ts: TrainingSet,
    model: TrainedModel,
    report: EvaluationReport,
    params: TrainParams,
    shadow: bool,
) -> tuple[str, dict[str, str]]:
    return steps.register_challenger(settings, ts, model, report, params, shadow=shadow)


def _settings(settings: Any) -> Any:
    if settings is not None:
        return settings
    from tipml.settings import load_settings

    return load_settings()


@flow(name="tipml-train", persist_result=False, validate_parameters=False)
def train_flow(
    settings: Any = None,
    spec: DatasetSpec | dict[str, Any] | None = None,
    params: TrainParams | None = None,
    gates: GateConfig | dict[str, Any] | None = None,
    register: bool = True,
    shadow: bool = True,
    as_of: datetime | str | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a ranker on the decision log and register it as challenger (and shadow) if it
    passes the gates. ``settings`` None: from the environment (a deployment's runs);
    ``as_of``: the time whose passed waits decide which decisions are labelled (now)."""
    log = get_run_logger()

    def say(message: str) -> None:
        log.info(message)
        if progress is not None:
            progress(message)

    config = _settings(settings)
    if isinstance(as_of, str):  # a deployment run's JSON parameters
        as_of = datetime.fromisoformat(as_of)
    if isinstance(spec, dict):
        spec = DatasetSpec.from_dict(spec)
    spec, params = spec or steps.DEFAULT_SPEC, params or steps.DEFAULT_PARAMS
    if isinstance(gates, dict):
        gates = GateConfig.from_dict(gates)
    gates = gates or steps.DEFAULT_GATES
    say("compacting the archive")
    compact_task(config)
    say("building the training set")
    ts = dataset_task(config, spec, as_of)
    if isinstance(ts, DatasetError):
        return _refused(ts)
    say(f"training on {ts.n} rows ({ts.window[0]} → {ts.window[1]})")
    model, report = fit_task(ts, params, gates, config.dask_scheduler)
    result = TrainResult(ts.summary(), report.as_dict(), model=model)
    if not report.passed:
        return _refused(GateFailed(f"not registered: {report.reason()}"))
    if not register:
        return result
    say("registering the challenger")
    result.version, result.aliases = register_task(config, ts, model, report, params, shadow)
    say(f"registered version {result.version}: {result.aliases}")
    return result


def _refused(exc: TipmlError) -> TrainResult:
    """End the run Failed with the refusal's one line (the caller gets the exception raised;
    ``return_state=True`` gets the state)."""
    get_run_logger().error("%s", exc.detail)
    # a flow that returns a state ends in it; callers see the exception, never the state
    return cast(TrainResult, Failed(message=f"{exc.code}: {exc.detail}", data=exc))


@flow(name="tipml-promote", persist_result=False, validate_parameters=False)
def promote_flow(
    settings: Any, version: str, to: str = "champion", reason: str = "", by: str | None = None
) -> dict[str, Any]:
    """Move alias ``to`` to ``version`` with a reason, appended to the rollout history."""
    moved = steps.promote(_settings(settings), version, to=to, reason=reason, by=by)
    get_run_logger().info(
        "%s: version %s (was %s)", moved["alias"], moved["version"], moved["previous"]
    )
    return moved


def _schedule(
    name: str, cron: str | None, interval_s: float | None, parameters: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "cron": cron,
        "interval": interval_s,
        "parameters": parameters,
        "description": "Train a ranker on the decision log; register it as challenger + shadow.",
        "tags": ["tipml", "learning-loop"],
    }


def serve_train(
    *, name: str, cron: str | None, interval_s: float | None, parameters: dict[str, Any]
) -> None:
    """Register ``tipml-train/<name>`` on the Prefect server at ``PREFECT_API_URL`` with a
    schedule and run its scheduled runs in this process until interrupted."""
    train_flow.serve(**_schedule(name, cron, interval_s, parameters))


def deployment(
    *, name: str, cron: str | None, interval_s: float | None, parameters: dict[str, Any]
) -> Any:
    """The deployment ``serve_train`` registers (``RunnerDeployment``), for inspection and
    ``apply()`` without serving."""
    return train_flow.to_deployment(**_schedule(name, cron, interval_s, parameters))

"""``tipml train`` and ``tipml registry list|card|promote|shadow-report``."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from tipml.cli.app import app, fail, settings
from tipml.errors import TipmlError

registry_app = typer.Typer(
    help="The model registry (MLflow): versions, cards, promotion.", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")
NAME = "tipml-ranker"


def _time(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        fail(TipmlError(f"{flag}: {value!r} is not an ISO time (e.g. 2026-11-28T00:00:00+00:00)"))


@app.command("train")
def train_command(
    start: Annotated[str | None, typer.Option(help="Window start (decision time, ISO).")] = None,
    end: Annotated[str | None, typer.Option(help="Window end, exclusive (ISO).")] = None,
    wait_s: Annotated[
        float, typer.Option(help="How long after a decision a reaction still counts.")
    ] = 3600.0,
    default_reward: Annotated[
        float, typer.Option(help="Label of a shown tip with no reaction within the wait.")
    ] = 0.0,
    register: Annotated[
        bool, typer.Option(help="Register a model that passes the gates as challenger.")
    ] = True,
    shadow: Annotated[bool, typer.Option(help="Also point the 'shadow' alias at it.")] = True,
    gates: Annotated[
        str | None,
        typer.Option(
            help='Gate overrides as JSON, e.g. \'{"min_auc": 0.6, "max_gap": {"auc": 0.1}}\'.'
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Register a scheduled deployment on the Prefect server at PREFECT_API_URL "
            "and run its scheduled runs here until interrupted.",
        ),
    ] = False,
    cron: Annotated[
        str | None, typer.Option(help="With --serve: the schedule, e.g. '0 3 * * *'.")
    ] = None,
    interval_s: Annotated[
        float | None, typer.Option(help="With --serve: run every N seconds instead.")
    ] = None,
    deployment: Annotated[str, typer.Option(help="With --serve: the deployment's name.")] = (
        "nightly"
    ),
) -> None:
    """Compact the archive, build the training set, train LightGBM, evaluate it against the
    gates and the champion, and register it as challenger (and shadow) — the Prefect flow
    ``tipml-train``, run here (or, with --serve, on a schedule)."""
    from tipml.pipelines.dataset import DatasetSpec

    config = settings()
    spec = DatasetSpec(
        start=_time(start, "--start"),
        end=_time(end, "--end"),
        wait_s=wait_s,
        default_reward=default_reward,
    )
    overrides = _gates(gates)
    if serve:
        _serve(spec, overrides, register, shadow, cron, interval_s, deployment)
        return
    from tipml.pipelines.evaluate import GateConfig
    from tipml.pipelines.flows import train_flow

    try:
        result = train_flow(
            config,
            spec=spec,
            gates=GateConfig.from_dict(overrides),
            register=register,
            shadow=shadow,
        )
    except TipmlError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(orjson.dumps(result.as_dict()).decode() + "\n")
        return
    print_training(result.as_dict())


def _gates(raw: str | None) -> dict[str, Any]:
    from tipml.pipelines.evaluate import GateConfig

    try:
        overrides = orjson.loads(raw) if raw else {}
        if not isinstance(overrides, dict):
            raise TipmlError("--gates: a JSON object of gate settings")
        GateConfig.from_dict(overrides)
    except orjson.JSONDecodeError as exc:
        fail(TipmlError(f"--gates: not JSON ({exc})"))
    except (TipmlError, TypeError) as exc:
        fail(exc if isinstance(exc, TipmlError) else TipmlError(f"--gates: {exc}"))
    return overrides


def _serve(
    spec: Any,
    gates: dict[str, Any],
    register: bool,
    shadow: bool,
    cron: str | None,
    interval_s: float | None,
    name: str,
) -> None:
    import os

    if (cron is None) == (interval_s is None):
        fail(TipmlError("--serve needs exactly one of --cron and --interval-s"))
    if not os.environ.get("PREFECT_API_URL"):
        fail(
            TipmlError(
                "--serve needs a Prefect server: start one (prefect server start) and set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
        )
    from tipml.pipelines.flows import serve_train

    parameters = deployment_parameters(spec, register, shadow, gates)
    serve_train(name=name, cron=cron, interval_s=interval_s, parameters=parameters)


def deployment_parameters(
    spec: Any, register: bool, shadow: bool, gates: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON parameters a scheduled run gets (its settings come from the environment)."""
    return {"spec": spec.as_dict(), "gates": gates or {}, "register": register, "shadow": shadow}


def print_training(result: dict[str, Any]) -> None:
    out = Console()
    d, e = result["dataset"], result["evaluation"]
    out.print(
        f"training set {d['content_hash'][:12]}: {d['rows']} rows, {d['positives']} positive, "
        f"window {d['window'][0]} → {d['window'][1]}; skew mismatches "
        f"{d['skew']['mismatches']}/{d['skew']['checked']}"
    )
    table = Table("gate", "value", "threshold", "passed")
    for g in e["gates"]:
        table.add_row(
            g["name"], f"{g['value']:.4f}", f"{g['threshold']:.4f}", "yes" if g["passed"] else "NO"
        )
    out.print(table)
    ope = e["ope"]
    ch, champ = ope["challenger"]["dr"], ope["champion"]["dr"]
    out.print(
        f"off-policy value (DR): model {ch['value']:.4f} [{ch['ci'][0]:.4f}, {ch['ci'][1]:.4f}] vs "
        f"champion {champ['value']:.4f} [{champ['ci'][0]:.4f}, {champ['ci'][1]:.4f}]"
    )
    if result["version"]:
        aliases = ", ".join(f"{k}={v}" for k, v in sorted(result["aliases"].items()))
        out.print(f"registered {NAME} version {result['version']} ({aliases})")


def _registry() -> Any:
    from tipml.registry.store import Registry

    return Registry.from_settings(settings())


@registry_app.command("list")
def registry_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every version of tipml-ranker with its aliases, hashes and headline metrics."""
    try:
        versions = _registry().versions()
    except TipmlError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(orjson.dumps([v.as_dict() for v in versions]).decode() + "\n")
        return
    table = Table("version", "aliases", "created", "auc", "ece", "training set", "sha256")
    for v in versions:
        table.add_row(
            v.version,
            ", ".join(v.aliases),
            v.created,
            f"{v.metrics.get('auc', float('nan')):.3f}",
            f"{v.metrics.get('ece', float('nan')):.3f}",
            v.training_set_hash[:12],
            v.sha256[:12],
        )
    Console().print(table)


@registry_app.command("card")
def registry_card(
    ref: Annotated[
        str, typer.Argument(help="tipml-ranker@ALIAS, tipml-ranker/VERSION or VERSION.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a version's model card (Markdown)."""
    from tipml.registry.cards import render

    try:
        registry = _registry()
        card = registry.card(registry.resolve(ref))
    except TipmlError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(orjson.dumps(card.as_dict()).decode() + "\n")
        return
    sys.stdout.write(render(card))


@registry_app.command("promote")
def registry_promote(
    name: Annotated[str, typer.Argument(help="The registered model (tipml-ranker).")],
    version: Annotated[str, typer.Argument(help="The version to move the alias to.")],
    to: Annotated[
        str, typer.Option(help="The alias: champion, shadow or challenger.")
    ] = "champion",
    reason: Annotated[str, typer.Option(help="Why (kept in the rollout history).")] = "",
    by: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
) -> None:
    """Move an alias to a version and append the change to the rollout history. Serving
    replicas pick it up within TIPML_REGISTRY_POLL_S and hot-swap."""
    from tipml.pipelines.flows import promote_flow
    from tipml.registry.store import NotFound

    if name != NAME:
        fail(NotFound(f"no registered model {name!r}; known: {NAME}"))
    if not reason.strip():
        fail(TipmlError("--reason: say why (it goes into the rollout history)"))
    try:
        moved = promote_flow(settings(), version, to=to, reason=reason, by=by)
    except TipmlError as exc:
        fail(exc)
    Console().print(
        f"{NAME}@{moved['alias']}: {moved['previous'] or '(none)'} → {moved['version']}"
    )


@registry_app.command("shadow-report")
def registry_shadow_report(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Shadow vs champion on the logged live traffic: top-1 agreement, rank correlation and
    the off-policy value of each ranking with intervals."""
    from tipml.domain.rewards import RewardTable
    from tipml.experiments.logs import exposures
    from tipml.pipelines.shadow import shadow_report

    config = settings()
    try:
        items = exposures(config.archive, RewardTable(config.rewards), kind="score")
        report = shadow_report(items)
    except TipmlError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
        return
    table = Table("shadow", "decisions", "top-1 agree", "rank corr", "shadow DR", "champion DR")
    for version, r in report.items():
        s, c = r["shadow"]["dr"], r["champion"]["dr"]
        table.add_row(
            version,
            str(r["decisions"]),
            f"{r['top1_agreement']:.3f}",
            "n/a" if r["rank_correlation"] is None else f"{r['rank_correlation']:.3f}",
            f"{s['value']:.4f} [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}]",
            f"{c['value']:.4f} [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}]",
        )
    Console().print(table)

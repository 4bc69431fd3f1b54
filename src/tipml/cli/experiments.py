"""``tipml experiments assign | growthbook | evaluate | report``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from tipml.cli.app import console, experiments_app, fail, settings
from tipml.errors import TipmlError


@experiments_app.command("assign")
def experiments_assign(
    name: str,
    unit_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The variant UNIT_ID gets in experiment NAME (GrowthBook-compatible hashing)."""
    from tipml.experiments.config import load_experiments
    from tipml.serving.prompts import known_versions

    try:
        config = load_experiments(settings().experiments_config, known_versions())
        result = config.assign(name, unit_id)
    except TipmlError as exc:
        fail(exc)
    out = {
        "experiment": result.experiment,
        "variant": result.variant,
        "bucket": result.bucket,
        "in_experiment": result.in_experiment,
        "holdout": result.holdout,
    }
    if as_json:
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    else:
        console.print(out)


@experiments_app.command("growthbook")
def experiments_growthbook() -> None:
    """Every configured experiment (and the holdout) as GrowthBook experiment definitions
    (JSON): pass one to ``gb.run()`` in the recommender with the user id as the ``id``
    attribute and it assigns exactly as tipml does."""
    from tipml.experiments.config import load_experiments
    from tipml.serving.prompts import known_versions

    try:
        config = load_experiments(settings().experiments_config, known_versions())
    except TipmlError as exc:
        fail(exc)
    sys.stdout.write(orjson.dumps(config.growthbook(), option=orjson.OPT_INDENT_2).decode() + "\n")


@experiments_app.command("evaluate")
def experiments_evaluate(
    data: Annotated[
        Path | None,
        typer.Argument(help="CSV or Parquet log; default: this project's decision log."),
    ] = None,
    action_col: Annotated[str, typer.Option(help="Column of the action taken.")] = "action",
    reward_col: Annotated[str, typer.Option(help="Column of the reward.")] = "reward",
    propensity_col: Annotated[
        str, typer.Option(help="Column of the logging policy's probability of the action.")
    ] = "propensity",
    policy: Annotated[
        str,
        typer.Option(help="Target: uniform, greedy, epsilon_greedy:<ε>, softmax:<t>."),
    ] = "uniform",
    estimators: Annotated[str, typer.Option(help="Comma-separated.")] = "ips,snips,dm,dr",
    n_actions: Annotated[
        int | None, typer.Option(help="Actions the uniform policy spreads over.")
    ] = None,
    kind: Annotated[
        str, typer.Option(help="Decision log only: score (tips) or generate (prompt versions).")
    ] = "score",
    level: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Off-policy value of a target policy from logged decisions (IPS, SNIPS, DM, DR with
    bootstrap intervals)."""
    from tipml.domain.rewards import RewardTable
    from tipml.experiments import logs, ope

    config = settings()
    try:
        if data is not None:
            logged = logs.read_table(
                data,
                action_col=action_col,
                reward_col=reward_col,
                propensity_col=propensity_col,
                n_actions=n_actions,
            )
        else:
            if kind not in ("score", "generate"):
                raise ope.OPEError("--kind: score or generate")
            items = logs.exposures(config.archive, RewardTable(config.rewards), kind=kind)
            logged = logs.logged_scores(items) if kind == "score" else logs.logged_prompts(items)
        names = [e.strip() for e in estimators.split(",") if e.strip()]
        result = ope.report(logged, policy, estimators=names, level=level, n_boot=n_boot, seed=seed)
    except TipmlError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        return
    table = Table(
        "estimator",
        "value",
        f"{level:.0%} interval",
        title=f"{policy} policy on {result['n']} logged decisions "
        f"(logged reward {result['logged_reward']:.4f})",
    )
    for name, est in result["estimates"].items():  # type: ignore[attr-defined]
        lo, hi = est["ci"]
        table.add_row(name, f"{est['value']:.4f}", f"[{lo:.4f}, {hi:.4f}]")
    Console().print(table)


@experiments_app.command("report")
def experiments_report(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw reward per variant to this PNG.")
    ] = None,
) -> None:
    """Reward per experiment variant and per prompt version from the decision log and its
    feedback: exposures, reactions, reward with intervals, difference vs control, SRM."""
    from tipml.domain.rewards import RewardTable
    from tipml.experiments.config import load_experiments
    from tipml.experiments.logs import exposures
    from tipml.experiments.report import build_report
    from tipml.serving.prompts import known_versions

    config = settings()
    try:
        experiments = load_experiments(config.experiments_config, known_versions())
        items = exposures(config.archive, RewardTable(config.rewards))
    except TipmlError as exc:
        fail(exc)
    result = build_report(items, experiments)
    if plot is not None:
        from tipml.experiments.plots import plot_report

        plot_report(result, plot)
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        return
    print_report(result)


def print_report(result: dict[str, Any]) -> None:
    out = Console()
    out.print(f"{result['decisions']} decisions, {result['reactions']} reactions")
    sections = [
        (f"{name} ({e['kind']}, {e['target']})", e["variants"], e.get("srm"))
        for name, e in result["experiments"].items()
    ]
    sections.append(("prompt versions (all /generate)", result["prompt_versions"], None))
    for title, rows, srm in sections:
        table = Table(
            "variant", "exposures", "units", "reward", "95% interval", "vs control", title=title
        )
        for row in rows:
            r = row["reward"]
            diff = row.get("diff_vs_control")
            table.add_row(
                row["name"],
                str(row["exposures"]),
                str(row["units"]),
                f"{r['mean']:.3f}",
                f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
                f"{diff['mean']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]" if diff else "",
            )
        out.print(table)
        if srm:
            verdict = "MISMATCH" if srm["mismatch"] else "ok"
            out.print(f"  sample ratio: chi2 {srm['chi2']:.2f}, p {srm['p_value']:.3f} ({verdict})")

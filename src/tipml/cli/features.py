"""``tipml features apply|materialize|get|skew``."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from tipml.cli.app import bus, console, features_app, run, settings
from tipml.errors import TipmlError


@features_app.command("apply")
def features_apply() -> None:
    """Build the Feast feature log from the Parquet archive, generate the repo, apply it."""
    from tipml.features.feast_store import apply, repo_dir

    config = settings()
    with console.status("feast apply"):
        rows = apply(config)
    console.print(f"feast repo {repo_dir(config)} applied; feature log: {rows} rows")


@features_app.command("materialize")
def features_materialize() -> None:
    """Load the latest feature values into Feast's online store (SQLite or Redis)."""
    from tipml.features.feast_store import materialize

    config = settings()
    with console.status("feast materialize"):
        materialize(config)
    console.print("materialized")


@features_app.command("get")
def features_get(user_id: str) -> None:
    """Print a user's online features (as of now) as JSON."""
    import orjson

    from tipml.domain.records import decode_state, kv_key
    from tipml.domain.users import materialize
    from tipml.events.bus import USER_FEATURES_BUCKET

    async def main() -> None:
        conn = await bus(settings())
        kv = await conn.kv(USER_FEATURES_BUCKET)
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await kv.get(kv_key(user_id))
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            await conn.close()
            raise TipmlError(f"no online features for user {user_id!r}")
        out = {
            "user_id": user_id,
            "revision": entry.revision,
            "features": materialize(decode_state(entry.value), time.time()),
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        await conn.close()

    run(main())


@features_app.command("skew")
def features_skew(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The skew check: rebuild each logged /score decision's feature matrix from the decision
    log and compare it with the hash serving logged (0 mismatches expected)."""
    import orjson

    from tipml.domain.rewards import RewardTable
    from tipml.experiments.logs import exposures
    from tipml.pipelines.skew import skew_report

    config = settings()
    items = exposures(config.archive, RewardTable(config.rewards), kind="score")
    report = skew_report(e.payload for e in items)
    if as_json:
        sys.stdout.write(orjson.dumps(report.as_dict()).decode() + "\n")
    else:
        console.print(
            f"{report.checked} of {report.decisions} /score decisions checked: "
            f"{report.mismatches} mismatches ({report.rate:.2%})"
            + (f"; e.g. {', '.join(report.examples[:3])}" if report.examples else "")
        )
    if report.mismatches:
        raise typer.Exit(1)

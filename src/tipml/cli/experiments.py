"""``tipml experiments assign``."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer

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
        result = config.get(name).assign(unit_id)
    except TipmlError as exc:
        fail(exc)
    out = {
        "experiment": result.experiment,
        "variant": result.variant,
        "bucket": result.bucket,
        "in_experiment": result.in_experiment,
    }
    if as_json:
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    else:
        console.print(out)

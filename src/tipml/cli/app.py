"""The ``tipml`` command: the Typer app, its command groups and the helpers every command
shares (one clean error path, settings, the bus). The commands live one module per group."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from tipml.errors import TipmlError

app = typer.Typer(
    help="tipml — scoring, generation and learning for personalised tips.",
    no_args_is_help=True,
    add_completion=False,
)
prompts_app = typer.Typer(help="The prompt registry.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")
dlq_app = typer.Typer(help="Dead letters of the JetStream consumers.", no_args_is_help=True)
archive_app = typer.Typer(help="The Parquet archive (offline log).", no_args_is_help=True)
app.add_typer(archive_app, name="archive")
app.add_typer(dlq_app, name="dlq")
features_app = typer.Typer(help="Online features.", no_args_is_help=True)
app.add_typer(features_app, name="features")
experiments_app = typer.Typer(
    help="Experiments: assignment, off-policy evaluation, reward report.", no_args_is_help=True
)
app.add_typer(experiments_app, name="experiments")
console = Console(stderr=True)


def fail(exc: TipmlError) -> NoReturn:
    """One line on stderr (never wrapped, markup in the message not interpreted), exit 2."""
    console.print("[bold red]error:[/] " + escape(" ".join(exc.detail.split())), soft_wrap=True)
    raise typer.Exit(2)


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a command's coroutine; a TipmlError becomes a clean message and exit code 2."""
    try:
        asyncio.run(coro)
    except TipmlError as exc:
        fail(exc)


def settings(**overrides: object) -> Any:
    from tipml.settings import load_settings

    try:
        return load_settings(**overrides)
    except TipmlError as exc:
        fail(exc)


async def bus(settings: Any) -> Any:
    """The bus of a running ``tipml serve`` (same data dir) or ``TIPML_NATS_URL``."""
    from tipml.events.bus import connect, provision, running_url

    url = running_url(settings)
    if url is None:
        raise TipmlError(
            "no NATS server: set TIPML_NATS_URL, or run `tipml serve` with the "
            "same TIPML_DATA_DIR (it starts the embedded server)"
        )
    return await provision(await connect(url, "tipml-cli"), settings)

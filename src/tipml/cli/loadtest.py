"""``tipml loadtest``: drive a running service with the simulator's traffic mix at a target
rate; a live table per route while it runs, the summary (or JSON) at the end."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tipml.cli.app import app, fail
from tipml.errors import TipmlError


def _table(summary: dict[str, dict[str, Any]], title: str) -> Table:
    table = Table("route", "requests", "ok", "errors", "rps", "p50 ms", "p99 ms", "max ms")
    table.title = title
    for route, r in summary.items():
        if not r["requests"]:
            continue
        errors = ", ".join(f"{'no answer' if c == '0' else c}: {n}" for c, n in r["errors"].items())
        table.add_row(
            route,
            str(r["requests"]),
            str(r["ok"]),
            errors or "0",
            f"{r['rps']:.1f}",
            *(f"{r[k]:.2f}" if r[k] is not None else "—" for k in ("p50_ms", "p99_ms", "max_ms")),
        )
    return table


@app.command("loadtest")
def loadtest(
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None, typer.Option(help="Bearer token (default: the first of TIPML_API_TOKENS).")
    ] = None,
    rate: Annotated[float, typer.Option(help="Steps started per second (open loop).")] = 50.0,
    duration: Annotated[float, typer.Option(help="Seconds of arrivals.")] = 30.0,
    candidates: Annotated[
        int, typer.Option(help="Candidates per /score (up to the simulated catalog's 70).")
    ] = 50,
    generate_every: Annotated[
        int, typer.Option(help="Every Nth step also calls /generate (0: never).")
    ] = 20,
    users: Annotated[int, typer.Option(help="Simulated users.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the simulated traffic.")] = 7,
    max_error_rate: Annotated[
        float, typer.Option(help="Exit 1 when a route's error share exceeds this.")
    ] = 0.01,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Drive a running tipml with simulated users at --rate steps/s: each step a /score of
    --candidates simulated tips, every --generate-every'th also a /generate. Prints requests,
    errors (by status; 'no answer' for refused or timed-out calls), achieved rps and p50/p99
    per route, live while it runs."""
    from tipml.sim.catalog import CATALOG
    from tipml.sim.driver import Driver
    from tipml.sim.loadtest import run_load, summarize

    for name, value in (("--rate", rate), ("--duration", duration)):
        if value <= 0:
            fail(TipmlError(f"{name}: must be > 0, got {value:g}"))
    if not 1 <= candidates <= len(CATALOG):
        fail(TipmlError(f"--candidates: 1 to {len(CATALOG)} (the simulated catalog's size)"))
    bearer = token or os.environ.get("TIPML_API_TOKENS", "").split(",")[0].strip()
    if not bearer:
        fail(TipmlError("--token: none given and TIPML_API_TOKENS is not set"))
    driver = Driver(
        url.rstrip("/"),
        bearer,
        users=users,
        candidates=candidates,
        generate_every=generate_every if generate_every > 0 else 10**12,
        seed=seed,
    )
    title = f"{url} at {rate:g} steps/s for {duration:g} s"
    live_console = Console(stderr=True)
    with Live(console=live_console, refresh_per_second=4, transient=as_json) as live:

        def show(report: Any, elapsed: float) -> None:
            live.update(_table(summarize(report, elapsed), f"{title} — {elapsed:.0f} s"))

        report = asyncio.run(run_load(driver, rate, duration, on_tick=show))
    summary = summarize(report)
    if as_json:
        out = {"url": url, "rate": rate, "duration_s": duration, "routes": summary}
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    worst = max((r["error_rate"] for r in summary.values() if r["requests"]), default=0.0)
    if worst > max_error_rate:
        Console(stderr=True).print(
            f"error rate {worst:.1%} above --max-error-rate {max_error_rate:.1%}"
        )
        raise typer.Exit(1)

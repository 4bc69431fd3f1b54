"""``tipml consume``, ``tipml dlq list|replay`` and ``tipml archive compact``."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Annotated

import typer

from tipml.cli.app import app, archive_app, bus, console, dlq_app, fail, run, settings
from tipml.errors import TipmlError


@app.command()
def consume(
    only: Annotated[
        str, typer.Option(help="Comma-separated: signals, feedback, archiver, learner.")
    ] = "signals,feedback,archiver,learner",
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus metrics (0: off).")] = 0,
    member: Annotated[
        str | None,
        typer.Option(
            help="K/N: consume only the signal partitions p with p % N == K (each of N "
            "processes the only writer of its users; TIPML_CONSUMER_MEMBER). Default: all."
        ),
    ] = None,
) -> None:
    """Run the JetStream consumers until SIGINT/SIGTERM (graceful: finish, ack, write state)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from tipml.domain.rewards import RewardTable
    from tipml.events.bus import running_url
    from tipml.events.runtime import ALL_CONSUMERS, EventsRuntime
    from tipml.experiments.config import load_experiments
    from tipml.experiments.learner import learner_factory
    from tipml.logs import configure_logging
    from tipml.serving.prompts import known_versions

    config = settings(consumer_member=member) if member is not None else settings()
    # Join the embedded server of a `tipml serve` on the same data dir rather than starting
    # a second one on the same store; with neither, start one (standalone consumers).
    config = config.model_copy(update={"nats_url": running_url(config)})
    configure_logging(config.log_level)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_CONSUMERS))
    if unknown:
        fail(
            TipmlError(
                f"--only: unknown consumer(s) {', '.join(unknown)}; "
                f"known: {', '.join(ALL_CONSUMERS)}"
            )
        )
    factories = {}
    if "learner" in names:  # loading the experiments costs ~0.7 s of imports: only if needed
        from tipml.domain.rewards import RewardTable
        from tipml.experiments.config import load_experiments
        from tipml.experiments.learner import learner_factory
        from tipml.serving.prompts import known_versions

        try:
            experiments = load_experiments(config.experiments_config, known_versions())
        except TipmlError as exc:
            fail(exc)
        factories["learner"] = learner_factory(
            experiments,
            RewardTable(config.rewards),
            horizon_s=config.dedupe_horizon_s,
            grace_s=config.learner_grace_s,
        )
    registry = CollectorRegistry()
    if metrics_port:
        start_http_server(metrics_port, registry=registry)

    async def main() -> None:
        events = EventsRuntime(
            config,
            registry,
            consumers=names,
            factories=factories,
            name="tipml-consume",
        )
        await events.start(wait=True)
        console.print(f"consuming {', '.join(names)} from {events.url}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await events.stop()

    run(main())


@dlq_app.command("list")
def dlq_list(limit: Annotated[int, typer.Option(help="At most this many.")] = 1000) -> None:
    """Print dead letters as JSON lines (oldest first)."""
    import orjson

    from tipml.events.dlq import dead_letters

    async def main() -> None:
        conn = await bus(settings())
        async for seq, letter in dead_letters(conn, limit):
            sys.stdout.write(orjson.dumps({"dlq_seq": seq, **letter}).decode() + "\n")
        await conn.close()

    run(main())


@dlq_app.command("replay")
def dlq_replay(
    subject: Annotated[str, typer.Option(help="Only letters whose subject starts so.")] = "",
) -> None:
    """Re-publish dead letters to their original subjects (after a fix), then remove them."""
    import orjson

    from tipml.events.dlq import replay

    async def main() -> None:
        conn = await bus(settings())
        for row in await replay(conn, subject_prefix=subject or None):
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        await conn.close()

    run(main())


@archive_app.command("compact")
def archive_compact(
    stream: Annotated[
        str, typer.Option(help="Comma-separated: signals, feedback, decisions.")
    ] = "signals,feedback,decisions",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Merge each day's small Parquet files into one, each stream sequence once (idempotent;
    safe while the archiver runs)."""
    import orjson

    from tipml.events.archive import compact

    names = [s.strip() for s in stream.split(",") if s.strip()]
    unknown = sorted(set(names) - {"signals", "feedback", "decisions"})
    if unknown:
        fail(
            TipmlError(
                f"--stream: unknown {', '.join(unknown)}; known: signals, feedback, decisions"
            )
        )
    done = compact(settings().archive, names)
    rows = [vars(c) for c in done]
    if as_json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    if not rows:
        console.print("nothing to compact")
    for c in done:
        console.print(
            f"{c.partition}: {c.files_before} files → 1, {c.rows_before} rows → {c.rows_after}"
        )

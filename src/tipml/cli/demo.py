"""``tipml demo``: start the whole system on embedded defaults, drive it with the simulator
(``sim.demo``) and print what it did."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from tipml.cli.app import app, console, fail
from tipml.errors import TipmlError


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
    duration: Annotated[float, typer.Option(help="Seconds of simulated traffic.")] = 60.0,
    port: Annotated[int, typer.Option(help="Port for the service.")] = 8000,
    keep_serving: Annotated[bool, typer.Option(help="Keep serving after the run.")] = False,
    users: Annotated[int, typer.Option(help="Simulated users.")] = 200,
    concurrency: Annotated[int, typer.Option(help="Concurrent simulated clients.")] = 6,
    generate_every: Annotated[
        int, typer.Option(help="One /generate per this many /score steps.")
    ] = 1,
    min_generations: Annotated[
        int,
        typer.Option(
            help="Keep driving past --duration (up to 4x) until this many tips were generated."
        ),
    ] = 800,
    learn: Annotated[
        bool,
        typer.Option(
            help="Then train a ranker from the traffic, shadow it, promote it and compare it "
            "with the baseline on fresh traffic."
        ),
    ] = True,
    learn_duration: Annotated[
        float, typer.Option(help="Seconds of /score traffic per learning phase (3 phases).")
    ] = 30.0,
) -> None:
    """Start the whole system on embedded defaults and drive it with the simulator."""
    from tipml.sim.demo import drive
    from tipml.sim.driver import percentile

    token = os.environ.get("TIPML_API_TOKENS", "").split(",")[0] or secrets.token_urlsafe(24)
    env = {**os.environ, "TIPML_API_TOKENS": token, "TIPML_LOG_REQUESTS": "0"}
    # Both packaged experiments run: the A/B test on one half of the `prompts` layer, the
    # Thompson-sampling bandit on the other (a setting of your own wins).
    env.setdefault("DEFAULT_PROMPT_VERSION", "experiment:prompt-version,prompt-bandit")
    # /score follows the registry (the baseline until a champion exists) and explores a little,
    # so the log holds outcomes of more than the baseline's first choices to learn from.
    env.setdefault("TIPML_SCORER", "registry")
    env.setdefault("TIPML_REGISTRY_POLL_S", "1")
    env.setdefault("TIPML_SCORE_POLICY", "epsilon_greedy:0.1")
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
        console.print(
            f"ready; driving {users} simulated users for {duration:g} s "
            f"(longer, up to {4 * duration:g} s, until {min_generations} tips were generated)"
        )
        with console.status("simulating: signals → score → generate → reactions → feedback"):
            report, loop = asyncio.run(
                drive(
                    base_url,
                    token,
                    users,
                    duration,
                    concurrency,
                    data_dir,
                    generate_every=generate_every,
                    min_generations=min_generations,
                )
            )
        _print_report(report, percentile)
        _print_loop(loop)
        if learn:
            from tipml.sim.learn import learn as learn_loop

            # the status line shows the flow's steps; Prefect's own run log would interleave
            os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

            console.print("\n[bold]the learning loop[/]: train → shadow → promote")
            try:
                with console.status("training") as status:
                    result = learn_loop(
                        base_url,
                        token,
                        data_dir,
                        users=users,
                        duration=learn_duration,
                        concurrency=concurrency,
                        progress=status.update,
                    )
                _print_learning(result)
            except TipmlError as exc:  # a gate or the data refused: say why, as `tipml train`
                Console().print(f"no model trained: {' '.join(exc.detail.split())}")
        if keep_serving:
            console.print(
                f"\nserving on {base_url} — token: {token}\n"
                f"try: curl -s {base_url}/readyz ; Ctrl-C to stop"
            )
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except TipmlError as exc:
        fail(exc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


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
    if loop.get("experiments"):
        from tipml.cli.experiments import print_report

        out.print("\n[bold]experiments report[/] (GET /experiments/report)")
        print_report(loop["experiments"])
    shift = loop.get("bandit_shift") or []
    if shift and shift[0]["n"]:
        versions = sorted(k for k in shift[0] if k != "n")
        table = Table(
            "part of the run",
            "decisions",
            *versions,
            title="prompt-bandit traffic by prompt version (the simulated users prefer v2)",
        )
        for label, part in zip(("first third", "middle third", "last third"), shift, strict=False):
            table.add_row(
                label, str(int(part["n"])), *(f"{part.get(v, 0.0):.0%}" for v in versions)
            )
        out.print(table)
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


def _print_learning(result: dict[str, Any]) -> None:
    from tipml.cli.learn import print_training

    out = Console()
    print_training(result["training"])
    shadow = result["shadow"]
    if shadow:
        s, c = shadow["shadow"]["dr"], shadow["champion"]["dr"]
        out.print(
            f"shadow report for tipml-ranker/{result['version']}: {shadow['decisions']} "
            f"decisions, top-1 agreement {shadow['top1_agreement']:.0%}, rank correlation "
            f"{shadow['rank_correlation']:.2f}; off-policy DR {s['value']:.3f} "
            f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] vs baseline {c['value']:.3f} "
            f"[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]"
        )
    moved = result["promoted"]
    out.print(
        f"promoted: tipml-ranker@champion {moved['previous'] or '(none)'} → {moved['version']}"
    )
    table = Table(
        "ranker",
        "decisions",
        "errors",
        "expected reward of the top tip",
        "random candidate",
        title="the same fresh simulated traffic, ranked by each",
    )
    for label, key in (("baseline", "baseline"), (f"tipml-ranker/{result['version']}", "model")):
        r = result[key]
        table.add_row(
            label,
            str(r["decisions"]),
            str(r["errors"]),
            f"{r['expected_reward']:.3f}",
            f"{r['random_candidate']:.3f}",
        )
    out.print(table)
    lift = result["model"]["expected_reward"] / result["baseline"]["expected_reward"] - 1
    out.print(f"trained model vs baseline: {lift:+.1%} expected reward per top tip")


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

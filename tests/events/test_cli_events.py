"""The operator's commands against a real server: consume, dlq list / replay, features get."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from tests.events.helpers import events_settings, eventually, publish, user_total
from tests.events.helpers import signal as make_signal
from tipml.events.bus import EmbeddedNats, connect, provision


def tipml(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tipml", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_consume_dlq_and_features_commands(nats: EmbeddedNats, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TIPML_NATS_URL": nats.url,
        "TIPML_DATA_DIR": str(tmp_path / "data"),
        "TIPML_LOG_LEVEL": "ERROR",
        "COLUMNS": "200",
    }
    nc = await connect(nats.url, "cli-test")
    js = nc.jetstream()
    await provision(nc, events_settings(tmp_path, nats.url))
    consumer = subprocess.Popen(
        [sys.executable, "-m", "tipml", "consume", "--only", "signals"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(3):
            s, d, eid = make_signal("ops-user", kind="task.completed", title="Deep work")
            await publish(js, s, d, eid)
        await publish(js, "signals.task.completed", b"\xff not json", "poison")

        async def applied() -> bool:
            return await user_total(js, "ops-user") == 3

        await eventually(applied, what="events consumed by `tipml consume`")
    finally:
        consumer.send_signal(signal.SIGTERM)
        await asyncio.to_thread(consumer.wait, 30)
    assert consumer.returncode == 0  # graceful shutdown
    state = orjson.loads((tmp_path / "data" / "state" / "signals-features.json").read_bytes())
    assert state["processed"] == 3
    assert state["dead_lettered"] == 1

    features = await asyncio.to_thread(tipml, ["features", "get", "ops-user"], env)
    assert features.returncode == 0, features.stderr
    body = orjson.loads(features.stdout)
    assert body["features"]["signal_counts_total"] == {"task.completed": 3}
    assert body["features"]["recent_signals"][-1]["text"] == "Deep work"
    missing = await asyncio.to_thread(tipml, ["features", "get", "nobody"], env)
    assert missing.returncode == 2
    assert "no online features" in missing.stderr

    listed = await asyncio.to_thread(tipml, ["dlq", "list"], env)
    assert listed.returncode == 0, listed.stderr
    letters = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert len(letters) == 1
    assert letters[0]["payload"] is None  # not UTF-8: kept byte for byte in payload_b64
    assert letters[0]["payload_b64"]
    assert letters[0]["error"] == "invalid_event"

    replayed = await asyncio.to_thread(tipml, ["dlq", "replay"], env)
    assert replayed.returncode == 0, replayed.stderr
    assert orjson.loads(replayed.stdout.splitlines()[0])["subject"] == "signals.task.completed"
    relisted = await asyncio.to_thread(tipml, ["dlq", "list"], env)
    assert relisted.stdout == ""
    await nc.close()


def test_commands_without_a_server_say_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIPML_")}
    env["TIPML_DATA_DIR"] = str(tmp_path / "empty")
    result = tipml(["dlq", "list"], env)
    assert result.returncode == 2
    assert "TIPML_NATS_URL" in result.stderr
    assert "Traceback" not in result.stderr

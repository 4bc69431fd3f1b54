"""Helpers for tests against a real nats-server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from nats.js import JetStreamContext

from tipml.domain.decisions import decode_decision
from tipml.events.bus import DECISIONS
from tipml.events.decisions import message_decisions
from tipml.settings import Settings


def events_settings(tmp_path: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dev": True,
        "nats_url": url,
        "data_dir": tmp_path / "data",
        "consumer_ack_wait_s": 2.0,
        "consumer_backoff_s": [0.2, 0.4],
        "consumer_max_deliver": 3,
        "consumer_batch": 200,
        "state_interval_s": 0.3,
    }
    values.update(overrides)
    return Settings(**values)


def consumer_process(url: str, data_dir: Path, **env: str) -> subprocess.Popen[bytes]:
    """``tipml consume --only signals`` in its own process (``env``: extra TIPML_ settings)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tipml", "consume", "--only", "signals"],
        env={
            **os.environ,
            "TIPML_NATS_URL": url,
            "TIPML_DATA_DIR": str(data_dir),
            "TIPML_CONSUMER_ACK_WAIT_S": "1",
            "TIPML_CONSUMER_BATCH": "50",
            "TIPML_LOG_LEVEL": "ERROR",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def signal(
    user: str,
    kind: str = "task.completed",
    event_id: str | None = None,
    ts: str = "2026-11-27T10:00:00+00:00",
    **attrs: Any,
) -> tuple[str, bytes, str]:
    eid = event_id or str(uuid.uuid4())
    body = {"event_id": eid, "user_id": user, "ts": ts, "attrs": attrs}
    return f"signals.{kind}", orjson.dumps(body), eid


async def publish(js: JetStreamContext, subject: str, data: bytes, msg_id: str | None) -> None:
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    await js.publish(subject, data, headers=headers)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout_s:g} s")


async def user_total(js: JetStreamContext, user: str, kind: str = "task.completed") -> int:
    from nats.js.errors import KeyNotFoundError

    from tipml.domain.records import kv_key

    kv = await js.key_value("user_features")
    try:
        entry = await kv.get(kv_key(user))
    except KeyNotFoundError:
        return 0
    record = orjson.loads(entry.value or b"{}")
    return int(record["s"]["total"].get(kind, 0))


async def logged_decisions(js: JetStreamContext) -> list[dict[str, Any]]:
    """Every decision the DECISIONS stream holds, in order: a message of its own or one of a
    block's (ADR 0028)."""
    info = await js.stream_info(DECISIONS)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(DECISIONS, seq)
        for _, data in message_decisions(msg.subject, msg.data or b"", msg.headers):
            out.append(decode_decision(data))
    return out

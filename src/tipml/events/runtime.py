"""Wires the event backbone for one process: the bus (embedded or external), consumers, the
decision log and the live view of per-tip rewards. Used by ``tipml serve`` (decision log, tip
view, consumers in process by default) and ``tipml consume`` (consumers only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from tipml.domain.records import decode_state, kv_key, kv_key_decode
from tipml.domain.rewards import RewardTable
from tipml.domain.tips import TipStatsView, tip_stats
from tipml.domain.users import materialize
from tipml.errors import ConfigError
from tipml.events.archive import archivers
from tipml.events.bus import (
    POLICIES_BUCKET,
    TIP_STATS_BUCKET,
    USER_FEATURES_BUCKET,
    Bus,
    EmbeddedNats,
    close_quietly,
    connect,
    provision,
)
from tipml.events.consumer import ConsumerRunner, Handler, is_transient
from tipml.events.decisions import DecisionLog
from tipml.events.handlers import FeedbackHandler, SignalsHandler
from tipml.events.metrics import EventMetrics
from tipml.settings import Settings

log = logging.getLogger("tipml.events")

ALL_CONSUMERS = ("signals", "feedback", "archiver", "learner")
# Consumers whose handler lives above the transport (``learner``: experiments/learner.py)
# are built by a factory the caller passes in, so this package never imports upward.
HandlerFactory = Callable[[Bus, EventMetrics], Awaitable[Handler]]


class StateView(Protocol):
    """A process's read-only copy of a bucket (decoded key → decoded state), replaced whole
    after each burst of updates read from the bucket's watch."""

    def replace(self, states: Mapping[str, Any]) -> None: ...


@dataclass
class _Watch:
    component: str  # its /readyz name
    bucket: str
    view: Callable[[dict[str, Any]], None]
    convert: Callable[[Any], Any]
    # in place: ``replica`` is the live dict once the watch has caught up with the bucket,
    # every later update applied to it (a large bucket, never copied), None while the watch
    # (re)starts; otherwise ``view`` gets a new snapshot after each burst of updates
    in_place: bool = False
    replica: dict[str, Any] | None = None
    count: int = 0  # keys in the view
    task: asyncio.Task[None] | None = None
    live: bool = False
    seen: float = 0.0
    error: str | None = None


class EventsRuntime:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        *,
        consumers: Sequence[str] = (),
        decisions: bool = False,
        tip_view: TipStatsView | None = None,
        policy_view: StateView | None = None,
        factories: Mapping[str, HandlerFactory] | None = None,
        name: str = "tipml",
        user_replica: bool = False,
    ) -> None:
        self.settings = settings
        self.metrics = EventMetrics(registry)
        self.consumer_names = tuple(consumers)
        self.factories = dict(factories or {})
        self.tip_view = tip_view
        self.watches: list[_Watch] = []
        if tip_view is not None:
            self.watches.append(
                _Watch(
                    "tip_view",
                    TIP_STATS_BUCKET,
                    tip_view.replace,
                    tip_stats,
                )
            )
        if policy_view is not None:
            self.watches.append(
                _Watch("policy_view", POLICIES_BUCKET, policy_view.replace, lambda s: s)
            )
        # serving's replica of the users' online features (TIPML_ONLINE_READ=replica)
        self._users: _Watch | None = None
        if user_replica:
            self._users = _Watch(
                "user_replica", USER_FEATURES_BUCKET, lambda _: None, lambda s: s, in_place=True
            )
            self.watches.append(self._users)
        self.name = name
        self.embedded: EmbeddedNats | None = None
        self.nc: NATS | None = None
        self.bus: Bus | None = None
        self.runners: list[ConsumerRunner] = []
        self.decisions = (
            DecisionLog(
                settings.data_dir / "decisions-spill",
                self.metrics,
                buffer=settings.decision_buffer,
                spill_max_bytes=settings.decision_spill_max_bytes,
                batch_max=settings.decision_batch_max,
            )
            if decisions
            else None
        )
        self.status = "starting"
        self.detail = "connecting to NATS"
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._user_kv: KeyValue | None = None

    @property
    def url(self) -> str:
        if self.settings.nats_url:
            return self.settings.nats_url
        assert self.embedded is not None
        return self.embedded.url

    def _connected(self) -> NATS | None:
        if self.bus is not None and self.bus.nc.is_connected:
            return self.bus.nc
        return None

    async def start(self, *, wait: bool = False) -> None:
        if self.settings.nats_url is None:
            self.embedded = EmbeddedNats(
                self.settings.data_dir / "nats",
                port=self.settings.nats_port,
                log_path=self.settings.data_dir / "nats-server.log",
            )
            # In this (the main) thread: the child is tied to the thread that starts it.
            self.embedded.start()
        if self.decisions is not None:
            self.decisions.start(self._connected)
        self._task = asyncio.create_task(self._connect_and_run(), name="events-start")
        if wait:
            await asyncio.shield(self._task)

    async def _connect_and_run(self) -> None:
        delay = 0.2
        while self.nc is None:
            try:
                self.nc = await connect(self.url, self.name)
            except Exception as exc:
                self.detail = f"cannot reach NATS at {self.url}: {type(exc).__name__}"
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        attempt = 0
        while True:
            try:
                await self._provision_and_start()
                break
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"[:500]
                # a stream or bucket "not found" right after it was created is the cluster
                # still placing it: as transient as a timeout
                if not (is_transient(exc) or isinstance(exc, NotFoundError)) or (
                    self._stopping.is_set()
                ):
                    self.status = "failed"
                    self.detail = detail
                    log.error("event backbone failed to start", extra={"error": detail})
                    raise
                # The server is there but cannot answer yet (a cluster electing its
                # leaders, several processes creating the same streams at once): try again.
                attempt += 1
                self.detail = f"provisioning streams, attempt {attempt}: {detail}"
                log.warning("event backbone not ready; retrying", extra={"error": detail})
                await self._stop_runners()
                await asyncio.sleep(min(0.5 * 2 ** min(attempt - 1, 4), 8.0))
        self.status = "ready"
        self.detail = f"connected to {self.url}"

    async def _provision_and_start(self) -> None:
        assert self.nc is not None
        self.bus = await provision(self.nc, self.settings)
        self._user_kv = await self.bus.kv(USER_FEATURES_BUCKET)
        for handler in await self._handlers():
            runner = ConsumerRunner(
                self.bus,
                handler,
                self.settings,
                self.metrics,
                state_dir=self.settings.data_dir / "state",
            )
            await runner.start()
            self.runners.append(runner)
        for watch in self.watches:
            watch.task = asyncio.create_task(self._watch(watch), name=watch.component)

    async def _stop_runners(self) -> None:
        results = await asyncio.gather(
            *(runner.stop() for runner in self.runners), return_exceptions=True
        )
        self.runners = []
        for result in results:
            if isinstance(result, BaseException):
                log.error("consumer stop failed", extra={"error": repr(result)[:300]})

    async def _handlers(self) -> list[Handler]:
        assert self.bus is not None
        out: list[Handler] = []
        if "signals" in self.consumer_names:
            # the unkeyed signals (shared by every process), then this process's partitions
            owned = self.settings.owned_partitions(self.bus.signal_partitions)
            for partition in (None, *owned):
                out.append(
                    await SignalsHandler.create(
                        self.bus,
                        self.metrics,
                        horizon_s=self.settings.dedupe_horizon_s,
                        partition=partition,
                    )
                )
        if "feedback" in self.consumer_names:
            rewards = RewardTable(self.settings.rewards)
            out.append(
                await FeedbackHandler.create(
                    self.bus, rewards, self.metrics, horizon_s=self.settings.dedupe_horizon_s
                )
            )
        if "archiver" in self.consumer_names:
            # beside /score (the process logs decisions) the archiver lingers less (ADR 0024)
            linger = self.settings.archive_linger(beside_requests=self.decisions is not None)
            out.extend(archivers(self.settings.archive, linger))
        for name in self.consumer_names:
            if name in self.factories:
                out.append(await self.factories[name](self.bus, self.metrics))
            elif name not in ("signals", "feedback", "archiver"):
                raise ConfigError(f"consumer {name!r}: no handler given to this process")
        return out

    async def _watch(self, watch: _Watch) -> None:
        """Keep a process's read-only view (per-tip aggregates, bandit parameters) in step
        with its bucket. Supervised: whatever the watch raises — including re-creating it —
        is recorded (the view's component of ``/readyz``) and the watch starts over from the
        bucket's current values after a back-off, so serving never reads a stale view
        silently."""
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._watch_once(watch)
                return
            except Exception as exc:
                failures += 1
                watch.error = f"{type(exc).__name__}: {exc}"[:300]
                watch.live = False
                log.error(
                    "view watch failed; restarting",
                    extra={"view": watch.component, "error": watch.error},
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), timeout=min(0.5 * 2 ** min(failures - 1, 4), 8.0)
                    )

    async def _watch_once(self, watch: _Watch) -> None:
        assert self.bus is not None
        kv = await self.bus.kv(watch.bucket)
        current: dict[str, Any] = {}
        dirty = caught_up = False
        swapped = time.monotonic()
        watcher = await kv.watchall()
        try:
            # A stop flag, not only cancellation: a cancel that lands while the watcher's
            # internal wait_for completes is swallowed (Python 3.11), and the loop would go on.
            while not self._stopping.is_set():
                try:
                    entry = await watcher.updates(timeout=0.2)  # type: ignore[no-untyped-call]
                except TimeoutError:
                    entry = None
                now = time.monotonic()
                watch.live = True
                watch.seen = now
                if entry is not None and entry.key:
                    key = kv_key_decode(entry.key)
                    if entry.value and entry.operation is None:
                        current[key] = watch.convert(decode_state(entry.value))
                    else:  # deleted or purged
                        current.pop(key, None)
                    dirty = True
                    if watch.replica is not None:
                        watch.count = len(current)
                    # a snapshot view is refreshed at least every 100 ms under a steady
                    # stream of updates, not only when the stream pauses
                    if watch.in_place or now - swapped < 0.1:
                        continue
                elif watch.in_place:
                    # None: the watcher's end of the bucket's current values (or 0.2 s quiet)
                    if not caught_up:
                        caught_up = True
                        watch.replica = current
                    watch.count = len(current)
                    continue
                if dirty:
                    watch.view(dict(current))
                    watch.count = len(current)
                    dirty = False
                    swapped = now
        finally:
            watch.replica = None  # nothing stale is read while the watch restarts
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def replica_features(self, user_id: str) -> tuple[bool, dict[str, Any] | None]:
        """``(True, features or None)`` from the live replica, without awaiting anything;
        ``(False, None)`` when there is no live replica (the caller reads the bucket)."""
        replica = self._users.replica if self._users is not None else None
        if replica is None:
            return False, None
        state = replica.get(user_id)
        return True, None if state is None else materialize(state, time.time())

    async def user_features(self, user_id: str) -> dict[str, Any] | None:
        """``OnlineFeatureStore``: from the replica when there is one and it is live (no
        round trip), else one KV get within ``TIPML_ONLINE_TIMEOUT_S``."""
        known, features = self.replica_features(user_id)
        if known:
            return features
        if self._user_kv is None or self.nc is None or not self.nc.is_connected:
            return None
        try:
            entry = await asyncio.wait_for(
                self._user_kv.get(kv_key(user_id)), self.settings.online_timeout_s
            )
        except Exception:
            return None
        if not entry.value:
            return None
        return materialize(decode_state(entry.value), time.time())

    def health(self) -> dict[str, tuple[bool, str]]:
        out: dict[str, tuple[bool, str]] = {}
        connected = self.nc is not None and self.nc.is_connected
        out["nats"] = (
            connected and self.status == "ready",
            self.detail if not connected or self.status != "ready" else f"connected to {self.url}",
        )
        for runner in self.runners:
            out[f"consumer:{runner.handler.name}"] = runner.healthy()
        if self.decisions is not None:
            out["decision_log"] = self.decisions.health()
        if self.status == "ready":
            for watch in self.watches:
                out[watch.component] = self._watch_health(watch)
        return out

    @staticmethod
    def _watch_health(watch: _Watch) -> tuple[bool, str]:
        task, bucket = watch.task, watch.bucket
        if task is None or task.done():
            return False, f"not watching {bucket}: {watch.error or 'not started'}"
        if not watch.live:
            return False, f"watch of {bucket} restarting after: {watch.error}"
        age = time.monotonic() - watch.seen
        if age > 10:
            return False, f"no word from the {bucket} watch for {age:.0f} s"
        if watch.in_place and watch.replica is None:
            return True, f"reading {bucket} into memory (reads ask the bucket meanwhile)"
        return True, f"watching {bucket}: {watch.count} keys"

    async def stop(self) -> None:
        """Every step runs whatever the one before did: consumers, the tip view, the decision
        flush (or spill), the NATS connection, the embedded server."""
        await self._stop_runners()
        self._stopping.set()
        for watch in self.watches:
            if watch.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(watch.task, timeout=2)
        if self.decisions is not None:
            try:
                await self.decisions.stop()
            except Exception:
                log.exception("decision log stop failed")
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.nc is not None:
            await close_quietly(self.nc)
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)

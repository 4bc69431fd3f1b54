"""Long-lived resources of one serving process, owned by the app's lifespan.

The scorer is built eagerly (a bad model fails start-up). The LLM gateway is built in the
background — importing LiteLLM and starting the embedded llama.cpp server take seconds — so
``/score`` is available at once; until the gateway is up ``/generate`` serves fallbacks and
``/readyz`` says why it is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tipml.domain.rewards import RewardTable
from tipml.domain.tips import TipStatsView
from tipml.errors import ConfigError, TipmlError
from tipml.events.runtime import ALL_CONSUMERS, EventsRuntime
from tipml.experiments.config import ExperimentsConfig, load_experiments
from tipml.experiments.learner import learner_factory
from tipml.experiments.live import PolicyView, router_for
from tipml.experiments.policies import Greedy, RankingPolicy, parse_score_policy
from tipml.features.store import OnlineFeatureStore
from tipml.serving.gateway import LOCAL_LLM_VAR, LiteLLMGateway, LLMGateway, load_gateway_config
from tipml.serving.local_llm import LocalLLM, assemble_default_model
from tipml.serving.metrics import FLUSH_INTERVAL_S, Metrics, watch_loop_lag
from tipml.serving.prompts import known_versions, resolve_version
from tipml.serving.scoring import Scorer, build_scorer

if TYPE_CHECKING:
    from tipml.serving.models import RegistryWatcher
from tipml.serving.service import GenerateService, ScoreService
from tipml.settings import Settings

log = logging.getLogger("tipml.runtime")


@dataclass
class GatewayState:
    status: str = "starting"  # starting | ready | failed
    detail: str = "gateway is starting"
    gateway: LLMGateway | None = None
    local_llm: LocalLLM | None = None
    llm_detail: str | None = None  # set while the embedded model is down or restarting


class OnlineStoreHolder:
    """The ``OnlineFeatureStore`` ``/generate`` reads: the event runtime's JetStream KV by
    default, or Feast (``TIPML_ONLINE_STORE=feast``), which is built in the background because
    importing Feast takes seconds; until then there is simply no online context."""

    def __init__(self, default: OnlineFeatureStore) -> None:
        self.store: OnlineFeatureStore | None = default
        self.kind = "jetstream"
        self.error: str | None = None

    def health(self) -> tuple[bool, str]:
        if self.store is not None:
            return True, f"{self.kind} online store"
        if self.error is not None:
            return False, f"{self.kind} online store unavailable: {self.error}"
        return False, f"{self.kind} online store starting"

    async def user_features(self, user_id: str) -> dict[str, Any] | None:
        store = self.store
        return None if store is None else await store.user_features(user_id)

    def replica_features(self, user_id: str) -> tuple[bool, dict[str, Any] | None]:
        """The user's features from serving's in-memory replica, if the store keeps one:
        ``(True, features or None)``; ``(False, None)``: await ``user_features`` instead."""
        replica = getattr(self.store, "replica_features", None)
        return (False, None) if replica is None else replica(user_id)


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics
    scorer: Scorer
    score_service: ScoreService
    generate_service: GenerateService
    events: EventsRuntime
    online: OnlineStoreHolder
    gateway_state: GatewayState = field(default_factory=GatewayState)
    tip_stats: TipStatsView = field(default_factory=TipStatsView)
    policy_view: PolicyView = field(default_factory=PolicyView)
    experiments: ExperimentsConfig | None = None
    registry: RegistryWatcher | None = None
    _task: asyncio.Task[None] | None = None
    _feast_task: asyncio.Task[None] | None = None
    _llm_task: asyncio.Task[None] | None = None
    _flush_task: asyncio.Task[None] | None = None
    _lag_task: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, settings: Settings, *, scorer: Scorer | None = None) -> Runtime:
        settings.check_serving()
        # Fail fast on a config that cannot work, before anything starts.
        load_gateway_config(settings.gateway_config)
        experiments = load_experiments(settings.experiments_config, known_versions())
        policy_view = PolicyView()
        rng = np.random.default_rng()  # this process's own: replicas never explore in step
        prompt_router = router_for(
            "DEFAULT_PROMPT_VERSION",
            settings.default_prompt_version,
            "prompt_version",
            experiments,
            policy_view,
            rng,
        )
        if prompt_router is None:
            resolve_version(None, settings.default_prompt_version)  # refuse an unknown default
        score_router = router_for(
            "TIPML_SCORE_POLICY",
            settings.score_policy,
            "score_policy",
            experiments,
            policy_view,
            rng,
        )
        score_policy: RankingPolicy = Greedy()
        if score_router is None:
            try:
                score_policy = parse_score_policy(settings.score_policy)
            except ConfigError as exc:
                raise ConfigError(
                    f"TIPML_SCORE_POLICY: {exc.detail}, or experiment:<name>"
                ) from None
        metrics = Metrics()
        chosen = scorer or build_scorer(settings)
        state = GatewayState()
        tip_stats = TipStatsView()
        events = EventsRuntime(
            settings,
            metrics.registry,
            consumers=ALL_CONSUMERS if settings.consumers == "inprocess" else (),
            decisions=True,
            tip_view=tip_stats,
            policy_view=policy_view,
            factories={"learner": _learner(settings, experiments)},
            name="tipml-serve",
            user_replica=settings.online_read == "replica" and settings.online_store == "jetstream",
        )
        assert events.decisions is not None
        online = OnlineStoreHolder(events)
        score_service = ScoreService(
            settings,
            chosen,
            score_policy,
            tip_stats,
            metrics,
            events.decisions,
            router=score_router,
            rng=rng,
        )
        watcher = None
        if settings.scorer == "registry" and scorer is None:
            from tipml.serving.models import RegistryWatcher

            watcher = RegistryWatcher.build(settings, score_service)
            watcher.start_up()
        return cls(
            settings=settings,
            metrics=metrics,
            scorer=chosen,
            score_service=score_service,
            registry=watcher,
            generate_service=GenerateService(
                settings,
                lambda: state.gateway,
                metrics,
                events.decisions,
                online,
                router=prompt_router,
            ),
            events=events,
            online=online,
            gateway_state=state,
            tip_stats=tip_stats,
            policy_view=policy_view,
            experiments=experiments,
        )

    def experiments_report(self) -> dict[str, Any]:
        """The reward report over the archive (blocking: DuckDB reads the Parquet files)."""
        from tipml.experiments.logs import exposures
        from tipml.experiments.report import build_report

        assert self.experiments is not None
        items = exposures(self.settings.archive, RewardTable(self.settings.rewards))
        return build_report(items, self.experiments)

    async def start(self) -> None:
        await self.events.start()
        if self.registry is not None:
            self.registry.start()
        if self.settings.online_store == "feast":
            self.online.store = None
            self.online.kind = f"feast ({self.settings.feast_online})"
            self._feast_task = asyncio.create_task(self._start_feast(), name="feast")
        self._task = asyncio.create_task(self._start_gateway(), name="tipml-gateway-start")
        self._flush_task = asyncio.create_task(self._flush_metrics(), name="metrics-flush")
        self._lag_task = asyncio.create_task(
            watch_loop_lag(self.metrics.loop_lag.observe), name="loop-lag"
        )

    async def _flush_metrics(self) -> None:
        """The batched request metrics into Prometheus's, every ``FLUSH_INTERVAL_S``: what
        another worker's ``/metrics`` reads (this process's own flushes at each scrape)."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.metrics.flush()

    async def _start_feast(self) -> None:
        from tipml.features.feast_store import FeastOnlineStore

        try:
            self.online.store = await asyncio.to_thread(FeastOnlineStore, self.settings)
        except Exception as exc:
            self.online.error = f"{type(exc).__name__}: {exc}"[:300]
            log.error("feast online store unavailable", extra={"error": self.online.error})

    async def wait_gateway(self, timeout_s: float) -> GatewayState:
        if self._task is not None:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        return self.gateway_state

    async def _start_gateway(self) -> None:
        state, settings = self.gateway_state, self.settings
        try:
            env: dict[str, str] | None = None
            config = load_gateway_config(settings.gateway_config)
            if config.uses_local_llm:
                if settings.local_llm == "off":
                    raise TipmlError(
                        f"the gateway config uses ${{{LOCAL_LLM_VAR}}} but TIPML_LOCAL_LLM=off "
                        f"and {LOCAL_LLM_VAR} is not set"
                    )
                state.detail = "assembling and starting the local llama.cpp model"
                model_path = settings.local_llm_model
                if model_path is None:
                    model_path = await asyncio.to_thread(assemble_default_model, settings.data_dir)
                settings.data_dir.mkdir(parents=True, exist_ok=True)
                llm = local_llm(settings, model_path)
                state.local_llm = llm
                llm.start()
                await llm.wait_ready(settings.local_llm_startup_s)
                state.detail = "warming up the local model"
                await llm.warm_up(_warm_prompts(settings))
                self._llm_task = asyncio.create_task(self._supervise_llm(llm), name="llm-watch")
                env = {**_environ(), LOCAL_LLM_VAR: llm.api_base}
                config = load_gateway_config(settings.gateway_config, env)
            state.detail = "loading LiteLLM"
            gateway = await asyncio.to_thread(LiteLLMGateway, config)
            state.gateway = gateway
            state.status = "ready"
            where = " via local llama.cpp" if state.local_llm else ""
            state.detail = (
                f"routes: {', '.join(gateway.routes)}; default "
                f"{config.default_route} ({config.mode}){where}"
            )
            self.metrics.gateway_ready.set(1)
            _freeze_heap()
            log.info("gateway ready", extra={"routes": gateway.routes})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.status = "failed"
            state.detail = f"{type(exc).__name__}: {exc}"[:500]
            log.error("gateway failed to start", extra={"error": state.detail})

    async def _supervise_llm(self, llm: LocalLLM) -> None:
        """Restart the embedded model's server when it dies (back-off 1 s doubling to 30 s);
        ``/readyz`` says so meanwhile, and ``/generate`` serves fallbacks until it is back."""
        state, settings = self.gateway_state, self.settings
        delay = 1.0
        while True:
            await asyncio.sleep(1.0)
            if llm.running:
                continue
            code = llm.returncode
            llm.restarts += 1
            state.llm_detail = f"llama.cpp server exited (code {code}); restart {llm.restarts}"
            log.error("local llm exited; restarting", extra={"code": code, "n": llm.restarts})
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(llm.stop)
                llm.start()
                await llm.wait_ready(settings.local_llm_startup_s)
                await llm.warm_up(_warm_prompts(settings))
            except Exception as exc:
                state.llm_detail = f"restart {llm.restarts} failed: {exc}"[:300]
                delay = min(delay * 2, 30.0)
                continue
            state.llm_detail = None
            delay = 1.0

    async def stop(self) -> None:
        for task in (self._flush_task, self._lag_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.metrics.flush()
        if self.registry is not None:
            await self.registry.stop()
        if self._llm_task is not None:
            self._llm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._llm_task
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.gateway_state.gateway is not None:
            await self.gateway_state.gateway.aclose()
        if self.gateway_state.local_llm is not None:
            await asyncio.to_thread(self.gateway_state.local_llm.stop)
        await self.events.stop()


def _learner(settings: Settings, experiments: ExperimentsConfig) -> Any:
    return learner_factory(
        experiments,
        RewardTable(settings.rewards),
        horizon_s=settings.dedupe_horizon_s,
        grace_s=settings.learner_grace_s,
    )


def local_llm(settings: Settings, model_path: Path) -> LocalLLM:
    """The embedded llama.cpp server as the settings configure it (not started)."""
    return LocalLLM(
        model_path,
        server=settings.local_llm_server,
        threads=settings.local_llm_threads,
        n_ctx=settings.local_llm_ctx,
        slots=settings.local_llm_slots,
        nice=settings.local_llm_nice,
        poll=settings.local_llm_poll,
        log_path=settings.data_dir / "local-llm.log",
    )


def _freeze_heap() -> None:
    """Move everything allocated at start-up (LiteLLM alone is hundreds of thousands of
    objects) out of the garbage collector's reach. Without this, every full collection walks
    that heap and stalls a request for tens of milliseconds (seen as /score p99 spikes)."""
    gc.collect()
    gc.freeze()


def _warm_prompts(settings: Settings) -> list[str]:
    """One prompt per released version, the default first: each lands in its own slot, whose
    cache then holds that version's system text and few-shot examples."""
    from tipml.features.context import build_context
    from tipml.features.profile_schema import EMPTY_PROFILE
    from tipml.serving.prompts import VERSIONS

    # with an experiment as the default, warm the built-in default first
    default_key = "v1" if settings.default_prompt_version.startswith("experiment:") else None
    default = resolve_version(default_key, settings.default_prompt_version)
    ctx = build_context(
        topic="sleep",
        profile=EMPTY_PROFILE,
        ts=None,
        max_chars=settings.generate_max_chars,
        locale=None,
    )
    versions = [default, *(v for v in VERSIONS.values() if v.key != default.key)]
    return [v.render_completion(ctx) for v in versions]


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)

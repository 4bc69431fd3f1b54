"""The models serving scores with, kept in step with the registry's aliases.

``TIPML_SCORER=registry``: serving scores with the registry's ``champion`` and, when set (and
``TIPML_SHADOW`` is on), also with its ``shadow``, whose scores go to the decision log only.
A ``RegistryWatcher`` polls the aliases every ``TIPML_REGISTRY_POLL_S`` seconds and, when one
moves, loads the new version off the request path (``registry.store.Registry.load`` verifies
its SHA-256 and that it is LightGBM text) and swaps the reference: a request in flight keeps
the scorer it started with, the next one gets the new one — nothing is dropped or failed.
A version that fails verification is not loaded: serving keeps what it has and ``/readyz``
says why. Without a champion (none registered yet, or the registry unreachable) serving
scores with the baseline, unless ``TIPML_REGISTRY_REQUIRE_MODEL`` asks to refuse to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tipml.errors import ConfigError, TipmlError
from tipml.serving.scoring import Scorer, load_model

if TYPE_CHECKING:
    from tipml.registry.store import Registry
    from tipml.serving.service import ScoreService
    from tipml.settings import Settings

log = logging.getLogger("tipml.registry")


@dataclass
class RegistryStatus:
    reachable: bool | None = None  # None: not checked yet
    aliases: dict[str, str] = field(default_factory=dict)
    loaded: dict[str, str] = field(default_factory=dict)  # alias -> version being served
    problems: dict[str, str] = field(default_factory=dict)  # alias -> why it is not served
    error: str | None = None  # the last failure to reach the registry
    swaps: int = 0

    def detail(self, serving: str) -> str:
        if self.reachable is False:
            return f"registry unreachable ({self.error}); scoring with {serving}"
        parts = [f"scoring with {serving}"]
        if "shadow" in self.loaded:
            parts.append(f"shadow {self.loaded['shadow']}")
        for alias, why in self.problems.items():
            parts.append(f"{alias} not loaded: {why}")
        if not self.aliases.get("champion"):
            parts.append("no champion registered yet")
        return "; ".join(parts)


class RegistryWatcher:
    def __init__(self, settings: Settings, service: ScoreService, registry: Registry) -> None:
        self.settings = settings
        self.service = service
        self.registry = registry
        self.status = RegistryStatus()
        self.fallback = service.scorer
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, settings: Settings, service: ScoreService) -> RegistryWatcher:
        from tipml.registry.store import Registry

        return cls(settings, service, Registry.from_settings(settings))

    def _scorer(self, version: str) -> Scorer:
        loaded = self.registry.load(version)
        return load_model(
            loaded.text,
            f"{self.registry.name}/{version}",
            runtime=self.settings.model_runtime,
            cache_dir=self.settings.data_dir / "models" / "compiled",
        )

    def sync(self) -> bool:
        """Bring the served models in line with the aliases (blocking). True when something
        was swapped."""
        try:
            aliases = self.registry.aliases()
        except TipmlError as exc:
            self.status.reachable = False
            self.status.error = exc.detail
            return False
        self.status.reachable, self.status.error = True, None
        self.status.aliases = aliases
        swapped = False
        wanted = {"champion": aliases.get("champion")}
        if self.settings.shadow:
            wanted["shadow"] = aliases.get("shadow")
        for alias, version in wanted.items():
            if version == self.status.loaded.get(alias):
                continue
            if version is None:
                self._put(alias, None)
                self.status.loaded.pop(alias, None)
                self.status.problems.pop(alias, None)
                swapped = True
                continue
            if self.status.problems.get(alias, "").startswith(f"version {version}:"):
                continue  # already refused; keep what is served, do not retry every poll
            try:
                scorer = self._scorer(version)
            except TipmlError as exc:
                self.status.problems[alias] = f"version {version}: {exc.detail}"
                log.error("model not loaded", extra={"alias": alias, "error": exc.detail})
                continue
            self._put(alias, scorer)
            self.status.loaded[alias] = version
            self.status.problems.pop(alias, None)
            self.status.swaps += 1
            swapped = True
            log.info("model swapped in", extra={"alias": alias, "version": version})
        return swapped

    def _put(self, alias: str, scorer: Scorer | None) -> None:
        if alias == "champion":
            self.service.scorer = scorer or self.fallback
        else:
            self.service.shadow = scorer

    def start_up(self) -> None:
        """The first sync, at start-up: with ``registry_require_model``, no champion is fatal."""
        self.sync()
        if self.settings.registry_require_model and "champion" not in self.status.loaded:
            why = (
                self.status.error
                or self.status.problems.get("champion")
                or "no version has the alias 'champion'"
            )
            raise ConfigError(f"TIPML_REGISTRY_REQUIRE_MODEL: no champion to serve: {why}")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tipml-registry-watch")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                await asyncio.to_thread(self.sync)
            except Exception:  # a watcher bug must not stop serving
                log.exception("registry sync failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def health(self) -> tuple[bool, str]:
        return True, self.status.detail(self.service.scorer.version)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reachable": self.status.reachable,
            "aliases": self.status.aliases,
            "loaded": self.status.loaded,
            "problems": self.status.problems,
        }

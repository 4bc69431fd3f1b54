"""The LLM gateway: a LiteLLM ``Router`` configured from a file, behind a hard deadline.

The config file uses the keys of LiteLLM's own proxy config — ``model_list`` (one entry per
route: ``model_name``, ``litellm_params`` with ``timeout`` / ``max_retries``, and
``model_info.mode``: ``completion`` for base models, ``chat`` otherwise) and
``router_settings`` (``num_retries``, ``timeout``, ``fallbacks``, …) — plus ``default_route``,
the model group ``/generate`` calls. ``${VAR}`` in the file is replaced from the environment;
``${TIPML_LOCAL_LLM_API_BASE}`` is filled in by the embedded llama.cpp server.

Whatever goes wrong below the gateway — timeout, 429/5xx after retries and fallbacks, a
provider that hangs or drips bytes — surfaces as one ``GatewayError`` with a short ``reason``
within ``deadline_s``; ``/generate`` turns it into the fallback text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import yaml

from tipml.errors import ConfigError, GatewayError

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

LOCAL_LLM_VAR = "TIPML_LOCAL_LLM_API_BASE"
_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")

Mode = Literal["completion", "chat"]


@dataclass(frozen=True)
class LLMResult:
    route: str  # the model group called (fallbacks included, LiteLLM reports the model)
    text: str
    model: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


@dataclass(frozen=True)
class GatewayConfig:
    default_route: str
    model_list: list[dict[str, Any]]
    router_settings: dict[str, Any]
    uses_local_llm: bool
    max_in_flight: int | None = None
    stream: bool = False

    @property
    def mode(self) -> Mode:
        for entry in self.model_list:
            if entry["model_name"] == self.default_route:
                mode = entry.get("model_info", {}).get("mode", "chat")
                return "completion" if mode == "completion" else "chat"
        return "chat"

    def route_names(self) -> list[str]:
        return sorted({str(e["model_name"]) for e in self.model_list})


def load_gateway_config(path: Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and check a gateway file; substitute ``${VAR}`` from ``env`` (default: os.environ)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"gateway config {path}: {exc.strerror}") from exc
    try:
        parsed = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"gateway config {path}: not valid YAML: {exc}") from exc
    values = dict(os.environ if env is None else env)
    uses_local = LOCAL_LLM_VAR not in values and _mentions(parsed, f"${{{LOCAL_LLM_VAR}}}")
    if uses_local:
        values[LOCAL_LLM_VAR] = "http://127.0.0.1:0/v1"  # replaced once the server is up

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigError(f"gateway config {path}: environment variable {name} is not set")
        return values[name]

    raw = _substitute(parsed, substitute)
    if not isinstance(raw, dict):
        raise ConfigError(f"gateway config {path}: expected a mapping at the top level")
    model_list = raw.get("model_list")
    if not isinstance(model_list, list) or not model_list:
        raise ConfigError(f"gateway config {path}: model_list must be a non-empty list")
    for i, entry in enumerate(model_list):
        if not isinstance(entry, dict) or "model_name" not in entry:
            raise ConfigError(f"gateway config {path}: model_list[{i}] needs model_name")
        params = entry.get("litellm_params")
        if not isinstance(params, dict) or "model" not in params:
            raise ConfigError(f"gateway config {path}: model_list[{i}].litellm_params.model")
    names = {e["model_name"] for e in model_list}
    default_route = str(raw.get("default_route") or model_list[0]["model_name"])
    if default_route not in names:
        raise ConfigError(
            f"gateway config {path}: default_route {default_route!r} is not "
            f"a model_name (have: {', '.join(sorted(names))})"
        )
    settings = raw.get("router_settings") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"gateway config {path}: router_settings must be a mapping")
    for fallback in settings.get("fallbacks") or []:
        for target in (t for targets in dict(fallback).values() for t in targets):
            if target not in names:
                raise ConfigError(f"gateway config {path}: fallback target {target!r} unknown")
    max_in_flight = raw.get("max_in_flight")
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise ConfigError(f"gateway config {path}: max_in_flight must be a positive integer")
    stream = raw.get("stream", False)
    if not isinstance(stream, bool):
        raise ConfigError(f"gateway config {path}: stream must be true or false")
    return GatewayConfig(default_route, model_list, settings, uses_local, max_in_flight, stream)


def _mentions(node: object, needle: str) -> bool:
    if isinstance(node, str):
        return needle in node
    if isinstance(node, dict):
        return any(_mentions(v, needle) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, needle) for v in node)
    return False


def _substitute(node: Any, replace: Callable[[re.Match[str]], str]) -> Any:
    """Replace ``${VAR}`` in every string value (comments and keys are left alone)."""
    if isinstance(node, str):
        return _VAR.sub(replace, node)
    if isinstance(node, dict):
        return {k: _substitute(v, replace) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, replace) for v in node]
    return node


class LLMGateway(Protocol):
    """Every LLM route shares this shape; ``/generate`` depends on nothing else."""

    @property
    def mode(self) -> Mode: ...

    @property
    def routes(self) -> list[str]: ...

    async def complete(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, str]] | None = None,
        params: Mapping[str, Any],
        deadline_s: float,
    ) -> LLMResult: ...

    async def aclose(self) -> None: ...


def _reason(exc: BaseException) -> str:
    """A short, metric-friendly label for a provider failure."""
    import litellm

    ordered: tuple[tuple[type[BaseException], str], ...] = (
        (litellm.exceptions.Timeout, "provider_timeout"),
        (litellm.exceptions.RateLimitError, "rate_limited"),
        (litellm.exceptions.APIConnectionError, "provider_unreachable"),
        (litellm.exceptions.BadRequestError, "provider_rejected"),
        (litellm.exceptions.AuthenticationError, "provider_auth"),
    )
    for kind, label in ordered:
        if isinstance(exc, kind):
            return label
    # LiteLLM reports a refused connection as an InternalServerError("... Connection error.")
    if "connection error" in str(exc).lower() or _caused_by(exc, ConnectionError):
        return "provider_unreachable"
    return "provider_error"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# (prompt, messages, params) of one call; (text, model, finish reason, prompt and completion
# tokens) of its answer
_Request = tuple[str | None, Sequence[Mapping[str, str]] | None, Mapping[str, Any]]
_Answer = tuple[str, str, str | None, int, int]


class LiteLLMGateway:
    """``LLMGateway`` over a LiteLLM ``Router``. Importing LiteLLM takes seconds: build this
    off the request path (the app builds it in the background at start-up).

    With ``stream: true`` (the packaged config, for the embedded llama.cpp server) every call
    streams, so a call abandoned at its deadline is stopped for real: closing the stream
    closes the connection and the server stops generating. (LiteLLM opens a text-completion
    stream lazily, after its retry and fallback logic: a route that needs ``num_retries`` or
    ``fallbacks`` — a hosted provider, where an abandoned call costs money but not our cores
    — leaves ``stream`` off.) With ``max_in_flight`` set, calls queue for a slot, and the
    gateway sheds load instead of queueing work that cannot finish: from a moving average of
    the service time it estimates each call's wait, and answers ``overloaded`` at once when
    the wait plus one call would pass the deadline, or when a slot frees up too late to
    finish in time.
    """

    def __init__(self, config: GatewayConfig) -> None:
        import litellm
        from litellm.router import Router

        # Without a shared client LiteLLM builds a new HTTP client (an aiohttp session, its
        # connector and sockets) for many calls and never closes it: "Unclosed client
        # session" warnings and file descriptors that only the garbage collector returns.
        # One pooled client for the process, closed by ``aclose``.
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        litellm.aclient_session = self._http
        self.config = config
        self._router = Router(model_list=config.model_list, **config.router_settings)
        self._limit = config.max_in_flight
        self._slots = asyncio.Semaphore(self._limit) if self._limit else None
        self._in_flight = 0
        self._waiting = 0
        self.service_s: float | None = None  # moving average of one call's time in a slot
        self.shed = 0

    @property
    def mode(self) -> Mode:
        return self.config.mode

    @property
    def routes(self) -> list[str]:
        return self.config.route_names()

    def expected_s(self) -> float | None:
        """Expected time from now until a new call would be answered (None: not measured)."""
        if self._limit is None or self.service_s is None:
            return self.service_s
        ahead = max(0, self._in_flight + self._waiting + 1 - self._limit)
        return ahead * self.service_s / self._limit + self.service_s

    def _observe(self, seconds: float) -> None:
        self.service_s = seconds if self.service_s is None else 0.8 * self.service_s + 0.2 * seconds

    async def complete(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, str]] | None = None,
        params: Mapping[str, Any],
        deadline_s: float,
    ) -> LLMResult:
        started = time.perf_counter()
        route = self.config.default_route
        expected = self.expected_s()
        if self._limit is not None and expected is not None and expected > deadline_s:
            self.shed += 1
            raise GatewayError(
                f"{self._in_flight} in flight and {self._waiting} queued: an answer would "
                f"take about {expected:.1f} s, over the {deadline_s:g} s deadline",
                reason="overloaded",
            )
        try:
            async with asyncio.timeout(deadline_s), self._slot(started + deadline_s):
                began = time.perf_counter()
                request = (prompt, messages, params)
                call = self._stream if self.config.stream else self._once
                result = await call(route, request)
                self._observe(time.perf_counter() - began)
        except TimeoutError as exc:
            raise GatewayError(f"no answer within {deadline_s:g} s", reason="deadline") from exc
        except (asyncio.CancelledError, GatewayError):
            raise
        except Exception as exc:
            raise GatewayError(f"{type(exc).__name__}: {exc}"[:300], reason=_reason(exc)) from exc
        text, model, finish, prompt_tokens, completion_tokens = result
        return LLMResult(
            route=route,
            text=text,
            model=model or route,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=time.perf_counter() - started,
        )

    async def _call(
        self,
        route: str,
        prompt: str | None,
        messages: Sequence[Mapping[str, str]] | None,
        options: Mapping[str, Any],
    ) -> Any:
        if self.mode == "completion":
            return await self._router.atext_completion(model=route, prompt=prompt, **options)
        return await self._router.acompletion(model=route, messages=list(messages or []), **options)

    async def _once(self, route: str, request: _Request) -> _Answer:
        resp = await self._call(route, *request)
        choice = resp.choices[0]
        text = (choice.text if self.mode == "completion" else choice.message.content) or ""
        usage = getattr(resp, "usage", None)
        return (
            text,
            str(getattr(resp, "model", None) or ""),
            getattr(choice, "finish_reason", None),
            int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0),
        )

    async def _stream(self, route: str, request: _Request) -> _Answer:
        prompt, messages, params = request
        options = {"stream": True, "stream_options": {"include_usage": True}, **params}
        stream = await self._call(route, prompt, messages, options)
        parts: list[str] = []
        model, finish, usage, chunks = "", None, None, 0
        try:
            async for chunk in stream:
                chunks += 1
                model = str(getattr(chunk, "model", None) or model)
                usage = getattr(chunk, "usage", None) or usage
                for choice in getattr(chunk, "choices", None) or []:
                    delta = getattr(choice, "delta", None)
                    piece = getattr(delta, "content", None) if delta is not None else None
                    parts.append(piece if piece is not None else getattr(choice, "text", "") or "")
                    finish = getattr(choice, "finish_reason", None) or finish
        finally:
            # closing the stream closes the connection: the provider stops generating
            with contextlib.suppress(Exception):
                await stream.aclose()
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0) or chunks
        return "".join(parts), model, finish, prompt_tokens, completion_tokens

    @contextlib.asynccontextmanager
    async def _slot(self, deadline: float) -> AsyncIterator[None]:
        """One of ``max_in_flight`` slots, waited for within the deadline. A call that gets
        its slot too late to finish gives it back at once (``overloaded``): the model only
        works on calls that can still be answered in time."""
        if self._slots is None:
            self._in_flight += 1
            try:
                yield
            finally:
                self._in_flight -= 1
            return
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            left = deadline - time.perf_counter()
            if self.service_s is not None and left < self.service_s:
                self.shed += 1
                raise GatewayError(
                    f"a slot freed up with {max(left, 0):.1f} s left; one answer takes about "
                    f"{self.service_s:.1f} s",
                    reason="overloaded",
                )
            self._in_flight += 1
            try:
                yield
            finally:
                self._in_flight -= 1
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        import litellm

        if litellm.aclient_session is self._http:
            litellm.aclient_session = None
        await self._http.aclose()
        with contextlib.suppress(Exception):
            await litellm.close_litellm_async_clients()  # type: ignore[attr-defined,no-untyped-call]

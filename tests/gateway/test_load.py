"""The gateway under load (issue 7, findings 6 and 8): abandoned calls stop for real, a queue
that cannot finish in time is shed at once, and nothing leaks per call."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.conftest import GatewayFile
from tipml.errors import GatewayError
from tipml.serving.gateway import LiteLLMGateway, load_gateway_config
from tipml.testing.stub_llm import StubLLM

PARAMS = {"max_tokens": 20}


async def test_streamed_answer_has_text_finish_and_usage(
    gateway_file: GatewayFile, stub_llm: StubLLM
) -> None:
    gateway = LiteLLMGateway(
        load_gateway_config(gateway_file("say:Walk_ten_minutes.", stream=True))
    )
    try:
        result = await gateway.complete(prompt="Tip:", params=PARAMS, deadline_s=3)
    finally:
        await gateway.aclose()
    assert result.text == "Walk ten minutes."
    assert result.finish_reason == "stop"
    assert result.prompt_tokens == 20
    assert result.completion_tokens == 3


async def test_a_call_abandoned_at_the_deadline_stops_for_real(
    gateway_file: GatewayFile, stub_llm: StubLLM
) -> None:
    before = stub_llm.cancelled["stream-forever"]
    gateway = LiteLLMGateway(load_gateway_config(gateway_file("stream-forever", stream=True)))
    started = time.perf_counter()
    try:
        with pytest.raises(GatewayError) as info:
            await gateway.complete(prompt="Tip:", params=PARAMS, deadline_s=0.5)
        assert info.value.reason == "deadline"
        assert time.perf_counter() - started < 1.0
        for _ in range(60):
            if stub_llm.cancelled["stream-forever"] > before:
                break
            await asyncio.sleep(0.05)
        assert stub_llm.cancelled["stream-forever"] == before + 1  # the provider saw it go
    finally:
        await gateway.aclose()


async def test_a_queue_that_cannot_finish_in_time_is_shed_at_once(
    gateway_file: GatewayFile, stub_llm: StubLLM
) -> None:
    """One slot, half a second a call, a 2 s deadline, 30 callers at once: about four can be
    answered in time; the rest get ``overloaded`` at once instead of a deadline, and no call
    outlives its deadline."""
    path = gateway_file("slow:0.5", stream=True, max_in_flight=1, timeout=5)
    gateway = LiteLLMGateway(load_gateway_config(path))
    await gateway.complete(prompt="Tip:", params=PARAMS, deadline_s=3)  # measures ~0.5 s

    async def call() -> tuple[str, float]:
        began = time.perf_counter()
        try:
            await gateway.complete(prompt="Tip:", params=PARAMS, deadline_s=2.0)
        except GatewayError as exc:
            return exc.reason, time.perf_counter() - began
        return "answered", time.perf_counter() - began

    try:
        results = await asyncio.gather(*(call() for _ in range(30)))
    finally:
        await gateway.aclose()
    reasons = [r for r, _ in results]
    assert 2 <= reasons.count("answered") <= 5, reasons
    assert reasons.count("overloaded") >= 24, reasons
    assert max(t for _, t in results) < 2.5
    shed_fast = [t for r, t in results if r == "overloaded"]
    assert sorted(shed_fast)[len(shed_fast) // 2] < 0.1  # most are told at once


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_file_descriptors_stay_flat_over_1000_calls(
    gateway_file: GatewayFile, stub_llm: StubLLM, tmp_path: Path
) -> None:
    for stream in (False, True):
        gateway = LiteLLMGateway(load_gateway_config(gateway_file("ok", stream=stream)))
        try:
            for _ in range(50):  # warm: connection pools fill up
                await gateway.complete(prompt="Tip:", params=PARAMS, deadline_s=3)
            before = _open_fds()
            for _ in range(1000):
                await gateway.complete(prompt="Tip:", params=PARAMS, deadline_s=3)
            after = _open_fds()
        finally:
            await gateway.aclose()
        assert after - before <= 5, (stream, before, after)

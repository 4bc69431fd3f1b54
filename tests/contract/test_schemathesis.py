"""The OpenAPI document is the contract: schemathesis, every check, 100 examples per operation,
against a real ``tipml serve`` (uvicorn, the real app, a real nats-server, LiteLLM in front of
the stub provider). 0 failures: nothing the document allows is refused, nothing it forbids is
accepted, no 5xx, every response matches its documented status, media type and schema."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TOKEN, GatewayFile
from tipml.net import free_port

ROOT = Path(__file__).parents[2]


@pytest.fixture
def served(tmp_path: Path, gateway_file: GatewayFile) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIPML_")}
    env.update(
        TIPML_NATS_URL=os.environ["TIPML_NATS_URL"],  # the session's nats-server
        TIPML_CONSUMERS="off",
        TIPML_DATA_DIR=str(tmp_path / "data"),
        TIPML_API_TOKENS=TOKEN,
        TIPML_GATEWAY_CONFIG=str(gateway_file("ok")),
        TIPML_LOG_REQUESTS="0",
        TIPML_LOG_LEVEL="ERROR",
    )
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tipml", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_service_keeps_its_openapi_contract(served: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.contract.st_hooks",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{served}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "100",
            "--seed",
            "20261128",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        env=env,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    assert "5 passed" in summary or "passed" in summary

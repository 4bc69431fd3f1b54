"""``scripts/cluster.sh``: the scale-out layout with real processes (3-node NATS cluster, two
serve replicas, two consumers archiving into one offline log) comes up, both replicas answer
``/score``, each decision is archived once, and Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from tipml.net import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cluster-test-token-0123456789"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_cluster_script_starts_the_layout_and_stops_it(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "cluster.sh")],
        env={
            **os.environ,
            "TIPML_CLUSTER_DIR": str(tmp_path / "cluster"),
            "TIPML_CLUSTER_PORTS": " ".join(map(str, ports)),
            "TIPML_API_TOKENS": TOKEN,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # as from a terminal: Ctrl-C is not ignored (a test run started in the background,
        # `nohup … &`, would hand it down ignored, and bash cannot trap an ignored signal)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    nats_ports: list[int] = []
    try:
        out: list[str] = []
        deadline = time.monotonic() + 240
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if line.startswith("NATS cluster"):
                urls = line.split(": ", 1)[1].strip().split(",")
                nats_ports = [int(u.rsplit(":", 1)[1]) for u in urls]
            if line.startswith("ready"):
                break
        assert out, "cluster.sh printed nothing"
        assert out[-1].startswith("ready"), "".join(out)
        assert len(nats_ports) == 3
        body = {"user_id": "u1", "candidates": [{"tip_id": "a"}, {"tip_id": "b"}]}
        for port in ports:
            r = httpx.post(
                f"http://127.0.0.1:{port}/score",
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()
            assert ready["ready"], ready
            assert "," in ready["components"]["nats"]["detail"]  # all three nodes given
        # both consume processes archive into one log: each decision once
        decisions = tmp_path / "cluster" / "offline" / "decisions"
        seqs: list[int] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seqs) < len(ports):
            seqs = [
                s
                for part in decisions.glob("date=*/part-*.parquet")
                for s in pq.read_table(part, columns=["stream_seq"]).column(0).to_pylist()
            ]
            time.sleep(0.5)
        assert sorted(seqs) == [1, 2]
        # each consume process owns one partition of the keyed signals (ADR 0019)
        owned = [
            tmp_path / "cluster" / "consume-1" / "state" / "signals-features-p0.json",
            tmp_path / "cluster" / "consume-2" / "state" / "signals-features-p1.json",
        ]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(p.exists() for p in owned):
            time.sleep(0.5)
        assert all(p.exists() for p in owned), owned
        assert not (
            tmp_path / "cluster" / "consume-1" / "state" / "signals-features-p1.json"
        ).exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal sends
        proc.wait(timeout=60)
    deadline = time.monotonic() + 20
    while any(_listening(p) for p in [*ports, *nats_ports]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in [*ports, *nats_ports] if _listening(p)]


def test_the_cluster_runner_stops_on_sigint_even_when_started_with_it_ignored(
    tmp_path: Path,
) -> None:
    """A script's background job inherits SIGINT ignored; the runner must still stop on it
    (sigwait never sees an ignored signal: CI's nohup'd run hung here)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tipml.testing.cluster", str(tmp_path / "nats")],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("nats://")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

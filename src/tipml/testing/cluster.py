"""A NATS JetStream cluster of real ``nats-server`` processes on loopback: what the cluster
tests and ``scripts/cluster.sh`` run (``python -m tipml.testing.cluster <dir>`` prints the
client URLs and keeps the nodes up until interrupted).

Each node has its own store, client port and route port; every node routes to the others
(``--cluster_name tipml``). ``kill(i)`` is a SIGKILL — no goodbye to the cluster — and
``start(i)`` brings the node back on the same ports and store, as a restarted machine would.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats

from tipml.events.bus import nats_server_binary, wait_listening
from tipml.net import die_with_parent, free_port


class NatsCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.size = size
        self.ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    @property
    def url(self) -> str:
        """Every node, comma-separated: the form ``TIPML_NATS_URL`` takes."""
        return ",".join(self.urls)

    def name(self, i: int) -> str:
        return f"n{i}"

    def start(self, i: int, timeout_s: float = 15.0) -> None:
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.route_ports) if j != i)
        store = self.root / self.name(i)
        store.mkdir(parents=True, exist_ok=True)
        log = (self.root / f"{self.name(i)}.log").open("ab")
        self._procs[i] = proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.ports[i]),
                "-sd",
                str(store),
                "--server_name",
                self.name(i),
                "--cluster_name",
                "tipml",
                "--cluster",
                f"nats://127.0.0.1:{self.route_ports[i]}",
                "--routes",
                routes,
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        wait_listening(proc, self.ports[i], timeout_s)

    def kill(self, i: int) -> None:
        """SIGKILL: the node vanishes mid-whatever, as a crashed machine does."""
        proc = self._procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self._procs[i] = None

    def running(self, i: int) -> bool:
        proc = self._procs[i]
        return proc is not None and proc.poll() is None

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until JetStream answers through the cluster (a meta leader is elected)."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                nc = await nats.connect(self.urls, connect_timeout=1, max_reconnect_attempts=0)
                try:
                    await nc.jetstream().account_info()
                    return
                finally:
                    await nc.close()
            except Exception as exc:
                last = exc
                await asyncio.sleep(0.25)
        raise RuntimeError(f"JetStream cluster not ready within {timeout_s:g} s: {last!r}")

    def __enter__(self) -> NatsCluster:
        for i in range(self.size):
            self.start(i)
        asyncio.run(self.wait_ready())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for i, proc in enumerate(self._procs):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            self._procs[i] = None


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".tipml/cluster/nats")
    stop = {signal.SIGINT, signal.SIGTERM}
    # Handlers first: a process started in the background of a script inherits SIGINT
    # *ignored*, and an ignored signal is discarded, never waited for (CI's run of
    # cluster.sh hung on this process after Ctrl-C). Then blocked, so sigwait receives them.
    for sig in stop:
        signal.signal(sig, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    with NatsCluster(root) as cluster:
        print(cluster.url, flush=True)
        signal.sigwait(stop)


if __name__ == "__main__":
    main()

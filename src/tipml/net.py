"""Small network helpers shared by the embedded servers and the test stub."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """``preexec_fn`` for child servers: on Linux, SIGTERM the child when its parent dies, so a
    killed tipml does not leave a nats-server or llama.cpp server behind (they run in their own
    session to survive a terminal's Ctrl-C until tipml stops them in order). The parent must
    start the child from a thread that lives as long as the process (the main thread)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc/Linux: no such guarantee
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from tipml.events.bus import EmbeddedNats, connect


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A fresh nats-server (from the wheel) on a free port, for one test."""
    with EmbeddedNats(tmp_path / "nats-store") as server:
        yield server


@pytest.fixture
async def nc(nats: EmbeddedNats) -> AsyncIterator[NATS]:
    client = await connect(nats.url, "test-publisher")
    yield client
    await client.close()

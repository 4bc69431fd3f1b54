"""Online feature stores: one protocol, read by ``/generate``'s context assembler.

Two implementations: the JetStream key-value store (``events.runtime.EventsRuntime``, the
default) and Feast (``features.feast_store.FeastOnlineStore``, SQLite or Redis); one contract
test runs over both (``tests/events/test_feast.py``).
"""

from __future__ import annotations

from typing import Any, Protocol


class OnlineFeatureStore(Protocol):
    async def user_features(self, user_id: str) -> dict[str, Any] | None:
        """The user's online features as of now, or ``None`` (unknown user, store
        unavailable, or slower than the store's time budget — never an error)."""
        ...

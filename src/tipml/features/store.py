"""Online feature stores: one protocol, read by ``/generate``'s context assembler.

The JetStream key-value implementation lives with the bus (``events.runtime.EventsRuntime``);
the features issue adds a Feast-backed one behind the same protocol.
"""

from __future__ import annotations

from typing import Any, Protocol


class OnlineFeatureStore(Protocol):
    async def user_features(self, user_id: str) -> dict[str, Any] | None:
        """The user's online features as of now, or ``None`` (unknown user, store
        unavailable, or slower than the store's time budget — never an error)."""
        ...

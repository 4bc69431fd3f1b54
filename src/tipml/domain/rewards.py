"""The reward table: the configured reaction → reward in [0, 1]."""

from __future__ import annotations

from collections.abc import Mapping

from tipml.domain.events import InvalidEvent
from tipml.errors import ConfigError

DEFAULT_REWARDS: Mapping[str, float] = {
    "completed": 1.0,
    "liked": 0.8,
    "snoozed": 0.2,
    "dismissed": 0.0,
    "reported": 0.0,
}


class RewardTable:
    def __init__(self, table: Mapping[str, float] | None = None) -> None:
        table = dict(DEFAULT_REWARDS if table is None else table)
        for reaction, reward in table.items():
            if not 0.0 <= float(reward) <= 1.0:
                raise ConfigError(f"reward of {reaction!r} must be in [0, 1], got {reward}")
        self.table = {k: float(v) for k, v in table.items()}

    def reward(self, reaction: str) -> float:
        try:
            return self.table[reaction]
        except KeyError:
            raise InvalidEvent(
                f"reaction: {reaction!r} is not in the reward table "
                f"({', '.join(sorted(self.table))})",
                field="reaction",
            ) from None

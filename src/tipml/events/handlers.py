"""The domain handlers: signals → online user features, feedback → rewards."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from tipml.domain.events import (
    UNKEYED_ROOT,
    FeedbackEvent,
    SignalEvent,
    parse_feedback,
    parse_signal,
    partition_subject,
)
from tipml.domain.records import DEFAULT_HORIZON_S, kv_key
from tipml.domain.rewards import RewardTable
from tipml.domain.tips import empty_aggregate, fold_feedback
from tipml.domain.users import empty_user_state, fold_signals
from tipml.events.bus import (
    FEEDBACK,
    PROMPT_STATS_BUCKET,
    SIGNALS,
    TIP_STATS_BUCKET,
    USER_FEATURES_BUCKET,
    Bus,
)
from tipml.events.consumer import group_by_key
from tipml.events.keyed import Item, KeyedStore, WriteResult
from tipml.events.metrics import EventMetrics


def observe_lag(metrics: EventMetrics, consumer: str, items: Sequence[Item[Any]]) -> None:
    """Event time → state written: the event-to-feature lag."""
    now = time.time()
    observe = metrics.event_to_state.labels(consumer).observe
    for item in items:
        observe(max(0.0, now - item.event.epoch()))


class SignalsHandler:
    """Signals → the users' online features. ``partition=None``: the unkeyed signals
    (``signals.<kind>``, durable ``signals-features``), which every consumer process shares;
    a number: that partition of the keyed signals (durable ``signals-features-p<n>``), which
    one process owns (``TIPML_CONSUMER_MEMBER``) — the only writer of its users."""

    stream = SIGNALS

    def __init__(
        self, store: KeyedStore[SignalEvent], metrics: EventMetrics, partition: int | None = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.partition = partition
        if partition is None:
            self.name = "signals-features"
            self.filter_subject = f"{UNKEYED_ROOT}.>"
        else:
            self.name = f"signals-features-p{partition}"
            self.filter_subject = partition_subject(partition)

    @classmethod
    async def create(
        cls,
        bus: Bus,
        metrics: EventMetrics,
        *,
        horizon_s: float = DEFAULT_HORIZON_S,
        partition: int | None = None,
    ) -> SignalsHandler:
        kv = await bus.kv(USER_FEATURES_BUCKET)
        store = KeyedStore(kv, empty_user_state, fold_signals, horizon_s=horizon_s)
        return cls(store, metrics, partition)

    def parse(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[str, SignalEvent]:
        event = parse_signal(subject, data)
        return event.event_id, event

    async def handle(self, items: Sequence[Item[Any]]) -> WriteResult:
        groups = group_by_key(items, lambda e: kv_key(e.user_id))
        for group in groups.values():
            group.sort(key=lambda i: i.seq)
        result = await self.store.write_many(groups)
        observe_lag(self.metrics, self.name, items)
        return result

    def set_floor(self, floor: int) -> None:
        """Nothing to prune at the ack floor: the store forgets event ids by the horizon."""


class FeedbackHandler:
    """Per-tip aggregates (impressions, reward sum) and per-prompt-version aggregates.
    Feedback naming a decision we have not seen is kept: nothing here looks decisions up, and
    the archiver writes every event to the offline log, where the join happens."""

    name = "feedback-rewards"
    stream = FEEDBACK
    filter_subject = "feedback.>"

    def __init__(
        self,
        tips: KeyedStore[FeedbackEvent],
        prompts: KeyedStore[FeedbackEvent],
        rewards: RewardTable,
        metrics: EventMetrics,
    ) -> None:
        self.tips = tips
        self.prompts = prompts
        self.rewards = rewards
        self.metrics = metrics

    @classmethod
    async def create(
        cls,
        bus: Bus,
        rewards: RewardTable,
        metrics: EventMetrics,
        *,
        horizon_s: float = DEFAULT_HORIZON_S,
    ) -> FeedbackHandler:
        def fold(agg: Any, events: list[FeedbackEvent]) -> Any:
            return fold_feedback(agg, events, rewards)

        tips = KeyedStore(
            await bus.kv(TIP_STATS_BUCKET), empty_aggregate, fold, horizon_s=horizon_s
        )
        prompts = KeyedStore(
            await bus.kv(PROMPT_STATS_BUCKET), empty_aggregate, fold, horizon_s=horizon_s
        )
        return cls(tips, prompts, rewards, metrics)

    def parse(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[str, FeedbackEvent]:
        event = parse_feedback(subject, data)
        self.rewards.reward(event.reaction)  # an unknown reaction is invalid: dead-letter it
        return event.event_id, event

    async def handle(self, items: Sequence[Item[Any]]) -> WriteResult:
        by_tip = group_by_key(items, lambda e: kv_key(e.tip_id))
        with_version = [i for i in items if i.event.prompt_version]
        by_prompt = group_by_key(with_version, lambda e: kv_key(e.prompt_version))
        result = await self.tips.write_many(by_tip)
        await self.prompts.write_many(by_prompt)
        observe_lag(self.metrics, self.name, items)
        return result

    def set_floor(self, floor: int) -> None:
        """Nothing to prune at the ack floor: the stores forget event ids by the horizon."""

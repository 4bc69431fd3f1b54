"""The experiments learner: feedback → the bandit arm that made the decision.

A durable consumer of ``feedback.>`` of its own (``experiments-learner``), so waiting for a
decision never holds up the per-tip aggregates. For each feedback event naming a
``decision_id`` it reads that decision from the decision log (``lookup_decision``: the stream
is indexed by subject, one subject per decision); a decision a bandit made carries the
experiment, the arm played (``variant``) and the bandit's state key. The reward (reward
table) updates that arm in the ``policies`` bucket through a ``KeyedStore`` — compare-and-set,
idempotent. The dedupe id is the *decision* id: a decision's first reaction is its reward,
a second reaction to the same decision (a like after a completion) or a re-published event
changes nothing, so every played arm is counted once.

Feedback can overtake its decision (the decision log publishes asynchronously): a decision
not found is looked up again until ``grace_s`` after the feedback reached the stream, then
counted as ``unmatched``. A decision made under another configuration of the bandit (its
state key changed) is counted as ``stale`` and skipped. Outcomes are counted in
``tipml_learner_feedback_total``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from tipml.domain.events import FeedbackEvent, parse_feedback
from tipml.domain.records import DEFAULT_HORIZON_S, kv_key
from tipml.domain.rewards import RewardTable
from tipml.events.bus import FEEDBACK, POLICIES_BUCKET, Bus
from tipml.events.decisions import lookup_decision
from tipml.events.keyed import Item, KeyedStore, WriteResult
from tipml.events.metrics import EventMetrics
from tipml.experiments.bandits import Policy
from tipml.experiments.config import ExperimentsConfig

Lookup = Callable[[str], Any]  # async: decision id -> decision payload | None


@dataclass(frozen=True)
class ArmReward:
    arm: str
    reward: float


def fold_rewards(state: dict[str, Any], events: list[ArmReward]) -> dict[str, Any]:
    """The bandit's next state: its policy with each reward applied. Pure."""
    policy = Policy.from_state(state)
    for event in events:
        policy.update(event.arm, event.reward)
    return policy.to_state()


def _prior(state: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: dict(state)


# Lookups of one batch in flight at once. A lookup of a ``/score`` decision brings its whole
# block (ADR 0028: up to 256 KiB): a batch of 500 looked up at once asked nats-server for
# ~100 MB, more than its 64 MiB ``max_pending`` for a client that a busy ``tipml serve`` reads
# slowly, and the server cut the connection as a slow consumer (scripts/up.sh, 2026-12-01).
LOOKUPS_IN_FLIGHT = 16


class Learner:
    name = "experiments-learner"
    stream = FEEDBACK
    filter_subject = "feedback.>"

    def __init__(
        self,
        stores: dict[str, KeyedStore[ArmReward]],
        lookup: Lookup,
        config: ExperimentsConfig,
        rewards: RewardTable,
        metrics: EventMetrics,
        *,
        grace_s: float = 10.0,
    ) -> None:
        self.stores = stores  # bandit state key -> its store (same bucket)
        self.lookup = lookup
        self.config = config
        self.rewards = rewards
        self.metrics = metrics
        self.grace_s = grace_s
        self.counts: dict[str, int] = {}

    @classmethod
    async def create(
        cls,
        bus: Bus,
        config: ExperimentsConfig,
        rewards: RewardTable,
        metrics: EventMetrics,
        *,
        horizon_s: float = DEFAULT_HORIZON_S,
        grace_s: float = 10.0,
    ) -> Learner:
        kv = await bus.kv(POLICIES_BUCKET)
        stores: dict[str, KeyedStore[ArmReward]] = {}
        for spec in config.experiments.values():
            if spec.state_key is not None:
                # a key seen for the first time starts from the configured prior
                stores[spec.state_key] = KeyedStore(
                    kv, _prior(spec.new_policy().to_state()), fold_rewards, horizon_s=horizon_s
                )
        js: JetStreamContext = bus.js

        async def lookup(decision_id: str) -> dict[str, Any] | None:
            return await lookup_decision(js, decision_id)

        return cls(stores, lookup, config, rewards, metrics, grace_s=grace_s)

    def parse(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[str, FeedbackEvent]:
        event = parse_feedback(subject, data)
        self.rewards.reward(event.reaction)  # an unknown reaction is invalid: dead-letter it
        return event.event_id, event

    def _count(self, outcome: str, n: int = 1) -> None:
        if n:
            self.counts[outcome] = self.counts.get(outcome, 0) + n
            self.metrics.learner.labels(outcome).inc(n)

    async def _decisions(self, items: Sequence[Item[Any]]) -> list[dict[str, Any] | None]:
        """Each item's decision; a miss is retried until ``grace_s`` after the item arrived."""
        found = await self._lookup_all([i.event.decision_id for i in items])
        while True:
            now = time.time()
            waiting = [
                k
                for k, (item, d) in enumerate(zip(items, found, strict=True))
                if d is None and (item.arrived or now) + self.grace_s > now
            ]
            if not waiting:
                return found
            await asyncio.sleep(min(0.5, self.grace_s))
            again = await self._lookup_all([items[k].event.decision_id for k in waiting])
            for k, d in zip(waiting, again, strict=True):
                found[k] = d

    async def _lookup_all(self, decision_ids: list[str]) -> list[dict[str, Any] | None]:
        """Each id's decision, at most ``LOOKUPS_IN_FLIGHT`` lookups at once."""
        gate = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)

        async def one(decision_id: str) -> dict[str, Any] | None:
            async with gate:
                found: dict[str, Any] | None = await self.lookup(decision_id)
                return found

        return list(await asyncio.gather(*(one(d) for d in decision_ids)))

    async def handle(self, items: Sequence[Item[Any]]) -> WriteResult:
        named = [i for i in items if i.event.decision_id]
        self._count("no_decision_id", len(items) - len(named))
        decisions = await self._decisions(named) if named else []
        groups: dict[str, list[Item[ArmReward]]] = {}
        for item, decision in zip(named, decisions, strict=True):
            if decision is None:
                self._count("unmatched")
                continue
            key = decision.get("policy_key")
            experiment = decision.get("experiment")
            arm = decision.get("variant")
            if not key or not isinstance(experiment, str) or not isinstance(arm, str):
                self._count("not_bandit")
                continue
            spec = self.config.experiments.get(experiment)
            if (
                spec is None
                or spec.state_key != key
                or key not in self.stores
                or arm not in spec.arms
            ):
                self._count("stale")
                continue
            event: FeedbackEvent = item.event
            reward = ArmReward(arm, self.rewards.reward(event.reaction))
            # dedupe by decision: a decision's first reaction is its reward
            groups.setdefault(key, []).append(
                Item(item.seq, str(event.decision_id), reward, item.arrived)
            )
        results = await asyncio.gather(
            *(self.stores[key].write(kv_key(key), group) for key, group in groups.items())
        )
        total = WriteResult()
        for result in results:
            total.applied += result.applied
            total.duplicates += result.duplicates
            total.conflicts += result.conflicts
        self._count("learnt", total.applied)
        self._count("duplicate", total.duplicates)
        return total

    def set_floor(self, floor: int) -> None:
        """Nothing to prune at the ack floor: the store forgets decision ids by the horizon."""


def learner_factory(
    config: ExperimentsConfig, rewards: RewardTable, *, horizon_s: float, grace_s: float
) -> Callable[[Bus, EventMetrics], Any]:
    """What ``EventsRuntime`` builds the ``learner`` consumer with."""

    async def build(bus: Bus, metrics: EventMetrics) -> Learner:
        return await Learner.create(
            bus, config, rewards, metrics, horizon_s=horizon_s, grace_s=grace_s
        )

    return build

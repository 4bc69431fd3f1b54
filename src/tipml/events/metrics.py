"""Prometheus metrics of the event backbone (consumers and the decision log)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class EventMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.processed = Counter(
            "tipml_events_processed", "Events applied to state.", ["consumer"], registry=r
        )
        self.duplicates = Counter(
            "tipml_events_duplicates",
            "Events skipped as already applied (redelivery/duplicate).",
            ["consumer"],
            registry=r,
        )
        self.conflicts = Counter(
            "tipml_events_write_conflicts",
            "Compare-and-set writes that met another writer's revision and were redone "
            "(processes sharing users; ~0 when each owns its partitions).",
            ["consumer"],
            registry=r,
        )
        self.redeliveries = Counter(
            "tipml_events_redeliveries",
            "Messages delivered more than once.",
            ["consumer"],
            registry=r,
        )
        self.dead_letters = Counter(
            "tipml_events_dead_letters", "Events dead-lettered.", ["consumer", "reason"], registry=r
        )
        self.loop_errors = Counter(
            "tipml_consumer_loop_errors",
            "Batches whose ack, nak, term or dead-letter publish failed (the loop goes on).",
            ["consumer"],
            registry=r,
        )
        self.lag = Gauge(
            "tipml_consumer_lag",
            "Messages not yet delivered to the consumer.",
            ["consumer"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "tipml_consumer_batch_seconds",
            "Handler time per fetched batch.",
            ["consumer"],
            registry=r,
        )
        self.event_to_state = Histogram(
            "tipml_event_to_state_seconds",
            "From an event's timestamp to its state write (event-to-feature lag).",
            ["consumer"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.learner = Counter(
            "tipml_learner_feedback",
            "Feedback seen by the experiments learner, by outcome: learnt (a bandit arm was "
            "updated), not_bandit (the decision was not a bandit's), duplicate (the decision "
            "already had its reward), unmatched (no logged decision with that id), stale (the "
            "bandit's configuration changed since), no_decision_id.",
            ["outcome"],
            registry=r,
        )
        self.decisions_published = Counter(
            "tipml_decisions_published", "Decisions acknowledged by JetStream.", registry=r
        )
        self.decisions_buffered = Gauge(
            "tipml_decisions_buffered", "Decisions waiting in memory.", registry=r
        )
        self.decisions_spilled = Counter(
            "tipml_decisions_spilled", "Decisions written to the local spill file.", registry=r
        )
        self.decisions_corrupt = Counter(
            "tipml_decisions_corrupt_spill_lines",
            "Unreadable lines skipped in a decision spill file (e.g. cut by a crash).",
            registry=r,
        )
        self.decisions_dropped = Counter(
            "tipml_decisions_dropped",
            "Decisions lost: memory buffer and spill file both full.",
            registry=r,
        )

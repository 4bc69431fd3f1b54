"""Drives a running tipml service like the app + recommender would: score → generate →
reactions. Talks HTTP only; never imports serving code."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

from tipml.domain.events import keyed_signal_subject
from tipml.sim.catalog import BY_ID, CATALOG
from tipml.sim.users import REACTION_REWARD, SimUser, make_users


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


@dataclass
class RouteStats:
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[int] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return len(self.latencies_ms) + sum(self.errors.values())


@dataclass
class DriveReport:
    duration_s: float = 0.0
    routes: dict[str, RouteStats] = field(
        default_factory=lambda: {"/score": RouteStats(), "/generate": RouteStats()}
    )
    reactions: Counter[str] = field(default_factory=Counter)
    reward_ranked: list[float] = field(default_factory=list)  # expected reward of top pick
    reward_random: list[float] = field(default_factory=list)  # ... of a random candidate
    fallback_reasons: Counter[str] = field(default_factory=Counter)
    prompt_versions: Counter[str] = field(default_factory=Counter)
    # every generation in order: (experiment, prompt version, reward of the reaction)
    generated: list[tuple[str | None, str, float]] = field(default_factory=list)
    # (prompt version, topic, fallback?, text)
    samples: list[tuple[str, str, bool, str]] = field(default_factory=list)
    events_published: int = 0

    @property
    def generations(self) -> int:
        return len(self.routes["/generate"].latencies_ms)

    @property
    def fallback_rate(self) -> float:
        return sum(self.fallback_reasons.values()) / self.generations if self.generations else 0.0


EventSink = Callable[[str, dict[str, object], str], Awaitable[None]]


class Driver:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        users: int = 200,
        candidates: int = 40,
        generate_every: int = 6,
        seed: int = 7,
        events: EventSink | None = None,
    ) -> None:
        self.events = events
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.users: list[SimUser] = make_users(users, seed)
        self.candidates = candidates
        self.generate_every = generate_every
        self.rng = random.Random(seed)
        self.clock = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
        self.seen: Counter[tuple[str, str]] = Counter()  # (user, tip) -> times shown

    def _tick(self) -> datetime:
        self.clock += timedelta(minutes=self.rng.randint(1, 15))
        return self.clock

    async def _timed(
        self, client: httpx.AsyncClient, route: str, body: dict[str, object], report: DriveReport
    ) -> dict[str, object] | None:
        started = time.perf_counter()
        stats = report.routes[route]
        try:
            resp = await client.post(route, json=body, headers=self.headers)
        except httpx.HTTPError:  # refused, reset, timed out: no answer (counted as status 0)
            stats.errors[0] += 1
            return None
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status_code != 200:
            stats.errors[resp.status_code] += 1
            return None
        stats.latencies_ms.append(elapsed)
        data: dict[str, object] = resp.json()
        return data

    # Events carry the wall-clock time (online features and lag are real); the simulated
    # clock only drives the users' hour-of-day preferences.
    async def _signals(self, user_id: str, report: DriveReport) -> None:
        if self.events is None:
            return
        kinds = ["app.opened"] + (["task.completed"] if self.rng.random() < 0.6 else [])
        for kind in kinds:
            eid = str(uuid.uuid4())
            await self.events(
                keyed_signal_subject(user_id, kind),  # the user's partition (ADR 0019)
                {
                    "event_id": eid,
                    "user_id": user_id,
                    "kind": kind,
                    "ts": datetime.now(UTC).isoformat(),
                    "attrs": {"title": self.rng.choice(CATALOG).category + " session"},
                },
                eid,
            )
            report.events_published += 1

    async def _feedback(
        self,
        user_id: str,
        tip_id: str,
        decision_id: str,
        prompt_version: str | None,
        reaction: str,
        report: DriveReport,
    ) -> None:
        if self.events is None:
            return
        eid = str(uuid.uuid4())
        await self.events(
            f"feedback.{reaction}",
            {
                "event_id": eid,
                "user_id": user_id,
                "tip_id": tip_id,
                "decision_id": decision_id,
                "prompt_version": prompt_version,
                "reaction": reaction,
                "ts": datetime.now(UTC).isoformat(),
            },
            eid,
        )
        report.events_published += 1

    async def step(self, client: httpx.AsyncClient, n: int, report: DriveReport) -> None:
        user = self.rng.choice(self.users)
        ts = self._tick()
        shown = self.rng.sample(CATALOG, self.candidates)
        profile = user.profile_features(self.rng)
        body = {
            "user_id": user.user_id,
            "candidates": [
                {"tip_id": t.tip_id, "category": t.category, "tags": list(t.tags)} for t in shown
            ],
            "profile_features": profile,
            "context": {"ts": ts.isoformat(), "platform": self.rng.choice(["ios", "android"])},
            "k": 5,
        }
        await self._signals(user.user_id, report)
        scored = await self._timed(client, "/score", body, report)
        if scored is None:
            return
        results = scored["results"]
        assert isinstance(results, list)
        top = BY_ID[results[0]["tip_id"]]
        seen = self.seen[(user.user_id, top.tip_id)]
        self.seen[(user.user_id, top.tip_id)] += 1
        fatigue = user.lift(seen=seen)
        report.reward_ranked.append(user.expected_reward(top.category, ts, fatigue))
        other = self.rng.choice(shown)
        report.reward_random.append(
            user.expected_reward(
                other.category, ts, user.lift(seen=self.seen[(user.user_id, other.tip_id)])
            )
        )
        reaction = user.react(top.category, ts, self.rng, fatigue)
        report.reactions[reaction] += 1
        await self._feedback(
            user.user_id, top.tip_id, str(scored["score_id"]), None, reaction, report
        )
        if n % self.generate_every == 0:
            # No prompt_version: the service decides (DEFAULT_PROMPT_VERSION, experiments).
            gen = await self._timed(
                client,
                "/generate",
                {
                    "user_id": user.user_id,
                    "topic": top.category,
                    "profile_features": profile,
                    "context": {"ts": ts.isoformat()},
                    "max_chars": 160,
                },
                report,
            )
            if gen is not None:
                version = str(gen["prompt_version"])
                report.prompt_versions[version] += 1
                lift = user.lift(prompt_version=version, fallback=bool(gen["fallback"]))
                gen_reaction = user.react(top.category, ts, self.rng, lift)
                experiment = gen.get("experiment")
                report.generated.append(
                    (
                        str(experiment) if experiment else None,
                        version,
                        REACTION_REWARD[gen_reaction],
                    )
                )
                await self._feedback(
                    user.user_id,
                    f"gen-{gen['generation_id']}",
                    str(gen["generation_id"]),
                    str(gen["prompt_version"]),
                    gen_reaction,
                    report,
                )
                if gen["fallback"]:
                    report.fallback_reasons[str(gen["fallback_reason"])] += 1
                if len(report.samples) < 6:
                    report.samples.append(
                        (
                            str(gen["prompt_version"]),
                            top.category,
                            bool(gen["fallback"]),
                            str(gen["text"]),
                        )
                    )

    async def run(
        self,
        duration_s: float,
        concurrency: int = 4,
        *,
        min_generations: int = 0,
        max_steps: int | None = None,
    ) -> DriveReport:
        """Drive for ``duration_s``, and on past it (up to 4x as long) until
        ``min_generations`` tips were generated: on a slow machine the experiments still get
        enough decisions to learn from. ``max_steps`` stops after that many steps (so two runs
        with the same seed see the same traffic however fast the service is)."""
        report = DriveReport()
        started = time.perf_counter()
        counter = iter(range(10**9))
        limits = httpx.Limits(max_connections=concurrency)

        def going() -> bool:
            elapsed = time.perf_counter() - started
            if elapsed < duration_s:
                return True
            return report.generations < min_generations and elapsed < 4 * duration_s

        async with httpx.AsyncClient(base_url=self.base_url, timeout=30, limits=limits) as client:

            async def worker() -> None:
                while going():
                    n = next(counter)
                    if max_steps is not None and n >= max_steps:
                        return
                    await self.step(client, n, report)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.duration_s = time.perf_counter() - started
        return report


__all__ = ["REACTION_REWARD", "DriveReport", "Driver", "percentile"]

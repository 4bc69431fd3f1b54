"""Context assembly: what we know about a user right now, in words, for a prompt.

Pure and deterministic: the same inputs give the same ``PromptContext``: built from the
profile features, the local time, the requested topic and — when the online store has them —
the user's signals (facts in words, and the recent activity as cleaned data lines within a
character budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tipml.domain.text import clean_user_text
from tipml.errors import InvalidRequest
from tipml.features.profile_schema import ValidatedProfile, zone

_DAY_PARTS = (
    (5, "early morning"),
    (9, "morning"),
    (12, "midday"),
    (14, "afternoon"),
    (18, "evening"),
    (22, "late evening"),
)


def local_time(ts: datetime | None, profile: ValidatedProfile) -> datetime:
    """``ts`` (or now) in the user's time zone from the profile (UTC when unknown).

    ``ts`` outside the representable range once shifted into the zone (year 1 or 9999 with a
    far offset) is an ``InvalidRequest`` on ``context.ts``, never an ``OverflowError``."""
    moment = ts or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    tz_name = profile.get_str("timezone")
    try:
        return moment.astimezone(zone(tz_name)) if tz_name else moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidRequest(
            "context.ts: out of range once converted to the user's time zone", field="context.ts"
        ) from None


def day_part(hour: int) -> str:
    part = "night"
    for start, name in _DAY_PARTS:
        if hour >= start:
            part = name
    return part


@dataclass(frozen=True)
class PromptContext:
    topic: str
    local_hour: int
    day_part: str
    weekday: str
    facts: tuple[str, ...]
    max_chars: int
    locale: str
    recent: tuple[str, ...] = ()  # cleaned user-originated summaries, newest last

    def facts_text(self) -> str:
        return "; ".join(self.facts) if self.facts else "no history yet"

    def user_texts(self) -> tuple[str, ...]:
        """What a user controls in this context (the output guard refuses a text that
        reproduces it): the recent-activity lines and the topic."""
        return (*self.recent, self.topic)

    def recent_text(self) -> str:
        return "\n".join(f"- {r}" for r in self.recent) if self.recent else "- nothing recent"


def _hour_words(hour: int) -> str:
    return f"{hour}:00"


def profile_facts(profile: ValidatedProfile) -> tuple[str, ...]:
    """Profile features in words, in a fixed order."""
    facts: list[str] = []
    hour = profile.get_float("preferred_hour")
    if hour is not None:
        facts.append(f"usually active around {_hour_words(int(hour))}")
    rate = profile.get_float("completion_rate")
    if rate is not None:
        level = "most" if rate >= 0.6 else "some" if rate >= 0.25 else "few"
        facts.append(f"completes {level} tips ({round(rate * 100)}%)")
    streak = profile.get_float("streak_days")
    if streak is not None and streak > 0:
        facts.append(f"on a {int(streak)}-day streak")
    favorite = profile.get_str("favorite_category")
    if favorite is not None:
        facts.append(f"engages most with {favorite} tips")
    volume = profile.get_float("tip_volume_7d")
    if volume is not None and volume >= 20:
        facts.append("has seen many tips this week")
    signup = profile.get_float("days_since_signup")
    if signup is not None and signup < 7:
        facts.append("is new to the app")
    return tuple(facts)


def _kind_words(kind: str) -> str:
    return clean_user_text(kind.replace(".", " ").replace("_", " "), 30)


def signal_facts(online: dict[str, Any]) -> tuple[str, ...]:
    """Online features in words (our own phrases; kinds are cleaned), busiest first."""
    facts: list[str] = []
    day = online.get("signal_counts_24h") or {}
    for kind, n in sorted(day.items(), key=lambda kv: (-kv[1], kv[0]))[:3]:
        facts.append(f"{_kind_words(kind)} {n} time{'s' if n != 1 else ''} in the last 24 hours")
    streak = online.get("streak_days") or 0
    if streak >= 2:
        facts.append(f"active {streak} days in a row")
    return tuple(facts)


def fit_budget(
    facts: tuple[str, ...], recent: list[str], budget_chars: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Keep facts first, then the newest recent signals, within ``budget_chars``
    (≈ 4 characters a token): the oldest signals are dropped first."""
    used = sum(len(f) + 2 for f in facts)
    kept: list[str] = []
    for text in reversed(recent):  # newest first
        if used + len(text) + 3 > budget_chars:
            break
        kept.append(text)
        used += len(text) + 3
    while used > budget_chars and facts:  # only if the facts alone are too long
        used -= len(facts[-1]) + 2
        facts = facts[:-1]
    return facts, tuple(reversed(kept))


def build_context(
    *,
    topic: str | None,
    profile: ValidatedProfile,
    ts: datetime | None,
    max_chars: int,
    locale: str | None,
    online: dict[str, Any] | None = None,
    budget_chars: int = 600,
) -> PromptContext:
    """``online``: the user's online features (``domain.users.materialize``), if known."""
    when = local_time(ts, profile)
    chosen = clean_user_text(topic) if topic else ""
    if not chosen:
        chosen = profile.get_str("favorite_category") or "wellbeing"
    facts = profile_facts(profile)
    recent: list[str] = []
    if online:
        facts = facts + signal_facts(online)
        for item in online.get("recent_signals") or []:
            text = clean_user_text(str(item.get("text") or ""), 40)
            kind = _kind_words(str(item.get("kind") or ""))
            if text or kind:
                recent.append(f"{kind} - {text}" if text else kind)
    facts, kept = fit_budget(facts, recent, budget_chars)
    return PromptContext(
        topic=chosen,
        local_hour=when.hour,
        day_part=day_part(when.hour),
        weekday=when.strftime("%A"),
        facts=facts,
        max_chars=max_chars,
        locale=clean_user_text(locale, 16) if locale else "en",
        recent=kept,
    )

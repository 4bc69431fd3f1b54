"""Context assembly: what we know about a user right now, in words, for a prompt.

Pure and deterministic: the same inputs give the same ``PromptContext``. The features issue
adds online signals (recent activity); today the context is built from the profile features,
the local time and the requested topic.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from tipml.features.profile_schema import ValidatedProfile

_DAY_PARTS = (
    (5, "early morning"),
    (9, "morning"),
    (12, "midday"),
    (14, "afternoon"),
    (18, "evening"),
    (22, "late evening"),
)


def local_time(ts: datetime | None, profile: ValidatedProfile) -> datetime:
    """``ts`` (or now) in the user's time zone from the profile (UTC when unknown)."""
    moment = ts or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    tz_name = profile.get_str("timezone")
    return moment.astimezone(ZoneInfo(tz_name)) if tz_name else moment.astimezone(UTC)


def day_part(hour: int) -> str:
    part = "night"
    for start, name in _DAY_PARTS:
        if hour >= start:
            part = name
    return part


_CONTROL = re.compile(r"[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def clean_user_text(text: str, max_len: int = 60) -> str:
    """Text that came from a user is data: strip control/zero-width chars, cap the length."""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub(" ", text)
    text = re.sub(r"[<>{}\[\]`#*|\\]", " ", text)
    text = " ".join(text.split())
    return text[:max_len].strip()


@dataclass(frozen=True)
class PromptContext:
    topic: str
    local_hour: int
    day_part: str
    weekday: str
    facts: tuple[str, ...]
    max_chars: int
    locale: str

    def facts_text(self) -> str:
        return "; ".join(self.facts) if self.facts else "no history yet"


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


def build_context(
    *,
    topic: str | None,
    profile: ValidatedProfile,
    ts: datetime | None,
    max_chars: int,
    locale: str | None,
) -> PromptContext:
    when = local_time(ts, profile)
    chosen = clean_user_text(topic) if topic else ""
    if not chosen:
        chosen = profile.get_str("favorite_category") or "wellbeing"
    return PromptContext(
        topic=chosen,
        local_hour=when.hour,
        day_part=day_part(when.hour),
        weekday=when.strftime("%A"),
        facts=profile_facts(profile),
        max_chars=max_chars,
        locale=clean_user_text(locale, 16) if locale else "en",
    )

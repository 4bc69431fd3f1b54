"""Profile features the recommender computes and ships on every call.

This is the Python mirror of the recommender's profile registry. Validation is one function,
``validate_profile``, used by ``/score`` and ``/generate``:

* wrong dtype or out of range → ``InvalidFeature`` naming the feature (HTTP 422);
* unknown name → ignored, returned in ``unknown`` so the caller can count and log it;
* missing → simply absent: the scorer and the prompt treat it as missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from tipml.errors import InvalidFeature

Dtype = Literal["float", "int", "str", "bool"]
FeatureValue = float | int | str | bool

CATEGORIES: tuple[str, ...] = (
    "sleep",
    "focus",
    "movement",
    "mindfulness",
    "nutrition",
    "stress",
    "social",
)


@dataclass(frozen=True)
class ProfileFeature:
    name: str
    dtype: Dtype
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    def validate(self, value: object) -> FeatureValue:
        where = f"profile_features.{self.name}"
        if self.dtype == "bool":
            if not isinstance(value, bool):
                raise InvalidFeature(f"{where}: expected bool, got {_kind(value)}", field=where)
            return value
        if self.dtype == "str":
            if not isinstance(value, str):
                raise InvalidFeature(f"{where}: expected str, got {_kind(value)}", field=where)
            if self.choices is not None and value not in self.choices:
                raise InvalidFeature(
                    f"{where}: {value!r} is not one of {', '.join(self.choices)}", field=where
                )
            if self.name == "timezone" and not _is_timezone(value):
                raise InvalidFeature(f"{where}: {value!r} is not an IANA time zone", field=where)
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidFeature(f"{where}: expected {self.dtype}, got {_kind(value)}", field=where)
        if self.dtype == "int":
            if isinstance(value, float) and not value.is_integer():
                raise InvalidFeature(f"{where}: expected int, got {value!r}", field=where)
            number: float | int = int(value)
        else:
            if not math.isfinite(value):
                raise InvalidFeature(f"{where}: must be finite", field=where)
            number = float(value)
        if self.min is not None and number < self.min:
            raise InvalidFeature(f"{where}: {number} is below the minimum {self.min}", field=where)
        if self.max is not None and number > self.max:
            raise InvalidFeature(f"{where}: {number} is above the maximum {self.max}", field=where)
        return number


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


_TIMEZONES: frozenset[str] | None = None


def _is_timezone(name: str) -> bool:
    global _TIMEZONES
    if _TIMEZONES is None:
        _TIMEZONES = frozenset(available_timezones())
    if name in _TIMEZONES:
        return True
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


PROFILE_FEATURES: tuple[ProfileFeature, ...] = (
    ProfileFeature("completion_rate", "float", "Share of shown tips completed, 30 d.", 0, 1),
    ProfileFeature("dismiss_rate", "float", "Share of shown tips dismissed, 30 d.", 0, 1),
    ProfileFeature("preferred_hour", "int", "Local hour the user is usually active.", 0, 23),
    ProfileFeature("tip_volume_7d", "int", "Tips shown to the user in the last 7 days.", 0),
    ProfileFeature("streak_days", "int", "Consecutive days with at least one completion.", 0),
    ProfileFeature("days_since_signup", "int", "Account age in days.", 0),
    ProfileFeature("avg_session_minutes", "float", "Mean app session length, 7 d.", 0, 1440),
    ProfileFeature(
        "favorite_category", "str", "Category the user engages with most.", choices=CATEGORIES
    ),
    ProfileFeature("timezone", "str", "IANA time zone of the user, e.g. Europe/Berlin."),
    ProfileFeature("notifications_enabled", "bool", "Whether push notifications are on."),
)

BY_NAME: Mapping[str, ProfileFeature] = {f.name: f for f in PROFILE_FEATURES}


@dataclass(frozen=True)
class ValidatedProfile:
    values: Mapping[str, FeatureValue] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()

    def get_float(self, name: str) -> float | None:
        value = self.values.get(name)
        if value is None or isinstance(value, str | bool):
            return None
        return float(value)

    def get_str(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None


EMPTY_PROFILE = ValidatedProfile()


def validate_profile(raw: Mapping[str, object] | None) -> ValidatedProfile:
    """Check every known feature; keep unknown names aside. ``None`` values count as missing."""
    if not raw:
        return EMPTY_PROFILE
    values: dict[str, FeatureValue] = {}
    unknown: list[str] = []
    for name, value in raw.items():
        spec = BY_NAME.get(name)
        if spec is None:
            unknown.append(name)
        elif value is not None:
            values[name] = spec.validate(value)
    return ValidatedProfile(values, tuple(sorted(unknown)))

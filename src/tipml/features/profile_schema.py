"""Profile features the recommender computes and ships on every call.

This is the Python mirror of the recommender's profile registry. Validation is one function,
``validate_profile``, used by ``/score`` and ``/generate``:

* wrong dtype or out of range → ``InvalidFeature`` naming the feature (HTTP 422);
* unknown name → ignored, returned in ``unknown`` so the caller can count and log it;
* missing → simply absent: the scorer and the prompt treat it as missing.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

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
    max_length: int | None = None

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
                    f"{where}: {_shown(value)} is not one of {', '.join(self.choices)}", field=where
                )
            if self.max_length is not None and len(value) > self.max_length:
                raise InvalidFeature(
                    f"{where}: longer than {self.max_length} characters", field=where
                )
            if self.name == "timezone" and not _is_timezone(value):
                raise InvalidFeature(
                    f"{where}: {_shown(value)} is not an IANA time zone", field=where
                )
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidFeature(f"{where}: expected {self.dtype}, got {_kind(value)}", field=where)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidFeature(f"{where}: must be finite", field=where)
        if self.dtype == "int" and isinstance(value, float) and not value.is_integer():
            raise InvalidFeature(f"{where}: expected int, got {_shown(value)}", field=where)
        # Compare before converting: a JSON integer can have hundreds of digits, and every
        # numeric feature has declared bounds, so nothing out of range reaches float() or the log.
        if self.min is not None and value < self.min:
            raise InvalidFeature(
                f"{where}: {_shown(value)} is below the minimum {_num(self.min)}", field=where
            )
        if self.max is not None and value > self.max:
            raise InvalidFeature(
                f"{where}: {_shown(value)} is above the maximum {_num(self.max)}", field=where
            )
        return int(value) if self.dtype == "int" else float(value)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _num(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def shown(value: object, limit: int = 64) -> str:
    """A client's value as it may appear in an error detail: ``repr``, cut to ``limit``
    characters (a detail must not echo a megabyte body back)."""
    text = (
        repr(value) if not isinstance(value, int) or isinstance(value, bool) else _int_text(value)
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _int_text(value: int) -> str:
    # str() of an int with more than 4300 digits raises ValueError (CPython's int limit)
    return str(value) if value.bit_length() <= 200 else f"an integer of {value.bit_length()} bits"


_shown = shown


@functools.cache
def timezones() -> tuple[str, ...]:
    """Every IANA time zone name the ``tzdata`` package ships, sorted: the only names
    ``timezone`` accepts. The package's list, not the machine's zoneinfo directory, so the
    contract is the same on every machine (and a directory such as ``America`` or ``Etc`` is
    not a zone)."""
    listing = importlib.resources.files("tzdata").joinpath("zones").read_text()
    return tuple(sorted({line.strip() for line in listing.splitlines() if line.strip()}))


def _is_timezone(name: str) -> bool:
    return name in _timezone_set()


@functools.cache
def _timezone_set() -> frozenset[str]:
    return frozenset(timezones())


def zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` of a validated name (``timezone`` passed ``validate_profile``)."""
    return ZoneInfo(name)


PROFILE_FEATURES: tuple[ProfileFeature, ...] = (
    ProfileFeature("completion_rate", "float", "Share of shown tips completed, 30 d.", 0, 1),
    ProfileFeature("dismiss_rate", "float", "Share of shown tips dismissed, 30 d.", 0, 1),
    ProfileFeature("preferred_hour", "int", "Local hour the user is usually active.", 0, 23),
    ProfileFeature("tip_volume_7d", "int", "Tips shown to the user in the last 7 days.", 0, 10_000),
    ProfileFeature(
        "streak_days", "int", "Consecutive days with at least one completion.", 0, 36_500
    ),
    ProfileFeature("days_since_signup", "int", "Account age in days.", 0, 36_500),
    ProfileFeature("avg_session_minutes", "float", "Mean app session length, 7 d.", 0, 1440),
    ProfileFeature(
        "favorite_category", "str", "Category the user engages with most.", choices=CATEGORIES
    ),
    ProfileFeature(
        "timezone", "str", "IANA time zone of the user, e.g. Europe/Berlin.", max_length=64
    ),
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


def json_schema() -> dict[str, object]:
    """The JSON Schema of ``profile_features`` exactly as ``validate_profile`` accepts it:
    every known feature typed and bounded (``null`` = missing), unknown names allowed (they
    are ignored and counted, so the recommender can ship a new feature first)."""
    properties: dict[str, object] = {}
    for f in PROFILE_FEATURES:
        spec: dict[str, object] = {
            "type": {"float": "number", "int": "integer", "str": "string", "bool": "boolean"}[
                f.dtype
            ],
            "description": f.description,
        }
        if f.min is not None:
            spec["minimum"] = f.min
        if f.max is not None:
            spec["maximum"] = f.max
        if f.choices is not None:
            spec["enum"] = list(f.choices)
        if f.name == "timezone":
            spec["enum"] = list(timezones())
        properties[f.name] = {"anyOf": [spec, {"type": "null"}]}
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": True,
        "description": "Profile features computed by the recommender (see the profile schema); "
        "unknown names are ignored and counted.",
    }

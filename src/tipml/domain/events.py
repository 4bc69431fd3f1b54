"""Event shapes on the bus (see DESIGN.md, "Events").

Parsing is strict: an event that does not fit is an ``InvalidEvent`` naming the field, and the
consumer dead-letters it at once (retrying cannot fix a malformed payload).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from tipml.errors import TipmlError

_M = TypeVar("_M", bound=BaseModel)
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class InvalidEvent(TipmlError):
    code = "invalid_event"
    status_code = 422


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Id
    user_id: Id
    ts: datetime

    @field_validator("ts")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        """Every event time is UTC from here on (a naive one is taken as UTC): hour-of-day
        features and archive date partitions must not depend on the producer's offset."""
        try:
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        except (OverflowError, ValueError):
            raise ValueError("out of range once converted to UTC") from None

    def ts_utc(self) -> datetime:
        return self.ts

    def epoch(self) -> float:
        return self.ts.timestamp()


class SignalEvent(_Event):
    """``signals.<kind>``: something the user did."""

    kind: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_.-]+$")]
    attrs: dict[str, Any] = Field(default_factory=dict)


class FeedbackEvent(_Event):
    """``feedback.<reaction>``: how the user reacted to a tip."""

    tip_id: Id
    decision_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    prompt_version: Annotated[str, StringConstraints(max_length=32)] | None = None
    reaction: Annotated[str, StringConstraints(min_length=1, max_length=32)]


def _loads(data: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"payload is not valid JSON: {exc}", field="payload") from exc
    if not isinstance(payload, dict):
        raise InvalidEvent("payload must be a JSON object", field="payload")
    return payload


def _validate(model: type[_M], payload: dict[str, Any]) -> _M:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        raise InvalidEvent(f"{where}: {err['msg']}", field=where) from exc


def parse_signal(subject: str, data: bytes) -> SignalEvent:
    payload = _loads(data)
    payload.setdefault("kind", subject.removeprefix("signals."))
    return _validate(SignalEvent, payload)


def parse_feedback(subject: str, data: bytes) -> FeedbackEvent:
    payload = _loads(data)
    payload.setdefault("reaction", subject.removeprefix("feedback."))
    return _validate(FeedbackEvent, payload)

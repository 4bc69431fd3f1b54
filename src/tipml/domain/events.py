"""Event shapes on the bus (see DESIGN.md, "Events").

Parsing is strict: an event that does not fit is an ``InvalidEvent`` naming the field, and the
consumer dead-letters it at once (retrying cannot fix a malformed payload).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
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


# Signals come unkeyed or keyed by their user (DESIGN.md, "Events"; ADR 0019):
#   signals.<kind>                         no user in the subject: any consumer may take it
#   signals-by-user.<user token>.<kind>    the publisher names the user; the SIGNALS stream
#                                          stores it as
#   signals-by-partition.<p>.<user token>.<kind>
# where p = the server's hash of the token modulo TIPML_SIGNAL_PARTITIONS, so every event of a
# user lands in one partition and one consumer process can own it (no write contention).
UNKEYED_ROOT = "signals"
KEYED_ROOT = "signals-by-user"
PARTITIONED_ROOT = "signals-by-partition"
_TOKEN_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def user_token(user_id: str) -> str:
    """The subject token of a user: the id itself when it is a safe subject token (letters,
    digits, ``_``, ``-``; at most 64), else ``h`` + the first 32 hex digits of its SHA-256.
    Part of the contract: the consumer refuses a keyed event whose token is not this."""
    if _TOKEN_SAFE.fullmatch(user_id):
        return user_id
    return "h" + hashlib.sha256(user_id.encode()).hexdigest()[:32]


def keyed_signal_subject(user_id: str, kind: str) -> str:
    """Where a publisher sends a signal so consumers can own its user."""
    return f"{KEYED_ROOT}.{user_token(user_id)}.{kind}"


def partition_subject(partition: int) -> str:
    """The filter of one partition's consumer."""
    return f"{PARTITIONED_ROOT}.{partition}.>"


@dataclass(frozen=True)
class SignalSubject:
    kind: str | None  # None: the subject has no kind (a malformed keyed subject)
    user_token: str | None = None  # the keyed forms
    partition: int | None = None  # the stored keyed form


def signal_subject(subject: str) -> SignalSubject:
    """What a signal's subject says, in any of its three forms (pure)."""
    root, _, rest = subject.partition(".")
    if root == PARTITIONED_ROOT:
        part, _, rest = rest.partition(".")
        token, _, kind = rest.partition(".")
        number = int(part) if part.isdigit() else None
        return SignalSubject(kind or None, token or None, number)
    if root == KEYED_ROOT:
        token, _, kind = rest.partition(".")
        return SignalSubject(kind or None, token or None)
    return SignalSubject(rest or None)


def published_subject(subject: str) -> str:
    """The subject a stored message was published to (the stored keyed form without its
    partition): a replayed dead letter is partitioned again by the server, by today's count."""
    parsed = signal_subject(subject)
    if parsed.partition is None or parsed.user_token is None or parsed.kind is None:
        return subject
    return f"{KEYED_ROOT}.{parsed.user_token}.{parsed.kind}"


def parse_signal(subject: str, data: bytes) -> SignalEvent:
    payload = _loads(data)
    where = signal_subject(subject)
    if where.kind is not None:
        payload.setdefault("kind", where.kind)
    event = _validate(SignalEvent, payload)
    if where.user_token is not None and where.user_token != user_token(event.user_id):
        raise InvalidEvent(
            f"subject: user token {where.user_token!r} is not the token of user_id "
            f"{event.user_id!r} ({user_token(event.user_id)!r}); see keyed_signal_subject",
            field="subject",
        )
    return event


def parse_feedback(subject: str, data: bytes) -> FeedbackEvent:
    payload = _loads(data)
    payload.setdefault("reaction", subject.removeprefix("feedback."))
    return _validate(FeedbackEvent, payload)

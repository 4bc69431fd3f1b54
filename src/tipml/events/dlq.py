"""Dead letters: list them, and re-drive them to their original subject after a fix."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
from nats.js.errors import NotFoundError

from tipml.domain.events import published_subject
from tipml.events.bus import DLQ, Bus


async def dead_letters(
    bus: Bus, limit: int | None = None
) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """(DLQ stream sequence, letter) for every dead letter, oldest first."""
    info = await bus.js.stream_info(DLQ)
    if not info.state.messages:
        return
    first, last = max(1, info.state.first_seq), info.state.last_seq
    count = 0
    for seq in range(first, last + 1):
        if limit is not None and count >= limit:
            return
        try:
            msg = await bus.js.get_msg(DLQ, seq)
        except NotFoundError:
            continue  # deleted (already replayed)
        if msg.data is None:
            continue
        count += 1
        yield seq, orjson.loads(msg.data)


def original_payload(letter: dict[str, Any]) -> bytes:
    if letter.get("payload") is not None:
        return str(letter["payload"]).encode()
    return base64.b64decode(letter["payload_b64"])


async def replay(bus: Bus, *, subject_prefix: str | None = None) -> list[dict[str, Any]]:
    """Publish each dead letter's original payload to its original subject, then delete it
    from the dead-letter stream. The handlers are idempotent by ``event_id``, so replaying an
    event that had been applied after all changes nothing. ``Nats-Msg-Id`` is made unique per
    replay: the original id may still be inside the stream's duplicate window."""
    replayed: list[dict[str, Any]] = []
    async for seq, letter in dead_letters(bus):
        # a keyed signal goes back to the subject it was published to: the server partitions
        # it again (by today's TIPML_SIGNAL_PARTITIONS)
        stored = str(letter["subject"])
        subject = published_subject(stored)
        if subject_prefix and not (
            stored.startswith(subject_prefix) or subject.startswith(subject_prefix)
        ):
            continue
        await bus.js.publish(
            subject, original_payload(letter), headers={"Nats-Msg-Id": f"replay:{DLQ}:{seq}"}
        )
        await bus.js.delete_msg(DLQ, seq)
        replayed.append({"dlq_seq": seq, "subject": subject, "error": letter.get("error")})
    return replayed

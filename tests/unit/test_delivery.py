"""The consumer reads a message's delivery count, stream sequence and arrival time from its
reply subject; it must agree with nats-py's ``Msg.metadata`` on both subject forms."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from tipml.events.consumer import delivery

NS = 1_764_400_000_123_456_789


@pytest.mark.parametrize(
    "reply",
    [
        f"$JS.ACK.SIGNALS.signals-features.3.1234.99.{NS}.17",
        f"$JS.ACK._.ACCHASH.SIGNALS.signals-features.3.1234.99.{NS}.17.tok",
        f"$JS.ACK.hub.ACCHASH.SIGNALS.signals-features.1.7.7.{NS}.0.tok",
    ],
)
def test_delivery_agrees_with_nats_py(reply: str) -> None:
    msg = Msg(None, subject="signals.app.opened", reply=reply)  # type: ignore[arg-type]
    meta = msg.metadata
    delivered, seq, arrived = delivery(msg)
    assert delivered == meta.num_delivered
    assert seq == meta.sequence.stream
    assert arrived == pytest.approx(meta.timestamp.timestamp(), abs=1e-6)


def test_not_a_jetstream_message() -> None:
    with pytest.raises(NotJSMessageError):
        delivery(Msg(None, subject="x", reply="_INBOX.abc"))  # type: ignore[arg-type]

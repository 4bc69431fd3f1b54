"""The key-value record codec: keys, and the envelope every keyed state is stored in.

A record is ``{"s": state, "d": {arrival_hour: ids}}``: the state, and the event ids folded
into it within the duplicate horizon, grouped by the UTC hour the event reached the stream
(``ids`` is the url-safe base64 of 8-byte BLAKE2b digests). ``events.keyed`` writes records;
the serving process, the CLI and the benchmarks read them through this module only.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any

import orjson

DEFAULT_HORIZON_S = 7 * 86400.0
HOUR = 3600
_DIGEST = 8
_SAFE_KEY = re.compile(r"^[-_=A-Za-z0-9]{1,200}$")


def kv_key(raw: str) -> str:
    """A KV-safe key for any id: kept as is when safe, else url-safe base64 with a prefix."""
    if _SAFE_KEY.match(raw) and not raw.startswith("b64="):
        return raw
    return "b64=" + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def kv_key_decode(key: str) -> str:
    """The id a key was made from (``kv_key``'s inverse)."""
    if key.startswith("b64="):
        raw = key[4:]
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    return key


def decode_state(value: bytes) -> Any:
    """The state inside an encoded record."""
    return orjson.loads(value)["s"]


def event_digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=_DIGEST).digest()


class SeenIds:
    """The event ids a record has folded in, by arrival hour, within the horizon.

    Kept as the concatenated digests per hour (no set is built: a record holds tens of ids,
    and ``bytes.find`` over them is faster than hashing them all), with each hour's base64
    text from the record reused on encode unless the hour took new ids."""

    def __init__(self, buckets: dict[int, bytes], encoded: dict[int, str] | None = None) -> None:
        self.buckets = buckets
        self._encoded = encoded or {}  # hour -> its text in the record read, while unchanged

    @classmethod
    def decode(cls, record: dict[str, Any] | None) -> SeenIds:
        if not record:
            return cls({})
        encoded = {int(hour): ids for hour, ids in (record.get("d") or {}).items()}
        buckets = {hour: base64.urlsafe_b64decode(ids) for hour, ids in encoded.items()}
        legacy = record.get("a")  # records written before the horizon: [[seq, event_id], …]
        if legacy:
            hour = int(time.time() // HOUR)
            buckets[hour] = buckets.get(hour, b"") + b"".join(event_digest(e) for _, e in legacy)
            encoded.pop(hour, None)
        return cls(buckets, encoded)

    def __contains__(self, digest: bytes) -> bool:
        for ids in self.buckets.values():
            at = ids.find(digest)
            while at != -1:
                if at % _DIGEST == 0:
                    return True
                at = ids.find(digest, at + 1)
        return False

    def add(self, hour: int, digest: bytes) -> None:
        self.buckets[hour] = self.buckets.get(hour, b"") + digest
        self._encoded.pop(hour, None)

    def encode(self, horizon_s: float) -> dict[str, str]:
        if not self.buckets:
            return {}
        oldest = max(self.buckets) - int(horizon_s // HOUR)
        out = {}
        for hour, ids in sorted(self.buckets.items()):
            if hour >= oldest:
                text = self._encoded.get(hour)
                out[str(hour)] = (
                    text if text is not None else base64.urlsafe_b64encode(ids).decode()
                )
        return out


def encode_record(state: Any, seen: SeenIds, horizon_s: float) -> bytes:
    return orjson.dumps({"s": state, "d": seen.encode(horizon_s)})

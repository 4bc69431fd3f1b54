"""Idempotent, concurrent-safe state writes to a JetStream key-value bucket.

Every record is an envelope ``{"s": state, "a": [[stream_seq, event_id], ...]}``: the state
and the events already folded into it that the consumer could still redeliver. A write

1. reads the record (or takes it from a cache of recently written revisions — no read needed
   when nobody else wrote the key since),
2. drops the events it already holds (same stream sequence: a redelivery; same ``event_id``:
   a duplicate publish),
3. folds in the rest with a pure function and writes with compare-and-set on the revision,
4. on a revision conflict (another replica wrote first) re-reads and tries again.

``a`` stays small: entries at or below the consumer's *ack floor* are dropped — the server
never redelivers those — so it holds at most the consumer's in-flight window for that key.
Duplicate publishes beyond that are dropped by the stream's duplicate window (``Nats-Msg-Id``).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tipml.errors import TipmlError

E = TypeVar("E")
State = Any

_SAFE_KEY = re.compile(r"^[-_=A-Za-z0-9]{1,200}$")


def kv_key(raw: str) -> str:
    """A KV-safe key for any id: kept as is when safe, else url-safe base64 with a prefix."""
    if _SAFE_KEY.match(raw) and not raw.startswith("b64="):
        return raw
    return "b64=" + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@dataclass(frozen=True)
class Item(Generic[E]):
    seq: int  # stream sequence of the message
    event_id: str
    event: E


class ConflictError(TipmlError):
    code = "write_conflict"


@dataclass
class WriteResult:
    applied: int = 0
    duplicates: int = 0
    conflicts: int = 0


class KeyedStore(Generic[E]):
    def __init__(
        self,
        kv: KeyValue,
        empty: Callable[[], State],
        fold: Callable[[State, list[E]], State],  # gets a private copy: may fold in place
        *,
        cache_size: int = 100_000,
        max_attempts: int = 20,
        concurrency: int = 256,
    ) -> None:
        self.kv = kv
        self.empty = empty
        self.fold = fold
        self.floor = 0  # consumer ack floor (stream sequence); set by the consumer
        # key -> (revision, encoded record): decoding gives every write a private copy
        self._cache: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._cache_size = cache_size
        self._max_attempts = max_attempts
        self._slots = asyncio.Semaphore(concurrency)

    async def read_raw(self, key: str) -> tuple[int, bytes | None]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return 0, None
        return int(entry.revision or 0), entry.value or None

    async def read(self, key: str) -> tuple[int, dict[str, Any] | None]:
        revision, raw = await self.read_raw(key)
        return revision, None if raw is None else orjson.loads(raw)

    async def state(self, key: str) -> State | None:
        _, record = await self.read(key)
        return None if record is None else record["s"]

    def _remember(self, key: str, revision: int, record: bytes) -> None:
        self._cache[key] = (revision, record)
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def write(self, key: str, items: Sequence[Item[E]]) -> WriteResult:
        result = WriteResult()
        async with self._slots:
            for _ in range(self._max_attempts):
                cached = self._cache.get(key)
                revision, raw = cached if cached else await self.read_raw(key)
                record = orjson.loads(raw) if raw else None
                applied = [(s, e) for s, e in (record or {}).get("a", []) if s > self.floor]
                seen_seq = {s for s, _ in applied}
                seen_ids = {e for _, e in applied}
                new = [i for i in items if i.seq not in seen_seq and i.event_id not in seen_ids]
                result.duplicates = len(items) - len(new)
                if not new:
                    return result
                state = self.fold(record["s"] if record else self.empty(), [i.event for i in new])
                applied.extend((i.seq, i.event_id) for i in new)
                envelope = {"s": state, "a": applied}
                value = orjson.dumps(envelope)
                try:
                    if revision == 0:
                        revision = await self.kv.create(key, value)
                    else:
                        revision = await self.kv.update(key, value, last=revision)
                except KeyWrongLastSequenceError:
                    result.conflicts += 1
                    self._cache.pop(key, None)
                    continue
                except BaseException:
                    self._cache.pop(key, None)
                    raise
                self._remember(key, revision, value)
                result.applied = len(new)
                return result
        raise ConflictError(f"key {key!r}: still conflicting after {self._max_attempts} attempts")

    async def write_many(self, groups: dict[str, list[Item[E]]]) -> WriteResult:
        """Write every key's items concurrently; the first failure is raised after all finish."""
        results = await asyncio.gather(
            *(self.write(k, v) for k, v in groups.items()), return_exceptions=True
        )
        total = WriteResult()
        for r in results:
            if isinstance(r, BaseException):
                raise r
            total.applied += r.applied
            total.duplicates += r.duplicates
            total.conflicts += r.conflicts
        return total


Loader = Callable[[str], Awaitable[State | None]]

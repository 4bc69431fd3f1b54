"""Idempotent, concurrent-safe state writes to a JetStream key-value bucket.

Every record is an envelope ``{"s": state, "d": {arrival_hour: ids}}``: the state, and the
event ids already folded into it during the *duplicate horizon* (``TIPML_DEDUPE_HORIZON_S``,
7 days by default), grouped by the hour the event reached the stream (``ids`` is the
url-safe base64 of 8-byte BLAKE2b digests of the event ids). A write

1. reads the record (or takes it from a cache of recently written revisions — no read needed
   when nobody else wrote the key since),
2. drops the events it already holds — a redelivery, a producer's retry under a new
   ``Nats-Msg-Id``, a phone re-uploading its queue an hour later, a dead letter replayed after
   a partial write: anything with an event id folded in within the horizon,
3. folds in the rest with a pure function, adds their ids, forgets the ids that arrived more
   than the horizon before the newest one, and writes with compare-and-set on the revision,
4. on a revision conflict (another replica wrote first) re-reads and tries again.

The id set and the state change in one compare-and-set, so a crash between them cannot count
an event twice or lose it. Its size is bounded by the events the key takes within the horizon:
about 11 bytes each (a user with 200 signals a day: ~15 KB; a key taking more than ~10,000
events a day should be sharded — see ADR 0008).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tipml.domain.records import (
    DEFAULT_HORIZON_S,
    HOUR,
    SeenIds,
    encode_record,
    event_digest,
)
from tipml.errors import TipmlError

E = TypeVar("E")
State = Any


@dataclass(frozen=True)
class Item(Generic[E]):
    seq: int  # stream sequence of the message
    event_id: str
    event: E
    arrived: float = 0.0  # when the message reached the stream (epoch s); 0: now


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
        horizon_s: float = DEFAULT_HORIZON_S,
        cache_size: int = 100_000,
        max_attempts: int = 20,
        concurrency: int = 256,
    ) -> None:
        self.kv = kv
        self.empty = empty
        self.fold = fold
        self.horizon_s = horizon_s
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
                seen = SeenIds.decode(record)
                new: list[Item[E]] = []
                for item in items:
                    digest = event_digest(item.event_id)
                    if digest in seen:
                        continue
                    seen.add(int((item.arrived or time.time()) // HOUR), digest)
                    new.append(item)
                result.duplicates = len(items) - len(new)
                if not new:
                    return result
                state = self.fold(record["s"] if record else self.empty(), [i.event for i in new])
                value = encode_record(state, seen, self.horizon_s)
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

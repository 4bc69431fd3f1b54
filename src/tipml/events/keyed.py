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
import base64
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
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
    delivered: int = 1  # the server's delivery count: > 1, someone may have handled it before


class ConflictError(TipmlError):
    code = "write_conflict"


WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's "wrong last sequence" error codes


class PipelinedCas:
    """Compare-and-set writes — and the reads they need — to a KV bucket as pipelined
    JetStream messages.

    A KV update is a publish to ``$KV.<bucket>.<key>`` with the header
    ``Nats-Expected-Last-Subject-Sequence``; the server answers with the new revision or
    "wrong last sequence". ``KeyValue.update`` sends one as a request — a future, a timer and a
    random reply token per write, and a dataclass per answer, which the ingest profile showed
    to be about half of the consumer's time (ADR 0006). Here every write of a batch is sent
    before any answer is awaited, answers arrive on one reply subscription keyed by a counter,
    and the caller awaits them all under one deadline. Reads of records not in the cache (a
    key seen for the first time, or written by another process since) go the same way: the
    stream's last message on the key's subject (``STREAM.MSG.GET`` with ``last_by_subj``, as
    ``KeyValue.get`` asks without direct gets), all of a batch's sent before any is awaited."""

    def __init__(self, kv: KeyValue) -> None:
        # nats-py keeps the bucket's subject prefix and connection private; KeyValue.update
        # publishes to exactly this subject with exactly this header.
        self._pre: str = kv._pre
        self._nc: Any = kv._js._nc
        self._get_subject = f"{kv._js._prefix}.STREAM.MSG.GET.{kv._stream}"
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._reading: dict[str, asyncio.Future[tuple[int, bytes | None]]] = {}
        self._prefix = ""
        self._ids = itertools.count(1)
        self._sub: Any = None

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        reading = self._reading.pop(token, None)
        fut: asyncio.Future[Any] | None = reading or self._waiting.pop(token, None)
        if fut is None or fut.done():
            return
        if not msg.data:  # a status message (503: no stream answers the subject)
            status = msg.headers.get("Status") if msg.headers else None
            fut.set_exception(NoRespondersError() if status == "503" else NatsError(status))
            return
        answer = orjson.loads(msg.data)
        if reading is not None:
            _read_answer(reading, answer)
            return
        error = answer.get("error")
        if error is None:
            fut.set_result(int(answer["seq"]))
        elif error.get("err_code") in WRONG_LAST_SEQUENCE:
            fut.set_exception(KeyWrongLastSequenceError(description=error.get("description")))
        else:
            try:
                APIError.from_error(error)  # raises the typed error (503 -> transient)
            except APIError as exc:
                fut.set_exception(exc)

    async def _subscribe(self) -> None:
        if self._sub is None or self._sub._closed:
            inbox = self._nc.new_inbox()
            self._prefix = f"{inbox}."
            self._sub = await self._nc.subscribe(f"{inbox}.*", cb=self._on_reply)

    async def get(self, key: str) -> asyncio.Future[tuple[int, bytes | None]]:
        """Send the read; the returned future gives (revision, record), (0, None) for a key
        never written, (revision, None) for a deleted one."""
        await self._subscribe()
        token = str(next(self._ids))
        fut: asyncio.Future[tuple[int, bytes | None]] = asyncio.get_running_loop().create_future()
        self._reading[token] = fut
        try:
            await self._nc.publish(
                self._get_subject,
                orjson.dumps({"last_by_subj": self._pre + key}),
                reply=self._prefix + token,
            )
        except BaseException:
            self._reading.pop(token, None)
            raise
        return fut

    async def put(self, key: str, value: bytes, last: int) -> asyncio.Future[int]:
        """Send the write; the returned future gives the new revision."""
        await self._subscribe()
        token = str(next(self._ids))
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[token] = fut
        try:
            await self._nc.publish(
                self._pre + key,
                value,
                reply=self._prefix + token,
                headers={"Nats-Expected-Last-Subject-Sequence": str(last)},
            )
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return fut

    def forget(self, futures: Sequence[asyncio.Future[Any]]) -> None:
        """Drop reads and writes whose answers are no longer awaited (a deadline passed)."""
        gone = set(map(id, futures))
        for waiting in (self._waiting, self._reading):
            for token, fut in list(waiting.items()):
                if id(fut) in gone:
                    del waiting[token]
        for fut in futures:
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" warning


NO_MESSAGE_FOUND = 10037  # JetStream: no message on that subject


def _read_answer(fut: asyncio.Future[tuple[int, bytes | None]], answer: dict[str, Any]) -> None:
    error = answer.get("error")
    if error is not None:
        if error.get("err_code") == NO_MESSAGE_FOUND:
            fut.set_result((0, None))
            return
        try:
            APIError.from_error(error)  # raises the typed error (503 -> transient)
        except APIError as exc:
            fut.set_exception(exc)
        return
    message = answer["message"]
    revision = int(message["seq"])
    headers = base64.b64decode(message.get("hdrs") or b"")
    if b"KV-Operation: DEL" in headers or b"KV-Operation: PURGE" in headers:
        fut.set_result((revision, None))  # a delete marker: write after it, from empty
        return
    data = message.get("data")
    fut.set_result((revision, base64.b64decode(data) if data else None))


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
        pipelined: bool = True,
        timeout_s: float = 5.0,
    ) -> None:
        self.kv = kv
        self._pipeline = PipelinedCas(kv) if pipelined else None
        self.timeout_s = timeout_s
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

    def _prepare(self, raw: bytes | None, items: Sequence[Item[E]]) -> tuple[bytes | None, int]:
        """The record after folding in the events it does not hold yet (``None``: it holds
        them all), and how many it folded in. Pure: the cached bytes are decoded afresh."""
        record = orjson.loads(raw) if raw else None
        seen = SeenIds.decode(record)
        new: list[E] = []
        for item in items:
            digest = event_digest(item.event_id)
            if digest in seen:
                continue
            seen.add(int((item.arrived or time.time()) // HOUR), digest)
            new.append(item.event)
        if not new:
            return None, 0
        state = self.fold(record["s"] if record else self.empty(), new)
        return encode_record(state, seen, self.horizon_s), len(new)

    async def write(self, key: str, items: Sequence[Item[E]]) -> WriteResult:
        result = WriteResult()
        async with self._slots:
            for _ in range(self._max_attempts):
                cached = self._cache.get(key)
                revision, raw = cached if cached else await self.read_raw(key)
                value, applied = self._prepare(raw, items)
                result.duplicates = len(items) - applied
                if value is None:
                    return result
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
                result.applied = applied
                return result
        raise ConflictError(f"key {key!r}: still conflicting after {self._max_attempts} attempts")

    async def write_many(self, groups: dict[str, list[Item[E]]]) -> WriteResult:
        """Write every key's items; the first failure is raised after all finish.

        In rounds (``PipelinedCas``): the records not in the cache (the common case is that
        this process wrote a key last, and its record is cached) are read, every key's
        compare-and-set is sent, and the answers are awaited under one deadline; a key whose
        write met another writer's revision is read again in the next round."""
        if self._pipeline is None:
            return await self._write_each(groups)
        pipeline = self._pipeline
        total = WriteResult()
        todo = dict(groups)
        for _ in range(self._max_attempts):
            if not todo:
                return total
            reads: list[tuple[str, asyncio.Future[tuple[int, bytes | None]]]] = []
            sent: list[tuple[str, bytes, int, int, asyncio.Future[int]]] = []
            try:
                records: dict[str, tuple[int, bytes | None]] = {}
                for key in todo:
                    cached = self._cache.get(key)
                    if cached is None:
                        reads.append((key, await pipeline.get(key)))
                    else:
                        records[key] = cached
                if reads:
                    async with asyncio.timeout(self.timeout_s):
                        for key, read in reads:
                            records[key] = await read
                for key, (revision, raw) in records.items():
                    items = todo[key]
                    value, applied = self._prepare(raw, items)
                    if value is None:
                        total.duplicates += len(items)
                        del todo[key]
                        continue
                    fut = await pipeline.put(key, value, revision)
                    sent.append((key, value, applied, len(items) - applied, fut))
                async with asyncio.timeout(self.timeout_s):
                    for key, value, applied, duplicates, fut in sent:
                        try:
                            revision = await fut
                        except KeyWrongLastSequenceError:
                            total.conflicts += 1
                            self._cache.pop(key, None)
                            continue
                        self._remember(key, revision, value)
                        total.applied += applied
                        total.duplicates += duplicates
                        del todo[key]
            except BaseException:
                # Unconfirmed writes may or may not have happened: forget their cached
                # revisions (the next write re-reads; the record's event ids keep it exact).
                for key, value, _, _, fut in sent:
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        self._remember(key, fut.result(), value)
                    else:
                        self._cache.pop(key, None)
                pipeline.forget([f for _, f in reads] + [f for *_, f in sent])
                raise
        if todo:
            key = next(iter(todo))
            raise ConflictError(
                f"key {key!r}: still conflicting after {self._max_attempts} attempts"
            )
        return total

    async def _write_each(self, groups: dict[str, list[Item[E]]]) -> WriteResult:
        """One key at a time (a request per read and per write), concurrently."""
        total = WriteResult()
        results = await asyncio.gather(
            *(self.write(k, v) for k, v in groups.items()), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
            total.applied += r.applied
            total.duplicates += r.duplicates
            total.conflicts += r.conflicts
        return total

"""The archiver: signals, feedback and decisions to Parquet, each event exactly once.

One durable consumer per stream. A fetched batch becomes one file per event day,
``<archive>/<stream>/date=YYYY-MM-DD/part-<first seq>-<last seq>.parquet``, written whole — to
a temporary name and renamed in a directory, as one PUT in an object store (ADR 0015): a
reader never sees half a file — then acked. A batch redelivered after a crash between the
write and the ack is recognised by its stream sequences — the archiver remembers the sequences
of the files above the consumer's ack floor, read from the store at its first batch — and
skipped. Read with DuckDB or Polars: ``SELECT * FROM 'offline/signals/*/*.parquet'``.

Several archivers form one group: every `tipml consume` process running the archiver binds
the same durable consumers, so the server hands each message to one of them, and they write
to one location (``TIPML_ARCHIVE_DIR``, a path every process mounts, default
``<data_dir>/offline``; or ``TIPML_ARCHIVE_URL``, a bucket). A message delivered more than once
may have been written by another archiver that stopped before its ack; so a batch holding a
redelivered message first lists the parts (their names carry their sequence ranges) and reads
the sequences of every part overlapping the batch, and writes only what nobody wrote. Each
stream sequence is written once — across processes too — unless an archiver stalls past
``ack_wait`` between writing a part and acking it while another writes the same redelivered
batch; ``tipml archive compact`` keeps one row per sequence (and decision id) even then.

A decision log's block (one message of many ``/score`` decisions, ADR 0028) becomes one row per
decision, filed from the block's index (its subject is the decision's own,
``ml.decisions.score.<id>``), all with the block's stream sequence: a sequence is written once
with all its rows, and compaction keeps one row per (sequence, id).

The archive keeps everything the stream holds, invalid events included (``valid = false``):
those are also dead-lettered by the domain consumer, and the offline log is where feedback is
joined to decisions later.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tipml.domain.events import signal_subject
from tipml.events.bus import DECISIONS, FEEDBACK, SIGNALS
from tipml.events.decisions import BATCH_HEADER, TS_HEADER, USER_HEADER, block_rows
from tipml.events.keyed import Item, WriteResult
from tipml.events.location import ArchiveLocation

SCHEMA = pa.schema(
    [
        ("stream_seq", pa.int64()),
        ("subject", pa.string()),
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("kind", pa.string()),
        ("tip_id", pa.string()),
        ("decision_id", pa.string()),
        ("reaction", pa.string()),
        ("prompt_version", pa.string()),
        ("valid", pa.bool_()),
        ("payload", pa.string()),
    ]
)
# The raw event (a decision with every candidate is ~8 KB at 100 candidates) is unique per row: no
# dictionary to try and no min/max statistics to compute for it; zstd stores it in about half
# of snappy's bytes for about the same CPU (bench: 42-46 µs a decision in parts of 500 rows,
# against 51 µs with pyarrow's defaults).
_LEAN = [name for name in SCHEMA.names if name != "payload"]
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": _LEAN,
    "write_statistics": _LEAN,
}
_SCORE_DECISION = "ml.decisions.score."
_PART = re.compile(r"^part-(\d+)-(\d+)(?:-\d+)?\.parquet$")
# "": the whole stream (the signals come on three subject roots, domain/events.py)
_FILTERS = {SIGNALS: "", FEEDBACK: "feedback.>", DECISIONS: "ml.>"}


def _ts(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # UTC, like the consumers: the date partition is the event's UTC date
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class Archiver:
    def __init__(
        self,
        stream: str,
        root: ArchiveLocation | Path | str,
        window: int = 50_000,
        *,
        linger_s: float = 0.0,
    ) -> None:
        self.stream = stream
        self.linger_s = linger_s  # gather a batch this long: one part per batch
        self.name = f"archive-{stream.lower()}"
        self.filter_subject = _FILTERS[stream]
        self.location = ArchiveLocation.of(root)
        self.folder = stream.lower()
        self.floor = 0
        self.window = window
        self._archived: set[int] = set()
        self._scanned: dict[str, int] = {}  # parts whose sequences are in _archived: last seq
        self._loaded = False  # the store is first read at the first batch, not at start

    def _ranges(self) -> list[tuple[int, int, str]]:
        out = []
        for path in self.location.parts(self.folder):
            match = _PART.match(path.rsplit("/", 1)[-1])
            if match is not None:
                out.append((int(match.group(1)), int(match.group(2)), path))
        return out

    def load_recent(self) -> None:
        """Sequences of the newest files: written, but perhaps not acked before a crash. Only
        files within ``window`` sequences of the newest can hold unacked messages (the consumer
        has at most ``max_ack_pending`` in flight). Done once, at the first batch (off the event
        loop): a store that cannot be reached at start pauses the archiver's batches, not the
        start of every consumer."""
        parts = self._ranges()
        newest = max((last for _, last, _ in parts), default=0)
        for _, last, path in parts:
            if last > newest - self.window and last > self.floor:
                table = self.location.read(path, columns=["stream_seq"])
                self._archived.update(
                    s for s in table.column("stream_seq").to_pylist() if s > self.floor
                )
                self._scanned[path] = last
        self._loaded = True

    def set_floor(self, floor: int) -> None:
        self.floor = floor
        self._archived = {s for s in self._archived if s > floor}
        self._scanned = {p: last for p, last in self._scanned.items() if last > floor}

    def parse(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[str, dict[str, Any]]:
        if headers and self.stream == DECISIONS:
            filed = (
                self._filed_block(subject, data)
                if BATCH_HEADER in headers
                else self._filed_by_headers(subject, data, headers)
            )
            if filed is not None:
                return filed
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        ok = isinstance(payload, dict)
        body: dict[str, Any] = payload if isinstance(payload, dict) else {}
        ts = _ts(body.get("ts"))
        event_id = _str(body.get("event_id")) or _str(body.get("decision_id"))
        row = {
            "subject": subject,
            "event_id": event_id,
            "user_id": _str(body.get("user_id")),
            "ts": ts,
            "kind": _str(body.get("kind"))
            or (signal_subject(subject).kind if self.stream == SIGNALS else None),
            "tip_id": _str(body.get("tip_id")),
            "decision_id": _str(body.get("decision_id")),
            "reaction": _str(body.get("reaction"))
            or (subject.removeprefix("feedback.") if subject.startswith("feedback.") else None),
            "prompt_version": _str(body.get("prompt_version")),
            "valid": ok and ts is not None and event_id is not None,
            "payload": data.decode(errors="replace"),
        }
        return event_id or "", row

    def _filed_by_headers(
        self, subject: str, data: bytes, headers: Mapping[str, str]
    ) -> tuple[str, dict[str, Any]] | None:
        """A ``/score`` decision filed from the headers its log publishes it with (its time and
        user; id and kind are in the subject) — its ~8 KB body is stored, not parsed (~50 µs
        of a decision's archiving). ``None``: parse the body (a ``/generate`` decision, whose
        prompt version is a column; a decision published without the headers)."""
        ts = _ts(headers.get(TS_HEADER))
        user = headers.get(USER_HEADER)
        decision_id = subject.removeprefix(_SCORE_DECISION)
        if ts is None or not user or decision_id in (subject, ""):
            return None
        if not (data.startswith(b"{") and data.rstrip().endswith(b"}")):
            return None  # not the JSON object the headers vouch for: the body decides
        row = {
            "subject": subject,
            "event_id": decision_id,
            "user_id": user,
            "ts": ts,
            "kind": "score",
            "tip_id": None,
            "decision_id": decision_id,
            "reaction": None,
            "prompt_version": None,
            "valid": True,
            "payload": data.decode(errors="replace"),
        }
        return decision_id, row

    def _filed_block(self, subject: str, data: bytes) -> tuple[str, dict[str, Any]] | None:
        """A block of decisions: one row each, filed from the block's index (a ``/score``
        decision's body is not parsed), under the decision's own subject. The event's ``ts``
        is the first decision's: a block is filed in one day's part, whole. ``None``: not a
        block after all — the body decides (one invalid row, archived as it came)."""
        try:
            decisions = block_rows(data)
        except ValueError:
            return None
        prefix, _, key = subject.rpartition(".")
        if not decisions or not prefix.startswith("ml.decisions."):
            return None
        rows = []
        for decision_id, ts, user, line in decisions:
            own = f"{prefix}.{decision_id}"
            filed = self._filed_by_headers(own, line, {TS_HEADER: ts, USER_HEADER: user})
            rows.append(filed[1] if filed is not None else self.parse(own, line)[1])
        return key, {"ts": rows[0]["ts"], "rows": rows}

    def _rescan(self, lo: int, hi: int) -> None:
        """Read the sequences of every part in the location whose range overlaps ``lo..hi`` —
        what another archiver of the group may have written — into the set of written ones."""
        for first, last, path in self._ranges():
            if path in self._scanned or last < lo or first > hi:
                continue
            try:
                table = self.location.read(path, columns=["stream_seq"])
            except (FileNotFoundError, pa.ArrowInvalid):  # compacted away meanwhile: rows moved
                continue  # (any other failure of the store: the batch waits and is retried)
            self._archived.update(int(s) for s in table.column("stream_seq").to_pylist())
            self._scanned[path] = last

    async def handle(self, items: Sequence[Item[Any]]) -> WriteResult:
        if not self._loaded:
            await asyncio.to_thread(self.load_recent)
        redelivered = [i.seq for i in items if i.delivered > 1]
        if redelivered:
            await asyncio.to_thread(self._rescan, min(redelivered), max(redelivered))
        new = [i for i in items if i.seq not in self._archived and i.seq > self.floor]
        result = WriteResult(
            applied=sum(len(i.event.get("rows", (0,))) for i in new),
            duplicates=len(items) - len(new),
        )
        by_day: dict[str, list[Item[Any]]] = {}
        for item in new:
            ts = item.event["ts"] or datetime.now(UTC)
            by_day.setdefault(ts.strftime("%Y-%m-%d"), []).append(item)
        for day, group in by_day.items():
            # Parquet encoding and fsync off the event loop: in `tipml serve` the archiver
            # shares the loop with /score, and a batch of decisions takes milliseconds to write
            await asyncio.to_thread(self._write, day, group)
        return result

    def _write(self, day: str, group: list[Item[Any]]) -> None:
        rows = [
            {**row, "stream_seq": i.seq} for i in group for row in i.event.get("rows", (i.event,))
        ]
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        first, last = min(i.seq for i in group), max(i.seq for i in group)
        folder = f"date={day}"
        final = self.location.path(self.folder, folder, f"part-{first:012d}-{last:012d}.parquet")
        if self.location.exists(final):  # same range written before a crash: keep both
            final = self.location.path(
                self.folder, folder, f"part-{first:012d}-{last:012d}-{time.time_ns()}.parquet"
            )
        self.location.write(final, table, **PARQUET_OPTIONS)
        self._scanned[final] = last
        self._archived.update(i.seq for i in group)


def archivers(root: ArchiveLocation | Path | str, linger_s: float = 0.0) -> list[Archiver]:
    location = ArchiveLocation.of(root)
    return [
        Archiver(stream, location, linger_s=linger_s) for stream in (SIGNALS, FEEDBACK, DECISIONS)
    ]


@dataclass
class Compaction:
    """What ``compact`` did in one partition (``<stream>/date=YYYY-MM-DD``)."""

    partition: str
    files_before: int
    files_after: int
    rows_before: int
    rows_after: int  # rows_before minus rows archived twice (same stream sequence and id)


def compact(
    root: ArchiveLocation | Path | str,
    streams: Sequence[str] = ("signals", "feedback", "decisions"),
) -> list[Compaction]:
    """Merge each day's part files into one, ordered by stream sequence, each row once.

    Idempotent and safe beside a running archiver: the merged file is written whole (renamed
    into place on a filesystem, one PUT on an object store) as ``part-<first>-<last>.parquet``
    before the files it replaces are removed, and only the files read are removed (a part the
    archiver writes meanwhile stays for the next run). A crash between the write and the
    removals leaves rows in two files — readers drop them by id, and the next run merges them
    away."""
    location = ArchiveLocation.of(root)
    out: list[Compaction] = []
    for stream in streams:
        for folder in location.days(stream):
            parts = sorted(
                p
                for p in location.fs.glob(f"{folder}/part-*.parquet")
                if _PART.match(p.rsplit("/", 1)[-1])
            )
            if len(parts) < 2:
                continue
            table = pa.concat_tables(
                [pq.read_table(p, schema=SCHEMA, filesystem=location.fs) for p in parts]
            )
            rows_before = table.num_rows
            if rows_before == 0:
                continue
            # one row per (sequence, id): a block of decisions is one sequence of many rows
            table = table.sort_by([("stream_seq", "ascending"), ("event_id", "ascending")])
            seqs = table.column("stream_seq").to_numpy()
            ids = table.column("event_id").fill_null("").to_numpy(zero_copy_only=False)
            first_of_seq = np.ones(len(seqs), dtype=bool)
            first_of_seq[1:] = (seqs[1:] != seqs[:-1]) | (ids[1:] != ids[:-1])
            table = table.filter(pa.array(first_of_seq))
            first, last = int(seqs[0]), int(seqs[-1])
            target = f"{folder}/part-{first:012d}-{last:012d}.parquet"
            location.write(target, table, **PARQUET_OPTIONS)
            for path in parts:
                if path != target:
                    location.remove(path)
            day = folder.rsplit("/", 1)[-1]
            out.append(Compaction(f"{stream}/{day}", len(parts), 1, rows_before, table.num_rows))
    return out

"""``tipml archive compact`` (issue 9, item 1): each day's small Parquet files become one,
ordered by stream sequence, each sequence once — nothing lost, nothing twice, idempotent,
and the archiver still recognises what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tipml.events.archive import Archiver, compact
from tipml.events.bus import SIGNALS
from tipml.events.keyed import Item
from tipml.events.location import ArchiveLocation
from tipml.settings import Settings


def _items(archiver: Archiver, seqs: range, day: str = "2026-11-27") -> list[Item[object]]:
    out = []
    for seq in seqs:
        payload = {"event_id": f"e-{seq}", "user_id": f"u-{seq % 7}", "ts": f"{day}T10:00:00Z"}
        event_id, row = archiver.parse("signals.app.opened", orjson.dumps(payload))
        out.append(Item(seq, event_id, row))
    return out


def _rows(root: ArchiveLocation) -> list[int]:
    seqs: list[int] = []
    for path in root.parts("signals"):
        seqs += root.read(path, columns=["stream_seq"]).column("stream_seq").to_pylist()
    return seqs


def _names(root: ArchiveLocation, day: str) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1] for p in root.parts("signals") if f"/date={day}/" in p)


def test_compaction_merges_drops_double_writes_and_is_idempotent(
    tmp_path: Path, archive_settings: dict[str, Any]
) -> None:
    root = Settings(data_dir=tmp_path, **archive_settings).archive
    archiver = Archiver(SIGNALS, root)
    archiver._write("2026-11-27", _items(archiver, range(1, 4)))  # type: ignore[arg-type]
    archiver._write("2026-11-27", _items(archiver, range(4, 7)))  # type: ignore[arg-type]
    archiver._write("2026-11-27", _items(archiver, range(4, 7)))  # a crash before the ack
    archiver._write("2026-11-27", _items(archiver, range(7, 11)))  # type: ignore[arg-type]
    archiver._write("2026-11-28", _items(archiver, range(11, 13), "2026-11-28"))  # type: ignore[arg-type]
    before = _rows(root)
    assert len(before) == 15
    assert len(set(before)) == 12
    assert len(_names(root, "2026-11-27")) == 4

    done = compact(root)
    assert [(c.partition, c.files_before, c.rows_before, c.rows_after) for c in done] == [
        ("signals/date=2026-11-27", 4, 13, 10)
    ]
    assert _names(root, "2026-11-27") == ["part-000000000001-000000000010.parquet"]
    assert _rows(root) == list(range(1, 13))  # every sequence once, in order
    table = root.read(root.path("signals", "date=2026-11-27", _names(root, "2026-11-27")[0]))
    assert table.column("event_id").to_pylist() == [f"e-{s}" for s in range(1, 11)]

    assert compact(root) == []  # nothing left to do
    assert _rows(root) == list(range(1, 13))
    # the archiver still knows what it archived (a redelivery after restart is a duplicate)
    restarted = Archiver(SIGNALS, root)
    restarted.load_recent()
    assert set(range(1, 13)) <= restarted._archived


def test_the_command_reports_what_it_did(tmp_path: Path, archive_settings: dict[str, Any]) -> None:
    env = {**os.environ, "TIPML_DATA_DIR": str(tmp_path / "data")}
    if "archive_url" in archive_settings:  # the store named by the environment, as in production
        env["TIPML_ARCHIVE_URL"] = archive_settings["archive_url"]
        env["TIPML_ARCHIVE_OPTIONS"] = json.dumps(archive_settings["archive_options"])
        root = ArchiveLocation.of(
            archive_settings["archive_url"], archive_settings["archive_options"]
        )
    else:
        root = ArchiveLocation.of(tmp_path / "data" / "offline")
    archiver = Archiver(SIGNALS, root)
    for start in (1, 3, 5):
        archiver._write("2026-11-27", _items(archiver, range(start, start + 2)))  # type: ignore[arg-type]
    run = [sys.executable, "-m", "tipml", "archive", "compact", "--json"]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == [
        {
            "partition": "signals/date=2026-11-27",
            "files_before": 3,
            "files_after": 1,
            "rows_before": 6,
            "rows_after": 6,
        }
    ]
    assert _rows(root) == list(range(1, 7))
    assert _names(root, "2026-11-27") == ["part-000000000001-000000000006.parquet"]
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert json.loads(again.stdout) == []
    bad = subprocess.run(
        [*run[:-1], "--stream", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2
    assert "--stream: unknown nope" in bad.stderr

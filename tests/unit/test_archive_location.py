"""Where the offline log lives (``TIPML_ARCHIVE_DIR`` / ``TIPML_ARCHIVE_URL``): one contract for a
directory and an object store, and a clear error for a store tipml cannot open."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tipml.errors import ConfigError
from tipml.events.location import ArchiveLocation
from tipml.settings import Settings


def test_a_url_overrides_the_directory_and_a_bad_one_names_the_setting(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).archive.root == str((tmp_path / "offline").absolute())
    in_memory = Settings(data_dir=tmp_path, archive_url="memory://tipml-a/offline").archive
    assert (in_memory.local, in_memory.url) == (False, "memory:///tipml-a/offline")
    with pytest.raises(ConfigError, match="TIPML_ARCHIVE_URL: 'nosuchstore://x'"):
        _ = Settings(data_dir=tmp_path, archive_url="nosuchstore://x").archive


@pytest.mark.parametrize("where", ["directory", "memory"])
def test_parts_are_listed_whole_and_temporary_names_never(tmp_path: Path, where: str) -> None:
    root = (
        ArchiveLocation.of(tmp_path / "offline")
        if where == "directory"
        else ArchiveLocation.of(f"memory://tipml-{tmp_path.name}/offline")
    )
    table = pa.table({"stream_seq": [3, 4]})
    root.write(
        root.path("signals", "date=2026-11-28", "part-000000000003-000000000004.parquet"), table
    )
    root.write(
        root.path("signals", "date=2026-11-27", "part-000000000001-000000000002.parquet"), table
    )
    root.fs.pipe_file(root.path("signals", "date=2026-11-27", ".part-x.parquet.1-2.tmp"), b"half")
    names = [p.removeprefix(root.root + "/") for p in root.parts("signals")]
    assert names == [
        "signals/date=2026-11-27/part-000000000001-000000000002.parquet",
        "signals/date=2026-11-28/part-000000000003-000000000004.parquet",
    ]
    assert root.read(root.parts("signals")[0]).equals(table)
    con = root.connect()
    assert con.execute(
        "SELECT sum(stream_seq) FROM read_parquet(?)", [root.files("signals")]
    ).fetchone() == (14,)
    assert [d.rsplit("/", 1)[-1] for d in root.days("signals")] == [
        "date=2026-11-27",
        "date=2026-11-28",
    ]
    if where == "directory":  # renamed into place: no temporary file left behind
        assert sorted(p.name for p in (tmp_path / "offline").rglob("*") if p.is_file()) == [
            ".part-x.parquet.1-2.tmp",
            "part-000000000001-000000000002.parquet",
            "part-000000000003-000000000004.parquet",
        ]

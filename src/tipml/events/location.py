"""Where the offline log lives: a local (or mounted) directory, or object storage via fsspec.

Everything that touches the archive goes through an :class:`ArchiveLocation`: the archivers
list and write part files with it, the readers (training, reports, Feast's feature log) open
DuckDB through it. Two kinds of store, one contract:

- a **directory** (``TIPML_ARCHIVE_DIR``): a part is written to a temporary name, fsynced and
  renamed, so a reader never sees half a file;
- an **object store** (``TIPML_ARCHIVE_URL``, ``s3://bucket/prefix``; S3-compatible stores via
  ``TIPML_ARCHIVE_OPTIONS='{"endpoint_url": …}'``, any other fsspec protocol whose package is
  installed): a part is one PUT, and an object store makes an object visible whole or not at
  all — there is no rename, and none is needed. Listings are never served from fsspec's cache:
  another archiver of the group may have written a part a moment ago.

Credentials come from the store's own configuration (``AWS_ACCESS_KEY_ID`` …, instance roles),
never from tipml's settings.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from tipml.errors import ConfigError


class ArchiveStoreError(OSError):
    """The archive's store failed (unreachable, timed out, refused). An ``OSError``, so the
    consumers treat it as the infrastructure's: the batch is kept and retried while the store is
    away — an outage never turns events into dead letters. fsspec stores raise ``OSError`` for
    most of their failures already; a client's own errors (botocore's connection errors) are
    translated to this."""


@contextlib.contextmanager
def _store_errors(location: ArchiveLocation, what: str) -> Iterator[None]:
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        if location.local:
            raise
        raise ArchiveStoreError(
            f"archive {location.url}: {what}: {type(exc).__name__}: {exc}"[:500]
        ) from exc


@dataclass(frozen=True)
class ArchiveLocation:
    fs: fsspec.AbstractFileSystem
    root: str  # the archive's root inside ``fs``, without the protocol
    local: bool

    @classmethod
    def of(
        cls, where: ArchiveLocation | Path | str, options: Mapping[str, Any] | None = None
    ) -> ArchiveLocation:
        """A location from a path, a URL (``s3://bucket/prefix``, ``memory://x``, ``file:///p``)
        or an existing location."""
        if isinstance(where, ArchiveLocation):
            return where
        if isinstance(where, Path):
            return cls(LocalFileSystem(), str(where.absolute()), True)
        try:
            fs, root = fsspec.core.url_to_fs(where, **dict(options or {}))
        except (ImportError, ValueError) as exc:  # an unknown protocol or its package missing
            raise ConfigError(f"TIPML_ARCHIVE_URL: {where!r}: {exc}") from None
        local = isinstance(fs, LocalFileSystem)
        return cls(fs, str(Path(root).absolute()) if local else root.rstrip("/"), local)

    @property
    def url(self) -> str:
        return self.root if self.local else self.fs.unstrip_protocol(self.root)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def parts(self, stream: str) -> list[str]:
        """The part files of one stream (``<stream>/date=*/part-*.parquet``), sorted, as paths
        inside ``fs``. Temporary names start with a dot and are never listed."""
        with _store_errors(self, "list"):
            if not self.local:  # another archiver may have written since the last listing
                self.fs.invalidate_cache()
            return sorted(self.fs.glob(self.path(stream, "date=*", "part-*.parquet")))

    def days(self, stream: str) -> list[str]:
        """The day folders of one stream (``<stream>/date=YYYY-MM-DD``), sorted."""
        with _store_errors(self, "list"):
            if not self.local:
                self.fs.invalidate_cache()
            return sorted(p for p in self.fs.glob(self.path(stream, "date=*")) if self.fs.isdir(p))

    def files(self, stream: str) -> list[str]:
        """The part files of one stream as DuckDB reads them (with the protocol, for a store
        registered by :meth:`connect`)."""
        return [p if self.local else self.fs.unstrip_protocol(p) for p in self.parts(stream)]

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection that can read this location's :meth:`files`."""
        con = duckdb.connect()
        if not self.local:
            con.register_filesystem(self.fs)
        return con

    def read(self, path: str, columns: list[str] | None = None) -> pa.Table:
        with _store_errors(self, f"read {path}"):
            return pq.read_table(path, columns=columns, filesystem=None if self.local else self.fs)

    def exists(self, path: str) -> bool:
        with _store_errors(self, f"stat {path}"):
            return bool(self.fs.exists(path))

    def remove(self, path: str) -> None:
        with _store_errors(self, f"remove {path}"), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def write(self, path: str, table: pa.Table, **options: Any) -> None:
        """Write ``table`` as one Parquet file at ``path``, which appears whole or not at all:
        a temporary name, fsync and rename on a filesystem; one PUT on an object store.
        ``options``: ``pyarrow.parquet.write_table``'s (compression, encodings)."""
        if not self.local:
            with _store_errors(self, f"write {path}"), self.fs.open(path, "wb") as f:
                pq.write_table(table, f, **options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{os.getpid()}-{time.time_ns()}.tmp"
        pq.write_table(table, tmp, **options)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        with contextlib.suppress(OSError):
            dir_fd = os.open(target.parent, os.O_RDONLY)
            os.fsync(dir_fd)
            os.close(dir_fd)

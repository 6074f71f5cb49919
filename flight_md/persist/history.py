"""The Parquet history: sealed rows of every channel as hive-partitioned Parquet any tool can read.

Layout under the root (a local directory or any URI :func:`pyarrow.fs.FileSystem.from_uri`
accepts)::

    ROOT/history/channel=<channel>/exchange=<id>/symbol=<quoted>/date=<YYYY-MM-DD>/<file>.parquet
    ROOT/events/date=<YYYY-MM-DD>/<file>.parquet
    ROOT/quarantine/<the same relative path>          corrupt or truncated files, moved aside

* ``<quoted>`` is the symbol percent-encoded as Spark writes hive values
  (``urllib.parse.quote(symbol, safe="")``: ``BTC/USDT:USDT`` -> ``BTC%2FUSDT%3AUSDT``); DuckDB,
  polars and Spark decode it back. Every file also holds every column of its channel's schema,
  ``exchange`` and ``symbol`` included, with the same values as its partition (the writer refuses
  rows that disagree: DuckDB lets the partition value override the file's column).
* ``date`` is the UTC date of the row's own exchange ``timestamp`` (int64 Unix ms), so a tick whose
  clock jumped lands deterministically in the partition of that timestamp and range queries find
  it there. Timestamps beyond years 1..9999 land in the first or last representable date.
* Only channel data lives under ``history/`` (hive readers need the same keys in every file);
  the event log's history is beside it under ``events/``.
* File names are ``<min_ts>_<max_ts>_<rows>_<token>.parquet``: readers prune files by time and
  ``status`` counts rows without opening them. Files are zstd, row groups of about 100k rows,
  sorted by ``(timestamp, sequence)`` (``sequence`` only where the schema has one) and declare
  that order in their footer.

Atomic writes: on a local filesystem a file is written to ``.<token>.parquet.tmp`` in its
partition (a dot name that ends in ``.tmp``: neither pyarrow datasets nor ``*.parquet`` globs see
it), flushed, fsynced, renamed to its final name and the directory fsynced. A process killed
mid-write leaves only the temporary file, which :meth:`HistoryWriter.recover` deletes. On object
stores (S3, GCS) an upload becomes visible only when complete, so files are written to their
final name directly.

Compaction merges a partition's small files into one, in this order (each step durable before
the next):

1. write the merged file to its temporary name and fsync it;
2. write ``_compaction-<token>.json`` naming the target and its sources;
3. rename the temporary file to the target name;
4. delete the sources;
5. delete the marker.

A crash before 3 leaves the sources and no target (recovery deletes the temporary file and the
marker); after 3 it leaves the target and some sources beside a marker that names them: readers
here ignore sources whose target exists, and recovery finishes steps 4 and 5. So no row is lost
or read twice by flight_md; an external reader (DuckDB) may see both copies only between steps 3
and 4, or after a crash until the next :meth:`HistoryWriter.recover`.

Reading (:class:`HistoryReader`) lists only the date partitions a range needs, prunes files by
the times in their names and row groups by their statistics, and streams record batches of at
most ``batch_rows`` rows in timestamp order; files whose times overlap (late rows) are merged by
a bounded k-way merge. No range is ever materialised. The files of a partition are opened before
its first batch is read, so a compaction deleting them meanwhile does not disturb the scan (a
file gone before it was opened makes the partition be listed again).

Corrupt or truncated files are moved to ``ROOT/quarantine/`` and counted
(:attr:`HistoryRoot.quarantine_count`, :attr:`HistoryRoot.quarantined` and the ``on_quarantine``
callback, which the server turns into an ``@events`` entry): a scan goes on without that file,
a compaction leaves the partition for the next round, neither crashes nor skips silently.

The seam between history and the in-memory ring: :func:`plan_seam` takes the ring's oldest row
and the history's newest and says which history rows to read (``before=``). With a per-row
``sequence`` column (monotonic per channel, exchange and symbol, kept across restarts) the seam
is exact: history rows with ``sequence < ring_oldest.sequence``, then the whole ring. Without one
it falls back to ``timestamp < ring's minimum timestamp``: no duplicate, but history rows with
that same timestamp and rows evicted from the ring with later timestamps are missed.

Object storage: pass ``s3://bucket/prefix`` (or ``gs://bucket/prefix``) as the root. pyarrow's
own S3 client (no boto3) takes credentials from the usual AWS chain: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` with ``~/.aws/credentials``,
or an instance role; the region from ``AWS_DEFAULT_REGION`` or ``?region=`` in the URI, and
S3-compatible stores through ``?endpoint_override=host:port&scheme=http``. Renames on object
stores are copies, so there a compaction's step 3 is a direct upload of the target.

Threads: one :class:`HistoryWriter` per root (the server's persistence thread); any number of
:class:`HistoryReader` scans on Flight threads. They meet only through the filesystem (atomic
names, the compaction protocol) and the shared quarantine counters, which a lock guards.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from flight_md.errors import InvalidArgument

__all__ = [
    "DAY_MS",
    "EVENTS_DIR",
    "HISTORY_DIR",
    "QUARANTINE_DIR",
    "ROW_GROUP_ROWS",
    "SCAN_BATCH_ROWS",
    "Compaction",
    "CompactionPolicy",
    "HistoryReader",
    "HistoryRoot",
    "HistoryWriter",
    "InvalidHistoryData",
    "Partition",
    "Quarantined",
    "RecoveryReport",
    "Seam",
    "SeamPoint",
    "SeriesBounds",
    "SeriesKey",
    "WrittenFile",
    "day_of",
    "plan_seam",
    "quote_symbol",
]

log = logging.getLogger(__name__)

HISTORY_DIR: Final = "history"
EVENTS_DIR: Final = "events"
QUARANTINE_DIR: Final = "quarantine"
DAY_MS: Final = 86_400_000
ROW_GROUP_ROWS: Final = 100_000
"""Rows per Parquet row group: large enough for fast scans, small enough to prune."""
SCAN_BATCH_ROWS: Final = 65_536
"""Largest record batch a scan yields."""
COMPRESSION: Final = "zstd"
TIMESTAMP: Final = "timestamp"
SEQUENCE: Final = "sequence"
EXCHANGE: Final = "exchange"
SYMBOL: Final = "symbol"

_EPOCH: Final = date(1970, 1, 1)
_MIN_DAY: Final = (date.min - _EPOCH).days
_MAX_DAY: Final = (date.max - _EPOCH).days
_FILE_RE: Final = re.compile(r"^(-?\d+)_(-?\d+)_(\d+)_([0-9a-f]+)\.parquet$")
_TEMP_SUFFIX: Final = ".parquet.tmp"
_MARKER_PREFIX: Final = "_compaction-"
_MARKER_SUFFIX: Final = ".json"
_CHANNEL_RE: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_EXCHANGE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_FOOTER_CACHE: Final = 4096
_WHOLE_GROUP_ROWS: Final = 1_000_000
"""Row groups up to this size are decoded whole; bigger ones (other writers') batch by batch."""
_LO: Final = -(2**63)
_HI: Final = 2**63 - 1


class InvalidHistoryData(InvalidArgument):
    """Rows or a key the history refuses: a missing column, a null timestamp, a bad channel name."""


def _refuse(what: str, value: object, allowed: str) -> InvalidHistoryData:
    return InvalidHistoryData(f"invalid {what} {value!r}: {allowed}")


# -- value objects -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One series of the history: a channel of one symbol on one exchange."""

    channel: str
    exchange: str
    symbol: str

    def __post_init__(self) -> None:
        if not _CHANNEL_RE.match(self.channel):
            raise _refuse("channel", self.channel, "lowercase letters, digits and '_'")
        if not _EXCHANGE_RE.match(self.exchange):
            raise _refuse("exchange", self.exchange, "a ccxt exchange id (lowercase letters, digits, '_.-')")
        if not self.symbol or not self.symbol.isprintable():
            raise _refuse("symbol", self.symbol, "a non-empty printable symbol")

    @property
    def relative_dir(self) -> str:
        """The series' directory under the root."""
        return (f"{HISTORY_DIR}/channel={self.channel}/exchange={self.exchange}"
                f"/symbol={quote_symbol(self.symbol)}")


@dataclass(frozen=True, slots=True)
class WrittenFile:
    """A Parquet file the writer made visible."""

    path: str
    day: date
    rows: int
    bytes: int
    min_ts: int
    max_ts: int


@dataclass(frozen=True, slots=True)
class Compaction:
    """A compaction that completed: ``sources`` were merged into ``target``."""

    target: WrittenFile
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """When a partition's small files are merged.

    Attributes:
        max_files: A partition with more small files than this is compacted after a write.
        small_file_bytes: Files at least this big are never merged again.
    """

    max_files: int = 16
    small_file_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_files < 1:
            raise _refuse("max_files", self.max_files, "at least 1")
        if self.small_file_bytes < 1:
            raise _refuse("small_file_bytes", self.small_file_bytes, "at least 1")


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A corrupt or truncated file moved aside."""

    path: str
    moved_to: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :meth:`HistoryWriter.recover` cleaned up after a crash."""

    temp_files_removed: int
    compactions_rolled_back: int
    compactions_finished: int
    duplicate_sources_removed: int


@dataclass(frozen=True, slots=True)
class SeriesBounds:
    """What the history holds for one series (for ``status``)."""

    key: SeriesKey
    oldest_ms: int
    newest_ms: int
    rows: int
    bytes: int
    files: int


@dataclass(frozen=True, slots=True)
class Partition:
    """One date partition: a directory retention removes as a whole.

    Attributes:
        key: Its series, or ``None`` for the events history.
    """

    path: str
    key: SeriesKey | None
    day: date
    rows: int
    bytes: int
    files: int


@dataclass(frozen=True, slots=True)
class SeamPoint:
    """A row at the seam: its timestamp and, where the schema has one, its sequence number."""

    timestamp: int
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class Seam:
    """How to answer one query from history and ring with no duplicate and no gap.

    Attributes:
        read_history: Whether any history rows are needed.
        history_before: Pass as ``before=`` to :meth:`HistoryReader.scan`, ``count`` or
            ``latest`` (``None``: all history rows, the ring being empty).
        read_ring: Whether to read the ring (all of it, after the history rows).
        missing: Sequence numbers neither holds (rows not yet sealed into history and already
            evicted from the ring): 0 when the two meet exactly, ``None`` when unknown (no
            sequence column).
    """

    read_history: bool
    history_before: SeamPoint | None
    read_ring: bool
    missing: int | None


def plan_seam(ring_oldest: SeamPoint | None, history_newest: SeamPoint | None) -> Seam:
    """Where history ends and the ring begins for one series.

    Args:
        ring_oldest: The ring's oldest row (its sequence number, and for the timestamp
            fallback the ring's *minimum* timestamp), or ``None`` for an empty ring.
        history_newest: The history's newest row (its largest sequence number), or ``None``
            when the history holds nothing for the series.
    """
    if ring_oldest is None:
        return Seam(read_history=history_newest is not None, history_before=None, read_ring=False,
                    missing=None)
    if history_newest is None:
        return Seam(read_history=False, history_before=None, read_ring=True,
                    missing=ring_oldest.sequence if ring_oldest.sequence is not None else None)
    if ring_oldest.sequence is not None and history_newest.sequence is not None:
        missing = max(ring_oldest.sequence - history_newest.sequence - 1, 0)
        return Seam(read_history=True, history_before=ring_oldest, read_ring=True, missing=missing)
    return Seam(read_history=True, history_before=SeamPoint(ring_oldest.timestamp), read_ring=True,
                missing=None)


def quote_symbol(symbol: str) -> str:
    """A symbol as a hive partition value, percent-encoded as Spark does."""
    return urllib.parse.quote(symbol, safe="")


def day_of(timestamp_ms: int) -> date:
    """The UTC date partition of a timestamp (clamped to years 1..9999)."""
    return _EPOCH + timedelta(days=_clamp_day(timestamp_ms // DAY_MS))


def _clamp_day(day: int) -> int:
    return min(max(day, _MIN_DAY), _MAX_DAY)


def _day_start_ms(day: date) -> int:
    return (day - _EPOCH).days * DAY_MS


# -- the root ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    """A visible data file of a partition."""

    path: str
    name: str
    min_ts: int
    max_ts: int
    rows: int
    size: int


@dataclass(frozen=True, slots=True)
class _Marker:
    path: str
    target: str
    sources: tuple[str, ...]


@dataclass(slots=True)
class _Listing:
    files: list[_Entry]
    markers: list[_Marker]
    temps: list[str]
    shadowed: list[_Entry]
    """Sources of a finished compaction whose target exists: not read, deleted by recovery."""


def _open_root(root: str | os.PathLike[str] | pafs.FileSystem) -> tuple[pafs.FileSystem, str]:
    if isinstance(root, pafs.FileSystem):
        return root, ""
    text = os.fspath(root)
    if not text:
        raise _refuse("history root", text, "a directory or a filesystem URI")
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(text)


def _local_base(fs: pafs.FileSystem, base: str) -> str | None:
    """The OS path of ``base`` when it is on local disk (fsync and rename need it)."""
    if isinstance(fs, pafs.LocalFileSystem):
        return base or "/"
    if isinstance(fs, pafs.SubTreeFileSystem) and isinstance(fs.base_fs, pafs.LocalFileSystem):
        return os.path.join(fs.base_path, base) if base else fs.base_path
    return None


class HistoryRoot:
    """Where the history lives (a pyarrow filesystem and a base path) and its quarantine counters.

    A writer and the readers of one server share one root, so ``status`` sees every file any of
    them quarantined.

    Args:
        root: A local directory, a URI (``file:///...``, ``s3://bucket/prefix``, ``gs://...``), or
            a pyarrow filesystem whose root is the history root (e.g. a ``SubTreeFileSystem``).
        on_quarantine: Called (on the thread that found it) for every file moved aside.
    """

    def __init__(self, root: str | os.PathLike[str] | pafs.FileSystem, *,
                 on_quarantine: Callable[[Quarantined], None] | None = None) -> None:
        self.fs, self.base = _open_root(root)
        self.local = _local_base(self.fs, self.base)
        self.on_quarantine = on_quarantine
        self.quarantine_count = 0
        self.quarantined: deque[Quarantined] = deque(maxlen=1000)
        self._lock = threading.Lock()
        self._footers: OrderedDict[str, pq.FileMetaData] = OrderedDict()

    @classmethod
    def of(cls, root: HistoryRoot | str | os.PathLike[str] | pafs.FileSystem) -> HistoryRoot:
        """``root`` itself, or a new root over it."""
        return root if isinstance(root, HistoryRoot) else cls(root)

    # paths

    def path(self, relative: str) -> str:
        """The filesystem path of ``relative`` (a path under the root)."""
        return f"{self.base}/{relative}" if self.base else relative

    def relative(self, path: str) -> str:
        """``path`` relative to the root."""
        return path[len(self.base) + 1:] if self.base else path

    def os_path(self, path: str) -> str | None:
        """The OS path of a filesystem path on local disk, else ``None``."""
        if self.local is None:
            return None
        return os.path.join(self.local, self.relative(path))

    # listing

    def _children(self, path: str) -> list[pafs.FileInfo]:
        infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(infos, key=lambda info: info.base_name)

    def _dirs(self, path: str, prefix: str) -> list[tuple[str, str]]:
        """``(value, path)`` of the ``prefix=value`` directories in ``path``."""
        return [(info.base_name[len(prefix):], info.path) for info in self._children(path)
                if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix)]

    def days(self, series_dir: str, lo: int = _LO, hi: int = _HI) -> list[tuple[date, str]]:
        """The date partitions of a series directory that may hold ``lo <= timestamp < hi``."""
        first = day_of(lo) if lo > _LO else date.min
        last = day_of(hi - 1) if hi < _HI else date.max
        out: list[tuple[date, str]] = []
        for value, path in self._dirs(self.path(series_dir), "date="):
            try:
                day = date.fromisoformat(value)
            except ValueError:
                continue  # not ours: a hive reader would choke on it too, but we never wrote it
            if first <= day <= last:
                out.append((day, path))
        out.sort()
        return out

    def series(self) -> list[SeriesKey]:
        """Every series the history holds a directory for."""
        keys: list[SeriesKey] = []
        for channel, cpath in self._dirs(self.path(HISTORY_DIR), "channel="):
            for exchange, epath in self._dirs(cpath, "exchange="):
                for quoted, _ in self._dirs(epath, "symbol="):
                    try:
                        keys.append(SeriesKey(channel, exchange, urllib.parse.unquote(quoted)))
                    except InvalidHistoryData:
                        continue
        return keys

    def partitions(self) -> list[Partition]:
        """Every date partition, history and events, oldest day first."""
        out: list[Partition] = []
        series: list[tuple[SeriesKey | None, str]] = [(key, key.relative_dir) for key in self.series()]
        series.append((None, EVENTS_DIR))
        for key, series_dir in series:
            for day, path in self.days(series_dir):
                listing = self.list_partition(path)
                out.append(Partition(path=path, key=key, day=day,
                                     rows=sum(e.rows for e in listing.files),
                                     bytes=sum(e.size for e in listing.files + listing.shadowed),
                                     files=len(listing.files)))
        out.sort(key=lambda p: (p.day, p.path))
        return out

    def list_partition(self, path: str) -> _Listing:
        """The visible files of a partition, with compaction markers applied."""
        files: list[_Entry] = []
        markers: list[_Marker] = []
        temps: list[str] = []
        for info in self._children(path):
            if info.type != pafs.FileType.File:
                continue
            name = info.base_name
            if name.startswith(".") and name.endswith(_TEMP_SUFFIX):
                temps.append(info.path)
            elif name.startswith(_MARKER_PREFIX) and name.endswith(_MARKER_SUFFIX):
                marker = self._read_marker(info.path)
                if marker is not None:
                    markers.append(marker)
            elif name.endswith(".parquet") and not name.startswith((".", "_")):
                entry = self._entry(info)
                if entry is not None:
                    files.append(entry)
        names = {e.name for e in files}
        hidden: set[str] = set()
        for marker in markers:
            if marker.target in names:
                hidden.update(marker.sources)
        shadowed = [e for e in files if e.name in hidden]
        files = [e for e in files if e.name not in hidden]
        files.sort(key=lambda e: (e.min_ts, e.name))
        return _Listing(files, markers, temps, shadowed)

    def _read_marker(self, path: str) -> _Marker | None:
        try:
            with self.fs.open_input_stream(path) as stream:
                body = json.loads(stream.read().decode())
            return _Marker(path, str(body["target"]), tuple(str(s) for s in body["sources"]))
        except FileNotFoundError:
            return None  # the compaction finished between listing and reading
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _reraise_environment(exc)
            # A marker is written atomically, so a bad one is not ours to interpret: set it aside
            # and read the partition as if it were absent (sources stay; nothing is hidden).
            self.quarantine(path, f"unreadable compaction marker: {exc}")
            return None

    def _entry(self, info: pafs.FileInfo) -> _Entry | None:
        match = _FILE_RE.match(info.base_name)
        if match:
            return _Entry(info.path, info.base_name, int(match[1]), int(match[2]), int(match[3]),
                          int(info.size or 0))
        # A file not named by us (copied in by hand): its footer says what it holds.
        try:
            meta = self.footer(info.path)
            lo, hi = _timestamp_range(meta)
        except FileNotFoundError:
            return None
        except (pa.ArrowException, OSError, ValueError) as exc:
            _reraise_environment(exc)
            self.quarantine(info.path, f"unreadable parquet footer: {exc}")
            return None
        return _Entry(info.path, info.base_name, lo, hi, meta.num_rows, int(info.size or 0))

    def footer(self, path: str) -> pq.FileMetaData:
        """A file's Parquet footer (cached: files never change once named)."""
        with self._lock:
            meta = self._footers.get(path)
            if meta is not None:
                self._footers.move_to_end(path)
                return meta
        with self.fs.open_input_file(path) as handle:
            meta = pq.ParquetFile(handle).metadata
        with self._lock:
            self._footers[path] = meta
            while len(self._footers) > _FOOTER_CACHE:
                self._footers.popitem(last=False)
        return meta

    # changes

    def quarantine(self, path: str, reason: str) -> Quarantined:
        """Move a corrupt file to ``ROOT/quarantine/`` (keeping its relative path) and count it."""
        dest: str | None = self.path(f"{QUARANTINE_DIR}/{self.relative(path)}")
        try:
            assert dest is not None
            self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            if self.fs.get_file_info(dest).type != pafs.FileType.NotFound:
                dest = f"{dest}.{secrets.token_hex(4)}"
            self.fs.move(path, dest)
        except FileNotFoundError:
            dest = None
        except OSError as exc:
            log.error("history: cannot move corrupt file %s aside: %s", path, exc)
            dest = None
        record = Quarantined(path=path, moved_to=dest, reason=reason)
        with self._lock:
            self.quarantine_count += 1
            self.quarantined.append(record)
            self._footers.pop(path, None)
        log.warning("history: quarantined %s (%s) -> %s", path, reason, dest)
        if self.on_quarantine is not None:
            self.on_quarantine(record)
        return record

    def remove_partition(self, partition: Partition) -> None:
        """Delete a whole date partition (retention)."""
        try:
            self.fs.delete_dir(partition.path)
        except FileNotFoundError:
            pass
        with self._lock:
            for path in [p for p in self._footers if p.startswith(partition.path + "/")]:
                del self._footers[path]

    def delete_file(self, path: str) -> None:
        """Delete one file; a file already gone is fine."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass


def _reraise_environment(exc: BaseException) -> None:
    """Permission errors say the disk is set up wrong, not that a file is corrupt: never
    quarantine a file for them (the move would fail too); let them reach the caller."""
    if isinstance(exc, PermissionError):
        raise exc


def _leaf(meta: pq.FileMetaData, name: str) -> int:
    """The Parquet column (leaf) index of the top-level primitive column ``name``, or -1.

    Not the Arrow field index: a nested column (a book side, ``list<struct<price, amount>>``)
    is several Parquet columns, so the two differ for every column after it.
    """
    schema = meta.schema
    for i in range(len(schema)):
        if schema.column(i).path == name:
            return i
    return -1


def _timestamp_range(meta: pq.FileMetaData) -> tuple[int, int]:
    """Smallest and largest timestamp of a file from its row-group statistics."""
    index = _leaf(meta, TIMESTAMP)
    if index < 0:
        raise ValueError(f"no {TIMESTAMP!r} column")
    lo, hi = _HI, _LO
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max:
            return _LO, _HI
        lo, hi = min(lo, int(stats.min)), max(hi, int(stats.max))
    return (lo, hi) if lo <= hi else (0, -1)


def _max_sequence(meta: pq.FileMetaData) -> int | None:
    """The largest ``sequence`` of a file from its row-group statistics (``None``: unknown)."""
    index = _leaf(meta, SEQUENCE)
    if index < 0:
        return None
    hi: int | None = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max:
            return None
        hi = int(stats.max) if hi is None else max(hi, int(stats.max))
    return hi


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _token() -> str:
    # Time first, so names sort by creation; random bits against two writers in one nanosecond.
    return f"{time.time_ns():016x}{secrets.token_hex(3)}"


def _sort_keys(schema: pa.Schema) -> list[tuple[str, str]]:
    keys = [(TIMESTAMP, "ascending")]
    if schema.get_field_index(SEQUENCE) >= 0:
        keys.append((SEQUENCE, "ascending"))
    return keys


def _as_table(data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch]) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    batches = list(data)
    if not batches:
        raise InvalidHistoryData("no record batches to write: pass a table for an empty write")
    return pa.Table.from_batches(batches)


def _check_timestamp(schema: pa.Schema) -> None:
    index = schema.get_field_index(TIMESTAMP)
    if index < 0 or schema.field(index).type != pa.int64():
        raise _refuse("schema", schema.names, f"a {TIMESTAMP!r} column of type int64 (Unix ms)")


def _check_constant(table: pa.Table, column: str, value: str) -> None:
    index = table.schema.get_field_index(column)
    if index < 0 or not pa.types.is_string(table.schema.field(index).type):
        raise _refuse("schema", table.schema.names, f"a string {column!r} column")
    col = table.column(index)
    if col.null_count or not pa.compute.all(pa.compute.equal(col, pa.scalar(value))).as_py():
        raise _refuse(f"{column} column", sorted(set(col.unique().to_pylist()), key=str),
                      f"every row must be {value!r}, the partition it is written to")


# -- the writer ----------------------------------------------------------------------------------


class HistoryWriter:
    """Writes sealed rows into the history; compacts, and cleans up after a crash.

    Args:
        root: See :class:`HistoryRoot`.
        row_group_rows: Rows per Parquet row group.
        compression_level: zstd level (pyarrow's default when ``None``).
        policy: When small files are merged.
    """

    def __init__(self, root: HistoryRoot | str | os.PathLike[str] | pafs.FileSystem, *,
                 row_group_rows: int = ROW_GROUP_ROWS, compression_level: int | None = None,
                 policy: CompactionPolicy | None = None) -> None:
        if row_group_rows < 1:
            raise _refuse("row_group_rows", row_group_rows, "at least 1")
        self.root = HistoryRoot.of(root)
        self.row_group_rows = row_group_rows
        self.compression_level = compression_level
        self.policy = policy or CompactionPolicy()
        self._lock = threading.Lock()

    def write(self, channel: str, exchange: str, symbol: str,
              data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch], *,
              compact: bool = True) -> list[WrittenFile]:
        """Write rows of one series, one new file per date partition they fall in.

        Args:
            data: Rows with every column of the channel's schema: ``exchange`` and ``symbol``
                (strings equal to the arguments) and ``timestamp`` (int64 Unix ms, no nulls).
            compact: Compact the partitions written to when :attr:`policy` says so.

        Raises:
            InvalidHistoryData: A column is missing or disagrees with the partition.
        """
        key = SeriesKey(str(channel), exchange, symbol)
        table = _as_table(data)
        _check_timestamp(table.schema)
        _check_constant(table, EXCHANGE, exchange)
        _check_constant(table, SYMBOL, symbol)
        return self._write_series(key.relative_dir, table, compact)

    def write_events(self, data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch], *,
                     compact: bool = True) -> list[WrittenFile]:
        """Write ``@events`` rows (any schema with an int64 ``timestamp``) under ``events/``."""
        table = _as_table(data)
        _check_timestamp(table.schema)
        return self._write_series(EVENTS_DIR, table, compact)

    def _write_series(self, series_dir: str, table: pa.Table, compact: bool) -> list[WrittenFile]:
        ts_col = table.column(TIMESTAMP)
        if ts_col.null_count:
            raise _refuse("timestamp column", f"{ts_col.null_count} nulls", "every row needs a timestamp")
        if table.num_rows == 0:
            return []
        table = table.sort_by(_sort_keys(table.schema))  # stable: ties keep arrival order
        days = np.clip(table.column(TIMESTAMP).to_numpy() // DAY_MS, _MIN_DAY, _MAX_DAY)
        cuts = [0, *(np.flatnonzero(np.diff(days)) + 1).tolist(), table.num_rows]
        written: list[WrittenFile] = []
        with self._lock:
            for a, b in itertools.pairwise(cuts):
                day = _EPOCH + timedelta(days=int(days[a]))
                part_dir = self.root.path(f"{series_dir}/date={day.isoformat()}")
                piece = table.slice(a, b - a)
                written.append(self._write_file(part_dir, day, piece.schema, [piece]))
            if compact:
                for part in {w.path.rsplit("/", 1)[0]: w.day for w in written}.items():
                    self._compact_partition(*part, force=False)
        return written

    def _parquet_writer(self, where: Any, schema: pa.Schema) -> pq.ParquetWriter:
        sorting = [pq.SortingColumn(schema.get_field_index(name)) for name, _ in _sort_keys(schema)]
        return pq.ParquetWriter(where, schema, compression=COMPRESSION,
                                compression_level=self.compression_level, sorting_columns=sorting,
                                write_statistics=True)

    def _write_file(self, part_dir: str, day: date, schema: pa.Schema, chunks: Iterable[pa.Table],
                    *, token: str | None = None,
                    before_rename: Callable[[str], None] | None = None) -> WrittenFile:
        """Write ``chunks`` (sorted) as one file, atomically; rows and bounds go in its name."""
        token = token or _token()
        lo, hi, rows = _HI, _LO, 0
        local_dir = self.root.os_path(part_dir)
        if local_dir is not None:
            os.makedirs(local_dir, exist_ok=True)
            temp = os.path.join(local_dir, f".{token}{_TEMP_SUFFIX}")
            try:
                with open(temp, "wb") as handle:
                    with self._parquet_writer(handle, schema) as writer:
                        lo, hi, rows = self._write_chunks(writer, chunks)
                    handle.flush()
                    os.fsync(handle.fileno())
                name = f"{lo}_{hi}_{rows}_{token}.parquet"
                if before_rename is not None:
                    before_rename(name)
                os.replace(temp, os.path.join(local_dir, name))
            except BaseException:
                with _suppress_os_error():
                    os.unlink(temp)
                raise
            _fsync_dir(local_dir)
            size = os.path.getsize(os.path.join(local_dir, name))
        else:
            # Object stores publish an upload only once it is complete: no temporary name needed,
            # but the name carries the bounds, so the rows are buffered per file first.
            tables = list(chunks)
            whole = pa.concat_tables(tables) if tables else schema.empty_table()
            ts = whole.column(TIMESTAMP)
            rows = whole.num_rows
            lo, hi = (int(pa.compute.min(ts).as_py()), int(pa.compute.max(ts).as_py())) if rows else (0, -1)
            name = f"{lo}_{hi}_{rows}_{token}.parquet"
            if before_rename is not None:
                before_rename(name)
            self.root.fs.create_dir(part_dir, recursive=True)
            with (self.root.fs.open_output_stream(f"{part_dir}/{name}") as out,
                  self._parquet_writer(out, schema) as writer):
                self._write_chunks(writer, [whole])
            size = int(self.root.fs.get_file_info(f"{part_dir}/{name}").size or 0)
        return WrittenFile(path=f"{part_dir}/{name}", day=day, rows=rows, bytes=size, min_ts=lo, max_ts=hi)

    def _write_chunks(self, writer: pq.ParquetWriter, chunks: Iterable[pa.Table]) -> tuple[int, int, int]:
        """Write sorted chunks in row groups of :attr:`row_group_rows`; return (min, max, rows)."""
        lo, hi, rows = _HI, _LO, 0
        pending: list[pa.Table] = []
        pending_rows = 0

        def flush() -> None:
            nonlocal pending, pending_rows
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=self.row_group_rows)
                pending, pending_rows = [], 0

        for chunk in chunks:
            if chunk.num_rows == 0:
                continue
            ts = chunk.column(TIMESTAMP)
            lo = min(lo, int(ts[0].as_py()))
            hi = max(hi, int(ts[-1].as_py()))
            rows += chunk.num_rows
            pending.append(chunk)
            pending_rows += chunk.num_rows
            if pending_rows >= self.row_group_rows:
                whole = pa.concat_tables(pending)
                full = (whole.num_rows // self.row_group_rows) * self.row_group_rows
                writer.write_table(whole.slice(0, full), row_group_size=self.row_group_rows)
                rest = whole.slice(full)
                pending, pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
        flush()
        return (lo, hi, rows) if rows else (0, -1, 0)

    # compaction

    def compact(self, channel: str, exchange: str, symbol: str, day: date | None = None, *,
                force: bool = True) -> list[Compaction]:
        """Merge the small files of a series' partitions (one day, or every day).

        Args:
            force: Merge whenever a partition has two or more small files, not only when it has
                more than :attr:`CompactionPolicy.max_files`.
        """
        return self._compact_series(SeriesKey(str(channel), exchange, symbol).relative_dir, day, force)

    def compact_events(self, day: date | None = None, *, force: bool = True) -> list[Compaction]:
        """:meth:`compact` for the events history."""
        return self._compact_series(EVENTS_DIR, day, force)

    def _compact_series(self, series_dir: str, day: date | None, force: bool) -> list[Compaction]:
        out: list[Compaction] = []
        with self._lock:
            for d, path in self.root.days(series_dir):
                if day is None or d == day:
                    done = self._compact_partition(path, d, force=force)
                    if done is not None:
                        out.append(done)
        return out

    def _compact_partition(self, part_dir: str, day: date, *, force: bool) -> Compaction | None:
        listing = self.root.list_partition(part_dir)
        if listing.markers or listing.shadowed:
            return None  # an interrupted compaction: recover() finishes it first
        small = [e for e in listing.files if e.size < self.policy.small_file_bytes]
        if len(small) < 2 or (not force and len(small) <= self.policy.max_files):
            return None
        opened: list[tuple[_Entry, pq.ParquetFile]] = []
        try:
            for entry in small:
                try:
                    opened.append((entry, pq.ParquetFile(self.root.fs.open_input_file(entry.path))))
                except FileNotFoundError:
                    return None
                except (pa.ArrowException, OSError) as exc:
                    _reraise_environment(exc)
                    self.root.quarantine(entry.path, f"unreadable parquet file: {exc}")
                    return None
            schema = opened[0][1].schema_arrow
            for entry, pf in opened[1:]:
                if pf.schema_arrow != schema:
                    # Files of two schema versions stay apart; merging would need a cast we
                    # have no rule for.
                    log.info("history: not compacting %s: %s has another schema", part_dir, entry.name)
                    return None
            token = _token()
            streams = [_read_rows(entry, pf, _LO, _HI, None, None, SCAN_BATCH_ROWS, strict=True)
                       for entry, pf in opened]
            merged = (pa.Table.from_batches([b]) for b in _merge(streams, _sort_keys(schema)))
            sources = tuple(e.name for e, _ in opened)
            marker = f"{part_dir}/{_MARKER_PREFIX}{token}{_MARKER_SUFFIX}"
            try:
                target = self._write_file(part_dir, day, schema, merged, token=token,
                                          before_rename=lambda name: self._write_marker(marker, name, sources))
            except _CorruptFile as exc:
                self.root.quarantine(exc.entry.path, f"unreadable parquet data: {exc.cause}")
                self.root.delete_file(marker)
                return None
        finally:
            for _, pf in opened:
                pf.close()
        expected = sum(e.rows for e, _ in opened)
        if target.rows != expected:  # never drop or double rows: undo rather than delete sources
            log.error("history: compaction of %s wrote %d rows, sources hold %d: undone",
                      part_dir, target.rows, expected)
            self.root.delete_file(target.path)
            self.root.delete_file(marker)
            return None
        for entry, _ in opened:
            self.root.delete_file(entry.path)
        self.root.delete_file(marker)
        return Compaction(target=target, sources=sources)

    def _write_marker(self, path: str, target: str, sources: Sequence[str]) -> None:
        body = json.dumps({"version": 1, "target": target, "sources": list(sources)}).encode()
        local = self.root.os_path(path)
        if local is None:
            with self.root.fs.open_output_stream(path) as out:
                out.write(body)
            return
        temp = f"{local}.part"
        with open(temp, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, local)
        _fsync_dir(os.path.dirname(local))

    def recover(self) -> RecoveryReport:
        """Clean up after a crash: delete temporary files, finish or roll back compactions.

        Run once at start, before the first write. A compaction whose target exists is finished
        (its remaining sources deleted); one whose target does not is rolled back (its sources
        are intact, the marker goes).
        """
        temps = rolled_back = finished = duplicates = 0
        with self._lock:
            dirs = [key.relative_dir for key in self.root.series()] + [EVENTS_DIR]
            for series_dir in dirs:
                for _, path in self.root.days(series_dir):
                    listing = self.root.list_partition(path)
                    present = {e.name for e in listing.files + listing.shadowed}
                    for marker in listing.markers:
                        if marker.target in present:
                            for entry in listing.shadowed:
                                if entry.name in marker.sources:
                                    self.root.delete_file(entry.path)
                                    duplicates += 1
                            finished += 1
                        else:
                            rolled_back += 1
                        self.root.delete_file(marker.path)
                    for temp in listing.temps:
                        self.root.delete_file(temp)
                        temps += 1
                    for info in self.root._children(path):
                        if info.base_name.endswith(f"{_MARKER_SUFFIX}.part"):
                            self.root.delete_file(info.path)
        return RecoveryReport(temps, rolled_back, finished, duplicates)


class _suppress_os_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, OSError)


# -- reading -------------------------------------------------------------------------------------


class _CorruptFile(Exception):
    def __init__(self, entry: _Entry, cause: BaseException) -> None:
        super().__init__(entry.path)
        self.entry = entry
        self.cause = cause


def _read_rows(entry: _Entry, pf: pq.ParquetFile, lo: int, hi: int, before: SeamPoint | None,
               columns: Sequence[str] | None, batch_rows: int, *, strict: bool,
               root: HistoryRoot | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of one (sorted) file in ``[lo, hi)`` and before the seam, in file order.

    ``columns`` must include ``timestamp`` (and ``sequence`` for a sequence seam). A read error
    raises :class:`_CorruptFile` when ``strict``, else quarantines the file and ends its rows.
    """
    try:
        meta = pf.metadata
        schema = pf.schema_arrow
        ts_index = _leaf(meta, TIMESTAMP)
        seq_index = _leaf(meta, SEQUENCE)
        seam_seq = before.sequence if before is not None and seq_index >= 0 else None
        by_seq = seam_seq is not None
        groups: list[int] = []
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            stats = group.column(ts_index).statistics
            g_lo, g_hi = (int(stats.min), int(stats.max)) if stats is not None and stats.has_min_max \
                else (entry.min_ts, entry.max_ts)
            if g_hi < lo or g_lo >= hi:
                continue
            if before is not None:
                if by_seq:
                    sstats = group.column(seq_index).statistics
                    if sstats is not None and sstats.has_min_max and int(sstats.min) >= (seam_seq or 0):
                        continue
                elif g_lo >= before.timestamp:
                    continue
            groups.append(i)
        if not groups:
            return
        whole = lo <= entry.min_ts and entry.max_ts < hi and (
            before is None or (seam_seq is not None and (newest := _max_sequence(meta)) is not None
                               and newest < seam_seq)
            or (seam_seq is None and before is not None and entry.max_ts < before.timestamp))
        names = list(columns) if columns is not None else schema.names
        for chunk in _row_group_chunks(pf, groups, names, batch_rows):
            if not whole:
                ts = chunk.column(TIMESTAMP).to_numpy()
                mask = (ts >= lo) & (ts < hi)
                if before is not None:
                    if seam_seq is not None:
                        mask &= chunk.column(SEQUENCE).to_numpy() < seam_seq
                    else:
                        mask &= ts < before.timestamp
                if not mask.all():
                    chunk = chunk.filter(pa.array(mask))
            if chunk.num_rows:
                yield from chunk.to_batches(max_chunksize=batch_rows)
    except FileNotFoundError as exc:  # opened files cannot vanish; only a remote store's can
        if strict:
            raise _CorruptFile(entry, exc) from exc
        log.warning("history: %s vanished while read", entry.path)
    except (pa.ArrowException, OSError) as exc:
        _reraise_environment(exc)
        if strict or root is None:
            raise _CorruptFile(entry, exc) from exc
        root.quarantine(entry.path, f"unreadable parquet data: {exc}")


def _row_group_chunks(pf: pq.ParquetFile, groups: list[int], columns: list[str],
                      batch_rows: int) -> Iterator[pa.Table]:
    """The row groups as tables, each decoded in one go (column-parallel, fewer and larger
    allocations than batch by batch); a huge row group (not written by us) in batches."""
    for i in groups:
        if pf.metadata.row_group(i).num_rows <= _WHOLE_GROUP_ROWS:
            yield pf.read_row_group(i, columns=columns, use_threads=True)
        else:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[i], columns=columns,
                                         use_threads=True):
                yield pa.Table.from_batches([batch])


def _merge(streams: Sequence[Iterator[pa.RecordBatch]], keys: list[tuple[str, str]],
           batch_rows: int = SCAN_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """k-way merge of streams each sorted by ``keys``, holding about one batch per stream.

    Rows are emitted once every stream has moved past their timestamp, so equal timestamps
    from different files come out together, ordered by the rest of the keys (then by stream).
    """
    heads: list[pa.Table | None] = [None] * len(streams)
    done = [False] * len(streams)

    def pull(i: int) -> None:
        nxt = next(streams[i], None)
        if nxt is None:
            done[i] = True
            return
        piece = pa.Table.from_batches([nxt])
        head = heads[i]
        heads[i] = piece if head is None or head.num_rows == 0 else pa.concat_tables([head, piece])

    while True:
        for i in range(len(streams)):
            head = heads[i]
            if not done[i] and (head is None or head.num_rows == 0):
                pull(i)
        open_ = [i for i in range(len(streams)) if not done[i]]
        ends = []
        for i in open_:
            head = heads[i]
            assert head is not None
            ends.append(int(head.column(TIMESTAMP)[-1].as_py()))
        watermark = min(ends) if ends else None
        pieces: list[pa.Table] = []
        for i, head in enumerate(heads):
            if head is None or head.num_rows == 0:
                continue
            if watermark is None:
                cut = head.num_rows
            else:
                cut = int(np.searchsorted(head.column(TIMESTAMP).to_numpy(), watermark, side="left"))
            if cut:
                pieces.append(head.slice(0, cut))
                heads[i] = head.slice(cut)
        if pieces:
            merged = pa.concat_tables(pieces)
            if len(pieces) > 1:
                merged = merged.sort_by(keys)
            yield from merged.combine_chunks().to_batches(max_chunksize=batch_rows)
        elif watermark is None:
            return
        else:
            # Every open stream's head holds only rows at the watermark: read further before
            # any of them may go out (the next batch may hold more rows with that timestamp).
            for i, end in zip(open_, ends, strict=True):
                if end == watermark:
                    pull(i)


@dataclass(frozen=True, slots=True)
class _Opened:
    entry: _Entry
    file: pq.ParquetFile


class HistoryReader:
    """Reads the history: ordered streaming scans, counts, the latest rows, bounds.

    Args:
        root: See :class:`HistoryRoot`; share the writer's root to share its counters.
        batch_rows: Largest record batch a scan yields.
    """

    def __init__(self, root: HistoryRoot | str | os.PathLike[str] | pafs.FileSystem, *,
                 batch_rows: int = SCAN_BATCH_ROWS) -> None:
        if batch_rows < 1:
            raise _refuse("batch_rows", batch_rows, "at least 1")
        self.root = HistoryRoot.of(root)
        self.batch_rows = batch_rows

    def scan(self, channel: str, exchange: str, symbol: str, start_ms: int | None = None,
             end_ms: int | None = None, columns: Sequence[str] | None = None, *,
             before: SeamPoint | None = None) -> Iterator[pa.RecordBatch]:
        """Rows with ``start_ms <= timestamp < end_ms`` in timestamp order, in bounded batches.

        Args:
            columns: Columns to return, in this order (all of the schema's when ``None``).
            before: Only rows before this seam point (see :func:`plan_seam`).

        Raises:
            InvalidHistoryData: A requested column is not in the history's schema.
        """
        key = SeriesKey(str(channel), exchange, symbol)
        return self._scan(key.relative_dir, start_ms, end_ms, columns, before)

    def scan_events(self, start_ms: int | None = None, end_ms: int | None = None,
                    columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The events history in ``[start_ms, end_ms)``, in timestamp order."""
        return self._scan(EVENTS_DIR, start_ms, end_ms, columns, None)

    def _scan(self, series_dir: str, start_ms: int | None, end_ms: int | None,
              columns: Sequence[str] | None, before: SeamPoint | None) -> Iterator[pa.RecordBatch]:
        lo = _LO if start_ms is None else start_ms
        hi = _HI if end_ms is None else end_ms
        if before is not None and before.sequence is None:
            hi = min(hi, before.timestamp)
        out_columns: list[str] | None = None if columns is None else list(columns)
        for _, path in self.root.days(series_dir, lo, hi):
            opened = self._open_partition(path, lo, hi)
            try:
                if not opened:
                    continue
                if out_columns is None:
                    out_columns = opened[0].file.schema_arrow.names
                read = self._read_columns(opened, out_columns, before)
                yield from self._scan_opened(opened, lo, hi, before, read, out_columns)
            finally:
                for o in opened:
                    o.file.close()

    def _read_columns(self, opened: list[_Opened], out: list[str], before: SeamPoint | None) -> list[str]:
        names = opened[0].file.schema_arrow.names
        unknown = [c for c in out if c not in names]
        if unknown:
            raise _refuse("columns", unknown, f"the history has {names}")
        read = list(out)
        extra = [TIMESTAMP]
        if SEQUENCE in names and (len(opened) > 1 or (before is not None and before.sequence is not None)):
            extra.append(SEQUENCE)
        read += [c for c in extra if c not in read]
        return read

    def _open_partition(self, path: str, lo: int, hi: int) -> list[_Opened]:
        """Open the partition's files that may hold ``[lo, hi)``; list again if one vanished."""
        for _ in range(8):
            listing = self.root.list_partition(path)
            opened: list[_Opened] = []
            retry = False
            for entry in listing.files:
                if entry.max_ts < lo or entry.min_ts >= hi:
                    continue
                try:
                    opened.append(_Opened(entry, pq.ParquetFile(self.root.fs.open_input_file(entry.path))))
                except FileNotFoundError:
                    retry = True  # compacted or removed since listed: the listing is stale
                    break
                except (pa.ArrowException, OSError) as exc:
                    _reraise_environment(exc)
                    self.root.quarantine(entry.path, f"unreadable parquet file: {exc}")
            if not retry:
                return opened
            for o in opened:
                o.file.close()
        raise OSError(f"history partition {path!r} keeps changing while it is opened")

    def _scan_opened(self, opened: list[_Opened], lo: int, hi: int, before: SeamPoint | None,
                     read: list[str], out: list[str]) -> Iterator[pa.RecordBatch]:
        """Stream files whose times do not overlap one after another; merge those that do."""
        groups: list[list[_Opened]] = []
        group_end = _LO
        for o in opened:  # sorted by min_ts
            if groups and o.entry.min_ts <= group_end:
                groups[-1].append(o)
            else:
                groups.append([o])
            group_end = max(group_end, o.entry.max_ts) if len(groups[-1]) > 1 else o.entry.max_ts
        project = read != out
        for group in groups:
            streams = [_read_rows(o.entry, o.file, lo, hi, before, read, self.batch_rows, strict=False,
                                  root=self.root) for o in group]
            batches = streams[0] if len(streams) == 1 else _merge(streams, _sort_keys(
                group[0].file.schema_arrow), self.batch_rows)
            for batch in batches:
                yield batch.select(out) if project else batch

    def count(self, channel: str, exchange: str, symbol: str, start_ms: int | None = None,
              end_ms: int | None = None, *, before: SeamPoint | None = None) -> int:
        """Rows :meth:`scan` would return (for GetFlightInfo), mostly from names and footers."""
        series_dir = SeriesKey(str(channel), exchange, symbol).relative_dir
        lo = _LO if start_ms is None else start_ms
        hi = _HI if end_ms is None else end_ms
        if before is not None and before.sequence is None:
            hi = min(hi, before.timestamp)
        total = 0
        for _, path in self.root.days(series_dir, lo, hi):
            listing = self.root.list_partition(path)
            partial: list[_Entry] = []
            for entry in listing.files:
                if entry.max_ts < lo or entry.min_ts >= hi:
                    continue
                if lo <= entry.min_ts and entry.max_ts < hi and self._wholly_before(entry, before):
                    total += entry.rows
                else:
                    partial.append(entry)
            if partial:
                opened = self._open_partition(path, lo, hi)
                try:
                    names = {e.name for e in partial}
                    mine = [o for o in opened if o.entry.name in names]
                    if mine:
                        read = [TIMESTAMP] + ([SEQUENCE] if before is not None and before.sequence is not None
                                              and SEQUENCE in mine[0].file.schema_arrow.names else [])
                        for o in mine:
                            for batch in _read_rows(o.entry, o.file, lo, hi, before, read, self.batch_rows,
                                                    strict=False, root=self.root):
                                total += batch.num_rows
                finally:
                    for o in opened:
                        o.file.close()
        return total

    def _wholly_before(self, entry: _Entry, before: SeamPoint | None) -> bool:
        """Whether every row of the file is before the seam, known from its name or footer."""
        if before is None:
            return True
        if before.sequence is None:
            return entry.max_ts < before.timestamp
        try:
            newest = _max_sequence(self.root.footer(entry.path))
        except (pa.ArrowException, OSError):
            return False  # the read below quarantines it
        return newest is not None and newest < before.sequence

    def latest(self, channel: str, exchange: str, symbol: str, n: int,
               columns: Sequence[str] | None = None, *, before: SeamPoint | None = None) -> pa.Table:
        """The newest ``n`` rows (timestamp order), reading only the newest row groups needed."""
        if n < 0:
            raise _refuse("n", n, "zero or more rows")
        key = SeriesKey(str(channel), exchange, symbol)
        hi = _HI if before is None or before.sequence is not None else before.timestamp
        days = self.root.days(key.relative_dir, _LO, hi)
        target = n
        while True:
            start = self._latest_start(days, hi, target) if n else _HI
            tail: deque[pa.RecordBatch] = deque()
            kept = 0
            for batch in self._scan(key.relative_dir, start, None, columns, before):
                tail.append(batch)
                kept += batch.num_rows
                while tail and kept - tail[0].num_rows >= n:
                    kept -= tail.popleft().num_rows
            # A sequence seam can drop rows the footers counted: look further back then.
            if kept >= n or start is None:
                break
            target *= 4
        if not tail:
            return self._empty(key, columns)
        table = pa.Table.from_batches(list(tail))
        return table.slice(max(table.num_rows - n, 0))

    def _latest_start(self, days: list[tuple[date, str]], hi: int, n: int) -> int | None:
        """The smallest timestamp the newest ``n`` rows below ``hi`` can have (``None``: any).

        Walks back from the newest partition, collecting row groups newest first, until ``n``
        rows are collected and every row group not collected is older than all collected ones.
        Older partitions hold only rows before their successor's first day.
        """
        spans: list[tuple[int, int, int]] = []  # (max_ts, min_ts, rows) per row group
        for day, path in reversed(days):
            for entry in self.root.list_partition(path).files:
                if entry.min_ts < hi:
                    spans.extend(self._row_group_spans(entry, hi))
            spans.sort(reverse=True)
            taken, start = 0, None
            for g_hi, g_lo, rows in spans:
                if taken >= n and start is not None and g_hi < start:
                    break
                taken += rows
                start = g_lo if start is None else min(start, g_lo)
            if taken >= n and start is not None and start >= _day_start_ms(day):
                return start
        return None

    def _row_group_spans(self, entry: _Entry, hi: int) -> list[tuple[int, int, int]]:
        try:
            meta = self.root.footer(entry.path)
        except FileNotFoundError:
            return [(entry.max_ts, entry.min_ts, entry.rows)]
        except (pa.ArrowException, OSError) as exc:
            _reraise_environment(exc)
            self.root.quarantine(entry.path, f"unreadable parquet footer: {exc}")
            return []
        ts_index = _leaf(meta, TIMESTAMP)
        spans = []
        for i in range(meta.num_row_groups):
            group = meta.row_group(i)
            stats = group.column(ts_index).statistics
            g_lo, g_hi = (int(stats.min), int(stats.max)) if stats is not None and stats.has_min_max \
                else (entry.min_ts, entry.max_ts)
            if g_lo < hi:
                spans.append((g_hi, g_lo, group.num_rows))
        return spans

    def _empty(self, key: SeriesKey, columns: Sequence[str] | None) -> pa.Table:
        """No rows, with the series' schema where a file says what it is."""
        for _, path in self.root.days(key.relative_dir):
            for entry in self.root.list_partition(path).files:
                try:
                    schema = self.root.footer(entry.path).schema.to_arrow_schema()
                except (pa.ArrowException, OSError):
                    continue
                if columns is not None:
                    schema = pa.schema([schema.field(c) for c in columns])
                return schema.empty_table()
        return pa.schema([]).empty_table()

    def newest(self, channel: str, exchange: str, symbol: str) -> SeamPoint | None:
        """The history's side of the seam: its largest timestamp and largest sequence number."""
        key = SeriesKey(str(channel), exchange, symbol)
        newest_ts: int | None = None
        newest_seq: int | None = None
        for _, path in self.root.days(key.relative_dir):
            for entry in self.root.list_partition(path).files:
                newest_ts = entry.max_ts if newest_ts is None else max(newest_ts, entry.max_ts)
                try:
                    meta = self.root.footer(entry.path)
                except (pa.ArrowException, OSError):
                    continue
                index = _leaf(meta, SEQUENCE)
                if index < 0:
                    continue
                for i in range(meta.num_row_groups):
                    stats = meta.row_group(i).column(index).statistics
                    if stats is not None and stats.has_min_max:
                        seq = int(stats.max)
                        newest_seq = seq if newest_seq is None else max(newest_seq, seq)
        return None if newest_ts is None else SeamPoint(newest_ts, newest_seq)

    def bounds(self, channel: str, exchange: str, symbol: str) -> SeriesBounds | None:
        """Oldest and newest timestamp, rows, bytes and files of one series (``None``: empty)."""
        return self._bounds(SeriesKey(str(channel), exchange, symbol))

    def all_bounds(self) -> list[SeriesBounds]:
        """:meth:`bounds` of every series that holds rows."""
        out = [self._bounds(key) for key in self.root.series()]
        return [b for b in out if b is not None]

    def _bounds(self, key: SeriesKey) -> SeriesBounds | None:
        files = [e for _, path in self.root.days(key.relative_dir)
                 for e in self.root.list_partition(path).files]
        if not files:
            return None
        return SeriesBounds(key=key, oldest_ms=min(e.min_ts for e in files),
                            newest_ms=max(e.max_ts for e in files), rows=sum(e.rows for e in files),
                            bytes=sum(e.size for e in files), files=len(files))


"""The write-ahead journal: every stored batch of every channel, and every event, on disk
within one commit interval, so a restart (even after ``kill -9``) can rebuild what was lost.

Format (segment files ``journal/<seq:012d>.wal``, format :data:`SEGMENT_VERSION`)
---------------------------------------------------------------------------------
A segment is the 8-byte magic :data:`MAGIC` followed by *records*::

    record  = length:u32  crc:u32  kind:u32  reserved:u32  payload  pad-to-8
    crc     = crc32(length:u32 kind:u32 payload)           (little endian throughout)

    HEADER  JSON {"format": 1, "segment": seq, "start_lsn": n}        first record
    KEY     key_id:u32 pad:u32  JSON [channel, exchange, symbol]    once per key per segment
    BATCH   an Arrow IPC stream: schema, dictionaries, one batch    rows of one schema
    COMMIT  lsn:u64 rows:u64 wall_ms:i64                            ends a group commit
    END     lsn:u64                                                 the segment is closed

A group commit writes, for each schema with pending rows, *one* BATCH: every pending batch of
that schema concatenated, with one extra ``uint32`` column :data:`KEY_COLUMN` naming each row's
(channel, exchange, symbol) through the segment's KEY records; then one COMMIT. Rows of a
commit count only once its COMMIT record is read back intact: a commit is all or nothing.
Each BATCH is a complete IPC stream (``pyarrow.ipc.open_stream`` reads it) rather than a bare
record batch message, so any schema works, dictionary-encoded columns included, at the cost of
a schema message per schema per commit (a few hundred bytes, five times a second).

Why this and not plain Arrow IPC stream files: a stream holds one schema, so channels would
need a file each and a commit could not be atomic across them; and Arrow checksums nothing,
so a flipped bit in a data buffer would come back as a wrong price. Here the payloads *are*
Arrow IPC (decoded zero copy from a memory map), and the framing adds what a log needs: a checksum per record, a commit
marker that makes a torn tail detectable, and several schemas in one ordered file. One BATCH
per schema per commit (not one per key) keeps the records few and large, which is what makes
recovery fast (see :mod:`flight_md.persist.recovery`): a busy server with 200 symbols writes
five records a second, not a thousand. Segments are self-contained (each repeats the keys it
uses, each BATCH carries its schema), so one corrupt segment never makes another unreadable.

Durability (``fsync``) and what each mode loses
-----------------------------------------------
A committer thread writes the pending batches every ``commit_interval`` (default 200 ms);
:meth:`Journal.commit` does it at once. :attr:`Journal.committed_through` is the last *lsn*
(the number :meth:`Journal.append` returned) that is in the file; :attr:`synced_through` the
last one fsynced.

* ``always``: every commit is fsynced before it counts as committed. ``kill -9`` and a power
  cut both lose at most the appends of the last commit interval (those not yet committed).
* ``interval`` (default): a commit counts once written to the OS; the committer fsyncs once
  per interval, right after its write. ``kill -9`` loses at most one commit interval (the
  OS has everything written); a power cut at most about two (the unsynced commit and the
  pending appends), plus the fsync's own duration.
* ``never``: commits are written, never fsynced (rotation and :meth:`close` still fsync).
  ``kill -9`` loses at most one interval; a power cut loses what the kernel had not written
  back yet: on Linux up to ``vm.dirty_expire_centisecs`` (30 s) plus the flusher's wake-up
  interval (5 s) by default.

Rotation and sealing: after a commit that takes a segment past ``segment_bytes`` (64 MiB) the
segment is closed (END, fsync) and the next commit opens a new one. The history writer reads
closed segments (:meth:`Journal.closed_segments`, :func:`flight_md.persist.recovery.read_segment`),
writes their rows to Parquet, then calls :meth:`Journal.seal` with the last segment it wrote:
``journal/SEALED`` records that number (atomically) and those segments are deleted.
:meth:`Journal.rotate` closes the open segment now (for a flush or a clean stop).

Disk errors: a commit that fails (disk full, unwritable) truncates the segment back to its
last good commit and keeps the batches pending; the next interval retries. Ingestion never
waits for the disk: while pending rows exceed ``max_pending_rows`` new appends are dropped
and counted (:attr:`JournalStats.dropped_rows`), and the rings still serve them from memory.

Threads: ingestion threads call :meth:`~Journal.append` (a short lock around a list append);
the committer thread, :meth:`~Journal.commit`, :meth:`~Journal.rotate`, :meth:`~Journal.seal`
and :meth:`~Journal.close` serialise on a second lock that owns the file. No asyncio here.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Final, Self

import numpy as np
import pyarrow as pa

from flight_md.errors import InvalidArgument, Unavailable
from flight_md.events import Event
from flight_md.persist.datadir import fsync_dir, write_atomic
from flight_md.schema import EVENT_SCHEMA, now_ms

__all__ = [
    "DEFAULT_COMMIT_INTERVAL_S",
    "DEFAULT_MAX_PENDING_ROWS",
    "DEFAULT_SEGMENT_BYTES",
    "EVENTS_KEY",
    "KEY_COLUMN",
    "LEDGER_KEY",
    "LEDGER_SCHEMA",
    "FsyncMode",
    "Journal",
    "JournalKey",
    "JournalStats",
    "SegmentInfo",
]

log = logging.getLogger(__name__)

DEFAULT_COMMIT_INTERVAL_S: Final = 0.2
DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_PENDING_ROWS: Final = 5_000_000
"""Rows waiting for the disk beyond which appends are dropped (about 0.5 GB of ticker rows)."""
MAX_KEY_PART_BYTES: Final = 1024

MAGIC: Final = b"FMDJRNL\n"
SEGMENT_VERSION: Final = 1
SEGMENT_SUFFIX: Final = ".wal"
SEALED_FILE: Final = "SEALED"
KEY_COLUMN: Final = "__journal_key"
"""The column a BATCH record carries besides the appended schema's own (a reserved name)."""

RECORD_HEADER: Final = struct.Struct("<IIII")
LENGTH_KIND: Final = struct.Struct("<II")
ID_PREFIX: Final = struct.Struct("<I4x")
COMMIT: Final = struct.Struct("<QQq")
END: Final = struct.Struct("<Q")


class RecordKind(IntEnum):
    """The kinds of journal record (their numbers are the format: never renumber)."""

    HEADER = 1
    # 2 is reserved (a separate schema record, given up for self-contained BATCH streams).
    KEY = 3
    BATCH = 4
    COMMIT = 5
    END = 6


class FsyncMode(StrEnum):
    """When commits are fsynced (the module docstring says what each mode survives)."""

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class JournalKey:
    """What a journalled batch belongs to."""

    channel: str
    exchange: str
    symbol: str


EVENTS_KEY: Final = JournalKey("@events", "", "")
"""The key event-log entries are journalled under (schema :data:`~flight_md.schema.EVENT_SCHEMA`)."""

LEDGER_KEY: Final = JournalKey("@bus", "", "")
"""The key a serving node's bus ledger changes are journalled under, in the same group commit
as the rows of the messages they record (:mod:`flight_md.bus.ledger`; schema
:data:`LEDGER_SCHEMA`). Reserved: it never reaches a ring, the history or a query."""
LEDGER_SCHEMA: Final = pa.schema([pa.field("producer", pa.string(), nullable=False),
                                  pa.field("subject", pa.string(), nullable=False),
                                  pa.field("seq", pa.int64(), nullable=False)])


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A closed segment.

    Attributes:
        seq: Segment number (its file is ``<seq:012d>.wal``).
        path: The file.
        first_lsn: First lsn it may hold (one after the previous segment's last).
        last_lsn: Last lsn committed in it.
        rows: Rows committed in it.
        size: Bytes.
    """

    seq: int
    path: Path
    first_lsn: int
    last_lsn: int
    rows: int
    size: int


@dataclass(frozen=True, slots=True)
class JournalStats:
    """A snapshot of the journal's counters (for ``status`` and the tests).

    Attributes:
        appended: Last lsn handed out by :meth:`Journal.append`.
        committed_through: Last lsn written to the journal (see the module docstring).
        synced_through: Last lsn fsynced.
        pending_rows: Rows appended but not committed yet.
        committed_rows: Rows committed since the journal was opened.
        commits: Group commits written.
        bytes_written: Bytes written since opened.
        segment: Number of the open (or next) segment.
        sealed_through: Last segment sealed into history (``0``: none).
        write_errors: Commits that failed (each retried later).
        last_error: The latest failure, ``None`` once a commit succeeds again.
        dropped_rows: Rows not journalled because too many were pending.
    """

    appended: int
    committed_through: int
    synced_through: int
    pending_rows: int
    committed_rows: int
    commits: int
    bytes_written: int
    segment: int
    sealed_through: int
    write_errors: int
    last_error: str | None
    dropped_rows: int


def segment_path(directory: Path, seq: int) -> Path:
    """Where segment ``seq`` lives."""
    return directory / f"{seq:012d}{SEGMENT_SUFFIX}"


def segment_seqs(directory: Path) -> list[int]:
    """Numbers of the segment files in ``directory``, ascending (other files are ignored)."""
    seqs = []
    for entry in os.scandir(directory):
        stem = entry.name.removesuffix(SEGMENT_SUFFIX)
        if entry.name.endswith(SEGMENT_SUFFIX) and stem.isdigit() and entry.is_file():
            seqs.append(int(stem))
    return sorted(seqs)


def read_sealed(directory: Path) -> int:
    """The last segment sealed into history, ``0`` if none."""
    try:
        text = (directory / SEALED_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def record(kind: RecordKind, *parts: bytes | pa.Buffer) -> list[bytes | pa.Buffer]:
    """One framed record, as the chunks to write (payload buffers are not copied here)."""
    length = sum(p.size if isinstance(p, pa.Buffer) else len(p) for p in parts)
    crc = zlib.crc32(LENGTH_KIND.pack(length, kind))
    for part in parts:
        crc = zlib.crc32(part, crc)
    pad = -length % 8
    chunks: list[bytes | pa.Buffer] = [RECORD_HEADER.pack(length, crc, kind, 0), *parts]
    if pad:
        chunks.append(b"\0" * pad)
    return chunks


def events_batch(events: Iterable[Event]) -> pa.RecordBatch:
    """Events as one batch in :data:`~flight_md.schema.EVENT_SCHEMA` (the ``@events`` columns)."""
    items = list(events)
    return pa.RecordBatch.from_pydict({
        "timestamp": [e.timestamp for e in items],
        "exchange": [e.exchange for e in items],
        "kind": [e.kind.value for e in items],
        "symbols": [list(e.symbols) for e in items],
        "detail": [e.detail for e in items],
    }, schema=EVENT_SCHEMA)


class _Segment:
    """The open segment: its descriptor and what it already declared."""

    __slots__ = ("fd", "first_lsn", "good_size", "keys", "last_lsn", "path", "rows", "seq")

    def __init__(self, seq: int, path: Path, fd: int, first_lsn: int) -> None:
        self.seq = seq
        self.path = path
        self.fd = fd
        self.first_lsn = first_lsn
        self.last_lsn = first_lsn - 1
        self.rows = 0
        self.good_size = 0  # bytes up to the end of the last intact commit
        self.keys: set[int] = set()


class Journal:
    """The write-ahead journal over one directory (see the module docstring).

    Open it through :func:`flight_md.persist.recovery.open_journal`, which first recovers
    what the directory holds and continues its lsn; constructing one directly starts a new
    segment after the existing ones, numbering appends from ``start_lsn + 1``.

    Args:
        directory: The journal directory (``DATA_DIR/journal``); it must exist.
        fsync: When commits are fsynced.
        commit_interval: Seconds between group commits (> 0).
        segment_bytes: Size past which a segment is closed (>= 4096).
        max_pending_rows: Pending rows beyond which appends are dropped and counted.
        start_lsn: The last lsn already in the directory.
        closed: The directory's closed, unsealed segments (from recovery), oldest first.
    """

    def __init__(self, directory: Path | str, *, fsync: FsyncMode | str = FsyncMode.INTERVAL,
                 commit_interval: float = DEFAULT_COMMIT_INTERVAL_S,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 max_pending_rows: int = DEFAULT_MAX_PENDING_ROWS, start_lsn: int = 0,
                 closed: Sequence[SegmentInfo] = (),
                 feed: Callable[[], None] | None = None,
                 on_commit: Callable[[int], None] | None = None) -> None:
        try:
            self.fsync = FsyncMode(fsync)
        except ValueError:
            allowed = ", ".join(m.value for m in FsyncMode)
            raise InvalidArgument(f"fsync mode {fsync!r} is not one of {allowed}") from None
        if not commit_interval > 0:
            raise InvalidArgument(f"commit interval {commit_interval!r} must be > 0 seconds")
        if segment_bytes < 4096:
            raise InvalidArgument(f"segment size {segment_bytes!r} must be >= 4096 bytes")
        if max_pending_rows < 1:
            raise InvalidArgument(f"max pending rows {max_pending_rows!r} must be >= 1")
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise InvalidArgument(f"journal directory {str(self.directory)!r} does not exist")
        self.commit_interval = float(commit_interval)
        self.segment_bytes = segment_bytes
        self.max_pending_rows = max_pending_rows
        existing = segment_seqs(self.directory)
        self._sealed = read_sealed(self.directory)
        self._next_seq = max([self._sealed, *existing]) + 1
        self._closed: list[SegmentInfo] = list(closed)

        # Append side (self._lock): the queue and the key registry.
        self._lock = threading.Lock()
        self._pending: list[tuple[int, pa.RecordBatch]] = []
        self._pending_rows = 0
        self._lsn = start_lsn
        self._dropped = 0
        self._closing = False  # appends refused
        self._close_started = False
        self._key_ids: dict[tuple[str, str, str], int] = {}
        self._key_schema: list[pa.Schema] = []  # by key id: the appended schema
        self._key_sid: list[int] = []  # by key id: schema id
        self._keys: list[JournalKey] = []
        self._schemas: list[pa.Schema] = []  # by schema id: the stored schema (with KEY_COLUMN)

        # File side (self._io): the open segment and the commit counters.
        self._io = threading.Lock()
        self._segment: _Segment | None = None
        self._committed = start_lsn
        self._synced = start_lsn
        self._committed_rows = 0
        self._commits = 0
        self._bytes = 0
        self._errors = 0
        self._last_error: str | None = None

        self.feed = feed
        """Called by the committer before each commit (and by :meth:`commit`, :meth:`rotate`
        and :meth:`close`) to :meth:`append` what is waiting elsewhere, e.g. the rows the
        rings stored since the last commit; so a row waits at most one interval."""
        self.on_commit = on_commit
        """Called with :attr:`committed_through` after each commit that wrote something, on
        the committing thread and before any other thread can see the commit's segment
        closed (:meth:`closed_segments`): what a commit made durable is known to whoever
        seals segments next (a serving node's bus ledger, :mod:`flight_md.persist.store`).
        It must be quick and take no lock but its own."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flight-md-journal", daemon=True)
        self._thread.start()

    # -- the ingestion side ---------------------------------------------------------------

    def append(self, channel: str, exchange: str, symbol: str,
               batch: pa.RecordBatch | pa.Table, *, always: bool = False) -> int:
        """Queue ``batch`` for the next group commit and return its lsn.

        The batch's schema is fixed per (channel, exchange, symbol) by its first append.
        Returns ``0`` (no lsn) if the batch was dropped because too many rows are waiting
        for the disk (counted in :attr:`JournalStats.dropped_rows`), unless ``always``
        (a few rows that must go with the others: the bus ledger's changes).

        Raises:
            InvalidArgument: Not a record batch or table, a bad key, or a schema that
                differs from the key's first one.
            Unavailable: The journal is closed.
        """
        kid = self._key_ids.get((channel, exchange, symbol))
        try:
            schema = batch.schema
            rows = batch.num_rows
        except AttributeError:
            raise InvalidArgument(f"cannot journal {type(batch).__name__!r}: expected a "
                                  "pyarrow RecordBatch or Table") from None
        if kid is None:
            kid = self._register(JournalKey(channel, exchange, symbol), schema)
        elif not schema.equals(self._key_schema[kid]):
            raise InvalidArgument(f"batch schema for {channel!r} {exchange!r} {symbol!r} "
                                  f"differs from its first one: {_schema_text(schema)} vs "
                                  f"{_schema_text(self._key_schema[kid])}")
        if isinstance(batch, pa.Table) and rows:
            batch = batch.combine_chunks().to_batches()[0]
        with self._lock:
            if self._closing:
                raise Unavailable("the journal is closed")
            if not rows:
                return self._lsn
            if self._pending_rows + rows > self.max_pending_rows and not always:
                self._dropped += rows
                return 0
            self._pending.append((kid, batch))
            self._pending_rows += rows
            self._lsn += 1
            return self._lsn

    def append_events(self, events: Event | Iterable[Event]) -> int:
        """Queue event-log entries (under :data:`EVENTS_KEY`) and return their lsn."""
        items = [events] if isinstance(events, Event) else list(events)
        return self.append(EVENTS_KEY.channel, EVENTS_KEY.exchange, EVENTS_KEY.symbol,
                           events_batch(items))

    def _register(self, key: JournalKey, schema: pa.Schema) -> int:
        for part in (key.channel, key.exchange, key.symbol):
            if not isinstance(part, str) or len(part.encode("utf-8", "surrogatepass")) > \
                    MAX_KEY_PART_BYTES:
                raise InvalidArgument(f"journal key part {part!r} must be a string of at most "
                                      f"{MAX_KEY_PART_BYTES} bytes")
        if not key.channel:
            raise InvalidArgument("journal channel must not be empty")
        if key.channel == EVENTS_KEY.channel and key != EVENTS_KEY:
            raise InvalidArgument(f"channel {key.channel!r} is reserved for the event log")
        if key.channel == LEDGER_KEY.channel and key != LEDGER_KEY:
            raise InvalidArgument(f"channel {key.channel!r} is reserved for the bus ledger")
        if key == LEDGER_KEY and not schema.equals(LEDGER_SCHEMA):
            raise InvalidArgument(f"bus ledger changes must have the schema "
                                  f"{_schema_text(LEDGER_SCHEMA)}, not {_schema_text(schema)}")
        if KEY_COLUMN in schema.names:
            raise InvalidArgument(f"column name {KEY_COLUMN!r} is reserved by the journal")
        if key == EVENTS_KEY and not schema.equals(EVENT_SCHEMA):
            raise InvalidArgument(f"events must have the event schema, not {_schema_text(schema)}")
        with self._lock:
            parts = (key.channel, key.exchange, key.symbol)
            if parts in self._key_ids:  # another thread registered it meanwhile
                return self._key_ids[parts]
            stored = schema.append(pa.field(KEY_COLUMN, pa.uint32(), nullable=False))
            sid = next((i for i, s in enumerate(self._schemas) if s.equals(stored,
                                                                           check_metadata=True)),
                       None)
            if sid is None:
                sid = len(self._schemas)
                self._schemas.append(stored)
            kid = len(self._keys)
            self._keys.append(key)
            self._key_schema.append(schema)
            self._key_sid.append(sid)
            self._key_ids[parts] = kid  # last: readers without the lock see a complete entry
            return kid

    # -- what is durable -------------------------------------------------------------------

    @property
    def appended(self) -> int:
        """The last lsn :meth:`append` handed out."""
        return self._lsn

    @property
    def committed_through(self) -> int:
        """The last lsn in the journal (fsynced too in ``always`` mode)."""
        return self._committed

    @property
    def synced_through(self) -> int:
        """The last lsn fsynced (survives a power cut)."""
        return self._synced

    def stats(self) -> JournalStats:
        """The counters now."""
        with self._lock:
            appended, pending, dropped = self._lsn, self._pending_rows, self._dropped
        segment = self._segment
        return JournalStats(appended, self._committed, self._synced, pending,
                            self._committed_rows, self._commits, self._bytes,
                            segment.seq if segment is not None else self._next_seq,
                            self._sealed, self._errors, self._last_error, dropped)

    # -- commits ---------------------------------------------------------------------------

    def commit(self) -> int:
        """Write (and in ``always`` mode fsync) everything appended so far, now.

        Returns:
            :attr:`committed_through` afterwards.

        Raises:
            OSError: The write failed; the batches stay pending and are retried.
        """
        self._feed()
        with self._io:
            error = self._commit_locked(timed=False)
        if error is not None:
            raise error
        return self._committed

    def _feed(self) -> None:
        if self.feed is not None:
            try:
                self.feed()
            except Exception:  # a bug in the feed must not stop the commits of what is queued
                log.exception("journal %s: feeding the commit failed", self.directory)

    def _run(self) -> None:
        # Fixed deadlines: the commit's own work (and a wait for the GIL under load) must not
        # stretch the period, or kill -9 would lose more than one interval.
        deadline = time.monotonic() + self.commit_interval
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            deadline = max(deadline + self.commit_interval, time.monotonic())
            self._feed()
            with self._io:
                self._commit_locked(timed=True)

    def _commit_locked(self, *, timed: bool) -> OSError | None:
        with self._lock:
            pending, self._pending = self._pending, []
            rows, self._pending_rows = self._pending_rows, 0
            through = self._lsn
        try:
            if pending:
                self._write(pending, through, rows)
            if timed and self.fsync is FsyncMode.INTERVAL and self._synced < self._committed \
                    and self._segment is not None:
                os.fsync(self._segment.fd)
                self._synced = self._committed
        except OSError as exc:
            self._fail(exc, pending, rows)
            return exc
        if pending and self.on_commit is not None:
            try:
                self.on_commit(self._committed)
            except Exception:  # a bug there must not undo or stop the commits
                log.exception("journal %s: the commit callback failed", self.directory)
        if self._last_error is not None:
            log.info("journal %s: commits resumed", self.directory)
            self._last_error = None
        return None

    def _fail(self, exc: OSError, pending: list[tuple[int, pa.RecordBatch]], rows: int) -> None:
        with self._lock:
            self._pending[:0] = pending
            self._pending_rows += rows
        self._errors += 1
        if self._last_error is None:
            log.warning("journal %s: commit failed, retrying every %g s: %s", self.directory,
                        self.commit_interval, exc)
        self._last_error = f"{type(exc).__name__}: {exc}"
        segment = self._segment
        if segment is not None:
            try:  # drop the torn commit so the retry appends after the last intact one
                os.ftruncate(segment.fd, segment.good_size)
            except OSError:
                self._abandon_segment()

    def _abandon_segment(self) -> None:
        """Give up the open segment after a failure it cannot be repaired from: its intact
        commits stay in it, recovery truncates whatever follows them."""
        segment, self._segment = self._segment, None
        if segment is not None:
            os.close(segment.fd)
            if segment.rows:
                self._closed.append(SegmentInfo(segment.seq, segment.path, segment.first_lsn,
                                                segment.last_lsn, segment.rows,
                                                segment.good_size))

    def _write(self, pending: list[tuple[int, pa.RecordBatch]], through: int, rows: int) -> None:
        segment = self._segment if self._segment is not None else self._open_segment()
        chunks: list[bytes | pa.Buffer] = []
        if segment.good_size == 0:  # a new segment, or one whose first write failed
            header = json.dumps({"format": SEGMENT_VERSION, "segment": segment.seq,
                                 "start_lsn": segment.first_lsn - 1}).encode()
            chunks.append(MAGIC)
            chunks += record(RecordKind.HEADER, header)
        groups: dict[int, list[tuple[int, pa.RecordBatch]]] = {}
        for entry in pending:
            groups.setdefault(self._key_sid[entry[0]], []).append(entry)
        new_keys: list[int] = []
        for sid, entries in groups.items():
            kids = [kid for kid, _ in entries]
            for kid in set(kids):
                if kid not in segment.keys and kid not in new_keys:
                    new_keys.append(kid)
                    key = self._keys[kid]
                    chunks += record(RecordKind.KEY, ID_PREFIX.pack(kid),
                                     json.dumps([key.channel, key.exchange, key.symbol]).encode())
            chunks += record(RecordKind.BATCH,
                             _stream(_with_keys(entries, kids, self._schemas[sid])))
        chunks += record(RecordKind.COMMIT, COMMIT.pack(through, rows, now_ms()))
        data = b"".join(chunks)
        view = memoryview(data)
        while view:
            view = view[os.write(segment.fd, view):]
        if self.fsync is FsyncMode.ALWAYS:
            os.fsync(segment.fd)
        segment.keys.update(new_keys)
        segment.good_size += len(data)
        segment.last_lsn = through
        segment.rows += rows
        self._bytes += len(data)
        self._commits += 1
        self._committed_rows += rows
        self._committed = through
        if self.fsync is FsyncMode.ALWAYS:
            self._synced = through
        if segment.good_size >= self.segment_bytes:
            self._close_segment()

    def _open_segment(self) -> _Segment:
        while True:
            seq = self._next_seq
            path = segment_path(self.directory, seq)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:  # a stray file with this number: never write into it
                self._next_seq += 1
                continue
            self._next_seq += 1
            break
        if self.fsync is not FsyncMode.NEVER:
            fsync_dir(self.directory)  # the new name must survive a power cut too
        self._segment = _Segment(seq, path, fd, self._committed + 1)
        return self._segment

    def _close_segment(self) -> SegmentInfo | None:
        segment = self._segment
        if segment is None:
            return None
        data = b"".join(record(RecordKind.END, END.pack(segment.last_lsn)))
        view = memoryview(data)
        while view:
            view = view[os.write(segment.fd, view):]
        os.fsync(segment.fd)
        os.close(segment.fd)
        self._segment = None
        self._synced = self._committed
        self._bytes += len(data)
        info = SegmentInfo(segment.seq, segment.path, segment.first_lsn, segment.last_lsn,
                           segment.rows, segment.good_size + len(data))
        self._closed.append(info)
        return info

    # -- rotation and sealing --------------------------------------------------------------

    def rotate(self) -> SegmentInfo | None:
        """Commit, then close the open segment; return it (``None`` if none was open).

        Raises:
            OSError: The commit or the close failed (the data stays pending or in the
                segment; nothing committed is lost).
        """
        self._feed()
        with self._io:
            error = self._commit_locked(timed=False)
            if error is not None:
                raise error
            return self._close_segment()

    def closed_segments(self) -> list[SegmentInfo]:
        """Closed segments not sealed yet, oldest first: what the history writer reads."""
        with self._io:
            return list(self._closed)

    def seal(self, through: int) -> list[SegmentInfo]:
        """Record that every segment up to ``through`` is in the Parquet history, and delete
        those segments. Returns the segments deleted.

        Raises:
            InvalidArgument: ``through`` is the open segment or beyond it.
        """
        with self._io:
            if self._segment is not None and through >= self._segment.seq:
                raise InvalidArgument(f"segment {through} is still open; rotate() it first")
            if through >= self._next_seq:
                raise InvalidArgument(f"segment {through} does not exist yet (next is "
                                      f"{self._next_seq})")
            if through <= self._sealed:
                return []
            write_atomic(self.directory / SEALED_FILE, f"{through}\n".encode())
            self._sealed = through
            done = [s for s in self._closed if s.seq <= through]
            self._closed = [s for s in self._closed if s.seq > through]
            for seq in segment_seqs(self.directory):
                if seq <= through:
                    segment_path(self.directory, seq).unlink(missing_ok=True)
            return done

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is pending, close the segment (END, fsync) and stop the committer.
        Idempotent; appends after it raise :class:`~flight_md.errors.Unavailable`."""
        with self._lock:
            if self._close_started:
                already = True
            else:
                already, self._close_started = False, True
        if already:
            self._thread.join()
            return
        self._stop.set()
        self._thread.join()
        self._feed()  # the last rows and events, while appends are still accepted
        with self._lock:
            self._closing = True
        with self._io:
            error = self._commit_locked(timed=False)
            if error is not None:
                log.error("journal %s: final commit failed, %d rows not journalled: %s",
                          self.directory, self._pending_rows, error)
            try:
                self._close_segment()
            except OSError as exc:
                log.error("journal %s: closing segment failed: %s", self.directory, exc)
                self._abandon_segment()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _with_keys(entries: list[tuple[int, pa.RecordBatch]], kids: list[int],
               schema: pa.Schema) -> pa.RecordBatch:
    """The entries' batches as one, with the key column appended."""
    batches = [b for _, b in entries]
    combined = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
    first = kids[0]
    if all(k == first for k in kids):
        keys = np.full(combined.num_rows, first, dtype=np.uint32)
    else:
        keys = np.repeat(np.array(kids, dtype=np.uint32),
                         np.fromiter((b.num_rows for b in batches), np.int64, len(batches)))
    return pa.RecordBatch.from_arrays([*combined.columns, pa.array(keys)], schema=schema)


def _stream(batch: pa.RecordBatch) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def _schema_text(schema: pa.Schema) -> str:
    return "(" + ", ".join(f"{f.name}: {f.type}" for f in schema) + ")"


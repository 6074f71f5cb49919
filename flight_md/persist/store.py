"""Persistence in a running server: the rings journalled, sealed into Parquet, and recovered.

:class:`Persistence` joins the pure parts of this package to the store
(:class:`~flight_md.buffer.MarketDataBuffer`) and the event log:

* **Journal** (:mod:`flight_md.persist.journal`): every ``commit_interval`` the journal's
  committer thread first takes every ring's new rows (:meth:`MarketDataBuffer.take_unjournalled`,
  zero copy: the sealed Arrow slices the ring serves) and the new ``@events``, then writes
  them as one group commit. A row reaches the journal at most one interval after it was
  stored, so ``kill -9`` loses at most that much. Each journalled row carries its ring's
  ``sequence`` number, which continues across restarts.
* **History** (:mod:`flight_md.persist.history`): every ``seal_interval``, on ``flush`` and on a
  clean stop, the history thread closes the journal's segment, writes its rows to the hive
  Parquet history (one file per series and day), seals the segment (deletes it) and tells the
  rings they may free those rows (:meth:`MarketDataBuffer.release`). Until then a ring keeps
  rows it evicted, so a query over history and ring has no gap; rows already in the history
  (a crash between a Parquet write and the seal) are skipped by their sequence number, so
  none is written twice.
* **Recovery** at :meth:`Persistence.open`: the journal is checked and repaired (a torn tail
  cut, a corrupt segment quarantined), what it holds is written to the history, every ring
  of a served channel is refilled with its newest rows from the history, the event log with
  the last day's events, and :meth:`run_time_subscriptions` says what ``subscribe`` and
  ``unsubscribe`` changed before the restart.
* **Retention** (:mod:`flight_md.persist.retention`) runs at start and every
  ``retention_interval``.
* **The bus ledger** of a serving node (:class:`BusLedger`, issue 16): which bus messages
  the rings hold. Its changes go into the same group commit as the rows of those messages
  (under the reserved key :data:`~flight_md.persist.journal.LEDGER_KEY`), so that what the
  journal recovers after ``kill -9`` is exactly what the restored ledger says was stored;
  before journal segments are sealed (deleted) the ledger as of the last commit goes to
  ``bus-ledger.json`` in the data dir (atomically). At start it is that file plus every
  change the journal still holds.
  Entries of producers none of whose messages can reach the node again are pruned
  (:meth:`flight_md.bus.ledger.Ledger.prune`): journalled as tombstones, gone from the file
  at the next seal.

Disk errors never stop ingestion or serving: a failed commit is retried every interval (the
journal keeps the rows pending, up to its limit), a failed history write on the next seal;
``@events`` records ``persist_error`` once when it starts failing and ``persist_resumed``
when it works again, and :meth:`status` says ``degraded`` meanwhile. While degraded the rings
stop holding evicted rows for the history, so memory stays bounded.

Threads: the journal's committer (feeds and commits), the history thread (seals, retention),
and the callers of :meth:`flush`, :meth:`status` and the readers. The history thread and
:meth:`flush` serialise on one lock; everything else meets in the buffer's ring locks and the
journal's own locks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Self

import pyarrow as pa
import pyarrow.compute as pc

from flight_md.buffer import MarketDataBuffer, Store
from flight_md.bus.ledger import Ledger, apply_changes
from flight_md.core.channels import TICKER_LIKE, spec_for
from flight_md.errors import FlightMdError
from flight_md.events import Event, EventKind, EventLog
from flight_md.persist.datadir import DataDir, write_atomic
from flight_md.persist.history import (
    HistoryReader,
    HistoryRoot,
    HistoryWriter,
    Quarantined,
    SeriesBounds,
    WrittenFile,
)
from flight_md.persist.journal import (
    DEFAULT_COMMIT_INTERVAL_S,
    EVENTS_KEY,
    LEDGER_KEY,
    LEDGER_SCHEMA,
    FsyncMode,
    Journal,
    JournalKey,
)
from flight_md.persist.recovery import (
    events_from_table,
    open_journal,
    read_segment,
)
from flight_md.persist.retention import RetentionPolicy, apply_retention
from flight_md.schema import SCHEMA, now_ms

__all__ = [
    "DEFAULT_SEAL_INTERVAL_S",
    "LEDGER_FILE",
    "SEQUENCE",
    "BusLedger",
    "FlushResult",
    "PersistConfig",
    "PersistState",
    "Persistence",
    "history_schema",
]

log = logging.getLogger(__name__)

SEQUENCE: Final = "sequence"
"""The per-row sequence number column of the journal and the history (monotonic per
channel, exchange and symbol, kept across restarts)."""
DEFAULT_SEAL_INTERVAL_S: Final = 60.0
"""How often the journal's rows move into the Parquet history (and how long a ring may hold
rows it evicted, waiting for that)."""
RETENTION_INTERVAL_S: Final = 300.0
HISTORY_RETRY_S: Final = 1.0
BOUNDS_TTL_S: Final = 5.0
MOVE_AT_OPEN_ROWS: Final = 1_000_000
"""A journal of at most this many rows moves into the history before the server starts; a
larger one moves in the background right after (the rings hold its rows meanwhile)."""
WRITE_THREADS: Final = 2
"""Parquet writers in parallel (zstd and fsync release the GIL)."""
HOLD_LIMIT_ROWS: Final = 1_000_000
"""Evicted rows the rings keep in all, while the history cannot be written (~80 MB)."""
SUBSCRIPTIONS_FILE: Final = "subscriptions.json"
LEDGER_FILE: Final = "bus-ledger.json"
"""The bus ledger as of the last commit before journal segments were sealed (see
:class:`BusLedger`)."""
EVENT_RESTORE_MS: Final = 24 * 3600 * 1000
"""The event log is refilled with this much of the events history at start."""
STOP_BUDGET_S: Final = 5.0


_SEQUENCE_FIELD: Final = pa.field(SEQUENCE, pa.int64(), nullable=False)


def history_schema(schema: pa.Schema = SCHEMA) -> pa.Schema:
    """A channel's history columns: its schema (default: ticks, :data:`SCHEMA`) and ``sequence``."""
    return schema.append(_SEQUENCE_FIELD)


class PersistState(StrEnum):
    """What ``status`` says about persistence."""

    OK = "ok"
    DEGRADED = "degraded"  # the disk refuses writes: serving from memory, retrying
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class PersistConfig:
    """How a server persists (``flight-md serve`` options; see the README's "Data on disk").

    Attributes:
        data_dir: The data directory (its journal, lock, quarantine; and history unless
            ``history_uri`` says otherwise).
        history_uri: Where the Parquet history lives when not in ``data_dir``: a local path
            or any URI :func:`pyarrow.fs.FileSystem.from_uri` accepts (``s3://bucket/prefix``).
        fsync: What survives a power cut (:class:`~flight_md.persist.journal.FsyncMode`).
        commit_interval: Seconds between group commits: the most ``kill -9`` loses.
        seal_interval: Seconds between moves of the journal into the history.
        retention: How long and how much history is kept.
    """

    data_dir: Path
    history_uri: str | None = None
    fsync: FsyncMode = FsyncMode.INTERVAL
    commit_interval: float = DEFAULT_COMMIT_INTERVAL_S
    seal_interval: float = DEFAULT_SEAL_INTERVAL_S
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one move of the journal into the history wrote (the ``flush`` action's result)."""

    segments: int
    rows: int
    files: int
    bytes: int
    events: int
    skipped_rows: int
    """Rows already in the history (after a crash between a write and its seal)."""
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"segments": self.segments, "rows": self.rows, "files": self.files,
                "bytes": self.bytes, "events": self.events, "skipped_rows": self.skipped_rows,
                "seconds": round(self.seconds, 3)}


_NOTHING = FlushResult(0, 0, 0, 0, 0, 0, 0.0)


class BusLedger:
    """A serving node's bus ledger, journalled atomically with the rows it records.

    The writer (the bus consumer's loop, :class:`flight_md.bus.serve.ServeBus`) holds
    :attr:`lock` while it appends one message's rows to a ring, records the message in
    :attr:`ledger` (or finds it a duplicate) and :meth:`settle` s it with its ack token. The
    journal's feed holds the same lock while it takes every ring's new rows, the new events
    and the ledger's changes (:meth:`Ledger.take_changes`) into one group commit, so a commit
    holds a message's rows exactly when it holds its ledger entry. When that commit is
    written, the tokens settled before the feed are handed to :attr:`on_durable` (on the
    committing thread): only then may the writer ack them, so a message the bus forgets
    (acked) is always one the journal holds.

    Threads: the writer and the feed meet in :attr:`lock`; the committing thread and the
    history thread (which saves :meth:`durable` before sealing segments) in a second, inner
    lock. :attr:`on_durable` is called under the journal's file lock: it must be quick
    (e.g. ``loop.call_soon_threadsafe``).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ledger = Ledger()
        """The ledger (entries restored at :meth:`Persistence.open`); read and written by the
        writer, its changes taken by the feed under :attr:`lock`."""
        self.on_durable: Callable[[list[object]], None] | None = None
        self._tokens: list[object] = []
        self._inner = threading.Lock()
        self._fed: deque[tuple[int, dict[tuple[str, str], int], list[object]]] = deque()
        self._durable: dict[tuple[str, str], int] = {}
        self._saved = True  # _durable is what the file holds
        self._committed: Callable[[], int] = lambda: 0

    def settle(self, token: object) -> None:
        """Hand ``token`` (a delivered message's ack) to :attr:`on_durable` once the rows and
        ledger entries recorded so far are in the journal. Call with :attr:`lock` held."""
        self._tokens.append(token)

    @property
    def waiting(self) -> int:
        """Tokens settled and not handed back yet (acks the journal has yet to allow)."""
        with self._inner:
            return len(self._tokens) + sum(len(t) for _, _, t in self._fed)

    def durable(self) -> dict[tuple[str, str], int] | None:
        """The ledger as of the last commit written, or ``None`` if the file holds it already."""
        with self._inner:
            if self._saved:
                return None
            self._saved = True
            return dict(self._durable)

    def _restore(self, entries: Mapping[tuple[str, str], int], saved: bool) -> None:
        self.ledger.merge(entries)
        with self._inner:
            apply_changes(self._durable, entries)
            self._saved = self._saved and saved

    def _unsaved(self) -> None:
        with self._inner:
            self._saved = False

    def _feed(self, journal: Journal) -> None:
        """Journal the ledger's changes (lock held, after the rows of the same messages)."""
        changes = self.ledger.take_changes()
        tokens, self._tokens = self._tokens, []
        if changes:
            lsn = journal.append(LEDGER_KEY.channel, LEDGER_KEY.exchange, LEDGER_KEY.symbol,
                                 ledger_batch(changes), always=True)
        elif tokens:
            lsn = journal.appended  # duplicates only: their originals are in this lsn or before
        else:
            return
        with self._inner:
            self._fed.append((lsn, changes, tokens))
        # Another thread's commit may have written this lsn already (it took the pending
        # batches after this feed appended them, before it got here).
        self._on_commit(self._committed())

    def _on_commit(self, committed: int) -> None:
        tokens: list[object] = []
        with self._inner:
            while self._fed and self._fed[0][0] <= committed:
                _, changes, done = self._fed.popleft()
                if changes:
                    apply_changes(self._durable, changes)  # raises, or prunes (tombstones)
                    self._saved = False
                tokens += done
        callback = self.on_durable
        if tokens and callback is not None:
            callback(tokens)


def ledger_batch(changes: Mapping[tuple[str, str], int]) -> pa.RecordBatch:
    """Ledger changes as one batch in :data:`~flight_md.persist.journal.LEDGER_SCHEMA`."""
    return pa.RecordBatch.from_arrays(
        [pa.array([p for p, _ in changes], pa.string()),
         pa.array([s for _, s in changes], pa.string()),
         pa.array(list(changes.values()), pa.int64())], schema=LEDGER_SCHEMA)


def ledger_entries(table: pa.Table | pa.RecordBatch) -> dict[tuple[str, str], int]:
    """Journalled ledger changes as changes for :meth:`Ledger.merge`, one per key, in any
    order: the highest sequence, or the tombstone (a negative sequence, an entry pruned) of
    the highest one if no higher positive one came after it (sequences only rise)."""
    raised: dict[tuple[str, str], int] = {}
    pruned: dict[tuple[str, str], int] = {}
    columns = table.to_pydict()
    for producer, subject, seq in zip(columns["producer"], columns["subject"], columns["seq"],
                                      strict=True):
        key = (producer, subject)
        if seq > raised.get(key, 0):
            raised[key] = seq
        elif seq < 0 and -seq > pruned.get(key, 0):
            pruned[key] = -seq
    out = dict(raised)
    for key, seq in pruned.items():
        if raised.get(key, 0) <= seq:
            out[key] = -seq
    return out


class Persistence:
    """The journal, history and recovery of one server (see the module docstring).

    Args:
        config: Where and how.
        store: The rings to journal and refill: a :class:`~flight_md.buffer.Store` (each
            channel's buffer under its own channel; channels the history holds are refilled
            whether streamed now or not), or one tick buffer.
        events: The event log to journal and refill.
        channels: For a tick buffer that holds both ticker and bid/ask rings (a single
            buffer, or ``Store.of(buffer)``): the channel each exchange streams, which its
            rings are journalled and refilled under (default ``ticker``).
    """

    def __init__(self, config: PersistConfig, store: Store | MarketDataBuffer, events: EventLog,
                 channels: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.store = store if isinstance(store, Store) else Store.of(store)
        # The tick buffer of the legacy form (one buffer for ticker and bid/ask rings).
        self.buffer: MarketDataBuffer | None = None if isinstance(store, Store) else store
        self.events = events
        self._channels = dict(channels or {})
        self.data_dir: DataDir | None = None
        self.journal: Journal | None = None
        self.root: HistoryRoot | None = None
        self.writer: HistoryWriter | None = None
        self.reader: HistoryReader | None = None
        self._pending_events: deque[Event] = deque()
        self._history_seq: dict[tuple[str, str, str], int] = {}  # next seq not in history
        self._seal_lock = threading.Lock()
        self._feed_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = PersistState.OK
        self._degraded_since: float | None = None
        self._last_error: str | None = None
        self._history_error: str | None = None
        self._flushes = 0
        self._written_rows = 0
        self._written_files = 0
        self._released_unsaved = 0
        self._retention_removed = 0
        self._last_retention = 0.0
        self._bounds: tuple[float, list[SeriesBounds]] | None = None
        self._dedupe_events = False
        self._executor: ThreadPoolExecutor | None = None
        self._writers = threading.local()
        self.recovery: dict[str, Any] = {}
        """What :meth:`open` found and did (for ``status`` and ``@events``)."""
        self.bus_ledger = BusLedger()
        """The bus ledger of a serving node (restored at :meth:`open`; see :class:`BusLedger`)."""

    # -- start ---------------------------------------------------------------------------

    def channel(self, exchange: str, buffer: MarketDataBuffer | None = None) -> str:
        """The channel the rings of ``exchange`` in ``buffer`` (default: the tick buffer) are
        persisted under."""
        if buffer is not None and (buffer.channel not in TICKER_LIKE or not self._shared(buffer)):
            return buffer.channel
        return self._channels.get(exchange, "ticker")

    def _shared(self, buffer: MarketDataBuffer) -> bool:
        """Whether ``buffer`` holds the rings of both tick channels (legacy single buffer)."""
        return buffer.channel in TICKER_LIKE and self.store.get("bidask") is self.store.get(
            "ticker") is buffer

    def _buffer_of(self, channel: str) -> MarketDataBuffer | None:
        """The buffer whose rings are persisted under ``channel``."""
        if channel in TICKER_LIKE:
            ticker = self.store.get("ticker")
            if ticker is not None and self._shared(ticker):
                return ticker
        return self.store.get(channel)

    def _buffers(self) -> list[MarketDataBuffer]:
        return self.store.buffers()

    def open(self) -> Self:
        """Lock the data dir, recover it and refill the store (see the module docstring).

        Raises:
            StartupError: The data dir is locked by another server, of a format this version
                cannot read, or not a data dir.
        """
        started = time.monotonic()
        self.data_dir = DataDir.open(self.config.data_dir)
        try:
            self._open(started)
        except BaseException:
            self.data_dir.close()
            self.data_dir = None
            raise
        return self

    def _open(self, started: float) -> None:
        assert self.data_dir is not None
        root_uri: Any = self.config.history_uri or self.data_dir.path
        self.root = HistoryRoot(root_uri, on_quarantine=self._on_quarantine)
        self.writer = HistoryWriter(self.root)
        self.reader = HistoryReader(self.root)
        cleaned = self.writer.recover()
        self.journal, recovery = open_journal(self.data_dir, fsync=self.config.fsync,
                                              commit_interval=self.config.commit_interval,
                                              feed=self._feed,
                                              on_commit=self.bus_ledger._on_commit)
        journal = self.journal
        self.bus_ledger._committed = lambda: journal.committed_through
        for key in self.root.series():
            newest = self.reader.newest(key.channel, key.exchange, key.symbol)
            if newest is not None and newest.sequence is not None:
                self._history_seq[(key.channel, key.exchange, key.symbol)] = newest.sequence + 1
        # The journal's rows per key (zero copy: memory-mapped from the segments). A crash may
        # have come between a segment's Parquet writes and its seal: rows the history holds
        # are skipped by sequence number, events by content (the first move after a start).
        recovered = recovery.tables()
        self._restore_ledger(recovered.pop(LEDGER_KEY, None))
        self._dedupe_events = True
        journal_tail = {(k.channel, k.exchange, k.symbol): [t] for k, t in recovered.items()
                        if k != EVENTS_KEY and t.num_rows}
        moved = _NOTHING
        if recovery.rows <= MOVE_AT_OPEN_ROWS:
            # A small journal goes to the history now: the start is as fast either way.
            moved = self._move_closed()
        self.store.persist()
        # Each ring is refilled with its newest rows and keeps every row the history does not
        # hold yet (the journal's, memory-mapped), so queries have no gap while a large
        # journal moves into the history in the background; numbering continues after them.
        rings = self._refill_rings(journal_tail)
        restored_events = self._refill_events(recovered.get(EVENTS_KEY))
        self.events.sink = self._pending_events.append
        self._retention()
        seconds = time.monotonic() - started
        self.recovery = {
            "journal_rows": recovery.rows, "journal_segments": len(recovery.segments),
            "torn_tails": len(recovery.torn), "torn_bytes": sum(t.bytes_cut for t in recovery.torn),
            "quarantined_segments": len(recovery.quarantined), "rings_refilled": rings,
            "events_refilled": restored_events, "history_rows_written": moved.rows,
            "history_temp_files_removed": cleaned.temp_files_removed, "seconds": round(seconds, 3)}
        if recovery.torn or recovery.quarantined or recovery.rows:
            detail = (f"recovered {recovery.rows} journalled rows in {seconds:.2f} s; "
                      f"torn tails cut: {len(recovery.torn)} "
                      f"({sum(t.bytes_cut for t in recovery.torn)} bytes); corrupt segments "
                      f"quarantined: {len(recovery.quarantined)}")
            self.events.record("*", EventKind.RECOVERED, (), detail)
        # DEBUG: a start-up problem found after this (a bad option) must stay one line.
        log.debug("data dir %s: %d journalled rows recovered, %d rings refilled in %.2f s",
                 self.data_dir.path, recovery.rows, rings, seconds)

    def _restore_ledger(self, journalled: pa.Table | None) -> None:
        """The bus ledger: its file (as of the last seal) and the changes the journal holds."""
        assert self.data_dir is not None
        path = self.data_dir.path / LEDGER_FILE
        try:
            data = json.loads(path.read_bytes())
            saved = Ledger.restore(data).snapshot()
        except FileNotFoundError:
            saved = {}
        except (OSError, ValueError, FlightMdError, AttributeError) as exc:
            # Refusing to start would stop the node; starting without it re-stores what the
            # bus still holds (duplicates in the rings), which the event says.
            log.error("ignoring the unreadable bus ledger %s: %s", path, exc)
            self.events.record("*", EventKind.PERSIST_ERROR, (),
                               f"bus ledger {path.name} unreadable, ignored: {exc}")
            saved = {}
        entries = {(p, s): seq for p, subjects in saved.items() for s, seq in subjects.items()}
        self.bus_ledger._restore(entries, saved=True)
        if journalled is not None and journalled.num_rows:
            self.bus_ledger._restore(ledger_entries(journalled), saved=False)

    def _save_ledger(self) -> None:
        """Write the bus ledger as of the last commit to its file, before segments holding
        its changes are deleted.

        Raises:
            OSError: it cannot be written (the segments must not be sealed then).
        """
        assert self.data_dir is not None
        durable = self.bus_ledger.durable()
        if durable is None:
            return
        data: dict[str, dict[str, int]] = {}
        for (producer, subject), seq in sorted(durable.items()):
            data.setdefault(producer, {})[subject] = seq
        try:
            write_atomic(self.data_dir.path / LEDGER_FILE,
                         json.dumps(data, separators=(",", ":")).encode())
        except OSError:
            self.bus_ledger._unsaved()
            raise

    def start(self) -> Self:
        """Start the history thread (seals and retention); it first moves what the journal
        still holds from before the start."""
        self._thread = threading.Thread(target=self._run, name="flight-md-history", daemon=True)
        self._thread.start()
        return self

    def _refill_rings(self, journal_tail: Mapping[tuple[str, str, str], list[pa.Table]]) -> int:
        assert self.root is not None and self.reader is not None
        found: dict[tuple[str, str], list[str]] = {}
        for key in self.root.series():
            found.setdefault((key.exchange, key.symbol), []).append(key.channel)
        for channel, exchange, symbol in journal_tail:
            channels = found.setdefault((exchange, symbol), [])
            if channel not in channels:
                channels.append(channel)
        refilled = 0
        shared = self.buffer is not None and self._shared(self.buffer)
        for (exchange, symbol), channels in sorted(found.items()):
            for channel in sorted(channels):
                if channel in TICKER_LIKE and shared:
                    wanted = self._channels.get(exchange)
                    if wanted is None:  # not configured now: the channel its history has
                        wanted = "ticker" if "ticker" in channels else min(
                            c for c in channels if c in TICKER_LIKE)
                        self._channels[exchange] = wanted
                    if channel != wanted:
                        continue
                    assert self.buffer is not None
                    buffer = self.buffer
                else:
                    try:
                        spec_for(channel)
                    except ValueError:
                        continue  # a channel this version does not know: the history keeps it
                    buffer = self.store.buffer(channel)
                refilled += self._refill_ring(buffer, channel, exchange, symbol, journal_tail)
        return refilled

    def _refill_ring(self, buffer: MarketDataBuffer, wanted: str, exchange: str, symbol: str,
                     journal_tail: Mapping[tuple[str, str, str], list[pa.Table]]) -> int:
        assert self.reader is not None
        series = (wanted, exchange, symbol)
        in_history = self._history_seq.get(series)
        unwritten = [self._unwritten(wanted, exchange, symbol, t)[0]
                     for t in journal_tail.get(series, [])]
        unwritten = [t for t in unwritten if t.num_rows]
        parts: list[pa.Table] = []
        if in_history is not None and sum(t.num_rows for t in unwritten) < \
                buffer.buffer_size:
            try:
                parts.append(_numeric(buffer, self.reader.latest(
                    wanted, exchange, symbol, buffer.buffer_size)))
            except (OSError, FlightMdError) as exc:
                log.warning("cannot refill %s %s %s from history: %s", wanted, exchange,
                            symbol, exc)
        parts += [_numeric(buffer, t) for t in unwritten]
        if not parts:
            return 0
        rows = pa.concat_tables(parts)
        if len(parts) > 1 or SEQUENCE not in rows.column_names:
            rows = _sorted_by_sequence(rows)
        if not rows.num_rows:
            return 0
        next_seq = int(pc.max(rows.column(SEQUENCE)).as_py()) + 1
        buffer.restore(exchange, symbol, rows, next_seq,
                       history_seq=in_history if unwritten else None)
        return 1

    def _refill_events(self, journalled: pa.Table | None) -> int:
        assert self.reader is not None
        keep: deque[pa.RecordBatch] = deque()
        rows = 0
        for batch in self.reader.scan_events(now_ms() - EVENT_RESTORE_MS, None):
            keep.append(batch)
            rows += batch.num_rows
            while keep and rows - keep[0].num_rows >= self.events.capacity:
                rows -= keep.popleft().num_rows
        events = events_from_table(pa.Table.from_batches(list(keep))) if keep else []
        if journalled is not None and journalled.num_rows:  # not moved yet (a large journal)
            events += events_from_table(self._new_events(journalled))
        if not events:
            return 0
        self.events.restore(events[-self.events.capacity:])
        return min(len(events), self.events.capacity)

    # -- the journal's feed (committer thread) ---------------------------------------------

    def _feed(self) -> None:
        journal = self.journal
        if journal is None:
            return
        # One feed at a time (the committer, rotate, close): a key's rows reach the journal
        # in sequence order, which the history's "already written" check relies on.
        with self._feed_lock:
            self._feed_locked(journal)
        self._check_health()
        self._release_if_degraded()

    def _feed_locked(self, journal: Journal) -> None:
        # Under the bus ledger's lock: the rows, events and ledger changes of the bus
        # messages stored so far go into this commit together (see BusLedger).
        with self.bus_ledger.lock:
            self._feed_rows(journal)
            self.bus_ledger._feed(journal)

    def _feed_rows(self, journal: Journal) -> None:
        for buffer in self._buffers():
            # The buffer adds the sequence column: once per commit for all its rings' rows,
            # not once per ring (Arrow objects per ring per commit dominated at 200 symbols).
            for exchange, symbol, _, batches in buffer.take_unjournalled(_SEQUENCE_FIELD):
                channel = self.channel(exchange, buffer)
                for batch in batches:
                    journal.append(channel, exchange, symbol, batch)
        if self._pending_events:
            events = []
            while self._pending_events:
                events.append(self._pending_events.popleft())
            journal.append_events(events)

    def _check_health(self) -> None:
        assert self.journal is not None
        error = self.journal.stats().last_error or self._history_error
        if error is not None and self._state is PersistState.OK:
            self._state = PersistState.DEGRADED
            self._degraded_since = time.monotonic()
            self._last_error = error
            log.warning("persistence degraded (serving from memory, retrying): %s", error)
            self.events.record("*", EventKind.PERSIST_ERROR, (),
                               f"persistence degraded, serving from memory and retrying: {error}")
        elif error is None and self._state is PersistState.DEGRADED:
            self._state = PersistState.OK
            log.info("persistence resumed")
            self.events.record("*", EventKind.PERSIST_RESUMED, (),
                               f"persistence resumed after "
                               f"{time.monotonic() - (self._degraded_since or 0):.1f} s")
            self._degraded_since = None
        if error is not None:
            self._last_error = error

    # -- the history thread -------------------------------------------------------------------

    def _run(self) -> None:
        assert self.journal is not None
        backlog = bool(self.journal.closed_segments())  # a large journal left by open()
        while True:
            # While a move failed (a full disk), retry every second, not every seal interval.
            wait = self.config.seal_interval if self._history_error is None else min(
                self.config.seal_interval, HISTORY_RETRY_S)
            if self._stop.wait(0.0 if backlog else wait):
                return
            backlog = False
            try:
                self.flush()
            except Exception:
                log.exception("moving the journal into the history failed")
            if time.monotonic() - self._last_retention >= RETENTION_INTERVAL_S:
                self._retention()

    def flush(self) -> FlushResult:
        """Close the journal's segment and move every closed segment into the history now.

        Raises:
            Unavailable: Persistence is closed.
        """
        with self._seal_lock:
            if self.journal is None:
                from flight_md.errors import Unavailable

                raise Unavailable("persistence is closed")
            try:
                self.journal.rotate()
            except OSError:
                # The journal keeps the rows pending and says so in its last_error, which
                # clears at its next good commit; the closed segments still move below.
                self._check_health()
                self._release_if_degraded()
            result = self._move_closed()
            self._flushes += 1
            self._check_health()
            self._release_if_degraded()
            return result

    def _new_events(self, table: pa.Table) -> pa.Table:
        """The journalled events the events history does not hold yet (after a crash
        between a segment's Parquet write and its seal), compared whole."""
        assert self.reader is not None
        ts = table.column("timestamp")
        lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
        if lo is None:
            return table
        names = table.column_names
        held = {tuple(row[n] if n != "symbols" else tuple(row[n]) for n in names)
                for batch in self.reader.scan_events(lo, hi + 1)
                for row in batch.select(names).to_pylist()}
        if not held:
            return table
        keep = [tuple(row[n] if n != "symbols" else tuple(row[n]) for n in names) not in held
                for row in table.to_pylist()]
        return table.filter(pa.array(keep, pa.bool_()))

    def _move_closed(self) -> FlushResult:
        """Write every closed segment's rows to the history, one file per key and day over
        all of them (in parallel, a writer per thread: keys are separate directories), then
        seal them and let the rings free what they held."""
        assert self.journal is not None and self.writer is not None
        started = time.monotonic()
        infos = self.journal.closed_segments()
        if not infos:
            return _NOTHING
        per_key: dict[JournalKey, list[pa.Table]] = {}
        readable = []
        for info in infos:
            try:
                parts = read_segment(info)
            except FlightMdError as exc:  # a segment that became unreadable since recovery
                log.error("journal segment %s cannot be read: %s", info.path, exc)
                self.events.record("*", EventKind.PERSIST_ERROR, (),
                                   f"journal segment {info.path.name} cannot be read: {exc}")
                break
            except OSError as exc:
                self._history_error = f"{type(exc).__name__}: {exc}"
                self._check_health()
                break
            readable.append(info)
            for part in parts:
                per_key.setdefault(part.key, []).append(part.table)
        if not readable:
            return _NOTHING
        per_key.pop(LEDGER_KEY, None)  # never history: BusLedger saves it before the seal
        events = 0
        skipped = 0
        jobs: list[tuple[JournalKey, pa.Table]] = []
        try:
            if EVENTS_KEY in per_key:
                table = pa.concat_tables(per_key.pop(EVENTS_KEY))
                if self._dedupe_events:
                    table = self._new_events(table)
                if table.num_rows:
                    self.writer.write_events(table)
                events = table.num_rows
            for key, tables in per_key.items():
                table, dropped = self._unwritten(key.channel, key.exchange, key.symbol,
                                                 pa.concat_tables(tables))
                skipped += dropped
                if table.num_rows:
                    jobs.append((key, table))
            written = list(self._pool().map(self._write_key, jobs))
            self._save_ledger()
        except OSError as exc:
            self._history_error = f"{type(exc).__name__}: {exc}"
            self._check_health()
            return FlushResult(0, 0, 0, 0, 0, skipped, time.monotonic() - started)
        self._dedupe_events = False
        rows = files = size = 0
        for (key, table), done in zip(jobs, written, strict=True):
            files += len(done)
            size += sum(w.bytes for w in done)
            rows += table.num_rows
            last = int(pc.max(table.column(SEQUENCE)).as_py())
            self._history_seq[(key.channel, key.exchange, key.symbol)] = last + 1
        self.journal.seal(readable[-1].seq)
        for key in per_key:
            buffer = self._buffer_of(key.channel)
            if buffer is not None and key.channel == self.channel(key.exchange, buffer):
                buffer.release(key.exchange, key.symbol, self._history_seq.get(
                    (key.channel, key.exchange, key.symbol), 0))
        if len(readable) == len(infos) and self._history_error is not None:
            self._history_error = None
            self._check_health()
        self._written_rows += rows
        self._written_files += files
        if rows or events:
            self._bounds = None
        return FlushResult(len(readable), rows, files, size, events, skipped,
                           time.monotonic() - started)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=WRITE_THREADS,
                                                thread_name_prefix="flight-md-parquet")
        return self._executor

    def _write_key(self, job: tuple[JournalKey, pa.Table]) -> list[WrittenFile]:
        key, table = job
        writer = getattr(self._writers, "writer", None)
        if writer is None:
            assert self.root is not None
            writer = self._writers.writer = HistoryWriter(self.root)
        written: list[WrittenFile] = writer.write(
            key.channel, key.exchange, key.symbol,
            _with_constants(table, key.channel, key.exchange, key.symbol))
        return written

    def _unwritten(self, channel: str, exchange: str, symbol: str,
                   table: pa.Table) -> tuple[pa.Table, int]:
        """The rows of ``table`` the history does not hold yet (by sequence number)."""
        first = self._history_seq.get((channel, exchange, symbol))
        if first is None or table.num_rows == 0:
            return table, 0
        seq = table.column(SEQUENCE).to_numpy()
        keep = seq >= first
        if keep.all():
            return table, 0
        return table.filter(pa.array(keep)), int((~keep).sum())

    def _release_if_degraded(self) -> None:
        """While the disk refuses writes, rings keep the rows they evicted (queries still
        read them) up to :data:`HOLD_LIMIT_ROWS` in all; beyond, they let them go (in the
        journal, they reach the history when the disk comes back), so memory stays bounded."""
        if self._state is not PersistState.DEGRADED or self.held_rows() <= HOLD_LIMIT_ROWS:
            return
        if not self._released_unsaved:
            log.warning("persistence degraded for long: the rings stop holding evicted rows "
                        "(range queries miss them until the history is written)")
        self._released_unsaved += 1
        for buffer in self._buffers():
            for stats in buffer.stats():
                buffer.release(stats.exchange, stats.symbol, stats.appended)

    def held_rows(self) -> int:
        """Rows every ring evicted but holds until they reach the history."""
        return sum(buffer.held_rows() for buffer in self._buffers())

    def _retention(self) -> None:
        assert self.root is not None
        self._last_retention = time.monotonic()
        try:
            result = apply_retention(self.root, self.config.retention)
        except (OSError, FlightMdError) as exc:
            log.warning("retention pass failed: %s", exc)
            return
        self._retention_removed += len(result.removed)
        if result.removed:
            self._bounds = None
        if result.removed:
            log.info("retention removed %d partitions (%d bytes)", len(result.removed),
                     result.removed_bytes)

    def _on_quarantine(self, item: Quarantined) -> None:
        log.warning("quarantined %s: %s", item.path, item.reason)
        self.events.record("*", EventKind.QUARANTINED, (),
                           f"corrupt history file moved to quarantine: {item.path} ({item.reason})")

    # -- run-time subscriptions ---------------------------------------------------------------

    def run_time_subscriptions(self) -> dict[str, dict[str, list[str]]]:
        """What ``subscribe``/``unsubscribe`` changed before the restart, per exchange:
        ``{"added": [...], "removed": [...]}`` relative to the configured symbols."""
        assert self.data_dir is not None
        path = self.data_dir.path / SUBSCRIPTIONS_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return {}
        out: dict[str, dict[str, list[str]]] = {}
        if isinstance(data, dict):
            for exchange, change in data.items():
                if isinstance(change, dict):
                    out[str(exchange)] = {k: [str(s) for s in change.get(k, [])
                                              if isinstance(s, str)]
                                          for k in ("added", "removed")}
        return out

    def note_subscription(self, exchange: str, symbols: list[str] | tuple[str, ...],
                          subscribed: bool) -> None:
        """Record a run-time ``subscribe`` (or ``unsubscribe``) so a restart repeats it."""
        if self.data_dir is None:
            return
        current = self.run_time_subscriptions()
        change = current.setdefault(exchange, {"added": [], "removed": []})
        add, remove = ("added", "removed") if subscribed else ("removed", "added")
        for symbol in symbols:
            if symbol in change[remove]:
                change[remove].remove(symbol)
            elif symbol not in change[add]:
                change[add].append(symbol)
        try:
            write_atomic(self.data_dir.path / SUBSCRIPTIONS_FILE,
                         json.dumps(current, indent=1, sort_keys=True).encode())
        except OSError as exc:
            log.warning("cannot record the run-time subscription in %s: %s",
                        self.data_dir.path, exc)

    # -- status ------------------------------------------------------------------------------

    def history_bounds(self) -> list[SeriesBounds]:
        """What the history holds per (channel, exchange, symbol).

        Listing every partition of a month of history takes a while, and clients poll
        ``status``: the answer is kept for :data:`BOUNDS_TTL_S` seconds, or until a flush or
        a retention pass changes the history.
        """
        assert self.reader is not None
        cached = self._bounds
        if cached is not None and time.monotonic() - cached[0] < BOUNDS_TTL_S:
            return cached[1]
        bounds = self.reader.all_bounds()
        self._bounds = (time.monotonic(), bounds)
        return bounds

    def status(self) -> dict[str, Any]:
        """The ``persistence`` part of the ``status`` action's result."""
        if self.journal is None or self.data_dir is None:
            return {"state": PersistState.CLOSED.value}
        journal = self.journal.stats()
        try:
            bounds = self.history_bounds()
        except (OSError, FlightMdError) as exc:
            bounds = []
            self._last_error = f"{type(exc).__name__}: {exc}"
        return {
            "state": self._state.value,
            "last_error": self._last_error if self._state is PersistState.DEGRADED else None,
            "data_dir": str(self.data_dir.path),
            "history": self.config.history_uri or str(self.data_dir.path / "history"),
            "fsync": self.config.fsync.value,
            "commit_interval_s": self.config.commit_interval,
            "seal_interval_s": self.config.seal_interval,
            "journal": {"committed_rows": journal.committed_rows, "pending_rows":
                        journal.pending_rows, "commits": journal.commits, "bytes_written":
                        journal.bytes_written, "write_errors": journal.write_errors,
                        "dropped_rows": journal.dropped_rows, "segment": journal.segment},
            "held_rows": self.held_rows(),
            "history_rows_written": self._written_rows,
            "history_files_written": self._written_files,
            "flushes": self._flushes,
            "quarantined_files": self.root.quarantine_count if self.root else 0,
            "retention": {"max_age_days": None if self.config.retention.max_age is None else
                          self.config.retention.max_age.total_seconds() / 86400,
                          "max_bytes": self.config.retention.max_bytes,
                          "partitions_removed": self._retention_removed},
            "recovery": self.recovery,
            "series": [{"channel": b.key.channel, "exchange": b.key.exchange,
                        "symbol": b.key.symbol, "rows": b.rows, "bytes": b.bytes,
                        "files": b.files, "oldest_ms": b.oldest_ms, "newest_ms": b.newest_ms}
                       for b in bounds],
        }

    # -- stop --------------------------------------------------------------------------------

    def close(self) -> FlushResult:
        """Clean stop: journal everything stored, move it into the history, release the lock.

        Call after ingestion stopped. What cannot be written now (a full disk) stays in the
        journal for the next start.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_BUDGET_S)
            self._thread = None
        result = _NOTHING
        if self.journal is not None:
            try:
                result = self.flush()
            except Exception:
                log.exception("final move into the history failed; the journal keeps the rows")
            with self._seal_lock:
                self.events.sink = None
                self.journal.close()
                self.journal = None
        self._state = PersistState.CLOSED
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self.data_dir is not None:
            self.data_dir.close()
            self.data_dir = None
        return result

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _with_constants(table: pa.Table, channel: str, exchange: str, symbol: str) -> pa.Table:
    """Journal rows in the history's columns: ``symbol`` and ``exchange`` added."""
    n = table.num_rows
    columns = {name: table.column(name) for name in table.column_names}
    columns["symbol"] = pa.chunked_array([pa.repeat(pa.scalar(symbol, pa.string()), n)])
    columns["exchange"] = pa.chunked_array([pa.repeat(pa.scalar(exchange, pa.string()), n)])
    try:
        schema = history_schema(spec_for(channel).schema)
    except ValueError:  # a channel this version does not know: its rows as journalled
        schema = pa.schema([*(pa.field(n, t) for n, t in (("symbol", pa.string()),
                                                          ("exchange", pa.string()))),
                            *table.schema])
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def _numeric(buffer: MarketDataBuffer, table: pa.Table) -> pa.Table:
    """History or journal rows as ``buffer``'s rings store them, with their sequence numbers."""
    return table.select([*buffer.spec.stored.names, SEQUENCE])


def _sorted_by_sequence(table: pa.Table) -> pa.Table:
    """History rows (sorted by timestamp) back in arrival order, for a ring."""
    if SEQUENCE not in table.column_names or table.num_rows < 2:
        return table
    return table.sort_by(SEQUENCE)

"""The tick store: one bounded, append-only Arrow ring per (exchange, symbol).

Design (pure and synchronous; the async methods are thin facades the original API asks for):

* A writer appends a tick's ten numbers to a flat *pending* ``array('d')`` (NaN for a
  missing value): 80 bytes a row, where a list or tuple of Python floats takes ~320.
* Pending rows are *sealed* into an immutable Arrow record batch (a segment) once, either
  when :data:`SEAL_ROWS` are pending or when a reader needs rows that are still pending.
  Each row is converted to Arrow once; reads only slice segments, they never copy stored
  history.
* Small segments (sealed early for a reader) are compacted into one when they pile up. The
  compacted segment replaces them in the ring; readers that hold the small ones keep them.
* Columnar writers: :meth:`MarketDataBuffer.append_batch` appends a record batch (it joins
  the small segments, under the same compaction and sealing rules), and
  :meth:`MarketDataBuffer.run_appender` appends a ring's rows of an ingestion process's
  hand-off message (:class:`HandOff`): their floats join the pending rows in one copy, and
  while the ring is read live the child's Arrow slice of them is kept beside them
  (``pieces``), so that a live tail or a ``latest`` read slices it and nothing converts rows
  under the lock. No path does work per row.
* Eviction is logical: the ring keeps the newest ``capacity`` rows (by a sequence number)
  and drops a segment once every row in it is older. So a table a reader holds is never
  mutated afterwards, however the ring wraps or is cleared.
* ``symbol`` and ``exchange`` are constant per ring and are not stored per row: reads
  materialise them as constant columns for the rows read, so memory stays ~81 bytes a tick.
  Constant columns are cached per value at the longest length served (within a byte budget)
  and sliced for shorter reads.
* Arrow buffers the store allocates come from the system allocator (:data:`MEMORY_POOL`):
  pyarrow's default mimalloc pool keeps ~16 bytes per stored tick of slack as segments are
  merged and evicted.

Threads: ingestion appends from one asyncio thread; Flight handlers read from many gRPC
threads. Every ring has one short lock around structural changes (append, seal, evict,
clear) and around taking a snapshot of its segment list; slicing and Table assembly happen
on the snapshot, outside the lock.
"""

from __future__ import annotations

import asyncio
import math
import threading
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa

from flight_md.core.channels import (
    CHANNELS,
    DEFAULT_BOOK_DEPTH,
    TICKER_LIKE,
    ChannelSpec,
    book_row,
    spec_for,
    trade_row,
)
from flight_md.errors import AmbiguousExchange, SlowConsumer, UnknownExchange, UnknownSymbol
from flight_md.schema import MarketTick, now_ms

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "MEMORY_POOL",
    "BufferStats",
    "Follower",
    "HandOff",
    "MarketDataBuffer",
    "Store",
    "ambiguous_exchange",
]

DEFAULT_BUFFER_SIZE: Final = 10_000
SEAL_ROWS: Final = 256
"""Pending rows that make the writer seal a segment without waiting for a reader."""
MERGE_ROWS: Final = 8192
"""Largest merged segment: a 1,000,000-tick ring holds ~120 segments, not ~500."""
COMPACT_SEGMENTS: Final = 8
"""Small trailing segments that trigger a compaction into one."""
FRESH_BATCHES: Final = 64
"""Appended batches (:meth:`MarketDataBuffer.append_batch`) a ring holds as they are before
it compacts them without waiting for a reader: a reader compacts beyond
:data:`COMPACT_SEGMENTS` (it needs few pieces); a writer alone compacts less often (each
compaction is a copy and a concatenation), and this bounds how many hand-off messages one
ring's unsealed rows keep in memory."""
CONSTANT_CACHE_BYTES: Final = 32 * 1024 * 1024
"""Budget of the cache of constant ``symbol``/``exchange`` columns (least recently used go)."""
MEMORY_POOL: Final = pa.system_memory_pool()
"""The Arrow memory pool of stored segments (the system allocator: least slack)."""
NAN: Final = math.nan
_TS: Final = 0  # every channel's first stored column is its exchange timestamp


@dataclass(frozen=True, slots=True)
class BufferStats:
    """What one ring holds and has seen.

    Attributes:
        exchange: ccxt exchange id.
        symbol: Unified symbol.
        stored: Ticks currently held (at most the capacity).
        appended: Ticks appended since the ring was created (evicted and cleared included).
        last_timestamp: Exchange timestamp of the newest stored tick, Unix ms, or ``None``.
        last_receive_timestamp: Local receive time of the newest stored tick, or ``None``.
        followers: Live tails currently open on the ring.
    """

    exchange: str
    symbol: str
    stored: int
    appended: int
    last_timestamp: int | None
    last_receive_timestamp: int | None
    followers: int = 0

    def age_ms(self, now: int | None = None) -> int | None:
        """Milliseconds since the newest stored tick was received, or ``None``."""
        if self.last_receive_timestamp is None:
            return None
        return max(0, (now_ms() if now is None else now) - self.last_receive_timestamp)


class _Segment:
    """An immutable run of sealed rows with the sequence number of its first row."""

    __slots__ = ("batch", "first_seq", "max_ts", "min_ts", "ordered", "ts")

    def __init__(self, batch: pa.RecordBatch, first_seq: int) -> None:
        self.batch = batch
        self.first_seq = first_seq
        ts = batch.column(_TS).to_numpy(zero_copy_only=True)
        self.ts = ts
        if len(ts):
            self.min_ts = int(ts.min())
            self.max_ts = int(ts.max())
            self.ordered = bool(len(ts) < 2 or (np.diff(ts) >= 0).all())
        else:
            self.min_ts = self.max_ts = 0
            self.ordered = True

    @property
    def end_seq(self) -> int:
        return self.first_seq + int(self.batch.num_rows)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return pa.concat_batches(batches, memory_pool=MEMORY_POOL)


_CLOSE_WAIT_S: Final = 0.05
"""How long :meth:`Follower.close` waits for its ring's lock before leaving the close to the ring."""


class _Tails:
    """How many live tails are open on one buffer (the hand-off asks for Arrow pieces only
    while some are)."""

    __slots__ = ("_lock", "open")

    def __init__(self) -> None:
        self.open = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.open += n


class HandOff:
    """One hand-off message of an ingestion process: rows of several rings of one channel,
    sorted by ring, in two forms built by the child: the pending layout's float64 values
    (``width`` a row, see :mod:`flight_md.core.channels`) and the same rows as one Arrow IPC
    record batch in the channel's stored schema, decoded only if a ring is read live.

    Args:
        floats: The rows' float64 values, row after row.
        ids: Trades: the rows' ids; otherwise ``None``.
        ipc: The rows as one serialized record batch (``RecordBatch.serialize``), or
            ``None`` when the child sent none (nothing tails the channel).
        spec: The channel's spec.
    """

    __slots__ = ("_batch", "floats", "ids", "ipc", "spec")

    def __init__(self, floats: bytes, ids: list[str | None] | None, ipc: bytes | None,
                 spec: ChannelSpec) -> None:
        self.floats = memoryview(floats).cast("B")
        self.ids = ids
        self.ipc = ipc
        self.spec = spec
        self._batch: pa.RecordBatch | None = None

    def batch(self) -> pa.RecordBatch:
        """Every row as one record batch (decoded once, zero copy)."""
        if self._batch is None:
            assert self.ipc is not None
            self._batch = pa.ipc.read_record_batch(pa.py_buffer(self.ipc), self.spec.stored)
        return self._batch

    def row(self, index: int) -> Sequence[float]:
        """Row ``index``'s float values."""
        width = self.spec.width
        return self.floats[index * width * 8:(index + 1) * width * 8].cast("d")


class _ConstantCache:
    """Constant string columns by value, each at the longest length asked for so far.

    Shorter requests get zero-copy slices. The least recently used values go once the
    cache holds more than ``budget`` bytes; a column a reader holds stays valid regardless.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._columns: OrderedDict[bytes, pa.Array] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, value: bytes, length: int) -> pa.Array:
        with self._lock:
            column = self._columns.get(value)
            if column is not None and len(column) >= length:
                self._columns.move_to_end(value)
                return column if len(column) == length else column.slice(0, length)
        built = _constant_strings(value, length)
        with self._lock:
            old = self._columns.pop(value, None)
            if old is not None and len(old) > length:  # another thread built a longer one
                self._columns[value] = old
                return old.slice(0, length)
            if old is not None:
                self.size -= old.nbytes
            self._columns[value] = built
            self.size += built.nbytes
            while self.size > self.budget and len(self._columns) > 1:
                _, dropped = self._columns.popitem(last=False)
                self.size -= dropped.nbytes
        return built


def _timestamps(row: Sequence[float] | _LastOf | None) -> tuple[int | None, int | None]:
    return (None, None) if row is None else (int(row[0]), int(row[-1]))


class _LastOf:
    """The newest row of an appended batch or hand-off run, read only when stats ask
    (``row[0]``, ``row[-1]``: its exchange and receive timestamps), so that an append does
    no per-row work."""

    __slots__ = ("at", "of")

    def __init__(self, of: pa.RecordBatch | HandOff, at: int = -1) -> None:
        self.of = of
        self.at = at

    def __getitem__(self, index: int) -> float:
        of = self.of
        if isinstance(of, HandOff):
            return of.row(self.at)[index]
        return float(of.column(_TS if index == 0 else of.num_columns - 1)[self.at].as_py())


def _slice_into(out: list[pa.RecordBatch], batch: pa.RecordBatch, first: int, first_seq: int,
                end_seq: int) -> None:
    """Append the part of ``batch`` (rows from sequence ``first``) within
    ``[first_seq, end_seq)``; the caller checked that they overlap."""
    lo = max(first_seq - first, 0)
    hi = min(end_seq - first, batch.num_rows)
    out.append(batch if (lo == 0 and hi == batch.num_rows) else batch.slice(lo, hi - lo))


def _with_sequence(batches: list[pa.RecordBatch], first: int,
                   schema: pa.Schema) -> list[pa.RecordBatch]:
    """``batches`` (consecutive rows from sequence number ``first``) in ``schema``: theirs
    and a last column holding their rows' sequence numbers."""
    out = []
    for batch in batches:
        n = batch.num_rows
        seq = pa.array(np.arange(first, first + n, dtype=np.int64), memory_pool=MEMORY_POOL)
        out.append(pa.RecordBatch.from_arrays([*batch.columns, seq],
                                              schema=schema))
        first += n
    return out


def _constant_strings(value: bytes, length: int) -> pa.Array:
    """A string column repeating ``value`` (built from two buffers, no per-row Python)."""
    offsets = np.arange(length + 1, dtype=np.int32) * len(value)
    return pa.Array.from_buffers(pa.string(), length,
                                 [None, pa.py_buffer(offsets), pa.py_buffer(value * length)])


_CONSTANTS: Final = _ConstantCache(CONSTANT_CACHE_BYTES)


class _Ring:
    """The bounded store of one (exchange, symbol).

    Rows live in three places, oldest first: ``segments`` (sealed batches of ``seal_rows``
    rows), ``fresh`` (small batches a reader sealed early, at most :data:`COMPACT_SEGMENTS`)
    and ``pending`` (``pending_rows`` rows of :data:`ROW_WIDTH` numbers each, not yet
    converted). When fresh plus pending reach ``seal_rows`` the writer folds them into one
    segment.
    """

    def __init__(self, exchange: str, symbol: str, capacity: int, spec: ChannelSpec) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.capacity = capacity
        self.spec = spec
        self.stored_schema = spec.stored
        self.empty = [spec.empty()]
        self._symbol_field = spec.schema.field("symbol")
        self._exchange_field = spec.schema.field("exchange")
        self._symbol_index = spec.schema.get_field_index("symbol")
        self._exchange_index = spec.schema.get_field_index("exchange")
        self.seal_rows = max(1, min(SEAL_ROWS, capacity // 4))
        # Sealed segments merge up to this size: fewer Arrow objects per stored tick, and
        # for large rings a bounded trailing run (at most MERGE_ROWS / seal_rows segments).
        self.merge_rows = max(self.seal_rows, min(capacity // 8, MERGE_ROWS))
        self.run = 0  # trailing segments not merged yet
        self.run_rows = 0  # rows in them
        self._exchange_bytes = exchange.encode()
        self._symbol_bytes = symbol.encode()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.segments: deque[_Segment] = deque()
        self.fresh: list[pa.RecordBatch] = []
        self.fresh_rows = 0
        self.pending: array[float] = array("d")
        self.pending_ids: list[str | None] = []  # trades: the ids of the pending rows
        self.pending_rows = 0
        self.next_seq = 0  # sequence number of the next appended row
        self.start_seq = 0  # oldest retained row
        self.sealed_seq = 0  # rows below this are in segments
        self.last_row: Sequence[float] | _LastOf | None = None  # the newest row (for stats)
        self.fresh_foreign = False  # fresh holds a batch given by append_batch (see _seal)
        # The newest pending rows as Arrow slices of hand-off messages (append_run), kept
        # while the ring is read live (followers, or a reader since the last seal).
        self.pieces: list[pa.RecordBatch] = []
        self.piece_rows = 0
        self.live = False
        self.followers: set[Follower] = set()
        self.closing: list[Follower] = []  # closed without the lock (Follower.close)
        self.waiting = 0
        # Persistence (see MarketDataBuffer.persisting): rows below journal_seq were handed to
        # the journal; rows below history_seq are in the Parquet history. Eviction frees no
        # row at or above history_seq, so a query can read the rows between the history's
        # end and the ring's start from here. None: not persisting.
        self.journal_seq: int | None = None
        self.history_seq: int | None = None
        self.cleared: list[tuple[int, list[pa.RecordBatch]]] = []  # unjournalled, then cleared

    # -- writer side (caller holds the lock) ---------------------------------------------

    def append_row(self, row: Sequence[float]) -> None:
        """Append one valid row (one method call: this is the hot path)."""
        if self.pieces:  # they must cover the newest pending rows: this one has none
            self.pieces = []
            self.piece_rows = 0
        self.pending.extend(row)
        self.pending_rows += 1
        self.next_seq += 1
        if self.next_seq - self.start_seq > self.capacity:
            self.start_seq = self.next_seq - self.capacity  # logical eviction (see _evict)
        if self.fresh_rows + self.pending_rows >= self.seal_rows:
            self._seal()
        self.last_row = row
        if self.waiting:
            self.changed.notify_all()

    def append_id_row(self, row: Sequence[float], row_id: str | None) -> None:
        """Append one valid row whose id travels beside its floats (a trade)."""
        self.pending_ids.append(row_id)
        self.append_row(row)

    def append_batch(self, batch: pa.RecordBatch) -> None:
        """Append a valid, non-empty batch in :attr:`stored_schema` (a columnar hand-off).

        The batch joins ``fresh`` as it is (no per-row work); the fresh and compaction rules
        that fold readers' early seals fold these too, so a stream of small batches becomes
        ``seal_rows`` segments, not one segment per batch. Rows still pending (from
        :meth:`append_row` on the same ring) are converted first, so that order holds.
        """
        rows = batch.num_rows
        if self.pending_rows:
            self._freshen()
        self.fresh.append(batch)
        self.fresh_rows += rows
        self.fresh_foreign = True
        self.next_seq += rows
        if self.next_seq - self.start_seq > self.capacity:
            self.start_seq = self.next_seq - self.capacity  # logical eviction (see _evict)
        if self.fresh_rows >= self.seal_rows:
            self._seal()
        elif len(self.fresh) >= FRESH_BATCHES:
            self._compact_fresh()
        self.last_row = _LastOf(batch)
        if self.waiting:
            self.changed.notify_all()

    def _compact_fresh(self) -> None:
        self.fresh = [_concat(self.fresh)]
        self.fresh_foreign = False

    def append_run(self, run: HandOff, first: int, rows: int) -> None:
        """Append rows ``[first, first + rows)`` of a hand-off message (a copy of their
        floats into ``pending``; no per-row work). While the ring is read live, the Arrow
        slice of those rows is kept beside them (``pieces``), so that readers slice it instead
        of converting pending rows under the lock."""
        width = self.spec.width
        self.pending.frombytes(run.floats[first * width * 8:(first + rows) * width * 8])
        if run.ids is not None:
            self.pending_ids += run.ids[first:first + rows]
        if self.live and run.ipc is not None and len(self.pieces) < FRESH_BATCHES:
            self.pieces.append(run.batch().slice(first, rows))
            self.piece_rows += rows
        elif self.pieces:  # no longer read live, or holding many messages: a reader converts
            self.pieces = []
            self.piece_rows = 0
        self.pending_rows += rows
        self.next_seq += rows
        if self.next_seq - self.start_seq > self.capacity:
            self.start_seq = self.next_seq - self.capacity  # logical eviction (see _evict)
        if self.fresh_rows + self.pending_rows >= self.seal_rows:
            self._seal()
        self.last_row = _LastOf(run, first + rows - 1)
        if self.waiting:
            self.changed.notify_all()

    def _pieces_cover(self, seq: int) -> bool:
        """Whether the pieces hold the rows from ``seq`` on (``seq < next_seq``), in fewer
        than :data:`COMPACT_SEGMENTS` pieces (a reader needs few)."""
        if seq < self.next_seq - self.piece_rows:
            return False
        end = self.next_seq
        for count, piece in enumerate(reversed(self.pieces), 1):
            end -= piece.num_rows
            if end <= seq:
                return count < COMPACT_SEGMENTS
        return False

    def _sealed_pending(self) -> pa.RecordBatch:
        batch = self.spec.seal(self.pending, self.pending_rows, self.pending_ids)
        self.pending = array("d")
        self.pending_ids = []
        self.pending_rows = 0
        if self.pieces:
            self.pieces = []
            self.piece_rows = 0
        return batch

    def _seal(self) -> None:
        parts = self.fresh
        if self.pending_rows:
            parts = [*parts, self._sealed_pending()]
        # One batch given by append_batch is copied too: it may be a slice of a larger
        # hand-off message, which a segment kept as is would hold in memory whole.
        batch = parts[0] if len(parts) == 1 and not self.fresh_foreign else _concat(parts)
        self.segments.append(_Segment(batch, self.sealed_seq))
        self.sealed_seq += batch.num_rows
        self.fresh = []
        self.fresh_rows = 0
        self.fresh_foreign = False
        self.drop_closed()
        self.live = bool(self.followers)  # a reader that comes back arms it again
        if batch.num_rows >= self.merge_rows:
            self.run = self.run_rows = 0  # large enough alone (a large appended batch)
        else:
            self.run += 1
            self.run_rows += batch.num_rows
        # By rows, not segments: appended batches make segments of seal_rows or more.
        if self.run > 1 and self.run_rows >= self.merge_rows:
            merged = [self.segments.pop() for _ in range(min(self.run, len(self.segments)))]
            merged.reverse()
            self.segments.append(_Segment(_concat([m.batch for m in merged]),
                                          merged[0].first_seq))
            self.run = self.run_rows = 0
        self._evict()

    def _evict(self) -> None:
        """Free rows that fell out of the window (``start_seq``); runs at each seal.

        Whole segments are dropped. A merged segment the window cuts through is trimmed
        (its live rows copied) once ``seal_rows`` of it are dead, so evicted rows never
        hold more than ``seal_rows`` rows of memory per ring: without this a ring kept
        half a merged segment (~``capacity // 16`` rows) of dead rows on average. Unsealed
        rows are fewer than ``seal_rows <= capacity / 4``, so they are never evicted.
        """
        segments = self.segments
        start = self.start_seq if self.history_seq is None else min(self.start_seq,
                                                                   self.history_seq)
        while segments and segments[0].end_seq <= start:
            segments.popleft()
        if segments and start - segments[0].first_seq >= self.seal_rows:
            head = segments[0]  # a merged segment: an unmerged one has seal_rows rows
            segments[0] = _Segment(_concat([head.batch.slice(start - head.first_seq)]), start)

    def _freshen(self) -> None:
        """Convert pending rows so a reader can see them (each row converts once), and
        compact the unsealed batches once they are many (appended batches pile up to
        :data:`FRESH_BATCHES` before a writer compacts them)."""
        if self.pending_rows:
            self.fresh_rows += self.pending_rows
            self.fresh.append(self._sealed_pending())
        if len(self.fresh) >= COMPACT_SEGMENTS:
            self._compact_fresh()

    # -- reader side (caller holds the lock) ---------------------------------------------

    def _all_segments(self) -> list[_Segment]:
        self._freshen()
        out = list(self.segments)
        seq = self.sealed_seq
        for batch in self.fresh:
            out.append(_Segment(batch, seq))
            seq += batch.num_rows
        return out

    def snapshot(self, first_seq: int, end_seq: int, live: bool = True) -> list[pa.RecordBatch]:
        """Immutable slices covering rows ``[first_seq, end_seq)``.

        Walks from the newest piece back, so that a tail or a ``latest`` read costs the
        pieces it reads, not every segment of a large ring. ``live``: a reader of the newest
        rows (not the journal), which makes the ring keep hand-off pieces (``append_run``).
        """
        pending_seq = self.sealed_seq + self.fresh_rows  # the first pending row
        if end_seq > pending_seq and self.pending_rows and not self._pieces_cover(
                max(first_seq, pending_seq)):
            # Pending rows without (few enough) Arrow pieces: convert them, and from now on
            # keep the pieces of hand-off runs, so that the next read only slices.
            self.live = self.live or live
            self._freshen()
            pending_seq = self.sealed_seq + self.fresh_rows
        elif end_seq > self.sealed_seq and len(self.fresh) >= COMPACT_SEGMENTS:
            self._compact_fresh()
        out: list[pa.RecordBatch] = []
        end = self.next_seq
        for piece in reversed(self.pieces):  # the newest pending rows, as the child built them
            first = end - piece.num_rows
            if first < end_seq and end > first_seq:
                _slice_into(out, piece, first, first_seq, end_seq)
            end = first
            if end <= first_seq:
                out.reverse()
                return out
        end = pending_seq  # pending rows without pieces are outside the range (see above)
        for batch in reversed(self.fresh):
            first = end - batch.num_rows
            if first < end_seq and end > first_seq:
                _slice_into(out, batch, first, first_seq, end_seq)
            end = first
            if end <= first_seq:
                break
        if end > first_seq:
            for segment in reversed(self.segments):
                first = segment.first_seq
                if first < end_seq:
                    _slice_into(out, segment.batch, first, first_seq, end_seq)
                if first <= first_seq:
                    break
        out.reverse()
        return out

    def segments_between(self, start_ms: int | None, end_ms: int | None) -> list[pa.RecordBatch]:
        """Rows with ``start_ms <= timestamp < end_ms`` in arrival order."""
        out: list[pa.RecordBatch] = []
        lo_ms = -(2**63) if start_ms is None else start_ms
        hi_ms = 2**63 - 1 if end_ms is None else end_ms
        for segment in self._all_segments():
            skip = max(self.start_seq - segment.first_seq, 0)
            if segment.max_ts < lo_ms or segment.min_ts >= hi_ms or skip >= segment.batch.num_rows:
                continue
            if skip == 0 and lo_ms <= segment.min_ts and segment.max_ts < hi_ms:
                out.append(segment.batch)  # entirely inside the range: no search
            elif segment.ordered:
                ts = segment.ts
                a = max(int(np.searchsorted(ts, lo_ms, side="left")), skip)
                b = int(np.searchsorted(ts, hi_ms, side="left"))
                if b > a:
                    out.append(segment.batch.slice(a, b - a))
            else:
                ts = segment.ts[skip:]
                mask = (ts >= lo_ms) & (ts < hi_ms)
                if mask.all():
                    out.append(segment.batch.slice(skip))
                elif mask.any():
                    # Out-of-order exchange timestamps: only these rows are filtered (copied).
                    out.append(segment.batch.slice(skip).filter(pa.array(mask)))
        return out

    def table(self, batches: Sequence[pa.RecordBatch], columns: Sequence[str] | None) -> pa.Table:
        """Assemble a table in the channel's schema (or its projection) from stored batches."""
        numeric = pa.Table.from_batches(batches or self.empty, schema=self.stored_schema)
        symbol, exchange = self._constant_columns(numeric.num_rows)
        if columns is None:
            first, second = sorted([(self._symbol_index, self._symbol_field, symbol),
                                    (self._exchange_index, self._exchange_field, exchange)],
                                   key=lambda item: item[0])
            return numeric.add_column(first[0], first[1], first[2]).add_column(
                second[0], second[1], second[2])
        table = numeric.select([c for c in columns if c not in ("symbol", "exchange")])
        for index, name in enumerate(columns):
            if name == "symbol":
                table = table.add_column(index, self._symbol_field, symbol)
            elif name == "exchange":
                table = table.add_column(index, self._exchange_field, exchange)
        return table

    def _constant_columns(self, n: int) -> tuple[pa.Array, pa.Array]:
        """Symbol and exchange columns of length ``n`` (cached, immutable)."""
        return _CONSTANTS.get(self._symbol_bytes, n), _CONSTANTS.get(self._exchange_bytes, n)

    def drop_closed(self) -> None:
        """Forget the followers closed while the lock was held elsewhere (caller holds it)."""
        while self.closing:
            self.followers.discard(self.closing.pop())

    def stats(self) -> BufferStats:
        self.drop_closed()
        return BufferStats(self.exchange, self.symbol, self.next_seq - self.start_seq,
                           self.next_seq, *_timestamps(self.last_row),
                           len(self.followers))

    def clear(self) -> None:
        """Drop every row. Live tails skip to the present.

        When persisting, rows not yet handed to the journal are kept aside for it (a clear
        empties the ring, not the history), and the history seam moves to the present.
        """
        if self.journal_seq is not None and self.journal_seq < self.next_seq:
            self.cleared.append((self.journal_seq, self.snapshot(self.journal_seq,
                                                                 self.next_seq, live=False)))
            self.journal_seq = self.next_seq
        if self.history_seq is not None:
            self.history_seq = self.next_seq
        self.segments = deque()
        self.fresh = []
        self.fresh_rows = 0
        self.fresh_foreign = False
        self.pending = array("d")
        self.pending_ids = []
        self.pending_rows = 0
        self.pieces = []
        self.piece_rows = 0
        self.run = self.run_rows = 0
        self.start_seq = self.sealed_seq = self.next_seq
        self.last_row = None
        for follower in self.followers:
            follower.cursor = max(follower.cursor, self.next_seq)
        self.changed.notify_all()


    # -- persistence (caller holds the lock) ---------------------------------------------

    def take_unjournalled(self) -> list[tuple[int, list[pa.RecordBatch]]]:
        """Rows not handed to the journal yet, as ``(first_seq, batches)`` runs, oldest
        first; they count as handed from now on."""
        assert self.journal_seq is not None
        out, self.cleared = self.cleared, []
        if self.journal_seq < self.next_seq:
            out.append((self.journal_seq, self.snapshot(self.journal_seq, self.next_seq,
                                                        live=False)))
            self.journal_seq = self.next_seq
        return out

    def rows_from(self, first_seq: int, start_ms: int | None,
                  end_ms: int | None) -> list[pa.RecordBatch]:
        """Rows with sequence numbers from ``first_seq`` (evicted but still held ones
        included) and ``start_ms <= timestamp < end_ms``, in arrival order."""
        first_seq = max(first_seq, self.segments[0].first_seq if self.segments else first_seq)
        batches = self.snapshot(first_seq, self.next_seq) if first_seq < self.next_seq else []
        if start_ms is None and end_ms is None:
            return batches
        lo = -(2**63) if start_ms is None else start_ms
        hi = 2**63 - 1 if end_ms is None else end_ms
        out = []
        for batch in batches:
            ts = batch.column(_TS).to_numpy(zero_copy_only=True)
            mask = (ts >= lo) & (ts < hi)
            if mask.all():
                out.append(batch)
            elif mask.any():
                out.append(batch.filter(pa.array(mask)))
        return out


class Follower:
    """A cursor into one ring that returns the rows appended since its last read.

    Created by :meth:`MarketDataBuffer.follow`. The bounded queue of a live tail is the
    ring itself: the follower holds only a sequence number. If it falls more than
    ``max_lag`` rows behind (or behind eviction), :meth:`read` raises
    :class:`~flight_md.errors.SlowConsumer` instead of silently skipping ticks.
    """

    def __init__(self, ring: _Ring, cursor: int, max_lag: int,
                 columns: Sequence[str] | None) -> None:
        self._ring = ring
        self.cursor = cursor
        self.max_lag = max_lag
        self._columns = columns
        self.closed = False
        self._tails: _Tails | None = None

    @property
    def exchange(self) -> str:
        return self._ring.exchange

    @property
    def symbol(self) -> str:
        return self._ring.symbol

    def read(self, timeout: float, max_rows: int = 4096) -> pa.Table | None:
        """Wait up to ``timeout`` seconds for new rows and return them, or ``None``.

        Raises:
            SlowConsumer: The follower fell more than ``max_lag`` rows behind.
        """
        ring = self._ring
        with ring.lock:
            if ring.next_seq <= self.cursor and timeout > 0 and not self.closed:
                ring.waiting += 1
                try:
                    ring.changed.wait(timeout)
                finally:
                    ring.waiting -= 1
            if self.closed or ring.next_seq <= self.cursor:
                return None
            lag = ring.next_seq - self.cursor
            if lag > self.max_lag or self.cursor < ring.start_seq:
                raise SlowConsumer(
                    f"live tail of {ring.symbol!r} on {ring.exchange} fell {lag} ticks behind "
                    f"(limit {self.max_lag}); read faster or resume with a new request")
            end = min(ring.next_seq, self.cursor + max_rows)
            batches = ring.snapshot(self.cursor, end)
            self.cursor = end
        return ring.table(batches, self._columns)

    def close(self) -> None:
        """Stop following; a pending :meth:`read` returns ``None`` promptly.

        Never waits long for the ring's lock. A Flight tail abandoned by its client is closed
        by its generator's ``finally`` when the garbage collector finds it, and that can run
        on any thread that allocates, including one holding this very ring's lock (the
        journal sealing the ring, the hand-off appending to it): waiting there deadlocks that
        thread and every reader of the ring. A close that cannot take the lock at once is
        left to the ring, which drops closed followers the next time it seals or reports
        (:meth:`_Ring.drop_closed`); the follower reads nothing more either way.
        """
        ring = self._ring
        if not ring.lock.acquire(timeout=_CLOSE_WAIT_S):
            was_open = not self.closed
            self.closed = True
            ring.closing.append(self)  # list.append is atomic: no lock needed
        else:
            try:
                was_open = not self.closed
                self.closed = True
                ring.followers.discard(self)
                ring.changed.notify_all()
            finally:
                ring.lock.release()
        if was_open and self._tails is not None:
            self._tails.add(-1)


class MarketDataBuffer:
    """Bounded in-memory Arrow store of one channel, one ring per (exchange, symbol).

    Args:
        buffer_size: Capacity of each ring in rows; the oldest rows are evicted first.
        channel: What the rings hold (:data:`~flight_md.core.channels.CHANNELS`): ``ticker``
            (the default) and ``bidask`` hold ticks, ``trades`` trades, ``book`` book tops.
        book_depth: Levels a side a ``book`` buffer keeps.

    Reads return :class:`pyarrow.Table` in the channel's schema (:attr:`schema`; for ticks
    :data:`flight_md.schema.SCHEMA`) or a projection of it. ``exchange=`` selects the
    exchange; it may be omitted when the symbol is buffered on exactly one exchange.

    Raises:
        ValueError: A bad size, channel or depth.
    """

    def __init__(self, buffer_size: int = DEFAULT_BUFFER_SIZE, *, channel: str = "ticker",
                 book_depth: int = DEFAULT_BOOK_DEPTH) -> None:
        if not isinstance(buffer_size, int) or isinstance(buffer_size, bool) or buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive integer, got {buffer_size!r}")
        self.spec = spec_for(str(channel), book_depth)
        self.channel = self.spec.name
        self.schema = self.spec.schema
        self.stored_schema = self.spec.stored
        """:attr:`schema` without ``symbol`` and ``exchange``: the columns a ring stores (and
        :meth:`append_batch` takes)."""
        self.book_depth = self.spec.depth
        self.buffer_size = buffer_size
        self._rings: dict[tuple[str, str], _Ring] = {}
        self._by_symbol: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._persisting = False
        self._tails = _Tails()

    @property
    def tails(self) -> int:
        """Live tails (:meth:`follow`) open on this buffer's rings now."""
        return self._tails.open

    # -- writers -------------------------------------------------------------------------

    def _ring_for(self, exchange: str, symbol: str) -> _Ring:
        ring = self._rings.get((exchange, symbol))
        if ring is None:
            with self._lock:
                ring = self._rings.get((exchange, symbol))
                if ring is None:
                    ring = _Ring(exchange, symbol, self.buffer_size, self.spec)
                    if self._persisting:
                        ring.journal_seq = ring.history_seq = 0
                    self._rings = {**self._rings, (exchange, symbol): ring}
                    exchanges = sorted([*self._by_symbol.get(symbol, []), exchange])
                    self._by_symbol = {**self._by_symbol, symbol: exchanges}
        return ring

    def append(self, tick: MarketTick) -> None:
        """Store one tick (amortised ~1-2 µs).

        Raises:
            ValueError: The price is not a finite number or the timestamps are out of range
                (use :mod:`flight_md.normalize` to turn raw exchange data into ticks).
        """
        row = _row(tick)
        ring = self._rings.get((tick.exchange, tick.symbol)) or self._ring_for(
            tick.exchange, tick.symbol)
        with ring.lock:
            ring.append_row(row)

    def append_row(self, exchange: str, symbol: str, row: Sequence[float]) -> None:
        """Store one tick given as its numeric row: the ingestion fast path.

        ``row`` holds the :data:`~flight_md.schema.NUMERIC_FIELDS` in order, NaN for a
        missing value, and must already be valid (:func:`flight_md.normalize.to_row` makes
        such rows): a finite price and integer Unix ms timestamps up to
        :data:`MAX_TIMESTAMP_MS`. Nothing is checked here; :meth:`append` checks.
        """
        ring = self._rings.get((exchange, symbol)) or self._ring_for(exchange, symbol)
        with ring.lock:
            ring.append_row(row)

    def append_trade(self, exchange: str, symbol: str, timestamp: int, trade_id: str | None,
                     price: float, amount: float, side: str | None,
                     receive_timestamp: int) -> None:
        """Store one trade (a ``trades`` buffer).

        Raises:
            ValueError: A price or amount that is not a finite number, a side other than
                ``buy``/``sell``/``None``, an id that is not a string, or timestamps
                outside 0..:data:`MAX_TIMESTAMP_MS`.
        """
        if not (isinstance(price, (int, float)) and math.isfinite(price)
                and isinstance(amount, (int, float)) and math.isfinite(amount)):
            raise ValueError(f"trade price and amount must be finite numbers, got {price!r} "
                             f"and {amount!r} ({exchange}, {symbol})")
        _check_times(timestamp, receive_timestamp, exchange, symbol)
        if trade_id is not None and not isinstance(trade_id, str):
            raise ValueError(f"trade id must be a string or None, got {trade_id!r}")
        try:
            row = trade_row(timestamp, price, amount, side, receive_timestamp)
        except (KeyError, TypeError):
            raise ValueError(f"trade side must be 'buy', 'sell' or None, got {side!r} "
                             f"({exchange}, {symbol})") from None
        self._need("trades")
        ring = self._rings.get((exchange, symbol)) or self._ring_for(exchange, symbol)
        with ring.lock:
            ring.append_id_row(row, trade_id)

    def append_trade_row(self, exchange: str, symbol: str, row: Sequence[float],
                         trade_id: str | None) -> None:
        """Store one trade given as its numeric row: the ingestion fast path.

        ``row`` is :func:`~flight_md.core.channels.trade_row`'s (timestamp, price, amount,
        side code, receive timestamp) and must already be valid (what
        :func:`flight_md.normalize.to_trade` returns is: a finite positive price, a finite
        amount, integer Unix ms timestamps up to :data:`MAX_TIMESTAMP_MS`), ``trade_id`` a
        string or ``None``, and this a ``trades`` buffer. Nothing is checked here;
        :meth:`append_trade` checks.
        """
        ring = self._rings.get((exchange, symbol)) or self._ring_for(exchange, symbol)
        with ring.lock:
            ring.append_id_row(row, trade_id)

    def append_book(self, exchange: str, symbol: str, timestamp: int,
                    bids: Sequence[Sequence[float]], asks: Sequence[Sequence[float]],
                    nonce: int | None, receive_timestamp: int) -> None:
        """Store one book update (a ``book`` buffer): its first :attr:`book_depth` levels
        a side, ccxt's ``[[price, amount], ...]`` form, best first.

        Raises:
            ValueError: A level that is not a pair of finite numbers, a nonce that is not an
                integer, or timestamps outside 0..:data:`MAX_TIMESTAMP_MS`.
        """
        row = self._book_row(exchange, symbol, timestamp, bids, asks, nonce, receive_timestamp)
        ring = self._rings.get((exchange, symbol)) or self._ring_for(exchange, symbol)
        with ring.lock:
            ring.append_row(row)

    def _book_row(self, exchange: str, symbol: str, timestamp: int,
                  bids: Sequence[Sequence[float]], asks: Sequence[Sequence[float]],
                  nonce: int | None, receive_timestamp: int) -> list[float]:
        """A book update's checked pending row (see :meth:`append_book`)."""
        self._need("book")
        _check_times(timestamp, receive_timestamp, exchange, symbol)
        if nonce is not None and (isinstance(nonce, bool) or not isinstance(nonce, int)):
            raise ValueError(f"book nonce must be an integer or None, got {nonce!r}")
        try:
            return book_row(timestamp, bids, asks, nonce, receive_timestamp, self.book_depth)
        except (TypeError, IndexError):
            raise ValueError(f"book levels must be [price, amount] pairs of numbers "
                             f"({exchange}, {symbol})") from None

    def run_appender(self, exchange: str, symbol: str) -> Callable[[HandOff, int, int], None]:
        """The ingestion process's path: a function that appends rows ``[first, first +
        rows)`` of a :class:`HandOff` message (of this buffer's channel, rows valid as for
        :meth:`append_row`, ``rows >= 1``) to the ring of ``(exchange, symbol)``, created now
        if new. It copies the rows' floats (no per-row work) and, while the ring is read
        live, keeps their Arrow slice for readers."""
        ring = self._ring_for(exchange, symbol)
        lock, append = ring.lock, ring.append_run

        def append_run(run: HandOff, first: int, rows: int) -> None:
            with lock:
                append(run, first, rows)

        return append_run

    def appender(self, exchange: str, symbol: str) -> Callable[[pa.RecordBatch], None]:
        """:meth:`append_batch` bound to one ring (created now if new), without the lookup
        and the schema check: for a writer that hands batches of one ring over and over and
        guarantees their schema (the ingestion process's hand-off reads them in
        :attr:`stored_schema`). Empty batches are not allowed."""
        ring = self._ring_for(exchange, symbol)
        lock, append = ring.lock, ring.append_batch

        def append_batch(batch: pa.RecordBatch) -> None:
            with lock:
                append(batch)

        return append_batch

    def append_batch(self, exchange: str, symbol: str, batch: pa.RecordBatch) -> None:
        """Store a run of rows given as one record batch: the columnar hand-off's fast path.

        ``batch`` is in the ring's stored schema (:attr:`stored_schema`: the channel's
        :attr:`schema` without ``symbol`` and ``exchange``), oldest row first, and every value
        must already be valid, as for :meth:`append_row`: only the schema is checked. The rows
        get the next sequence numbers in order and count, evict, journal and reach live tails
        like appended rows; the batch is kept as it is (zero copy) until the ring folds it into
        a segment, and must not be mutated afterwards (Arrow batches are not).

        Raises:
            ValueError: ``batch`` is not in :attr:`stored_schema`.
        """
        if not batch.schema.equals(self.stored_schema):
            raise ValueError(f"a {self.channel} batch must have the schema "
                             f"{self.stored_schema.names}, got {batch.schema.names} "
                             f"({exchange}, {symbol})")
        if not batch.num_rows:
            return
        ring = self._rings.get((exchange, symbol)) or self._ring_for(exchange, symbol)
        with ring.lock:
            ring.append_batch(batch)

    def _need(self, channel: str) -> None:
        if self.channel != channel:
            raise ValueError(f"this buffer holds {self.channel}, not {channel}")

    def extend(self, ticks: Iterable[MarketTick]) -> int:
        """Store many ticks (each is checked as by :meth:`append`; a bad one raises after
        the ticks before it were stored).

        Returns:
            The number of ticks stored.
        """
        count = 0
        rings = self._rings
        for tick in ticks:
            row = _row(tick)
            ring = rings.get((tick.exchange, tick.symbol))
            if ring is None:
                ring = self._ring_for(tick.exchange, tick.symbol)
                rings = self._rings
            with ring.lock:
                ring.append_row(row)
            count += 1
        return count

    # -- lookup --------------------------------------------------------------------------

    def resolve(self, symbol: str, exchange: str | None = None) -> tuple[str, str]:
        """Find the ring a request means.

        Returns:
            ``(exchange, symbol)``.

        Raises:
            UnknownSymbol: No ring holds the symbol (on that exchange).
            UnknownExchange: No ring belongs to the exchange.
            AmbiguousExchange: The symbol is on several exchanges and none was given.
        """
        exchanges = self._by_symbol.get(symbol)
        if exchange is not None:
            if (exchange, symbol) in self._rings:
                return exchange, symbol
            known = self.exchanges()
            if exchange not in known:
                raise UnknownExchange(
                    f"unknown exchange {exchange!r}; buffered: {', '.join(known) or 'none'}")
            listed = sorted(s for (e, s) in self._rings if e == exchange)
            raise UnknownSymbol(f"unknown symbol {symbol!r} on {exchange}; buffered: "
                                f"{_preview(listed)}")
        if not exchanges:
            raise UnknownSymbol(f"unknown symbol {symbol!r}; buffered: "
                                f"{_preview(sorted(self._by_symbol))}")
        if len(exchanges) > 1:
            raise AmbiguousExchange(ambiguous_exchange(symbol, exchanges))
        return exchanges[0], symbol

    def ensure(self, exchange: str, symbol: str) -> None:
        """Create the (empty) ring of ``(exchange, symbol)`` unless it exists, e.g. for a live
        tail to wait on a subscribed symbol's first tick."""
        self._ring_for(exchange, symbol)

    def _ring(self, symbol: str, exchange: str | None) -> _Ring:
        return self._rings[self.resolve(symbol, exchange)]

    def exchanges(self) -> list[str]:
        """Exchanges with at least one ring, sorted."""
        return sorted({e for (e, _) in self._rings})

    def keys(self, exchange: str | None = None) -> list[tuple[str, str]]:
        """Every ``(exchange, symbol)`` with a ring, sorted."""
        return sorted(k for k in self._rings if exchange is None or k[0] == exchange)

    def stats(self, exchange: str | None = None) -> list[BufferStats]:
        """Per-ring counters, sorted by (exchange, symbol)."""
        out = []
        for key in self.keys(exchange):
            ring = self._rings[key]
            with ring.lock:
                out.append(ring.stats())
        return out

    def count(self, symbol: str, exchange: str | None = None) -> int:
        """Ticks currently stored for a symbol."""
        ring = self._ring(symbol, exchange)
        with ring.lock:
            return ring.next_seq - ring.start_seq

    # -- synchronous reads (Flight threads) --------------------------------------------------

    def get_latest_sync(self, symbol: str, limit: int = 100, *, exchange: str | None = None,
                        columns: Sequence[str] | None = None) -> pa.Table:
        """The newest ``limit`` ticks, oldest first (``limit`` above the capacity clamps)."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        ring = self._ring(symbol, exchange)
        with ring.lock:
            end = ring.next_seq
            batches = ring.snapshot(max(ring.start_seq, end - limit), end) if limit else []
        return ring.table(batches, columns)

    def get_range_sync(self, symbol: str, start_ms: int | None = None, end_ms: int | None = None,
                       *, exchange: str | None = None, latest: int | None = None,
                       columns: Sequence[str] | None = None) -> pa.Table:
        """Ticks with ``start_ms <= timestamp < end_ms`` (either bound optional), arrival order.

        Args:
            latest: Keep only the newest ``latest`` rows of the range.
        """
        ring = self._ring(symbol, exchange)
        with ring.lock:
            if start_ms is None and end_ms is None:
                batches = ring.snapshot(ring.start_seq, ring.next_seq)
            else:
                batches = ring.segments_between(start_ms, end_ms)
        table = ring.table(batches, columns)
        if latest is not None and table.num_rows > latest:
            table = table.slice(table.num_rows - latest)
        return table

    def snapshot_sync(self, exchange: str | None = None,
                      columns: Sequence[str] | None = None) -> pa.Table:
        """One row per buffered symbol: its newest tick (a market snapshot)."""
        tables = []
        for key in self.keys(exchange):
            ring = self._rings[key]
            with ring.lock:
                if ring.next_seq == ring.start_seq:
                    continue
                batches = ring.snapshot(ring.next_seq - 1, ring.next_seq)
            tables.append(ring.table(batches, columns))
        schema = self.schema if columns is None else pa.schema(
            [self.schema.field(c) for c in columns])
        if not tables:
            return schema.empty_table()
        return pa.concat_tables(tables)

    def clear_sync(self, symbol: str | None = None, *, exchange: str | None = None) -> int:
        """Drop stored ticks of one symbol, of one exchange, or of everything.

        Returns:
            The number of ticks dropped.
        """
        if symbol is not None:
            rings = [self._ring(symbol, exchange)]
        else:
            if exchange is not None and exchange not in self.exchanges():
                raise UnknownExchange(f"unknown exchange {exchange!r}; buffered: "
                                      f"{', '.join(self.exchanges()) or 'none'}")
            rings = [self._rings[k] for k in self.keys(exchange)]
        dropped = 0
        for ring in rings:
            with ring.lock:
                dropped += ring.next_seq - ring.start_seq
                ring.clear()
        return dropped

    def follow(self, symbol: str, *, exchange: str | None = None, backlog: int | None = 0,
               start_ms: int | None = None, max_lag: int | None = None,
               columns: Sequence[str] | None = None) -> tuple[pa.Table, Follower]:
        """Start a live tail: the backlog now, and a :class:`Follower` for what comes next.

        Args:
            backlog: Newest stored rows to return first (``None``: everything stored, or
                everything from ``start_ms``).
            start_ms: Backlog from this exchange timestamp on (``backlog`` then keeps the
                newest rows of that range).
            max_lag: Rows the follower may fall behind before it fails (default and
                maximum: the ring capacity).

        Returns:
            ``(backlog_table, follower)``; no tick falls between the two: both are taken
            under the ring's lock.
        """
        ring = self._ring(symbol, exchange)
        lag = ring.capacity if max_lag is None else max(1, min(max_lag, ring.capacity))
        with ring.lock:
            end = ring.next_seq
            if start_ms is not None:
                batches = ring.segments_between(start_ms, None)
            else:
                first = ring.start_seq if backlog is None else max(ring.start_seq, end - backlog)
                batches = ring.snapshot(first, end) if end > first else []
            follower = Follower(ring, end, lag, columns)
            ring.followers.add(follower)
            ring.live = True
        follower._tails = self._tails
        self._tails.add(1)
        table = ring.table(batches, columns)
        if start_ms is not None and backlog is not None and table.num_rows > backlog:
            table = table.slice(table.num_rows - backlog)
        return table, follower

    # -- persistence (flight_md.persist.store) -----------------------------------------------

    def persist(self) -> None:
        """Track what the journal and the history hold, from every ring's next row on.

        From now on :meth:`take_unjournalled` hands each stored row to the journal once, and
        eviction keeps rows until :meth:`release` says they are in the history, so that a
        query spanning history and ring has no gap (:meth:`seam_rows`).
        """
        with self._lock:
            self._persisting = True
            rings = list(self._rings.values())
        for ring in rings:
            with ring.lock:
                if ring.journal_seq is None:
                    ring.journal_seq = ring.history_seq = ring.next_seq

    @property
    def persisting(self) -> bool:
        """Whether :meth:`persist` was called."""
        return self._persisting

    def take_unjournalled(self, sequence: pa.Field | None = None
                          ) -> list[tuple[str, str, int, list[pa.RecordBatch]]]:
        """Every ring's rows not handed to the journal yet: ``(exchange, symbol, first_seq,
        numeric batches)`` per run, each row exactly once over all calls. With ``sequence``
        (an int64 field), each batch has one more, last column of that field: its rows'
        sequence numbers (what the journal stores beside them).

        A ring whose unjournalled rows are all still pending (the usual case between two
        commits) is not sealed for it: those pending numbers are copied into one flat array
        per channel, converted once (the sequence column too), and each ring gets its slice,
        while the ring keeps its rows pending until it seals them itself. Sealing every ring
        at every commit, then adding the sequence column per batch, cost several Arrow
        objects per ring per commit (~10 us each with pyarrow 26), which at 200 symbols (a
        few rows a ring a commit) made the journal's feed ~45 % of the ingest process's CPU
        (profiled with py-spy: ``ChannelSpec.seal`` ~25 %, against ~7 % at 20 symbols).
        """
        out = []
        joint: dict[int, tuple[_Ring, array[float], list[str | None],
                               list[tuple[str, str, int, int]]]] = {}
        for (exchange, symbol), ring in list(self._rings.items()):
            with ring.lock:
                if ring.journal_seq is None:
                    continue
                # The unjournalled rows, if they are the newest `rows` of the pending ones.
                rows = ring.next_seq - ring.journal_seq
                if 0 < rows <= ring.pending_rows and not ring.cleared:
                    spec = ring.spec
                    entry = joint.get(id(spec))
                    if entry is None:
                        entry = joint[id(spec)] = (ring, array("d"), [], [])
                    skip = ring.pending_rows - rows
                    entry[1].extend(ring.pending[skip * spec.width:] if skip else ring.pending)
                    if spec.has_ids:
                        entry[2].extend(ring.pending_ids[skip:])
                    entry[3].append((exchange, symbol, ring.journal_seq, rows))
                    ring.journal_seq = ring.next_seq
                    continue
                runs = ring.take_unjournalled()
            for first, batches in runs:
                if batches:
                    out.append((exchange, symbol, first, batches if sequence is None else
                                _with_sequence(batches, first,
                                               ring.stored_schema.append(sequence))))
        for ring, flat, ids, keys in joint.values():
            spec = ring.spec
            batch = spec.seal(flat, len(flat) // spec.width, ids)
            if sequence is not None:
                # Each ring's run of numbers in one pass (no array per ring): the offset of
                # its first row in the batch, taken from its first number, repeated per row.
                firsts = np.fromiter((k[2] for k in keys), np.int64, len(keys))
                counts = np.fromiter((k[3] for k in keys), np.int64, len(keys))
                starts = np.cumsum(counts) - counts
                seq = np.repeat(firsts - starts, counts) + np.arange(batch.num_rows,
                                                                     dtype=np.int64)
                batch = pa.RecordBatch.from_arrays(
                    [*batch.columns, pa.array(seq, memory_pool=MEMORY_POOL)],
                    schema=ring.stored_schema.append(sequence))
            at = 0
            for exchange, symbol, first, rows in keys:
                out.append((exchange, symbol, first, [batch.slice(at, rows)]))
                at += rows
        return out

    def release(self, exchange: str, symbol: str, through_seq: int) -> None:
        """Rows below ``through_seq`` are in the history: eviction may free them now."""
        ring = self._rings.get((exchange, symbol))
        if ring is None:
            return
        with ring.lock:
            if ring.history_seq is not None and ring.journal_seq is not None:
                # Never past the journal: a row not handed to it yet must stay in memory.
                ring.history_seq = max(ring.history_seq, min(through_seq, ring.journal_seq))
                ring._evict()

    def held_rows(self) -> int:
        """Rows evicted from the rings but held until they reach the history."""
        held = 0
        for ring in list(self._rings.values()):
            with ring.lock:
                if ring.history_seq is not None:
                    held += max(0, ring.start_seq - ring.history_seq)
        return held

    def restore(self, exchange: str, symbol: str, numeric: pa.Table, next_seq: int,
                history_seq: int | None = None) -> None:
        """Refill an empty ring with its newest rows after a restart.

        Args:
            numeric: Rows in :data:`~flight_md.schema.NUMERIC_SCHEMA`, oldest first (the
                newest ``buffer_size`` are kept, and those from ``history_seq`` on).
            next_seq: The sequence number the next appended row gets (the newest restored
                row has ``next_seq - 1``), so ``ticks_appended`` continues.
            history_seq: The first restored row not in the history yet (default: all are);
                the ring keeps it and every later row until :meth:`release`.
        """
        stored = self.spec.stored
        numeric = numeric.select(stored.names).cast(stored)
        if numeric.num_rows > next_seq:
            raise ValueError(f"cannot restore {numeric.num_rows} rows below sequence {next_seq}")
        given = next_seq - numeric.num_rows  # sequence number of the first given row
        # The newest buffer_size rows, and (persisting) every older one not in the history
        # yet: the ring holds those for queries until release() (they may be many, e.g. a
        # large journal not moved yet, so they are kept as given, zero copy).
        hold = next_seq if history_seq is None else history_seq
        first = max(given, min(hold, next_seq - self.buffer_size))
        numeric = numeric.slice(first - given)
        ring = self._ring_for(exchange, symbol)
        with ring.lock:
            if ring.next_seq:
                raise ValueError(f"ring {exchange} {symbol} is not empty")
            if numeric.num_rows <= 2 * self.buffer_size:
                numeric = numeric.combine_chunks(MEMORY_POOL)
            seq = first
            for batch in numeric.to_batches(ring.merge_rows):
                ring.segments.append(_Segment(batch, seq))
                seq += batch.num_rows
            ring.start_seq = max(first, next_seq - self.buffer_size)
            ring.next_seq = ring.sealed_seq = next_seq
            if ring.journal_seq is not None:
                ring.journal_seq = next_seq  # restored rows are journalled (or in history)
                ring.history_seq = max(first, min(hold, next_seq))
            if numeric.num_rows:
                last = numeric.slice(numeric.num_rows - 1).to_pylist()[0]
                ring.last_row = [last["timestamp"], last["receive_timestamp"]]

    def seam_rows(self, symbol: str, exchange: str | None, start_ms: int | None,
                  end_ms: int | None) -> tuple[_Ring, int | None, list[pa.RecordBatch]]:
        """The ring's side of a query that spans history and ring.

        Returns:
            ``(ring, first_seq, batches)``: with persistence, ``first_seq`` is the first row
            not in the history and ``batches`` every row from it in the range (rows evicted
            from the ring but not yet in the history included); without, ``None`` and the
            ring's rows in the range.
        """
        ring = self._ring(symbol, exchange)
        with ring.lock:
            if ring.history_seq is None:
                return ring, None, ring.segments_between(start_ms, end_ms)
            return ring, ring.history_seq, ring.rows_from(ring.history_seq, start_ms, end_ms)

    # -- async facade (original API) --------------------------------------------------------

    async def get_latest(self, symbol: str, limit: int = 100, *, exchange: str | None = None,
                         columns: Sequence[str] | None = None) -> pa.Table:
        """Async form of :meth:`get_latest_sync` (runs inline: reads take microseconds)."""
        return self.get_latest_sync(symbol, limit, exchange=exchange, columns=columns)

    async def get_range(self, symbol: str, start_ms: int | None = None,
                        end_ms: int | None = None, *, exchange: str | None = None,
                        columns: Sequence[str] | None = None) -> pa.Table:
        """Async form of :meth:`get_range_sync`."""
        return self.get_range_sync(symbol, start_ms, end_ms, exchange=exchange, columns=columns)

    async def clear(self, symbol: str | None = None, *, exchange: str | None = None) -> int:
        """Async form of :meth:`clear_sync` (all symbols when ``symbol`` is None)."""
        await asyncio.sleep(0)
        return self.clear_sync(symbol, exchange=exchange)

    def __len__(self) -> int:
        return sum(s.stored for s in self.stats())

    def __repr__(self) -> str:
        return f"MarketDataBuffer(buffer_size={self.buffer_size}, rings={len(self._rings)})"


class Store:
    """Every channel's :class:`MarketDataBuffer`: one ring per (exchange, symbol, channel).

    Args:
        buffer_size: Rows per ring, every channel.
        book_depth: Levels a side the ``book`` buffer keeps.
        buffers: Buffers to start with, by channel (e.g. one built elsewhere); a buffer
            given under ``ticker`` also serves ``bidask`` unless one is given for it, which
            keeps code that stores both in one tick buffer working.

    A buffer is created when a channel is first asked for (:meth:`buffer`), so listing
    (:meth:`channels`) shows only channels something streams or stores.
    """

    def __init__(self, buffer_size: int = DEFAULT_BUFFER_SIZE, *,
                 book_depth: int = DEFAULT_BOOK_DEPTH,
                 buffers: dict[str, MarketDataBuffer] | None = None) -> None:
        spec_for("book", book_depth)  # check the depth now, not when a book first streams
        self.buffer_size = buffer_size
        self.book_depth = book_depth
        self._buffers: dict[str, MarketDataBuffer] = {}
        self._lock = threading.Lock()
        for channel, buffer in (buffers or {}).items():
            if buffer.spec.schema != spec_for(channel, buffer.book_depth or book_depth).schema:
                raise ValueError(f"a {buffer.channel} buffer cannot hold {channel}")
            self._buffers[channel] = buffer
        self._shared_tick = "ticker" in self._buffers and "bidask" not in self._buffers
        self._persisting = False

    @classmethod
    def of(cls, buffer: MarketDataBuffer) -> Store:
        """A store around one existing buffer (a tick buffer serves ticker and bid/ask)."""
        return cls(buffer.buffer_size, book_depth=buffer.book_depth or DEFAULT_BOOK_DEPTH,
                   buffers={buffer.channel: buffer})

    def buffer(self, channel: str) -> MarketDataBuffer:
        """The buffer of ``channel``, created on first use.

        Raises:
            ValueError: Unknown channel.
        """
        found = self._buffers.get(channel)
        if found is not None:
            return found
        if channel == "bidask" and self._shared_tick:
            return self._buffers["ticker"]
        with self._lock:
            found = self._buffers.get(channel)
            if found is None:
                found = MarketDataBuffer(self.buffer_size, channel=channel,
                                         book_depth=self.book_depth)
                if self._persisting:
                    found.persist()
                self._buffers = {**self._buffers, channel: found}
            return found

    def persist(self) -> None:
        """:meth:`MarketDataBuffer.persist` every buffer, and every one created later."""
        with self._lock:
            self._persisting = True
            buffers = list(self._buffers.values())
        for buffer in buffers:
            buffer.persist()

    def get(self, channel: str) -> MarketDataBuffer | None:
        """The buffer of ``channel`` if it exists (never creates one)."""
        found = self._buffers.get(channel)
        if found is None and channel == "bidask" and self._shared_tick:
            return self._buffers["ticker"]
        return found

    def channels(self) -> list[str]:
        """Channels with a buffer, in :data:`~flight_md.core.channels.CHANNELS` order."""
        return [c for c in CHANNELS if c in self._buffers]

    def buffers(self) -> list[MarketDataBuffer]:
        """Every distinct buffer, in channel order."""
        return [self._buffers[c] for c in self.channels()]

    def channels_of(self, symbol: str, exchange: str | None = None) -> list[str]:
        """Channels holding a ring of ``symbol`` (on ``exchange``), in channel order."""
        out = []
        for channel in self.channels():
            buffer = self._buffers[channel]
            try:
                buffer.resolve(symbol, exchange)
            except (UnknownSymbol, UnknownExchange):
                continue
            except AmbiguousExchange:
                pass
            out.append(channel)
        return out

    def ticker_like(self, symbol: str, exchange: str | None = None) -> MarketDataBuffer:
        """The buffer a ticket without ``channel=`` reads: ``ticker`` if it holds the symbol,
        else ``bidask``.

        Raises:
            UnknownSymbol, UnknownExchange, AmbiguousExchange: As
                :meth:`MarketDataBuffer.resolve` of the ticker-like buffers; a symbol that only
                other channels hold is refused with the channels it has.
        """
        first: Exception | None = None
        for channel in TICKER_LIKE:
            buffer = self._buffers.get(channel)
            if buffer is None:
                continue
            try:
                buffer.resolve(symbol, exchange)
            except (UnknownSymbol, UnknownExchange) as error:
                first = first or error
                continue
            return buffer
        others = [c for c in self.channels_of(symbol, exchange) if c not in TICKER_LIKE]
        if others:
            where = f" on {exchange}" if exchange else ""
            raise UnknownSymbol(f"symbol {symbol!r}{where} has no ticker or bidask channel; "
                                f"add channel= one of: {', '.join(others)}")
        if first is not None:
            raise first
        raise UnknownSymbol(f"unknown symbol {symbol!r}; nothing is buffered")

    def __repr__(self) -> str:
        return f"Store(channels={self.channels()}, buffer_size={self.buffer_size})"


MAX_TIMESTAMP_MS: Final = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z; also keeps timestamps exact through the float64 seal."""


def _row(tick: MarketTick) -> tuple[float, ...]:
    """Check a tick and return its stored row (NaN for a missing value)."""
    price = tick.price
    # The price column is not nullable: None or NaN would turn into an invented null.
    if not (isinstance(price, (int, float)) and math.isfinite(price)):
        raise ValueError(f"tick price must be a finite number, got {price!r} "
                         f"({tick.exchange}, {tick.symbol})")
    _check_times(tick.timestamp, tick.receive_timestamp, tick.exchange, tick.symbol)
    volume, bid, ask, high, low, open_, close = (
        tick.volume, tick.bid, tick.ask, tick.high, tick.low, tick.open, tick.close)
    return (tick.timestamp, price, NAN if volume is None else volume,
            NAN if bid is None else bid, NAN if ask is None else ask,
            NAN if high is None else high, NAN if low is None else low,
            NAN if open_ is None else open_, NAN if close is None else close,
            tick.receive_timestamp)


def _check_times(timestamp: int, receive_timestamp: int, exchange: str, symbol: str) -> None:
    if not (0 <= timestamp <= MAX_TIMESTAMP_MS and 0 <= receive_timestamp <= MAX_TIMESTAMP_MS):
        raise ValueError(f"timestamps must be Unix ms from 0 to {MAX_TIMESTAMP_MS}, got "
                         f"{timestamp!r} and {receive_timestamp!r} ({exchange}, {symbol})")


def ambiguous_exchange(symbol: str, exchanges: Sequence[str]) -> str:
    """The one phrasing of a symbol on several exchanges with none chosen."""
    return (f"symbol {symbol!r} is buffered on several exchanges; add exchange= one of: "
            f"{', '.join(exchanges)}")


def _preview(names: Sequence[str], limit: int = 20) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"

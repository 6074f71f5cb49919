"""Queries that span the Parquet history and the in-memory ring, as one ordered sequence.

A range ticket (``start=``/``end=``) or a ``latest=N`` beyond what the ring holds reads the
history first, then the ring, with no duplicate and no gap at the seam: the ring hands over
every row from the first sequence number the history does not hold
(:meth:`~flight_md.buffer.MarketDataBuffer.seam_rows`, which includes rows the ring evicted
but keeps until they are in the history), and the history gives the rows before it
(``before=`` that sequence number). History rows come in timestamp order, ring rows in
arrival order.

Results stream: the history through :meth:`HistoryReader.scan` in bounded batches, so a
100 M-row range never sits in server memory; counts (GetFlightInfo) come from file names and
footers plus the ring, without reading rows.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from flight_md.persist.history import SeamPoint
from flight_md.tickets import Query

if TYPE_CHECKING:
    from flight_md.buffer import MarketDataBuffer
    from flight_md.persist.store import Persistence

__all__ = ["Spanned", "span"]

LATEST_IN_MEMORY: Final = 1_000_000
"""``latest=N`` reaching this far into the history is read with the history's newest-rows
reader (one table); beyond it, by a streaming scan that skips the older rows."""


@dataclass(frozen=True, slots=True)
class Spanned:
    """A result over history and ring.

    Attributes:
        schema: The result's schema (the query's columns of the channel's schema).
        rows: Exactly how many rows :attr:`batches` yields.
        batches: Starts the read: history batches, then ring batches.
    """

    schema: pa.Schema
    rows: int
    batches: Callable[[], Iterator[pa.RecordBatch]]

    def read_all(self) -> pa.Table:
        """The whole result as one table (tests and small results only)."""
        return pa.Table.from_batches(list(self.batches()), schema=self.schema)


def span(persistence: Persistence, buffer: MarketDataBuffer, query: Query) -> Spanned | None:
    """The answer to a tick query that needs the history, or ``None`` when the ring alone
    answers it (the bare ``SYMBOL`` ticket, or ``latest=N`` the ring covers).

    Raises:
        NotFound: As :meth:`MarketDataBuffer.resolve`.
    """
    assert query.symbol is not None
    if query.start is None and query.end is None and query.latest is None:
        return None
    exchange, symbol = buffer.resolve(query.symbol, query.exchange)
    if query.start is None and query.end is None and query.latest is not None \
            and query.latest <= buffer.count(symbol, exchange):
        return None  # the ring's own rows answer it, as without persistence (the hot path)
    reader = persistence.reader
    if reader is None:
        return None
    ring, first_seq, ring_batches = buffer.seam_rows(symbol, exchange, query.start, query.end)
    if first_seq is None:
        return None
    ring_rows = sum(b.num_rows for b in ring_batches)
    full = buffer.schema
    columns = list(query.columns) if query.columns is not None else full.names
    schema = pa.schema([full.field(c) for c in columns])
    channel = persistence.channel(exchange, buffer)
    before = SeamPoint(0, first_seq)
    history_rows = reader.count(channel, exchange, symbol, query.start, query.end, before=before)
    total = history_rows + ring_rows
    wanted = total if query.latest is None else min(query.latest, total)
    skip = total - wanted  # oldest rows of the range left out by latest=N

    def ring_part(drop: int) -> Iterator[pa.RecordBatch]:
        table = ring.table(ring_batches, columns)
        if drop:
            table = table.slice(drop)
        yield from table.to_batches()

    # Every file of a series holds one symbol and one exchange: those two columns are made
    # here, not decoded from Parquet (a quarter to a half of a scan's time otherwise).
    stored = [c for c in columns if c not in _CONSTANT] or ["timestamp"]
    constants = _Constants(symbol, exchange)

    def assemble(batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = [constants.get(c, batch.num_rows) if c in _CONSTANT else batch.column(c)
                  for c in columns]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def batches() -> Iterator[pa.RecordBatch]:
        history_skip = min(skip, history_rows)
        if history_skip < history_rows:
            take = history_rows - history_skip
            if query.start is None and query.end is None and take <= LATEST_IN_MEMORY:
                table = reader.latest(channel, exchange, symbol, take, stored, before=before)
                for batch in table.to_batches():
                    yield assemble(batch)
            else:
                scan = reader.scan(channel, exchange, symbol, query.start, query.end, stored,
                                   before=before)
                yield from _skipping((assemble(b) for b in _prefetch(scan)), history_skip)
        yield from ring_part(max(0, skip - history_rows))

    return Spanned(schema, wanted, batches)


_CONSTANT: Final = ("symbol", "exchange")
PREFETCH_BATCHES: Final = 2
"""Batches decoded ahead of the one being sent (Parquet decoding releases the GIL, so it
overlaps the transfer)."""


class _Constants:
    """The ``symbol`` and ``exchange`` columns of one scan, built once at the largest batch
    length seen and sliced (immutable arrays may back many batches)."""

    def __init__(self, symbol: str, exchange: str) -> None:
        self._values = {"symbol": symbol, "exchange": exchange}
        self._arrays: dict[str, pa.Array] = {}

    def get(self, name: str, n: int) -> pa.Array:
        array = self._arrays.get(name)
        if array is None or len(array) < n:
            array = self._arrays[name] = pa.repeat(pa.scalar(self._values[name], pa.string()),
                                                   max(n, 1))
        return array.slice(0, n)


def _prefetch(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``batches``, read by a worker thread up to :data:`PREFETCH_BATCHES` ahead; the worker
    stops when the consumer does (a cancelled DoGet closes this generator)."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(PREFETCH_BATCHES)
    stop = threading.Event()

    def work() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        ready.put(("batch", batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    close = getattr(batches, "close", None)
                    if close is not None:
                        close()  # the scan's open files, now, not at garbage collection
                    return
            item: tuple[str, Any] = ("end", None)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            item = ("error", exc)
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    worker = threading.Thread(target=work, name="flight-md-history-read", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "batch":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        worker.join(5.0)


def _skipping(batches: Iterator[pa.RecordBatch], skip: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield batch.slice(skip) if skip else batch
        skip = 0

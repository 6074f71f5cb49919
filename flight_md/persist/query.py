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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import pyarrow as pa

from flight_md.persist.history import SeamPoint
from flight_md.schema import SCHEMA
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
        schema: The result's schema (the query's columns of :data:`SCHEMA`).
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
    columns = list(query.columns) if query.columns is not None else SCHEMA.names
    schema = pa.schema([SCHEMA.field(c) for c in columns])
    channel = persistence.channel(exchange)
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

    def batches() -> Iterator[pa.RecordBatch]:
        history_skip = min(skip, history_rows)
        if history_skip < history_rows:
            take = history_rows - history_skip
            if query.start is None and query.end is None and take <= LATEST_IN_MEMORY:
                table = reader.latest(channel, exchange, symbol, take, columns, before=before)
                for batch in table.to_batches():
                    yield _conform(batch, schema)
            else:
                yield from _skipping(
                    (_conform(b, schema) for b in reader.scan(
                        channel, exchange, symbol, query.start, query.end, columns,
                        before=before)), history_skip)
        yield from ring_part(max(0, skip - history_rows))

    return Spanned(schema, wanted, batches)


def _skipping(batches: Iterator[pa.RecordBatch], skip: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield batch.slice(skip) if skip else batch
        skip = 0


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A history batch in the served schema (Parquet may relax nullability)."""
    if batch.schema.equals(schema):
        return batch
    columns: Sequence[pa.Array] = [batch.column(name) for name in schema.names]
    return pa.RecordBatch.from_arrays(list(columns), schema=schema)

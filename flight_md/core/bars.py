"""OHLCV bars from stored trades, pure and vectorised.

A bar covers ``[bar_start, bar_start + interval)`` in exchange time, aligned to UTC:
``bar_start = floor(timestamp / interval) * interval`` (the Unix epoch is a UTC midnight, so
``1d`` bars start at 00:00Z and ``1h`` bars on the hour). Only bars with at least one trade are
produced, oldest first, with the columns of :data:`BAR_SCHEMA`.

Which trade opens and closes a bar
    Trades come in the store's order, the order they arrived in. The *open* is the bar's trade
    with the earliest exchange timestamp, the *close* the one with the latest; among trades
    with the same timestamp (a busy market has many per millisecond) the first and the last to
    arrive. While timestamps arrive in order, the usual case, that is simply the bar's first
    and last trade in arrival order. Where they do not (a venue that interleaves matching
    engines, a backfill after a reconnect stored after trades that came later), the open and
    close are still the earliest and latest trades in exchange time, so a bar does not depend
    on when its trades reached us, nor on how a range is cut into batches.

Range and follow
    :func:`bars` answers a finite range: every trade counts, whatever its order and however
    the range is cut into record batches (each batch is reduced to partial bars, which are
    merged exactly: high, low, trades and the choice of open and close are identical to one
    table; ``volume`` and ``vwap`` are float sums, equal to rounding, as any change of
    summation order gives). :class:`BarBuilder` serves ``follow=true``: it takes batches as
    they arrive and returns each bar once, when it closes: when a trade of a later bar
    arrives, or when :meth:`BarBuilder.closed_until` is told the wall clock passed the bar's
    end. A sent bar is never revised, so a trade that arrives after its bar was sent is
    *late*: counted in :attr:`BarBuilder.late_trades` and left out.

Computation
    Columns are read as numpy views of the Arrow buffers (no copy) and reduced per bar with
    ``ufunc.reduceat`` over contiguous segments; nothing loops over trades in Python. Input in
    timestamp order (checked in one pass) is reduced as it is; otherwise it is first put in
    order with one stable sort, which keeps arrival order among equal timestamps. Trades are
    reduced :data:`SLICE_ROWS` at a time: large batches are cut (so the temporaries stay in
    cache), small ones such as the ring's segments joined (so numpy's fixed cost per call is
    paid per slice, not per batch).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from flight_md.errors import InvalidTicket

__all__ = [
    "BAR_SCHEMA",
    "SLICE_ROWS",
    "TRADE_COLUMNS",
    "BarBuilder",
    "BarInterval",
    "bars",
    "parse_interval",
]

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]


class BarInterval(StrEnum):
    """The bar lengths a ``bars=`` ticket may ask for."""

    S1 = "1s"
    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    H1 = "1h"
    D1 = "1d"

    @property
    def ms(self) -> int:
        """The bar's length in milliseconds."""
        return _INTERVAL_MS[self]


_INTERVAL_MS: Final[dict[BarInterval, int]] = {
    BarInterval.S1: 1_000,
    BarInterval.M1: 60_000,
    BarInterval.M5: 300_000,
    BarInterval.M15: 900_000,
    BarInterval.H1: 3_600_000,
    BarInterval.D1: 86_400_000,
}


def parse_interval(text: str) -> BarInterval:
    """The :class:`BarInterval` named by ``text`` exactly (``"1m"``; no spaces, case matters).

    Raises:
        InvalidTicket: ``text`` is not one of ``1s, 1m, 5m, 15m, 1h, 1d``.
    """
    try:
        return BarInterval(text)
    except ValueError:
        allowed = ", ".join(interval.value for interval in BarInterval)
        raise InvalidTicket(f"invalid bars {text[:40]!r}; expected one of: {allowed}") from None


BAR_SCHEMA: Final[pa.Schema] = pa.schema([
    pa.field("bar_start", pa.int64(), nullable=False),
    pa.field("open", pa.float64(), nullable=False),
    pa.field("high", pa.float64(), nullable=False),
    pa.field("low", pa.float64(), nullable=False),
    pa.field("close", pa.float64(), nullable=False),
    pa.field("volume", pa.float64(), nullable=False),
    pa.field("vwap", pa.float64()),
    pa.field("trades", pa.int64(), nullable=False),
])
"""One row per bar: ``bar_start`` (Unix ms, UTC-aligned), OHLC prices, ``volume`` (the sum of
the trades' amounts), ``vwap`` (``sum(price * amount) / volume``; null when the volume is 0)
and ``trades`` (how many trades the bar holds, at least 1)."""

TRADE_COLUMNS: Final[dict[str, pa.DataType]] = {
    "timestamp": pa.int64(),
    "price": pa.float64(),
    "amount": pa.float64(),
}
"""The input columns bars are computed from (others are ignored); none may hold nulls."""

SLICE_ROWS: Final = 1 << 16
"""Rows reduced at a time: few enough that a slice's columns and temporaries stay in cache,
enough that the fixed cost of each numpy call is spread over many trades."""


_NO_BARS: Final = BAR_SCHEMA.empty_table()  # immutable, so one is shared


@dataclass(frozen=True, slots=True)
class _Partial:
    """Bars, or pieces of bars, as parallel arrays in ``start`` order; ``open_ts``/``close_ts``
    are the exchange times of the open and close, kept so that pieces of a bar merge exactly.
    """

    start: _I64
    open: _F64
    open_ts: _I64
    high: _F64
    low: _F64
    close: _F64
    close_ts: _I64
    volume: _F64
    notional: _F64
    trades: _I64

    def __len__(self) -> int:
        return len(self.start)

    def take(self, index: _I64 | slice) -> _Partial:
        return _Partial(*(getattr(self, name)[index] for name in _FIELDS))


_FIELDS: Final = _Partial.__slots__


def _empty() -> _Partial:
    ints, floats = np.empty(0, np.int64), np.empty(0, np.float64)
    return _Partial(ints, floats, ints, floats, floats, floats, ints, floats, floats, ints)


_NONE: Final = _empty()  # never written to, so one is shared


def _join_bar(a: _Partial, b: _Partial) -> _Partial:
    """The bar of ``a`` (one row) and the first row of ``b``, a piece of the same bar that
    arrived later: :func:`_merge` for the one case a live tail meets on every batch."""
    a_opens = a.open_ts[0] <= b.open_ts[0]
    b_closes = b.close_ts[0] >= a.close_ts[0]
    first = slice(0, 1)
    return _Partial(
        start=a.start,
        open=a.open if a_opens else b.open[first],
        open_ts=a.open_ts if a_opens else b.open_ts[first],
        high=np.maximum(a.high, b.high[first]),
        low=np.minimum(a.low, b.low[first]),
        close=b.close[first] if b_closes else a.close,
        close_ts=b.close_ts[first] if b_closes else a.close_ts,
        volume=a.volume + b.volume[first],
        notional=a.notional + b.notional[first],
        trades=a.trades + b.trades[first],
    )


def _concat(parts: list[_Partial]) -> _Partial:
    return _Partial(*(np.concatenate([getattr(part, name) for part in parts]) for name in _FIELDS))


def _check_schema(schema: pa.Schema) -> None:
    for name, expected in TRADE_COLUMNS.items():
        found = schema.get_all_field_indices(name)
        if len(found) != 1:
            raise ValueError(f"trades have {'no' if not found else len(found)} columns {name!r}; "
                             f"bars need one each of {', '.join(TRADE_COLUMNS)}")
        if schema.field(found[0]).type != expected:
            raise ValueError(f"trades column {name!r} is {schema.field(found[0]).type}; bars "
                             f"need {expected}")


class _Slicer:
    """Turns record batches into the trade columns as numpy arrays, about ``SLICE_ROWS`` rows
    at a time, checking each new schema once.

    Large batches are cut into views of their Arrow buffers, without copying. Runs of small
    ones (a ring's segments, a live tail's batches) are copied end to end into one reused
    buffer per column, since a slice costs mostly the fixed overhead of its numpy calls, and a
    fresh buffer per run its page faults. So a slice is valid only until the next one is asked
    for, and nothing keeps a view of one (every reduction copies what it keeps).
    """

    __slots__ = ("_buffers", "_checked")

    def __init__(self) -> None:
        self._checked: pa.Schema | None = None
        self._buffers: tuple[_I64, _F64, _F64] | None = None

    def slices(self, trades: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch]
               ) -> Iterator[tuple[_I64, _F64, _F64]]:
        if isinstance(trades, pa.Table):
            self._check(trades.schema)  # even when it has no batches
            trades = trades.to_batches()
        elif isinstance(trades, pa.RecordBatch):
            trades = [trades]
        group: list[tuple[_I64, _F64, _F64]] = []
        rows = 0
        for batch in trades:
            self._check(batch.schema)
            if not batch.num_rows:
                continue
            columns = _views(batch)
            if len(columns[0]) >= SLICE_ROWS:
                if group:
                    yield self._join(group)
                    group, rows = [], 0
                ts, price, amount = columns
                for offset in range(0, len(ts), SLICE_ROWS):
                    end = offset + SLICE_ROWS
                    yield ts[offset:end], price[offset:end], amount[offset:end]
                continue
            if rows + len(columns[0]) > SLICE_ROWS:
                yield self._join(group)
                group, rows = [], 0
            group.append(columns)
            rows += len(columns[0])
        if group:
            yield self._join(group)

    def _check(self, schema: pa.Schema) -> None:
        if self._checked is None or not schema.equals(self._checked):
            _check_schema(schema)
            self._checked = schema

    def _join(self, group: list[tuple[_I64, _F64, _F64]]) -> tuple[_I64, _F64, _F64]:
        if len(group) == 1:
            return group[0]
        if self._buffers is None:
            self._buffers = (np.empty(SLICE_ROWS, np.int64), np.empty(SLICE_ROWS, np.float64),
                             np.empty(SLICE_ROWS, np.float64))
        rows = sum(len(piece[0]) for piece in group)
        ts, price, amount = (self._buffers[0][:rows], self._buffers[1][:rows],
                             self._buffers[2][:rows])
        np.concatenate([piece[0] for piece in group], out=ts)
        np.concatenate([piece[1] for piece in group], out=price)
        np.concatenate([piece[2] for piece in group], out=amount)
        return ts, price, amount


def _views(batch: pa.RecordBatch) -> tuple[_I64, _F64, _F64]:
    """Zero-copy numpy views of a batch's timestamp, price and amount; nulls are refused."""
    columns = [batch.column(name) for name in TRADE_COLUMNS]
    try:
        ts, price, amount = (column.to_numpy(zero_copy_only=True) for column in columns)
    except pa.ArrowInvalid:  # only nulls stop a zero-copy view of these types
        name, column = next((n, c) for n, c in zip(TRADE_COLUMNS, columns, strict=True)
                            if c.null_count)
        raise ValueError(f"trades column {name!r} holds {column.null_count} nulls; "
                         "bars need every trade's timestamp, price and amount") from None
    return ts, price, amount


def _segments(ts: _I64, interval: int) -> tuple[_I64, _I64]:
    """Start and end offsets of each bar's run of rows in ``ts`` (in timestamp order)."""
    n = len(ts)
    first, last = int(ts[0]) // interval, int(ts[-1]) // interval
    if first == last:  # one bar: a live tail's batch, mostly
        return np.zeros(1, np.int64), np.full(1, n, np.int64)
    if last - first < n:
        # Dense (the usual case): a binary search per bar boundary instead of a pass over rows.
        edges = np.arange(first + 1, last + 1, dtype=np.int64) * interval
        cuts = np.searchsorted(ts, edges)
        starts = np.concatenate(([0], cuts))
        ends = np.concatenate((cuts, [n]))
        filled = ends > starts
        return starts[filled], ends[filled]
    keys = ts // interval
    cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    return np.concatenate(([0], cuts)), np.concatenate((cuts, [n]))


def _reduce(ts: _I64, price: _F64, amount: _F64, interval: int) -> _Partial:
    """The bars of a slice of trades given in arrival order (at least one trade)."""
    if not (ts[1:] >= ts[:-1]).all():
        order = np.argsort(ts, kind="stable")  # stable: equal timestamps keep arrival order
        ts, price, amount = ts[order], price[order], amount[order]
    starts, ends = _segments(ts, interval)
    last = ends - 1
    return _Partial(
        start=ts[starts] // interval * interval,
        open=price[starts],
        open_ts=ts[starts],
        high=np.maximum.reduceat(price, starts),
        low=np.minimum.reduceat(price, starts),
        close=price[last],
        close_ts=ts[last],
        volume=np.add.reduceat(amount, starts),
        notional=np.add.reduceat(price * amount, starts),
        trades=ends - starts,
    )


def _merge(parts: list[_Partial]) -> _Partial:
    """One row per bar from pieces given in arrival order (a part may hold pieces of a bar)."""
    parts = [part for part in parts if len(part)]
    if len(parts) <= 1:
        return parts[0] if parts else _empty()
    p = _concat(parts)
    # Every sort below is stable, so pieces with equal keys keep arrival order.
    p = p.take(np.argsort(p.start, kind="stable"))
    cuts = np.flatnonzero(p.start[1:] != p.start[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(p)]))
    by_open = np.lexsort((p.open_ts, p.start))[starts]
    by_close = np.lexsort((p.close_ts, p.start))[ends - 1]
    return _Partial(
        start=p.start[starts],
        open=p.open[by_open],
        open_ts=p.open_ts[by_open],
        high=np.maximum.reduceat(p.high, starts),
        low=np.minimum.reduceat(p.low, starts),
        close=p.close[by_close],
        close_ts=p.close_ts[by_close],
        volume=np.add.reduceat(p.volume, starts),
        notional=np.add.reduceat(p.notional, starts),
        trades=np.add.reduceat(p.trades, starts),
    )


def _table(p: _Partial) -> pa.Table:
    """The :data:`BAR_SCHEMA` table of merged bars."""
    if not len(p):
        return _NO_BARS
    empty = p.volume == 0
    vwap = np.divide(p.notional, p.volume, out=np.zeros_like(p.notional), where=~empty)
    return pa.Table.from_arrays([
        pa.array(p.start), pa.array(p.open), pa.array(p.high), pa.array(p.low),
        pa.array(p.close), pa.array(p.volume), pa.array(vwap, mask=empty), pa.array(p.trades),
    ], schema=BAR_SCHEMA)


class _Accumulator:
    """Pieces reduced so far, merged often enough that memory stays near one row per bar."""

    __slots__ = ("_merged", "_parts", "_rows")

    def __init__(self) -> None:
        self._merged = 0
        self._parts: list[_Partial] = []
        self._rows = 0

    def add(self, part: _Partial) -> None:
        self._parts.append(part)
        self._rows += len(part)
        # In-order trades add about one piece per slice; shuffled ones up to one per bar per
        # slice, so merge once the pieces outnumber the merged bars.
        if self._rows > 2 * self._merged + 4096:
            self._parts = [self.result()]

    def result(self) -> _Partial:
        merged = _merge(self._parts)
        self._parts, self._rows, self._merged = [merged], len(merged), len(merged)
        return merged


def bars(trades: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch],
         interval: BarInterval) -> pa.Table:
    """OHLCV bars of ``trades`` (in arrival order), one :data:`BAR_SCHEMA` row per bar with
    trades, sorted by ``bar_start``.

    Args:
        trades: A table, a record batch, or record batches in arrival order (a
            ``RecordBatchReader``, a history scan); columns :data:`TRADE_COLUMNS`, others are
            ignored. Batches are reduced as they come, so a long range needs memory for one
            batch plus about one row per bar.
        interval: The bar length.

    Raises:
        ValueError: A trade column is missing, of another type, or holds nulls.
    """
    acc = _Accumulator()
    for ts, price, amount in _Slicer().slices(trades):
        acc.add(_reduce(ts, price, amount, interval.ms))
    return _table(acc.result())


class BarBuilder:
    """Bars of a live stream of trades, each returned once, when it closes (``follow=true``).

    Feed :meth:`add` the stream's record batches in arrival order; every call returns the
    bars that closed. A bar closes when a trade of a later bar arrives, or when
    :meth:`closed_until` is given a time at or past the bar's end; :meth:`close` returns the
    bar still open at the end of the stream. So at most one bar is open at a time, and the
    bars returned over the whole stream are in ``bar_start`` order, without repeats.

    A trade of a bar that has already closed (its exchange time is in a bar before the newest
    one seen, or in a bar :meth:`closed_until` closed) is late: it is counted in
    :attr:`late_trades` and left out, since its bar was already sent. The result does not
    depend on how the stream is cut into batches; for trades in timestamp order it equals
    :func:`bars` over the same trades.

    Not thread-safe: one builder per follower, used from one thread.
    """

    __slots__ = ("_closed", "_horizon", "_interval", "_late", "_open", "_slicer")

    def __init__(self, interval: BarInterval) -> None:
        """Start with no bar open."""
        self._interval = interval.ms
        self._slicer = _Slicer()
        self._open = _NONE
        # Bars before this one (start // interval) have been sent: their trades are late.
        self._horizon: int | None = None
        self._late = 0
        self._closed = False

    @property
    def late_trades(self) -> int:
        """Trades left out so far because their bar had already closed."""
        return self._late

    @property
    def open_bar_start(self) -> int | None:
        """``bar_start`` of the bar still open, or ``None`` when none is."""
        return int(self._open.start[0]) if len(self._open) else None

    def add(self, trades: pa.RecordBatch | pa.Table) -> pa.Table:
        """Take the next trades in arrival order; return the bars they closed (maybe none).

        Raises:
            ValueError: A trade column is missing, of another type, or holds nulls.
            RuntimeError: :meth:`close` was called.
        """
        if self._closed:
            raise RuntimeError("bar builder is closed; start a new one")
        closed = [self._add(*columns) for columns in self._slicer.slices(trades)]
        closed = [part for part in closed if len(part)]
        return _table(closed[0] if len(closed) == 1 else _concat(closed)) if closed else _NO_BARS

    def _add(self, ts: _I64, price: _F64, amount: _F64) -> _Partial:
        interval = self._interval
        keys = ts // interval
        # Trade i is late if its bar is before the newest bar of the trades before it (or
        # before the bar closed_until last closed): that bar has been sent.
        horizon = int(keys[0]) if self._horizon is None else self._horizon
        newest_before = np.empty_like(keys)
        newest_before[0] = horizon
        np.maximum(np.maximum.accumulate(keys)[:-1], horizon, out=newest_before[1:])
        late = keys < newest_before
        late_count = int(np.count_nonzero(late))
        if late_count:
            self._late += late_count
            on_time = ~late
            ts, price, amount = ts[on_time], price[on_time], amount[on_time]
            if not len(ts):
                return _NONE
        reduced = _reduce(ts, price, amount, interval)
        if len(self._open) and self._open.start[0] == reduced.start[0]:
            joined = _join_bar(self._open, reduced)
            reduced = joined if len(reduced) == 1 else _concat([joined, reduced.take(slice(1, None))])
        elif len(self._open):  # on-time trades never go back to an earlier bar
            reduced = _concat([self._open, reduced])
        self._horizon = int(reduced.start[-1]) // interval
        if len(reduced) == 1:  # the open bar grew (a live tail's batch, mostly)
            self._open = reduced
            return _NONE
        # Only the newest bar can still grow.
        self._open = reduced.take(slice(-1, None))
        return reduced.take(slice(None, -1))

    def closed_until(self, now_ms: int) -> pa.Table:
        """The open bar if it ends at or before ``now_ms`` (then closed), else nothing.

        ``now_ms`` is a wall-clock time in Unix ms; pass it less an allowance for the
        exchange's delivery delay (a trade stamped just before a bar's end reaches us a little
        after it), since trades of a closed bar arriving later are late.
        """
        if not len(self._open) or int(self._open.start[0]) + self._interval > now_ms:
            return _NO_BARS
        closed, self._open = self._open, _NONE
        self._horizon = int(closed.start[0]) // self._interval + 1
        return _table(closed)

    def close(self) -> pa.Table:
        """End of the stream: the bar still open (if any); the builder takes no more trades."""
        self._closed = True
        closed, self._open = self._open, _NONE
        return _table(closed)

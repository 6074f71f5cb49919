"""Channel specs: what one row of each channel is, in Arrow and in the ring's pending buffer.

A channel is one kind of market data a stream carries: ``ticker`` and ``bidask`` (the
:data:`~flight_md.schema.SCHEMA` ticks), ``trades`` (every trade) and ``book`` (the top N levels
of the order book after every update). The store keeps one ring per (exchange, symbol,
channel); :class:`ChannelSpec` is everything the ring needs to know about its channel:

* ``schema``: the public Arrow schema every read returns (``symbol`` and ``exchange``
  included) and the history stores;
* ``stored``: the same without ``symbol`` and ``exchange``, which are constant per ring and
  materialised on read; its first column is always ``timestamp`` and its last
  ``receive_timestamp`` (the ring's range search and its stats read those two);
* ``width``: how many float64 values one row takes in the ring's pending buffer before it is
  sealed into Arrow (a row is packed by the writer: :func:`trade_row`, :func:`book_row`);
* :meth:`ChannelSpec.seal`: pending rows into one record batch in ``stored``, vectorised
  (numpy over the flat buffer; nothing loops over rows in Python except the trade ids, which
  are already Python strings).

Pending layouts (NaN is a missing value)::

    ticks   timestamp price volume bid ask high low open close receive_timestamp   (10)
    trades  timestamp price amount side receive_timestamp                           (5)
            side: 1 buy, 2 sell, 0 not given; trade ids travel beside the floats
    book    timestamp nonce n_bids n_asks bid_price_1 bid_amount_1 ... (depth levels)
            ask_price_1 ask_amount_1 ... receive_timestamp                       (5 + 4 depth)

Memory per stored row (Arrow, validity bitmaps aside): a tick 80 bytes; a trade 41 bytes plus
its id (a 10-digit id: 55 bytes); a top-10 book 40 bytes plus 16 per level (352 bytes full).

This module is pure: no asyncio, ccxt, pyarrow.flight or disk.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa

from flight_md.schema import NUMERIC_FIELDS, SCHEMA

__all__ = [
    "BOOK_SCHEMA",
    "CHANNELS",
    "DEFAULT_BOOK_DEPTH",
    "LEVEL",
    "MAX_BOOK_DEPTH",
    "TICKER_LIKE",
    "TRADE_SCHEMA",
    "ChannelSpec",
    "book_row",
    "schema_for",
    "spec_for",
    "trade_row",
]

CHANNELS: Final = ("ticker", "bidask", "trades", "book")
"""Every channel, in the order listings show them."""
TICKER_LIKE: Final = ("ticker", "bidask")
"""The channels of :data:`~flight_md.schema.SCHEMA` ticks, in the order a ticket without
``channel=`` looks for a symbol."""
DEFAULT_BOOK_DEPTH: Final = 10
MAX_BOOK_DEPTH: Final = 1000
MEMORY_POOL: Final = pa.system_memory_pool()
_NAN: Final = math.nan

LEVEL: Final = pa.struct([pa.field("price", pa.float64(), nullable=False),
                          pa.field("amount", pa.float64(), nullable=False)])
"""One price level of a book side."""
_LEVELS: Final = pa.list_(pa.field("item", LEVEL, nullable=False))

TRADE_SCHEMA: Final = pa.schema([
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("timestamp", pa.int64(), nullable=False),
    pa.field("trade_id", pa.string()),
    pa.field("price", pa.float64(), nullable=False),
    pa.field("amount", pa.float64(), nullable=False),
    pa.field("side", pa.string()),
    pa.field("receive_timestamp", pa.int64(), nullable=False),
])
"""One row per trade: exchange trade time (ms), the id as the exchange gives it (null where it
has none), price, amount (ccxt's unified amount: base units on spot markets, contracts on
derivatives), the taker's side (``buy``/``sell``, null where the venue does not say) and the
local receive time."""

BOOK_SCHEMA: Final = pa.schema([
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("timestamp", pa.int64(), nullable=False),
    pa.field("bids", _LEVELS, nullable=False),
    pa.field("asks", _LEVELS, nullable=False),
    pa.field("nonce", pa.int64()),
    pa.field("receive_timestamp", pa.int64(), nullable=False),
])
"""One row per book update: the top N levels of each side, best first, the venue's sequence
number or update id where it has one (``nonce``), exchange and receive times."""

_SIDE_CODES: Final = {"buy": 1.0, "sell": 2.0, None: 0.0}
_SIDES: Final = pa.array([None, "buy", "sell"], pa.string())


def _stored(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name not in ("symbol", "exchange")])


def _view(flat: array[float], rows: int, width: int) -> np.ndarray:
    return np.frombuffer(flat, dtype=np.float64, count=rows * width).reshape(rows, width)


def _floats(values: np.ndarray) -> pa.Array:
    return pa.array(np.ascontiguousarray(values), from_pandas=True, memory_pool=MEMORY_POOL)


def _ints(values: np.ndarray) -> pa.Array:
    return pa.array(np.ascontiguousarray(values).astype(np.int64), memory_pool=MEMORY_POOL)


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """What the store needs to know about one channel.

    Attributes:
        name: The channel (``ticker``, ``bidask``, ``trades``, ``book``).
        schema: The public schema of its rows.
        width: float64 values per pending row.
        depth: Book levels per side kept (``book`` only; 0 otherwise).
    """

    name: str
    schema: pa.Schema
    width: int
    depth: int = 0

    @property
    def stored(self) -> pa.Schema:
        """The ring's columns: :attr:`schema` without ``symbol`` and ``exchange``."""
        return _stored(self.schema)

    @property
    def has_ids(self) -> bool:
        """Rows carry a Python object beside their floats (the trade id)."""
        return self.name == "trades"

    def seal(self, flat: array[float], rows: int, ids: Sequence[str | None]) -> pa.RecordBatch:
        """Pending rows (``width`` floats each, plus ``ids`` for trades) as one stored batch."""
        values = _view(flat, rows, self.width)
        if self.name == "trades":
            columns = [_ints(values[:, 0]), pa.array(ids, pa.string(), memory_pool=MEMORY_POOL),
                       _floats(values[:, 1]), _floats(values[:, 2]),
                       _SIDES.take(pa.array(values[:, 3].astype(np.int8))),
                       _ints(values[:, 4])]
        elif self.name == "book":
            depth = self.depth
            columns = [_ints(values[:, 0]),
                       _side(values[:, 4:4 + 2 * depth], values[:, 2], depth),
                       _side(values[:, 4 + 2 * depth:4 + 4 * depth], values[:, 3], depth),
                       pa.array(values[:, 1], from_pandas=True).cast(pa.int64()),
                       _ints(values[:, -1])]
        else:
            floats = np.ascontiguousarray(values[:, 1:-1].T)
            columns = [_ints(values[:, 0]),
                       *(_floats(floats[i]) for i in range(self.width - 2)),
                       _ints(values[:, -1])]
        return pa.RecordBatch.from_arrays(columns, schema=self.stored)

    def empty(self) -> pa.RecordBatch:
        """An empty batch of :attr:`stored`."""
        return pa.RecordBatch.from_pylist([], schema=self.stored)


def _side(levels: np.ndarray, counts: np.ndarray, depth: int) -> pa.Array:
    """One book side: ``levels`` is ``rows x (2 depth)`` (price, amount pairs), ``counts``
    how many of each row's levels are real."""
    rows = len(counts)
    n = counts.astype(np.int32)
    pairs = levels.reshape(rows, depth, 2)
    mask = np.arange(depth)[None, :] < n[:, None]
    flat = pairs[mask]  # (sum(n), 2), row by row, best first
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(n, out=offsets[1:])
    struct = pa.StructArray.from_arrays(
        [pa.array(np.ascontiguousarray(flat[:, 0]), memory_pool=MEMORY_POOL),
         pa.array(np.ascontiguousarray(flat[:, 1]), memory_pool=MEMORY_POOL)],
        fields=list(LEVEL))
    return pa.ListArray.from_arrays(pa.array(offsets), struct, type=_LEVELS, pool=MEMORY_POOL)


TICKER_SPEC: Final = ChannelSpec("ticker", SCHEMA, len(NUMERIC_FIELDS))
BIDASK_SPEC: Final = ChannelSpec("bidask", SCHEMA, len(NUMERIC_FIELDS))
TRADES_SPEC: Final = ChannelSpec("trades", TRADE_SCHEMA, 5)


def spec_for(channel: str, book_depth: int = DEFAULT_BOOK_DEPTH) -> ChannelSpec:
    """The spec of ``channel`` (``book`` at ``book_depth`` levels a side).

    Raises:
        ValueError: Unknown channel, or a depth outside 1..:data:`MAX_BOOK_DEPTH`.
    """
    if channel == "ticker":
        return TICKER_SPEC
    if channel == "bidask":
        return BIDASK_SPEC
    if channel == "trades":
        return TRADES_SPEC
    if channel == "book":
        if isinstance(book_depth, bool) or not isinstance(book_depth, int) \
                or not 1 <= book_depth <= MAX_BOOK_DEPTH:
            raise ValueError(f"book depth must be an integer from 1 to {MAX_BOOK_DEPTH}, "
                             f"got {book_depth!r}")
        return ChannelSpec("book", BOOK_SCHEMA, 5 + 4 * book_depth, book_depth)
    raise ValueError(f"unknown channel {channel!r}; expected one of: {', '.join(CHANNELS)}")


def schema_for(channel: str | None) -> pa.Schema:
    """The public schema of ``channel`` (``None``: the ticker-like :data:`SCHEMA`)."""
    if channel is None or channel in TICKER_LIKE:
        return SCHEMA
    return spec_for(channel).schema


def trade_row(timestamp: int, price: float, amount: float, side: str | None,
              receive_timestamp: int) -> tuple[float, float, float, float, float]:
    """A trade's pending row (unchecked: :meth:`MarketDataBuffer.append_trade` checks).

    Raises:
        KeyError: ``side`` is not ``buy``, ``sell`` or ``None``.
    """
    return (timestamp, price, amount, _SIDE_CODES[side], receive_timestamp)


def book_row(timestamp: int, bids: Sequence[Sequence[float]], asks: Sequence[Sequence[float]],
             nonce: int | None, receive_timestamp: int, depth: int) -> list[float]:
    """A book update's pending row: the first ``depth`` levels of each side, NaN-padded.

    Raises:
        ValueError: A level's price or amount is not a finite number.
    """
    nb = min(len(bids), depth)
    na = min(len(asks), depth)
    row: list[float] = [timestamp, _NAN if nonce is None else nonce, nb, na]
    for side, n in ((bids, nb), (asks, na)):
        for i in range(n):
            level = side[i]
            price = level[0]
            amount = level[1]
            if not (math.isfinite(price) and math.isfinite(amount)):
                raise ValueError(f"book level {i + 1} is not finite: {price!r} {amount!r}")
            row.append(price)
            row.append(amount)
        row.extend((_NAN, _NAN) * (depth - n))
    row.append(receive_timestamp)
    return row


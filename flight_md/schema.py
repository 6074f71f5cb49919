"""The tick model and its Arrow schema.

:class:`MarketTick` keeps the field names, order and types of the original design, with
``receive_timestamp`` (local wall-clock receive time, Unix ms) appended last. Missing values are
``None`` in Python and nulls in Arrow; nothing invents a 0 or a NaN.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

import pyarrow as pa

__all__ = [
    "EVENT_SCHEMA",
    "FLOAT_FIELDS",
    "NUMERIC_FIELDS",
    "NUMERIC_SCHEMA",
    "SCHEMA",
    "MarketTick",
    "now_ms",
]


@dataclass(frozen=True, slots=True)
class MarketTick:
    """One market data update for one symbol on one exchange.

    Attributes:
        symbol: Unified ccxt symbol, e.g. ``"BTC/USDT"``.
        timestamp: Exchange time, Unix milliseconds (the receive time when the exchange
            sends none, e.g. Binance ``bookTicker``).
        price: Last traded price; for best bid/ask channels, which carry no trade, the
            mid price ``(bid + ask) / 2``.
        volume: 24h rolling base volume, or ``None`` where the channel has none (best
            bid/ask). The original design typed it ``float``; it is optional here because
            flight_md never invents a 0 for a value the exchange did not send.
        bid: Best bid, or ``None``.
        ask: Best ask, or ``None``.
        high: 24h rolling high, or ``None``.
        low: 24h rolling low, or ``None``.
        open: 24h rolling open, or ``None``.
        close: Last close (usually equal to ``price``), or ``None``.
        exchange: ccxt exchange id, e.g. ``"binance"``.
        receive_timestamp: Local wall-clock time the update was received, Unix ms.
    """

    symbol: str
    timestamp: int
    price: float
    volume: float | None
    bid: float | None
    ask: float | None
    high: float | None
    low: float | None
    open: float | None
    close: float | None
    exchange: str
    receive_timestamp: int

    def to_row(self) -> tuple[int, float, float | None, float | None, float | None, float | None,
                              float | None, float | None, float | None, int]:
        """The numeric part of the tick in :data:`NUMERIC_SCHEMA` order."""
        return (self.timestamp, self.price, self.volume, self.bid, self.ask, self.high,
                self.low, self.open, self.close, self.receive_timestamp)


SCHEMA: Final = pa.schema([
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("timestamp", pa.int64(), nullable=False),
    pa.field("price", pa.float64(), nullable=False),
    pa.field("volume", pa.float64()),
    pa.field("bid", pa.float64()),
    pa.field("ask", pa.float64()),
    pa.field("high", pa.float64()),
    pa.field("low", pa.float64()),
    pa.field("open", pa.float64()),
    pa.field("close", pa.float64()),
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("receive_timestamp", pa.int64(), nullable=False),
])
"""The schema of every tick table flight_md serves."""

NUMERIC_FIELDS: Final = ("timestamp", "price", "volume", "bid", "ask", "high", "low", "open",
                         "close", "receive_timestamp")
"""The stored columns, in the order of :meth:`MarketTick.to_row`."""

FLOAT_FIELDS: Final = NUMERIC_FIELDS[1:-1]

NUMERIC_SCHEMA: Final = pa.schema([SCHEMA.field(name) for name in NUMERIC_FIELDS])
"""What the buffer stores: symbol and exchange are constant per buffer and materialised on read."""

EVENT_SCHEMA: Final = pa.schema([
    pa.field("timestamp", pa.int64(), nullable=False),
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("symbols", pa.list_(pa.string()), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
])
"""The schema of the ``@events`` log."""


def now_ms() -> int:
    """Local wall-clock time, Unix milliseconds."""
    return time.time_ns() // 1_000_000

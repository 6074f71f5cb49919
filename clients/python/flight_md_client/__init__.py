"""flight_md_client: the analyst's client for a flight_md market data server.

::

    from datetime import timedelta
    from flight_md_client import MarketDataClient

    with MarketDataClient("grpc://127.0.0.1:8815") as md:
        md.symbols()                                      # what is buffered
        ticks = md.latest("BTC/USDT", 500)                # pyarrow.Table
        df = md.range_pandas("BTC/USDT", start=timedelta(minutes=5))
        trades = md.trades("BTC/USDT", start="5m")        # every trade of the last 5 minutes
        bars = md.bars_pandas("BTC/USDT", "1m")           # OHLCV from trades, by the server
        book = md.book("BTC/USDT", latest=1)              # the top-N book now
        for batch in md.tail("BTC/USDT"):                 # live, until close() or Ctrl-C
            print(batch.to_pylist())

Depends on pyarrow only; ``pip install 'flight-md-client[pandas]'`` / ``[polars]`` for the data
frame helpers.
"""

from __future__ import annotations

from flight_md_client.client import (
    BAR_INTERVALS,
    CHANNELS,
    DEFAULT_LOCATION,
    MarketDataClient,
    SymbolInfo,
    ticket,
)
from flight_md_client.errors import (
    ConnectionFailed,
    FlightMdClientError,
    InvalidLocation,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServerError,
    ServerShuttingDown,
    SlowConsumer,
    TimedOut,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from flight_md_client.frames import to_pandas, to_polars, with_datetimes
from flight_md_client.tail import LiveTail, TailEnd
from flight_md_client.times import TimeLike, format_ms, to_ms

__all__ = [
    "BAR_INTERVALS",
    "CHANNELS",
    "DEFAULT_LOCATION",
    "ConnectionFailed",
    "FlightMdClientError",
    "InvalidLocation",
    "InvalidRequest",
    "LiveTail",
    "MarketDataClient",
    "NotFound",
    "PermissionDenied",
    "ServerError",
    "ServerShuttingDown",
    "SlowConsumer",
    "SymbolInfo",
    "TailEnd",
    "TimeLike",
    "TimedOut",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "format_ms",
    "ticket",
    "to_ms",
    "to_pandas",
    "to_polars",
    "with_datetimes",
]

__version__ = "0.1.0"

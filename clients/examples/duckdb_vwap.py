"""DuckDB over pulled trades: the VWAP and 1-second OHLCV bars in SQL, straight on Arrow.

Run against a server that streams trades (``flight-md serve --demo`` streams them, or
``flight-md serve --exchange binance --symbols BTC/USDT --channel ticker,trades``)::

    python clients/examples/duckdb_vwap.py --symbol BTC/USDT --minutes 5

Every trade of the range arrives as a ``pyarrow.Table`` (``md.trades()``); DuckDB scans it in
place (no copy, no pandas). The VWAP is the real one, ``sum(price * amount) / sum(amount)``
over the exchange's own trades, each exactly once. ``amount`` is ccxt's unified amount: base
units on spot markets, contracts on derivatives (the contract size is in ``@markets``).

The same bars also come ready-made from the server (``md.bars(symbol, "1s")``, computed in
Arrow); the script checks that DuckDB's and the server's agree.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import duckdb
import pyarrow as pa
from flight_md_client import FlightMdClientError, MarketDataClient

SETTLE_MS = 1000
"""The range ends this long before now: a trade's exchange time is at most about this far
behind its arrival, so the range is complete when it is read."""

SUMMARY_SQL = """
    SELECT count(*)                                           AS trades,
           epoch_ms(min(timestamp))                           AS first,
           epoch_ms(max(timestamp))                           AS last,
           sum(price * amount) / nullif(sum(amount), 0)       AS vwap,
           sum(amount)                                        AS volume,
           sum(price * amount)                                AS notional,
           sum(amount) FILTER (WHERE side = 'buy')            AS taker_buy_volume,
           sum(amount) FILTER (WHERE side = 'sell')           AS taker_sell_volume,
           min(price)                                         AS low,
           max(price)                                         AS high
    FROM trades
"""

# ``seq`` is the arrival order: among trades of one millisecond, the first to arrive opens
# the bar and the last closes it (as the server's bars do).
BARS_SQL = """
    SELECT (timestamp // 1000) * 1000                         AS bar_start,
           arg_min(price, (timestamp, seq))                   AS open,
           max(price)                                         AS high,
           min(price)                                         AS low,
           arg_max(price, (timestamp, seq))                   AS close,
           sum(amount)                                        AS volume,
           sum(price * amount) / nullif(sum(amount), 0)       AS vwap,
           count(*)                                           AS trades
    FROM trades
    GROUP BY bar_start
    ORDER BY bar_start
"""


def _arrow(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    result = relation.arrow()  # a Table in DuckDB 1.x, a RecordBatchReader in 2.x
    return result.read_all() if isinstance(result, pa.RecordBatchReader) else result


def _connect(trades: pa.Table) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("trades", trades.append_column("seq", pa.array(range(trades.num_rows),
                                                                 pa.int64())))
    return con


def summary(trades: pa.Table) -> pa.Table:
    """One row: trade count, first/last time, VWAP, volume, notional, taker buy/sell volume,
    low and high."""
    return _arrow(_connect(trades).sql(SUMMARY_SQL))


def ohlcv_bars(trades: pa.Table) -> pa.Table:
    """1-second OHLCV bars, only those with trades: the columns of the server's bars."""
    return _arrow(_connect(trades).sql(BARS_SQL))


def same_bars(ours: pa.Table, theirs: pa.Table) -> bool:
    """Whether two bar tables agree: exactly on times, prices and counts, to rounding on the
    sums (``volume``, ``vwap``), which depend on the order of summation."""
    a, b = ours.to_pylist(), theirs.to_pylist()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for name in ("bar_start", "open", "high", "low", "close", "trades"):
            if x[name] != y[name]:
                return False
        for name in ("volume", "vwap"):
            if (x[name] is None) != (y[name] is None) or (
                    x[name] is not None and not math.isclose(x[name], y[name], rel_tol=1e-9)):
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--location",
                        default=os.environ.get("FLIGHT_MD_LOCATION", "grpc://127.0.0.1:8815"))
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--exchange", default=None)
    parser.add_argument("--minutes", type=float, default=5.0, help="how far back (default 5)")
    parser.add_argument("--bars", type=int, default=10, help="bars to print (default 10)")
    args = parser.parse_args(argv)

    # One range for both reads, so that DuckDB and the server see the same trades; it ends a
    # second ago, so that trades still on their way (exchange time) do not fall in between.
    end = time.time_ns() // 1_000_000 - SETTLE_MS
    start = end - int(args.minutes * 60_000)
    try:
        with MarketDataClient(args.location) as md:
            trades = md.trades(args.symbol, start=start, end=end, exchange=args.exchange,
                               columns=["timestamp", "price", "amount", "side"])
            served = md.bars(args.symbol, "1s", start=start, end=end, exchange=args.exchange)
    except FlightMdClientError as exc:
        print(f"duckdb_vwap: {exc}", file=sys.stderr)
        return 1
    print(f"{trades.num_rows} trades of {args.symbol} in the {args.minutes:g} minutes up to "
          "a second ago")
    if trades.num_rows == 0:
        return 0

    for key, value in summary(trades).to_pylist()[0].items():
        print(f"  {key:>17}: {value}")

    bars = ohlcv_bars(trades)
    print(f"\n{bars.num_rows} one-second bars (the last {min(args.bars, bars.num_rows)}):")
    con = duckdb.connect()
    con.register("bars", bars.slice(max(0, bars.num_rows - args.bars)))
    con.sql("SELECT epoch_ms(bar_start) AS bar, * EXCLUDE (bar_start) FROM bars").show()
    print(f"the server's bars=1s agree with DuckDB's: {same_bars(bars, served)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

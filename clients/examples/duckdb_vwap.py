"""DuckDB over a pulled range: VWAP and 1-second OHLC bars in SQL, straight on the Arrow table.

Run against a server (``flight-md serve --demo`` in another terminal)::

    python clients/examples/duckdb_vwap.py --symbol BTC/USDT --minutes 5

The range arrives as a ``pyarrow.Table``; DuckDB scans it in place (no copy, no pandas).

About the volume: ticker updates carry the exchange's *24-hour rolling* base volume, not the
size of a trade. The traded volume between two updates is therefore estimated as the increase
of that rolling volume (clipped at zero, since trades leaving the 24-hour window make it
fall). On a ``bidask`` stream there is no volume at all, and the VWAP is null; the
time-weighted mean price (TWAP) is reported either way.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

import duckdb
import pyarrow as pa
from flight_md_client import FlightMdClientError, MarketDataClient

# One row per tick with a real timestamp and the estimated traded volume since the last tick.
TRADES_SQL = """
    SELECT epoch_ms(timestamp)                         AS ts,
           timestamp                                    AS ms,
           price,
           bid,
           ask,
           greatest(volume - lag(volume) OVER (ORDER BY timestamp, receive_timestamp), 0)
                                                        AS traded
    FROM ticks
"""

VWAP_SQL = f"""
    WITH trades AS ({TRADES_SQL}),
    spans AS (
        SELECT *, coalesce(lead(ms) OVER (ORDER BY ms) - ms, 0) AS held_ms FROM trades
    )
    SELECT count(*)                                          AS ticks,
           min(ts)                                           AS first,
           max(ts)                                           AS last,
           sum(price * traded) / nullif(sum(traded), 0)      AS vwap,
           sum(price * held_ms) / nullif(sum(held_ms), 0)    AS twap,
           sum(traded)                                       AS traded_volume,
           avg(ask - bid)                                    AS mean_spread
    FROM spans
"""

BARS_SQL = f"""
    WITH trades AS ({TRADES_SQL})
    SELECT date_trunc('second', ts)   AS bar,
           arg_min(price, ms)         AS open,
           max(price)                 AS high,
           min(price)                 AS low,
           arg_max(price, ms)         AS close,
           sum(traded)                AS volume,
           count(*)                   AS ticks
    FROM trades
    GROUP BY bar
    ORDER BY bar
"""


def _arrow(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    result = relation.arrow()  # a Table in DuckDB 1.x, a RecordBatchReader in 2.x
    return result.read_all() if isinstance(result, pa.RecordBatchReader) else result


def vwap(ticks: pa.Table) -> pa.Table:
    """One row: tick count, first/last time, VWAP, TWAP, traded volume, mean spread."""
    con = duckdb.connect()
    con.register("ticks", ticks)
    return _arrow(con.sql(VWAP_SQL))


def ohlc_bars(ticks: pa.Table) -> pa.Table:
    """1-second OHLC bars: bar (UTC), open, high, low, close, volume, ticks."""
    con = duckdb.connect()
    con.register("ticks", ticks)
    return _arrow(con.sql(BARS_SQL))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--location",
                        default=os.environ.get("FLIGHT_MD_LOCATION", "grpc://127.0.0.1:8815"))
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--exchange", default=None)
    parser.add_argument("--minutes", type=float, default=5.0, help="how far back (default 5)")
    parser.add_argument("--bars", type=int, default=10, help="bars to print (default 10)")
    args = parser.parse_args(argv)

    try:
        with MarketDataClient(args.location) as md:
            ticks = md.range(args.symbol, start=timedelta(minutes=args.minutes),
                             exchange=args.exchange,
                             columns=["timestamp", "price", "bid", "ask", "volume",
                                      "receive_timestamp"])
    except FlightMdClientError as exc:
        print(f"duckdb_vwap: {exc}", file=sys.stderr)
        return 1
    print(f"{ticks.num_rows} ticks of {args.symbol} in the last {args.minutes:g} minutes")
    if ticks.num_rows == 0:
        return 0

    summary = vwap(ticks).to_pylist()[0]
    for key, value in summary.items():
        print(f"  {key:>14}: {value}")

    bars = ohlc_bars(ticks)
    print(f"\n{bars.num_rows} one-second bars (the last {min(args.bars, bars.num_rows)}):")
    con = duckdb.connect()
    con.register("bars", bars.slice(max(0, bars.num_rows - args.bars)))
    con.sql("SELECT * FROM bars").show()
    return 0


if __name__ == "__main__":
    sys.exit(main())

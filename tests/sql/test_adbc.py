"""Flight SQL through the real ADBC driver (Go, via adbc_driver_flightsql's DB-API), polars and
pandas: queries with and without parameters, the catalogue, the tables over ring and history.

Expected values are computed here from the same rows the fixture wrote (tests/sql/conftest.py),
never copied from a server answer.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import flight_md
from flight_md.core.bars import BarInterval, bars
from flight_md.core.channels import TRADE_SCHEMA
from flight_md.schema import SCHEMA
from tests.sql.conftest import (
    HISTORY_ROWS,
    RING_FROM,
    SERIES,
    STEP_MS,
    T0,
    TOTAL,
    MemorySource,
    trades_of,
)


def all_trades(exchange: str, symbol: str) -> pa.Table:
    """Every trade of one series exactly once: what ``trades`` must hold for it."""
    return trades_of(exchange, symbol, range(TOTAL)).drop(["sequence"])


def run(adbc: Any, sql: str, params: Any = None) -> pa.Table:
    with adbc.cursor() as cursor:
        cursor.execute(sql, parameters=params)
        table: pa.Table = cursor.fetch_arrow_table()
    return table


def test_trades_span_history_and_ring_without_duplicates(adbc: Any) -> None:
    assert HISTORY_ROWS > RING_FROM  # the fixture overlaps history and ring: the seam matters
    got = run(adbc, "SELECT exchange, symbol, count(*) AS n, count(DISTINCT trade_id) AS ids, "
                    "min(timestamp) AS lo, max(timestamp) AS hi "
                    "FROM trades GROUP BY ALL ORDER BY ALL")
    want = [{"exchange": e, "symbol": s, "n": TOTAL, "ids": TOTAL, "lo": T0,
             "hi": T0 + (TOTAL - 1) * STEP_MS} for e, s in sorted(SERIES)]
    assert got.to_pylist() == want


def test_select_star_has_the_channel_columns_and_rows(adbc: Any) -> None:
    got = run(adbc, "SELECT * FROM trades WHERE exchange = 'binance' AND symbol = 'ETH/USDT' "
                    "ORDER BY timestamp")
    assert got.schema.names == TRADE_SCHEMA.names
    assert got.cast(TRADE_SCHEMA).equals(all_trades("binance", "ETH/USDT"))


def test_parameters_are_bound_through_do_put(adbc: Any) -> None:
    since = T0 + 120 * STEP_MS
    sql = "SELECT count(*) AS n FROM trades WHERE symbol = ? AND exchange = ? AND timestamp >= ?"
    want = sum(1 for s in range(TOTAL) if T0 + s * STEP_MS >= since)
    assert run(adbc, sql, ("BTC/USDT", "bybit", since)).to_pylist() == [{"n": want}]
    # The same statement again with other values: the new binding is the one used.
    assert run(adbc, sql, ("BTC/USDT", "binance", T0)).to_pylist() == [{"n": TOTAL}]
    assert run(adbc, "SELECT $1::VARCHAR || '/' || $2::VARCHAR AS pair", ("BTC", "USDT")) \
        .to_pylist() == [{"pair": "BTC/USDT"}]


def test_ticker_ring_only_and_latest(adbc: Any, source: MemorySource) -> None:
    got = run(adbc, "SELECT * FROM ticker WHERE symbol = 'BTC/USDT' AND exchange = 'binance' "
                    "ORDER BY timestamp DESC LIMIT 10")
    ring = source.rings["ticker"]
    mine = ring.filter(pc.equal(ring["exchange"], "binance"))
    want = mine.slice(mine.num_rows - 10).to_pylist()[::-1]
    assert got.cast(SCHEMA).to_pylist() == want


def test_bars_1m_equal_core_bars_over_every_trade(adbc: Any) -> None:
    got = run(adbc, "SELECT * FROM bars_1m ORDER BY exchange, symbol, bar_start")
    rows = []
    for exchange, symbol in sorted(SERIES):
        for bar in bars(all_trades(exchange, symbol), BarInterval.M1).to_pylist():
            rows.append({"exchange": exchange, "symbol": symbol, **bar})
    assert len(rows) > len(SERIES)  # several bars per series, across midnight
    floats = ("volume", "vwap")  # sums: equal to rounding whatever the summation order
    exact = [{k: v for k, v in r.items() if k not in floats} for r in got.to_pylist()]
    assert exact == [{k: v for k, v in r.items() if k not in floats} for r in rows]
    for name in floats:
        assert got[name].to_pylist() == pytest.approx([r[name] for r in rows])


def test_events_and_status_tables(adbc: Any, source: MemorySource) -> None:
    assert run(adbc, "SELECT kind, exchange FROM events").to_pylist() == [
        {"kind": "connected", "exchange": "binance"}]
    assert run(adbc, "SELECT sum(rows) AS n FROM status").to_pylist() == [
        {"n": TOTAL * len(SERIES)}]


def test_only_named_tables_are_fetched(adbc: Any, source: MemorySource) -> None:
    source.calls.clear()
    run(adbc, "SELECT count(*) FROM ticker")
    assert "ring:ticker" in source.calls and "ring:trades" not in source.calls


def test_get_info(adbc: Any) -> None:
    info = adbc.adbc_get_info()
    assert info["vendor_name"] == "flight-md"
    assert info["vendor_version"] == flight_md.__version__
    assert info["vendor_arrow_version"] == pa.__version__


def test_get_objects_lists_every_table(adbc: Any) -> None:
    objects = adbc.adbc_get_objects().read_all().to_pylist()
    assert [c["catalog_name"] for c in objects] == ["memory"]
    schemas = objects[0]["catalog_db_schemas"]
    assert [s["db_schema_name"] for s in schemas] == ["main"]
    tables = {t["table_name"]: t for t in schemas[0]["db_schema_tables"]}
    assert sorted(tables) == ["bars_1m", "events", "status", "ticker", "trades"]
    assert tables["bars_1m"]["table_type"] == "VIEW"
    assert [c["column_name"] for c in tables["trades"]["table_columns"]] == TRADE_SCHEMA.names
    only = adbc.adbc_get_objects(depth="tables", table_name_filter="t%").read_all().to_pylist()
    names = [t["table_name"] for t in only[0]["catalog_db_schemas"][0]["db_schema_tables"]]
    assert sorted(names) == ["ticker", "trades"]


def test_get_table_schema_is_the_channel_schema(adbc: Any) -> None:
    assert adbc.adbc_get_table_schema("trades") == TRADE_SCHEMA
    assert adbc.adbc_get_table_schema("ticker") == SCHEMA
    assert adbc.adbc_get_table_types() == ["TABLE", "VIEW"]


def test_polars_read_database(adbc: Any) -> None:
    pl = pytest.importorskip("polars")
    frame = pl.read_database(
        "SELECT exchange, count(*) AS n FROM trades WHERE symbol = 'BTC/USDT' "
        "GROUP BY exchange ORDER BY exchange", connection=adbc)
    assert frame.to_dicts() == [{"exchange": "binance", "n": TOTAL}, {"exchange": "bybit", "n": TOTAL}]


def test_pandas_read_sql(adbc: Any) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.read_sql("SELECT symbol, avg(price) AS mean FROM trades WHERE exchange = 'binance' "
                        "GROUP BY symbol ORDER BY symbol", adbc)
    want = {s: pc.mean(all_trades("binance", s)["price"]).as_py() for s in ("BTC/USDT", "ETH/USDT")}
    assert dict(zip(frame["symbol"], frame["mean"], strict=True)) == pytest.approx(want)


def test_planning_takes_no_snapshot(sql_server: Any, source: MemorySource) -> None:
    from pyarrow import flight

    from tests.sql.test_safety import statement

    source.calls.clear()
    with flight.FlightClient(f"grpc://127.0.0.1:{sql_server.port}") as client:
        info = client.get_flight_info(statement("SELECT * FROM trades"))
        assert info.schema.names == TRADE_SCHEMA.names
        assert source.calls == []  # GetFlightInfo plans over empty tables of the same schemas
        client.do_get(info.endpoints[0].ticket).read_all()
    assert source.calls == ["ring:trades"]


def test_parameter_types_change_the_result_schema(adbc: Any) -> None:
    assert pa.types.is_integer(run(adbc, "SELECT ? AS x", (1,)).schema.field("x").type)
    assert run(adbc, "SELECT ? AS x", ("a",)).schema.field("x").type == pa.string()

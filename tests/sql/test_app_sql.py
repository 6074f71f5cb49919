"""Flight SQL in the assembled server (``flight-md serve`` as MarketDataApp): the demo's live
trades, tickers and books through the real ADBC driver, beside the native tickets on one port,
with the SQL settings from ServerConfig."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from adbc_driver_flightsql import dbapi
from pyarrow import flight

from flight_md.app import MarketDataApp
from flight_md.config import ServerConfig
from flight_md.core.bars import BarInterval, bars
from tests.support import MS, until


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketDataApp]:
    data = tmp_path_factory.mktemp("sql-app") / "data"
    config = ServerConfig(demo=("binance",), port=0, data_dir=data, sql_timeout=1.0,
                          sql_max_concurrent=2, sql_memory_limit="256MiB")
    with MarketDataApp(config) as running:
        trades = running.store.buffer("trades")
        until(lambda: trades.keys() and all(trades.count(s, "binance") >= 3
                                            for _, s in trades.keys()), 30 * MS,  # noqa: SIM118
              "trades of every demo symbol")
        running.persistence.flush()  # some rows in the Parquet history, some in the rings
        yield running


def sql(app: MarketDataApp, text: str, params: Any = None) -> pa.Table:
    with dbapi.connect(app.location, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(text, parameters=params)
        table: pa.Table = cursor.fetch_arrow_table()
    return table


def test_sql_and_native_tickets_agree_on_one_port(app: MarketDataApp) -> None:
    client = flight.connect(app.location)
    native = client.do_get(flight.Ticket(b"BTC/USDT?channel=trades&start=0")).read_all()
    edge = native.column("timestamp")[-1].as_py() + 1  # rows stored after the pull are left out
    counted = sql(app, "SELECT count(*) AS n, count(DISTINCT trade_id) AS ids FROM trades "
                       "WHERE exchange = ? AND symbol = ? AND timestamp < ?",
                  ("binance", "BTC/USDT", edge)).to_pylist()[0]
    assert counted["n"] == counted["ids"] == native.filter(
        pa.compute.less(native.column("timestamp"), edge)).num_rows > 0
    got = sql(app, "SELECT * FROM bars_1m WHERE exchange = 'binance' AND symbol = 'BTC/USDT' "
                   f"AND bar_start < {edge // 60_000 * 60_000} ORDER BY bar_start")
    expected = bars(native.filter(pa.compute.less(native.column("timestamp"),
                                                  edge // 60_000 * 60_000)), BarInterval.M1)
    assert got.column("trades").to_pylist() == expected.column("trades").to_pylist()
    assert sql(app, "SELECT count(*) AS n FROM ticker WHERE symbol = 'ETH/USDT'")[0][0].as_py() > 0
    book = sql(app, "SELECT bids[1].price AS bid, asks[1].price AS ask FROM book "
                    "WHERE symbol = 'BTC/USDT' ORDER BY timestamp DESC LIMIT 5")
    assert 0 < book.num_rows <= 5
    assert all(b < a for b, a in zip(book.column("bid").to_pylist(),
                                     book.column("ask").to_pylist(), strict=True))
    # The native protocol is untouched beside it.
    assert client.do_get(flight.Ticket(b"BTC/USDT?latest=3")).read_all().num_rows == 3
    client.close()


def test_refused_and_bad_sql_are_invalid_argument_and_the_server_goes_on(
        app: MarketDataApp) -> None:
    with pytest.raises(dbapi.ProgrammingError, match="(?i)read-only|allowed"):
        sql(app, "CREATE TABLE x AS SELECT 1")
    with pytest.raises(dbapi.ProgrammingError, match="(?i)syntax|parser"):
        sql(app, "SELEC 1")
    assert sql(app, "SELECT 1 AS one").to_pylist() == [{"one": 1}]


def test_the_configured_timeout_cancels_a_long_query(app: MarketDataApp) -> None:
    with pytest.raises(dbapi.Error, match="(?i)timeout"):
        sql(app, "SELECT count(*) FROM range(100000000000) a")
    assert sql(app, "SELECT 2 AS two").to_pylist() == [{"two": 2}]


def test_every_channel_streamed_is_a_table(app: MarketDataApp) -> None:
    names = set(sql(app, "SHOW TABLES").column(0).to_pylist())
    assert {"ticker", "trades", "book", "bars_1m", "events", "status"} <= names

"""MarketDataClient over the trades and book channels and bars, against a real server.

The server holds known trades and books (``client_support.channel_market``); every expected
value is computed here from what was stored, never copied from the server's answer.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from client_support import BOOK_ROWS, ROWS, TRADE_ROWS, channel_market, followers
from flight_md_client import InvalidRequest, MarketDataClient, NotFound

from flight_md.core.bars import BAR_SCHEMA
from flight_md.core.channels import BOOK_SCHEMA, TRADE_SCHEMA
from flight_md.schema import SCHEMA, now_ms
from flight_md.service import FlightMarketDataServer
from tests.support import until


@pytest.fixture
def server() -> Iterator[FlightMarketDataServer]:
    with channel_market() as srv:
        yield srv


@pytest.fixture
def md(server: FlightMarketDataServer) -> Iterator[MarketDataClient]:
    with MarketDataClient(f"grpc://127.0.0.1:{server.port}", timeout=10.0) as client:
        yield client


def _trades(server: FlightMarketDataServer) -> list[dict[str, Any]]:
    return list(server.test_trades)  # type: ignore[attr-defined]


def _books(server: FlightMarketDataServer) -> list[dict[str, Any]]:
    return list(server.test_books)  # type: ignore[attr-defined]


def reference_bars(trades: list[dict[str, Any]], interval_ms: int) -> list[dict[str, Any]]:
    """OHLCV bars by the definition in flight_md.core.bars, one trade at a time."""
    bars: dict[int, dict[str, Any]] = {}
    for t in sorted(trades, key=lambda t: t["timestamp"]):  # stable: arrival order on ties
        start = t["timestamp"] // interval_ms * interval_ms
        bar = bars.setdefault(start, {"bar_start": start, "open": t["price"], "high": -math.inf,
                                      "low": math.inf, "volume": 0.0, "notional": 0.0,
                                      "trades": 0})
        bar["high"] = max(bar["high"], t["price"])
        bar["low"] = min(bar["low"], t["price"])
        bar["close"] = t["price"]
        bar["volume"] += t["amount"]
        bar["notional"] += t["price"] * t["amount"]
        bar["trades"] += 1
    out = []
    for start in sorted(bars):
        bar = bars[start]
        notional = bar.pop("notional")
        bar["vwap"] = notional / bar["volume"] if bar["volume"] else None
        out.append({name: bar[name] for name in BAR_SCHEMA.names})
    return out


def _close(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.keys() == e.keys()
        for name, value in e.items():
            if isinstance(value, float):
                assert a[name] == pytest.approx(value, rel=1e-12), name
            else:
                assert a[name] == value, name


# -- trades ----------------------------------------------------------------------------------


def test_trades_are_every_stored_trade_with_its_id_price_amount_and_side(
        md: MarketDataClient, server: FlightMarketDataServer) -> None:
    table = md.trades("BTC/USDT")
    assert table.schema.equals(TRADE_SCHEMA)
    assert table.to_pylist() == _trades(server)
    newest = md.trades("BTC/USDT", latest=3, columns=["trade_id", "price", "side"])
    assert newest.to_pylist() == [{k: t[k] for k in ("trade_id", "price", "side")}
                                  for t in _trades(server)[-3:]]
    start = _trades(server)[10]["timestamp"]
    end = _trades(server)[20]["timestamp"]
    assert md.trades("BTC/USDT", start, end).column("trade_id").to_pylist() == [
        t["trade_id"] for t in _trades(server)[10:20]]
    # The same rows through latest()/range() with channel=
    assert md.latest("BTC/USDT", 5, channel="trades").to_pylist() == _trades(server)[-5:]
    assert md.range("BTC/USDT", start, end, channel="trades").num_rows == 10


def test_trades_as_data_frames(md: MarketDataClient, server: FlightMarketDataServer) -> None:
    df = md.trades_pandas("BTC/USDT", latest=4)
    assert str(df.index.tz) == "UTC" and df.index.name == "timestamp"
    assert list(df["trade_id"]) == [t["trade_id"] for t in _trades(server)[-4:]]
    assert int(df.index[-1].timestamp() * 1000) == _trades(server)[-1]["timestamp"]
    frame = md.trades_polars("BTC/USDT", columns="timestamp,price,amount")
    assert frame.columns == ["timestamp", "price", "amount"] and frame.height == TRADE_ROWS
    assert str(frame.schema["timestamp"]) == "Datetime(time_unit='ms', time_zone='UTC')"
    assert frame["amount"].sum() == pytest.approx(sum(t["amount"] for t in _trades(server)))


def test_a_symbol_without_trades_is_not_found_with_its_channels(md: MarketDataClient) -> None:
    with pytest.raises(NotFound) as info:
        md.trades("ETH/USDT")
    assert info.value.message == "symbol 'ETH/USDT' has no trades channel; it has: ticker"
    with pytest.raises(InvalidRequest, match="unknown column 'bid' for channel 'trades'"):
        md.trades("BTC/USDT", columns=["bid"])


# -- book -------------------------------------------------------------------------------------


def test_book_is_the_top_ten_levels_after_every_update(md: MarketDataClient,
                                                       server: FlightMarketDataServer) -> None:
    table = md.book("BTC/USDT")
    assert table.schema.equals(BOOK_SCHEMA) and table.num_rows == BOOK_ROWS
    now = md.book("BTC/USDT", latest=1).to_pylist()[0]
    last = _books(server)[-1]
    assert now["nonce"] == last["nonce"] and now["timestamp"] == last["timestamp"]
    assert [[lv["price"], lv["amount"]] for lv in now["bids"]] == last["bids"][:10]
    assert [[lv["price"], lv["amount"]] for lv in now["asks"]] == last["asks"][:10]
    frame = md.book_polars("BTC/USDT")
    import polars as pl

    best = frame.select(
        bid=pl.col("bids").list.first().struct.field("price"),
        ask=pl.col("asks").list.first().struct.field("price"))
    assert best["bid"].to_list() == [b["bids"][0][0] for b in _books(server)]
    assert ((best["ask"] - best["bid"]) > 0).all()  # never crossed
    df = md.book_pandas("BTC/USDT", latest=2, columns=["timestamp", "bids"])
    assert df.index.name == "timestamp" and df["bids"].iloc[-1][0]["price"] == last["bids"][0][0]


# -- bars -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("interval", "ms"), [("1s", 1000), ("1m", 60_000), ("1h", 3_600_000)])
def test_bars_are_the_ohlcv_of_the_stored_trades(md: MarketDataClient,
                                                 server: FlightMarketDataServer, interval: str,
                                                 ms: int) -> None:
    table = md.bars("BTC/USDT", interval)
    assert table.schema.equals(BAR_SCHEMA)
    _close(table.to_pylist(), reference_bars(_trades(server), ms))


def test_bars_take_ranges_latest_columns_and_data_frames(md: MarketDataClient,
                                                         server: FlightMarketDataServer) -> None:
    trades = _trades(server)
    start, end = trades[50]["timestamp"], trades[250]["timestamp"]
    expected = reference_bars(trades[50:250], 1000)
    _close(md.bars("BTC/USDT", "1s", start, end).to_pylist(), expected)
    _close(md.bars("BTC/USDT", "1s", start, end, latest=2).to_pylist(), expected[-2:])
    closes = md.bars("BTC/USDT", "1s", start, end, columns=["bar_start", "close"])
    assert closes.column_names == ["bar_start", "close"]
    df = md.bars_pandas("BTC/USDT", "1m")
    assert df.index.name == "bar_start" and str(df.index.tz) == "UTC"
    assert int(df["trades"].sum()) == TRADE_ROWS
    frame = md.bars_polars("BTC/USDT", "1m")
    assert str(frame.schema["bar_start"]) == "Datetime(time_unit='ms', time_zone='UTC')"


def test_bad_bars_are_refused_with_what_is_allowed(md: MarketDataClient) -> None:
    with pytest.raises(InvalidRequest, match=r"invalid bars '2m'; expected one of: 1s, 1m, 5m, "
                                             r"15m, 1h, 1d"):
        md.bars("BTC/USDT", "2m")
    with pytest.raises(InvalidRequest, match="unknown column 'price' for bars"):
        md.bars("BTC/USDT", "1m", columns=["price"])
    with pytest.raises(TypeError, match="interval must be a str such as '1m'"):
        md.bars("BTC/USDT", 60)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="channel must be a str"):
        md.latest("BTC/USDT", channel=1)  # type: ignore[arg-type]


# -- listing and schemas ----------------------------------------------------------------------


def test_symbols_and_schemas_name_each_channel(md: MarketDataClient) -> None:
    listed = {(s.exchange, s.symbol, s.channel): s.records for s in md.symbols()}
    assert listed[("binance", "BTC/USDT", "trades")] == TRADE_ROWS
    assert listed[("binance", "BTC/USDT", "book")] == BOOK_ROWS
    ticker_like = [s for s in md.symbols() if s.symbol == "ETH/USDT"]
    assert [s.records for s in ticker_like] == [ROWS]
    trades = md.symbols(channel="trades")
    assert [(s.exchange, s.symbol) for s in trades] == [("binance", "BTC/USDT")]
    assert md.get(trades[0].ticket).num_rows == TRADE_ROWS
    assert md.schema("BTC/USDT", channel="trades").equals(TRADE_SCHEMA)
    assert md.schema("BTC/USDT", channel="book").equals(BOOK_SCHEMA)
    assert md.schema("BTC/USDT", bars="1m").equals(BAR_SCHEMA)
    assert md.schema("BTC/USDT").equals(SCHEMA)
    assert md.schema("BTC/USDT", channel="trades", columns="price,side").names == ["price",
                                                                                  "side"]


def test_the_snapshot_of_a_channel_is_each_symbols_newest_row(
        md: MarketDataClient, server: FlightMarketDataServer) -> None:
    last = md.snapshot(channel="trades").to_pylist()
    assert last == [_trades(server)[-1]]
    assert md.snapshot(channel="book", columns=["symbol", "nonce"]).to_pylist() == [
        {"symbol": "BTC/USDT", "nonce": _books(server)[-1]["nonce"]}]


# -- live tails -------------------------------------------------------------------------------


def test_tail_of_trades_delivers_each_new_trade_once(md: MarketDataClient,
                                                     server: FlightMarketDataServer) -> None:
    store = server.test_store  # type: ignore[attr-defined]
    trades_buffer = store.buffer("trades")
    got: list[dict[str, Any]] = []
    with md.tail("BTC/USDT", channel="trades", backlog=2,
                 columns=["trade_id", "price"]) as live:
        assert live.schema.names == ["trade_id", "price"]
        until(lambda: followers(trades_buffer, "BTC/USDT") == 1, 10, "the tail to open")
        base = now_ms()
        new = [(str(9_000_000 + i), 200.0 + i) for i in range(25)]

        def feed() -> None:
            for trade_id, price in new:
                trades_buffer.append_trade("binance", "BTC/USDT", base, trade_id, price, 1.0,
                                           "buy", base)

        threading.Thread(target=feed, daemon=True).start()
        for batch in live:
            got += batch.to_pylist()
            if len(got) >= 2 + len(new):
                break
    backlog = [{"trade_id": t["trade_id"], "price": t["price"]} for t in _trades(server)[-2:]]
    assert got == backlog + [{"trade_id": i, "price": p} for i, p in new]


def test_tail_of_bars_sends_each_bar_when_it_closes(md: MarketDataClient,
                                                    server: FlightMarketDataServer) -> None:
    trades_buffer = server.test_store.buffer("trades")  # type: ignore[attr-defined]
    second = (now_ms() // 1000 + 5) * 1000  # a bar that has no trades yet
    with md.tail("BTC/USDT", bars="1s") as live:
        assert live.schema.equals(BAR_SCHEMA)
        until(lambda: followers(trades_buffer, "BTC/USDT") == 1, 10, "the tail to open")
        for i, price in enumerate((10.0, 12.0, 9.0, 11.0)):
            trades_buffer.append_trade("binance", "BTC/USDT", second + i, f"b{i}", price, 2.0,
                                       None, second + i)
        # A trade well into a later bar closes the first one (whatever grace the server
        # gives late trades on the feed's clock).
        trades_buffer.append_trade("binance", "BTC/USDT", second + 3000, "b9", 50.0, 1.0,
                                   None, second + 3000)
        rows: list[dict[str, Any]] = []
        for batch in live:
            rows += batch.to_pylist()
            if any(r["bar_start"] == second for r in rows):
                break
    bar = next(r for r in rows if r["bar_start"] == second)
    assert bar == {"bar_start": second, "open": 10.0, "high": 12.0, "low": 9.0, "close": 11.0,
                   "volume": 8.0, "vwap": pytest.approx(10.5), "trades": 4}


def test_schema_of_a_tail_matches_the_channel(md: MarketDataClient) -> None:
    with md.tail("BTC/USDT", channel="book") as live:
        assert live.schema.equals(BOOK_SCHEMA)

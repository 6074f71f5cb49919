"""Trades, book tops and bars through a real Flight server and client (issue 12, serving side)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from pyarrow import flight

from flight_md.buffer import Store
from flight_md.core.bars import BAR_SCHEMA, BarInterval, bars
from flight_md.core.channels import BOOK_SCHEMA, TRADE_SCHEMA
from flight_md.events import EventLog
from flight_md.schema import SCHEMA, MarketTick, now_ms

MINUTE = 60_000


def get(client: flight.FlightClient, ticket: str) -> pa.Table:
    return client.do_get(flight.Ticket(ticket.encode())).read_all()


def act(client: flight.FlightClient, name: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else b""
    return json.loads(next(iter(client.do_action(flight.Action(name, data)))).body.to_pybytes())


def add_trades(store: Store, n: int, *, first: int = 0, start_ms: int = 0,
               symbol: str = "BTC/USDT", exchange: str = "binance", step_ms: int = 1_000) -> None:
    buffer = store.buffer("trades")
    for i in range(first, first + n):
        ts = start_ms + i * step_ms
        buffer.append_trade(exchange, symbol, ts, str(1_000 + i), 100.0 + (i % 7), 0.25 + i % 3,
                            "buy" if i % 2 else "sell", ts + 5)


@pytest.fixture
def served(md_server_factory: Callable[..., Any]) -> tuple[Store, flight.FlightClient, Any]:
    store = Store(10_000, book_depth=3)
    store.buffer("ticker").extend(
        MarketTick("BTC/USDT", i, 50.0 + i, None, None, None, None, None, None, None, "binance",
                   i + 1) for i in range(3))
    add_trades(store, 600)
    add_trades(store, 5, symbol="ETH/USDT")
    book = store.buffer("book")
    for n in range(4):
        book.append_book("binance", "BTC/USDT", 10 + n, [[100.0 - k, 1.0] for k in range(5)],
                         [[101.0 + k, 2.0] for k in range(2)], 500 + n, 20 + n)
    harness = md_server_factory(store.buffer("ticker"), EventLog(), store=store)
    return store, harness.client, harness


def test_each_channel_is_served_in_its_schema(served: tuple[Store, flight.FlightClient, Any]) -> None:
    _, client, _ = served
    trades = get(client, "BTC/USDT?channel=trades&latest=3")
    assert trades.schema == TRADE_SCHEMA
    assert trades.column("trade_id").to_pylist() == ["1597", "1598", "1599"]
    book = get(client, "BTC/USDT?channel=book&latest=1")
    assert book.schema == BOOK_SCHEMA
    row = book.to_pylist()[0]
    assert [level["price"] for level in row["bids"]] == [100.0, 99.0, 98.0]  # depth 3
    assert row["nonce"] == 503
    ticks = get(client, "BTC/USDT?latest=2")  # no channel: the ticker, as before
    assert ticks.schema == SCHEMA and ticks.num_rows == 2
    ranged = get(client, "BTC/USDT?channel=trades&start=10000&end=13000&columns=trade_id,price")
    assert ranged.column("trade_id").to_pylist() == ["1010", "1011", "1012"]


def test_bars_equal_duckdb_over_the_same_trades(
        served: tuple[Store, flight.FlightClient, Any]) -> None:
    store, client, _ = served
    got = get(client, "BTC/USDT?channel=trades&bars=1m")
    assert got.schema == BAR_SCHEMA
    trades = store.buffer("trades").get_range_sync("BTC/USDT")  # noqa: F841 - DuckDB reads it by name
    expected = duckdb.sql("""
        SELECT (timestamp // 60000) * 60000 AS bar_start,
               arg_min(price, timestamp) AS open, max(price) AS high, min(price) AS low,
               arg_max(price, timestamp) AS close, sum(amount) AS volume,
               sum(price * amount) / sum(amount) AS vwap, count(*) AS trades
        FROM trades GROUP BY 1 ORDER BY 1""").arrow().read_all()
    assert got.num_rows == 10
    for name in ("bar_start", "open", "high", "low", "close", "trades"):
        assert got.column(name).to_pylist() == expected.column(name).to_pylist(), name
    for name in ("volume", "vwap"):
        assert got.column(name).to_pylist() == pytest.approx(expected.column(name).to_pylist())
    # bars= without channel means trades; latest=N keeps the newest N bars; columns project
    newest = get(client, "BTC/USDT?bars=1m&latest=2&columns=bar_start,trades")
    assert newest.to_pylist() == [{"bar_start": 8 * MINUTE, "trades": 60},
                                  {"bar_start": 9 * MINUTE, "trades": 60}]
    assert get(client, f"BTC/USDT?bars=5m&start={5 * MINUTE}").column(
        "trades").to_pylist() == [300]


def test_flight_listing_and_schemas_name_every_channel(
        served: tuple[Store, flight.FlightClient, Any]) -> None:
    _, client, _ = served
    infos = {tuple(p.decode() for p in info.descriptor.path): info
             for info in client.list_flights()}
    assert {("binance", "BTC/USDT"), ("binance", "BTC/USDT", "trades"),
            ("binance", "BTC/USDT", "book"), ("binance", "ETH/USDT", "trades")} <= set(infos)
    trades_info = infos[("binance", "BTC/USDT", "trades")]
    assert trades_info.schema == TRADE_SCHEMA and trades_info.total_records == 600
    assert get(client, trades_info.endpoints[0].ticket.ticket.decode()).num_rows == 600
    schema = client.get_schema(flight.FlightDescriptor.for_path("binance", "BTC/USDT", "book"))
    assert schema.schema == BOOK_SCHEMA
    bar_info = client.get_flight_info(flight.FlightDescriptor.for_command(b"BTC/USDT?bars=1m"))
    assert bar_info.schema == BAR_SCHEMA and bar_info.total_records == 10


def test_missing_channels_are_refused_with_the_channels_there_are(
        served: tuple[Store, flight.FlightClient, Any]) -> None:
    _, client, _ = served
    with pytest.raises(pa.ArrowKeyError,
                       match="add channel= one of: trades"):
        get(client, "ETH/USDT")  # only trades: a ticket without channel says what to add
    with pytest.raises(pa.ArrowKeyError, match="has no bidask channel; it has: ticker, "
                                               "trades, book"):
        get(client, "BTC/USDT?channel=bidask")
    with pytest.raises(pa.ArrowKeyError, match="no bidask channel is streamed; streamed: "
                                               "ticker, trades, book"):
        get(client, "SOL/USDT?channel=bidask")
    with pytest.raises(pa.ArrowKeyError, match="has no book channel; it has: trades"):
        get(client, "ETH/USDT?channel=book")
    with pytest.raises(pa.ArrowInvalid, match="bars"):
        get(client, "BTC/USDT?channel=book&bars=1m")


def test_live_tails_of_trades_and_of_bars(served: tuple[Store, flight.FlightClient, Any]) -> None:
    store, client, _ = served
    reader = client.do_get(flight.Ticket(b"BTC/USDT?channel=trades&follow=true&latest=1"))
    first = reader.read_chunk().data
    assert first.column("trade_id").to_pylist() == ["1599"]
    add_trades(store, 2, first=600)
    got: list[str] = []
    while len(got) < 2:  # read_chunk blocks until the next batch
        got.extend(reader.read_chunk().data.column("trade_id").to_pylist())
    assert got == ["1600", "1601"]
    reader.cancel()

    # Bars of live trades stamped now: each bar is sent once it closed.
    now = now_ms()
    bar = BarInterval.S1.ms
    open_start = now // bar * bar
    store.buffer("trades").append_trade("binance", "SOL/USDT", open_start, "1", 10.0, 1.0,
                                        "buy", now)  # the bar open when the tail starts
    bar_reader = client.do_get(flight.Ticket(b"SOL/USDT?channel=trades&bars=1s&follow=true"))
    sent: list[dict[str, Any]] = []
    done = threading.Event()

    def read() -> None:
        while len(sent) < 2:
            sent.extend(bar_reader.read_chunk().data.to_pylist())
        done.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    store.buffer("trades").append_trade("binance", "SOL/USDT", open_start + bar, "2", 11.0, 2.0,
                                        "sell", now)
    store.buffer("trades").append_trade("binance", "SOL/USDT", open_start + bar + 1, "3", 12.0,
                                        1.0, "sell", now)
    assert done.wait(10.0)
    bar_reader.cancel()
    expected = bars(store.buffer("trades").get_range_sync("SOL/USDT"), BarInterval.S1)
    assert sent == expected.to_pylist()  # the second closed by the clock, none twice


def test_clear_empties_every_channel_and_status_counts_each(
        served: tuple[Store, flight.FlightClient, Any]) -> None:
    store, client, _ = served
    entries = {(s["symbol"], s["channel"]): s for s in act(client, "status")["symbols"]}
    assert entries[("BTC/USDT", "trades")]["ticks_stored"] == 600
    assert entries[("BTC/USDT", "book")]["ticks_stored"] == 4
    assert entries[("BTC/USDT", "ticker")]["ticks_stored"] == 3
    assert act(client, "clear", {"symbols": ["BTC/USDT"]}) == {"cleared": 607}
    assert store.buffer("trades").count("ETH/USDT") == 5
    assert get(client, "BTC/USDT?channel=trades").num_rows == 0


def test_a_tail_opened_before_the_first_bidask_tick_follows_the_bidask_ring(
        md_server_factory: Callable[..., Any]) -> None:
    """Subscribed on bid/ask only, no tick yet: a ticket without channel= waits on the ring the
    first bid/ask tick goes to (not the ticker's, which never gets one)."""
    from flight_md.events import EventKind

    store = Store(100)
    events = EventLog()
    events.record("binance", EventKind.SUBSCRIBE, ["NEW/USDT"], "subscribed", channel="bidask")
    harness = md_server_factory(store.buffer("ticker"), events, store=store)
    reader = harness.client.do_get(flight.Ticket(b"NEW/USDT?follow=true"))
    store.buffer("bidask").append(MarketTick("NEW/USDT", 5, 1.5, None, 1.0, 2.0, None, None, None,
                                             None, "binance", 6))
    assert reader.read_chunk().data.column("price").to_pylist() == [1.5]
    reader.cancel()

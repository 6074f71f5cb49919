"""The client's actions against a server with real ingestion: ccxt fed by the exchange emulator.

Every figure asserted here is the real one: what the emulator wrote (its own counters), what
the server stored, and what the stream reported, never a constant of a stand-in.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from client_support import STREAMED, IngestingMarket
from flight_md_client import InvalidRequest, MarketDataClient, NotFound, TailEnd

from tests.support import MS, until


@pytest.fixture
def md(ingesting: IngestingMarket) -> Iterator[MarketDataClient]:
    with MarketDataClient(ingesting.location, timeout=10.0 * MS) as client:
        yield client


def _row(status: dict, symbol: str) -> dict:
    return next(s for s in status["symbols"] if s["symbol"] == symbol)


def test_status_reports_what_the_exchange_sent(ingesting: IngestingMarket,
                                               md: MarketDataClient) -> None:
    sent = ingesting.freeze()  # the exchange goes quiet: every figure below is final
    status = md.status()

    assert status["server"]["ingestion"] is True
    assert status["server"]["buffer_size"] == 5000
    assert status["server"]["events"] == len(ingesting.events)
    binance = status["exchanges"]["binance"]
    assert {k: binance[k] for k in ("state", "mode", "channel", "reconnects", "symbols",
                                    "bad_frames", "callback_errors")} == {
        "state": "connected", "mode": "websocket", "channel": "ticker", "reconnects": 0,
        "symbols": list(STREAMED), "bad_frames": {}, "callback_errors": 0}
    assert [s["symbol"] for s in status["symbols"]] == sorted(STREAMED)
    for symbol, frames in sent.items():
        row = _row(status, symbol)
        newest = md.latest(symbol, 1).to_pylist()[0]
        assert {k: row[k] for k in ("subscribed", "ticks_received", "ticks_stored",
                                    "ticks_appended", "ticks_dropped", "stale",
                                    "last_timestamp", "last_receive_timestamp")} == {
            "subscribed": True, "ticks_received": frames, "ticks_stored": frames,
            "ticks_appended": frames, "ticks_dropped": 0, "stale": False,
            "last_timestamp": newest["timestamp"],
            "last_receive_timestamp": newest["receive_timestamp"]}


def test_status_counts_a_reconnect_after_an_exchange_reset(ingesting: IngestingMarket,
                                                           md: MarketDataClient) -> None:
    assert md.status()["exchanges"]["binance"]["reconnects"] == 0
    opened = ingesting.emulator.stats.connections_opened

    ingesting.reset_once()

    binance = md.status()["exchanges"]["binance"]
    assert (binance["state"], binance["reconnects"]) == ("connected", 1)
    assert ingesting.emulator.stats.connections_opened > opened  # a new connection, for real
    kinds = md.events("binance").column("kind").to_pylist()
    assert kinds == ["connect", "subscribe", "disconnect", "reconnect"]


def test_subscribe_streams_a_new_symbol(ingesting: IngestingMarket,
                                        md: MarketDataClient) -> None:
    emulator = ingesting.emulator
    assert emulator.stats.subscriptions == len(STREAMED)
    assert "XRP/USDT" not in {s.symbol for s in md.symbols()}

    assert md.subscribe("XRP/USDT") == {"exchange": "binance", "subscribed": ["XRP/USDT"]}

    until(lambda: emulator.stats.subscriptions == len(STREAMED) + 1, 10,
          "the exchange to see the subscription")
    until(lambda: ingesting.sent("XRP/USDT") > 0 and ingesting.stored("XRP/USDT") > 0, 10,
          "XRP/USDT ticks stored")
    stored = ingesting.stored("XRP/USDT")
    with md.tail("XRP/USDT", columns=["symbol", "price"]) as live:  # backlog 0: live only
        batch = next(live)  # a tick of the new symbol, live from the exchange
    assert set(batch.column("symbol").to_pylist()) == {"XRP/USDT"}
    assert live.end_reason is TailEnd.CLOSED
    assert ingesting.stored("XRP/USDT") > stored
    status = md.status()
    assert status["exchanges"]["binance"]["symbols"] == [*STREAMED, "XRP/USDT"]
    assert _row(status, "XRP/USDT")["subscribed"] is True
    assert md.events(latest=1).column("symbols").to_pylist() == [["XRP/USDT"]]

    # subscribing again changes nothing and answers the same
    assert md.subscribe(["XRP/USDT"]) == {"exchange": "binance", "subscribed": ["XRP/USDT"]}
    assert md.status()["exchanges"]["binance"]["symbols"] == [*STREAMED, "XRP/USDT"]

    with pytest.raises(InvalidRequest,
                       match=r"^unknown symbol 'XRP/USDX' on binance; did you mean XRP/USDT"):
        md.subscribe("XRP/USDX")
    with pytest.raises(NotFound, match=r"^no stream for exchange 'bybit'; running: binance"):
        md.subscribe("BTC/USDT", exchange="bybit")


def test_unsubscribe_stops_new_ticks_and_keeps_the_stored_ones(ingesting: IngestingMarket,
                                                               md: MarketDataClient) -> None:
    emulator = ingesting.emulator
    assert md.unsubscribe("ETH/USDT") == {"exchange": "binance", "unsubscribed": ["ETH/USDT"]}
    kept = ingesting.stored("ETH/USDT")

    until(lambda: emulator.stats.subscriptions == 1, 10, "the exchange to drop ETH/USDT")
    frozen = ingesting.sent("ETH/USDT")
    btc = ingesting.stored("BTC/USDT")
    until(lambda: ingesting.stored("BTC/USDT") > btc + 10, 10, "BTC/USDT to go on")

    assert ingesting.sent("ETH/USDT") == frozen  # the exchange stopped sending it
    assert md.latest("ETH/USDT", 10**6).num_rows == kept  # and what was stored stays
    status = md.status()
    assert status["exchanges"]["binance"]["symbols"] == ["BTC/USDT"]
    eth = _row(status, "ETH/USDT")
    assert (eth["subscribed"], eth["ticks_stored"], eth["stale"]) == (False, kept, False)
    with pytest.raises(InvalidRequest, match=r"^symbol 'SOL/USDT' is not subscribed on "
                                             r"binance; subscribed: BTC/USDT"):
        md.unsubscribe("SOL/USDT")

    assert md.subscribe("ETH/USDT")["subscribed"] == ["ETH/USDT"]  # and back
    until(lambda: ingesting.stored("ETH/USDT") > kept, 10, "ETH/USDT ticks again")

"""``MarketDataStream(..., channels=[...])``: one stream over several channels of one exchange.

Real ccxt.pro against the emulator: every channel's rows arrive in one shared store, callbacks
get every channel's value objects, subscribe/unsubscribe/disconnect reach every channel, the
manager registers one stream per channel, and bad arguments are refused with what is allowed.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from flight_md.buffer import MarketDataBuffer, Store
from flight_md.errors import InvalidArgument, NotFound, Unavailable
from flight_md.events import EventKind
from flight_md.ingest.manager import MarketDataManager
from flight_md.ingest.state import ConnectionState
from flight_md.ingest.stream import MarketDataStream
from flight_md.normalize import BookTop, Channel, Trade
from flight_md.schema import MarketTick

from .support import FAST as _FAST
from .support import MS, wait_until

CHANNELS = ["ticker", "trades", "book"]
TYPES: dict[str, type[Any]] = {"ticker": MarketTick, "trades": Trade, "book": BookTop}
FAST: dict[str, Any] = dict(_FAST)


def rows(store: Store, channel: str, symbol: str) -> int:
    try:
        return store.buffer(channel).count(symbol, "binance")
    except NotFound:
        return 0


def every_channel_has(store: Store, symbol: str, at_least: int = 1) -> bool:
    return all(rows(store, channel, symbol) >= at_least for channel in CHANNELS)


@pytest.mark.asyncio
async def test_every_channel_stores_and_every_value_type_reaches_the_callbacks(make_emulator: Any) -> None:
    emu = await make_emulator("binance", ["BTC/USDT", "ETH/USDT"], rate=100.0)
    seen: list[Any] = []
    async with MarketDataStream("binance", url=emu.url, channels=CHANNELS, book_depth=5,
                                **FAST) as stream:
        stream.add_callback(seen.append)
        assert await stream.subscribe(["BTC/USDT", "ETH/USDT"]) == ("BTC/USDT", "ETH/USDT")
        await wait_until(lambda: every_channel_has(stream.store, "BTC/USDT", 3)
                         and every_channel_has(stream.store, "ETH/USDT", 3), 10 * MS,
                         "rows of every channel")
        assert stream.channel is Channel.TICKER and stream.channels == tuple(map(Channel, CHANNELS))
        assert stream.buffer is stream.store.buffer("ticker")
        assert stream.state is ConnectionState.CONNECTED and stream.symbols == ("BTC/USDT", "ETH/USDT")
        status = stream.status()
        assert [e.channel for e in status.exchanges] == CHANNELS
        assert {(s.channel, s.symbol) for s in status.symbols if s.subscribed} == {
            (c, s) for c in CHANNELS for s in ("BTC/USDT", "ETH/USDT")}
        assert stream.counters()["trades.stored"] >= 6 and stream.counters()["book.stored"] >= 6
    # Disconnected, nothing more arrives: every stored row went to the callback once.
    for channel in CHANNELS:
        for symbol in ("BTC/USDT", "ETH/USDT"):
            got = [v for v in seen if isinstance(v, TYPES[channel]) and v.symbol == symbol]
            assert len(got) == rows(stream.store, channel, symbol), (channel, symbol)
    table = stream.store.buffer("trades").get_latest_sync("BTC/USDT", 1, exchange="binance")
    last = [v for v in seen if isinstance(v, Trade) and v.symbol == "BTC/USDT"][-1]
    assert (table.column("trade_id")[0].as_py(), table.column("price")[0].as_py()) == (last.trade_id, last.price)
    books = [v for v in seen if isinstance(v, BookTop)]
    assert all(len(b.bids) <= 5 and len(b.asks) <= 5 and b.bids[0][0] < b.asks[0][0] for b in books)


@pytest.mark.asyncio
async def test_unsubscribe_and_disconnect_reach_every_channel(make_emulator: Any) -> None:
    emu = await make_emulator("binance", ["BTC/USDT", "ETH/USDT"], rate=100.0)
    store = Store(10_000, book_depth=3)
    stream = MarketDataStream("binance", url=emu.url, channels=CHANNELS, store=store, **FAST)
    assert stream.store is store and stream.book_depth == 3
    try:
        await stream.connect()
        await stream.subscribe(["BTC/USDT", "ETH/USDT"])
        await wait_until(lambda: emu.stats.subscriptions == 6, 10 * MS, "3 channels x 2 symbols")
        assert await stream.unsubscribe(["ETH/USDT"]) == ("ETH/USDT",)
        await wait_until(lambda: emu.stats.subscriptions == 3, 10 * MS, "every channel's unsubscribe")
        assert stream.symbols == ("BTC/USDT",)
        assert {s.channel for s in stream.status().symbols
                if s.symbol == "ETH/USDT" and not s.subscribed} == set(CHANNELS)
        before = {c: rows(store, c, "ETH/USDT") for c in CHANNELS}
        kept = {c: rows(store, c, "BTC/USDT") for c in CHANNELS}
        await wait_until(lambda: all(rows(store, c, "BTC/USDT") >= kept[c] + 3 for c in CHANNELS),
                         10 * MS, "the kept symbol on every channel")
        assert {c: rows(store, c, "ETH/USDT") for c in CHANNELS} == before
        unsubscribed = [e.channel for e in stream.events.events("binance")
                        if e.kind is EventKind.UNSUBSCRIBE]
        assert sorted(unsubscribed) == sorted(CHANNELS)
        with pytest.raises(InvalidArgument, match=r"symbol 'ETH/USDT' is not subscribed on binance"):
            await stream.unsubscribe(["ETH/USDT"])
    finally:
        await stream.disconnect()
    assert stream.state is ConnectionState.DISCONNECTED
    assert {e.state for e in stream.status().exchanges} == {"disconnected"}
    assert sorted(e.channel for e in stream.events.events("binance")
                  if e.kind is EventKind.DISCONNECT) == sorted(CHANNELS)
    await wait_until(lambda: emu.stats.subscriptions == 0, 10 * MS, "every connection closed")
    with pytest.raises(Unavailable, match="not connected"):
        await stream.subscribe(["BTC/USDT"])


@pytest.mark.asyncio
async def test_the_manager_registers_one_stream_per_channel(make_emulator: Any) -> None:
    emu = await make_emulator("binance", ["BTC/USDT"], rate=100.0)
    async with MarketDataManager(store=Store(10_000)) as manager:
        stream = await manager.add_stream("binance", ["BTC/USDT"], channels=["trades", "book"],
                                          url=emu.url, **FAST)
        assert stream.channels == (Channel.TRADES, Channel.BOOK)
        trades, book = manager.stream("binance", "trades"), manager.stream("binance", "book")
        assert (trades.channels, book.channels) == ((Channel.TRADES,), (Channel.BOOK,))
        assert manager.streams["binance"] is trades  # no ticker-like stream: the first
        await wait_until(lambda: rows(manager.store, "trades", "BTC/USDT") >= 3
                         and rows(manager.store, "book", "BTC/USDT") >= 3, 10 * MS, "trades and books")
        assert [e.channel for e in manager.status().exchanges] == ["trades", "book"]
        with pytest.raises(InvalidArgument, match=r"a book stream for 'binance' is already running"):
            await manager.add_stream("binance", channels=["ticker", "book"], url=emu.url)
        assert [s.channel for s in manager.all_streams()] == [Channel.TRADES, Channel.BOOK]
        # The registered streams share the returned stream's connections.
        await manager.remove_stream("binance", "book")
        assert book.state is ConnectionState.DISCONNECTED
        assert stream.status().exchanges[1].state == "disconnected"
        assert trades.state is ConnectionState.CONNECTED
        # One channel returns that channel's stream, as before.
        ticker = await manager.add_stream("binance", channels=["ticker"], url=emu.url, **FAST)
        assert manager.stream("binance", "ticker") is ticker


def test_a_single_channel_stream_is_as_before() -> None:
    stream = MarketDataStream("binance", channel="trades")
    assert stream.channels == (Channel.TRADES,) and stream.parts() == (stream,)
    assert stream.buffer.channel == "trades" and stream.store.buffer("trades") is stream.buffer
    default = MarketDataStream("binance")
    assert default.channel is Channel.TICKER and default.counters() == {}
    same = MarketDataStream("binance", channel="book", channels=["book"])
    assert same.channels == (Channel.BOOK,)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"channels": "ticker"},
     r"channels must be a non-empty list of channel names \(ticker, bidask, trades, book\), got 'ticker'"),
    ({"channels": []}, r"channels must be a non-empty list of channel names .*got \[\]"),
    ({"channels": ["ticker", "candles"]},
     r"unknown channel 'candles' in channels; expected some of: ticker, bidask, trades, book"),
    ({"channels": ["trades", "trades"]}, r"channel 'trades' is listed twice in channels"),
    ({"channel": "trades", "channels": ["ticker", "trades"]},
     r"channel='trades' and channels=\['ticker', 'trades'\] disagree; pass channels= alone"),
    ({"channel": "candles"}, r"unknown channel 'candles'; expected one of: ticker, bidask, trades, book"),
    ({"channels": ["trades", "book"], "buffer": MarketDataBuffer(10)},
     r"a trades stream needs a trades buffer, got a ticker buffer"),
    ({"channels": ["trades", "book"], "store": Store(10), "buffer": MarketDataBuffer(10, channel="trades")},
     r"pass store= or buffer=, not both \(or the store's own trades buffer\)"),
    ({"channels": ["ticker", "book"], "book_depth": 0}, r"book depth must be an integer from 1 to 1000, got 0"),
])
def test_bad_arguments_are_refused_saying_what_is_allowed(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        MarketDataStream("binance", **kwargs)


@pytest.mark.asyncio
async def test_bad_callbacks_and_manager_arguments_are_refused() -> None:
    stream = MarketDataStream("binance", channels=["ticker", "trades"])
    with pytest.raises(InvalidArgument, match=r"callback must be callable, got 3"):
        stream.add_callback(3)  # type: ignore[arg-type]
    stream.add_callback(print)
    stream.remove_callback(print)
    with pytest.raises(InvalidArgument, match=r"callback <built-in function print> is not registered"):
        stream.remove_callback(print)
    async with MarketDataManager() as manager:
        with pytest.raises(InvalidArgument, match=r"disagree; pass channels= alone"):
            await manager.add_stream("binance", channel="book", channels=["ticker"])
        with pytest.raises(InvalidArgument, match=r"store= belongs to the manager"):
            await manager.add_stream("binance", channels=["ticker"], store=Store())
        assert manager.all_streams() == ()


@pytest.mark.asyncio
async def test_a_server_keeps_retrying_every_channel_while_the_exchange_is_down() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        fatal: list[str] = []
        async with MarketDataManager(on_fatal=lambda e, error: fatal.append(e)) as manager:
            stream = await manager.add_stream("binance", ["BTC/USDT"], channels=["ticker", "trades"],
                                              keep_retrying=True, url=url, **FAST)
            assert stream.state is ConnectionState.RECONNECTING
            assert [e.state for e in manager.status().exchanges] == ["reconnecting", "reconnecting"]
            assert all(e.last_error for e in stream.status().exchanges)
            with pytest.raises(Unavailable, match="not reachable yet"):
                await stream.subscribe(["ETH/USDT"])
        assert [e.state for e in stream.status().exchanges] == ["disconnected"] * 2 and fatal == []


@pytest.mark.asyncio
async def test_connecting_to_an_unreachable_exchange_raises_and_leaves_every_channel_disconnected() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        stream = MarketDataStream("binance", url=f"http://127.0.0.1:{closed.getsockname()[1]}",
                                  channels=["ticker", "trades", "book"], **FAST)
        with pytest.raises(Unavailable, match="cannot reach binance"):
            await stream.connect()
        assert [e.state for e in stream.status().exchanges] == ["disconnected"] * 3
        await stream.disconnect()

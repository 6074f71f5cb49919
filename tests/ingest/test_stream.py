"""MarketDataStream basics: connect, subscribe, unsubscribe, fields per channel, lifecycle."""

from __future__ import annotations

import math

import ccxt
import pytest

from flight_md.buffer import MarketDataBuffer
from flight_md.errors import InvalidArgument, Unavailable
from flight_md.events import EventLog
from flight_md.ingest.stream import ConnectionState, MarketDataStream, Mode

from .support import MS, SYMBOLS, kinds, stored, wait_until

pytestmark = pytest.mark.timeout(60 * MS)


@pytest.mark.asyncio
async def test_connect_subscribe_stores_full_tickers(make_emulator, make_stream):
    emu = await make_emulator("binance", rate=300.0)
    stream = await make_stream(emu, connect=False)
    assert stream.state is ConnectionState.DISCONNECTED
    await stream.connect()
    assert stream.state is ConnectionState.CONNECTED
    assert stream.active_mode is Mode.WEBSOCKET
    assert await stream.subscribe(list(SYMBOLS)) == SYMBOLS
    assert stream.symbols == SYMBOLS
    await wait_until(lambda: all(stored(stream, s) >= 10 for s in SYMBOLS), 5, "ticks")

    table = stream.buffer.get_latest_sync("BTC/USDT", 10, exchange="binance").to_pylist()
    for row in table:
        assert row["exchange"] == "binance" and row["symbol"] == "BTC/USDT"
        assert row["price"] > 0 and row["bid"] <= row["ask"]
        for name in ("volume", "high", "low", "open", "close"):
            assert row[name] is not None and math.isfinite(row[name])
        assert row["close"] == row["price"]  # Binance 24h ticker: last == close
        assert abs(row["receive_timestamp"] - row["timestamp"]) < 5_000
    status = stream.status()
    (exchange,) = status.exchanges
    assert (exchange.exchange, exchange.state, exchange.mode, exchange.channel) == (
        "binance", "connected", "websocket", "ticker")
    assert exchange.symbols == SYMBOLS and exchange.bad_frames == {} and exchange.reconnects == 0
    assert [s.symbol for s in status.symbols] == list(SYMBOLS)
    assert all(s.subscribed and s.received > 0 and not s.stale for s in status.symbols)
    assert kinds(stream) == ["connect", "subscribe"]
    assert stream.events.events("binance")[1].symbols == SYMBOLS


@pytest.mark.asyncio
@pytest.mark.parametrize("exchange, symbol", [("binance", "BTC/USDT"), ("bybit", "BTC/USDT:USDT")])
async def test_bidask_channel_is_mid_price_without_volume(make_emulator, make_stream, exchange, symbol):
    emu = await make_emulator(exchange, symbols=(symbol,), rate=200.0)
    stream = await make_stream(emu, [symbol], channel="bidask")
    await wait_until(lambda: stored(stream, symbol) >= 10, 5, "bid/ask ticks")
    rows = stream.buffer.get_latest_sync(symbol, 10, exchange=exchange).to_pylist()
    for row in rows:
        assert row["bid"] < row["ask"]
        assert row["price"] == pytest.approx((row["bid"] + row["ask"]) / 2)
        assert [row[n] for n in ("volume", "high", "low", "open", "close")] == [None] * 5
        if exchange == "binance":  # bookTicker carries no timestamp: the receive time is used
            assert row["timestamp"] == row["receive_timestamp"]
    assert stream.status().exchanges[0].channel == "bidask"


@pytest.mark.asyncio
async def test_bybit_spot_and_linear_symbols_in_one_stream(make_emulator, make_stream):
    symbols = ("BTC/USDT", "ETH/USDT:USDT")  # two market types: two subscription groups
    emu = await make_emulator("bybit", symbols=symbols, rate=200.0)
    stream = await make_stream(emu, symbols)
    await wait_until(lambda: all(stored(stream, s) >= 5 for s in symbols), 5, "ticks")
    spot = stream.buffer.get_latest_sync("BTC/USDT", 1, exchange="bybit").to_pylist()[0]
    assert spot["bid"] is None and spot["ask"] is None  # Bybit spot tickers carry no quote
    linear = stream.buffer.get_latest_sync("ETH/USDT:USDT", 1, exchange="bybit").to_pylist()[0]
    assert linear["bid"] is not None and linear["volume"] is not None


@pytest.mark.asyncio
async def test_subscribe_validates_symbols(make_emulator, make_stream):
    emu = await make_emulator("binance")
    stream = await make_stream(emu, connect=False)
    with pytest.raises(Unavailable, match="not connected"):
        await stream.subscribe(["BTC/USDT"])
    await stream.connect()
    with pytest.raises(InvalidArgument, match=r"unknown symbol 'BTC/USDX' on binance; did you mean BTC/USDT"):
        await stream.subscribe(["BTC/USDX"])
    with pytest.raises(InvalidArgument, match="no symbols"):
        await stream.subscribe([])
    with pytest.raises(InvalidArgument, match="not subscribed"):
        await stream.unsubscribe(["BTC/USDT"])
    assert await stream.subscribe(["BTC/USDT", "BTC/USDT"]) == ("BTC/USDT",)
    assert await stream.subscribe(["BTC/USDT"]) == ()  # already subscribed: nothing new
    assert stream.symbols == ("BTC/USDT",)


@pytest.mark.asyncio
async def test_context_manager_disconnects_and_closes_every_socket(make_emulator):
    emu = await make_emulator("binance", rate=200.0)
    async with MarketDataStream("binance", url=emu.url, reconnect_delay=0.05) as stream:
        assert stream.state is ConnectionState.CONNECTED
        await stream.subscribe(["BTC/USDT"])
        await wait_until(lambda: stored(stream, "BTC/USDT") > 0, 5, "a tick")
        assert emu.stats.connections_open == 1
    assert stream.state is ConnectionState.DISCONNECTED
    assert kinds(stream)[-1] == "disconnect"
    assert stream.events.events()[-1].detail == "closed by the user"
    await wait_until(lambda: emu.stats.connections_open == 0, 5, "the socket to close")
    # A stream can connect again after a disconnect.
    await stream.connect()
    assert stream.state is ConnectionState.CONNECTED
    await stream.disconnect()
    await stream.disconnect()  # idempotent


@pytest.mark.asyncio
async def test_connect_to_an_unreachable_exchange_raises_unavailable(make_emulator):
    from flight_md.emulator import Fault

    emu = await make_emulator("binance")
    await emu.inject(Fault.REFUSE, duration=30.0)
    stream = MarketDataStream("binance", url=emu.url)
    with pytest.raises(Unavailable, match="cannot reach binance"):
        await stream.connect()
    assert stream.state is ConnectionState.DISCONNECTED
    assert kinds(stream) == ["error"]
    assert "cannot load markets" in stream.events.events()[0].detail
    await stream.disconnect()


@pytest.mark.asyncio
async def test_shared_buffer_and_event_log(make_emulator, make_stream):
    buffer, events = MarketDataBuffer(50), EventLog()
    emu = await make_emulator("binance", rate=500.0)
    stream = await make_stream(emu, ["BTC/USDT"], buffer=buffer, events=events)
    assert stream.buffer is buffer and stream.events is events
    await wait_until(lambda: stored(stream, "BTC/USDT") == 50, 5, "the ring to fill")
    assert [e.kind for e in events.events()] == ["connect", "subscribe"]


def test_constructor_validates_arguments():
    with pytest.raises(InvalidArgument, match="unknown exchange 'nope'"):
        MarketDataStream("nope")
    with pytest.raises(InvalidArgument, match="unknown channel 'candles'"):
        MarketDataStream("binance", channel="candles")
    with pytest.raises(InvalidArgument, match="unknown mode 'udp'"):
        MarketDataStream("binance", mode="udp")
    with pytest.raises(InvalidArgument, match="heartbeat_interval"):
        MarketDataStream("binance", heartbeat_interval=0)
    with pytest.raises(InvalidArgument, match="max_reconnect_attempts"):
        MarketDataStream("binance", max_reconnect_attempts=-1)
    with pytest.raises(InvalidArgument, match="bad base url"):
        MarketDataStream("binance", url="ftp://x")
    stream = MarketDataStream("binance", 10_000)  # the original positional API
    assert stream.buffer.buffer_size == 10_000 and stream.mode is Mode.AUTO
    assert repr(stream) == ("MarketDataStream(exchange='binance', channel='ticker', mode='auto', "
                            "active='websocket', state='disconnected', symbols=0)")


def test_exchange_without_websocket_support_polls():
    rest_only = next(e for e in ccxt.exchanges if e not in ccxt.pro.exchanges)
    stream = MarketDataStream(rest_only)
    assert stream.active_mode is Mode.REST
    with pytest.raises(InvalidArgument, match="no websocket ticker channel"):
        MarketDataStream(rest_only, mode="websocket")
    # A ccxt.pro exchange whose ccxt lacks the websocket method polls as well.
    stream = MarketDataStream("binance", ccxt_options={"has": {"watchTickers": False}})
    assert stream.active_mode is Mode.REST


def test_testnet_switches_ccxt_to_the_sandbox():
    stream = MarketDataStream("bybit", testnet=True)
    assert stream.exchange.isSandboxModeEnabled
    assert "testnet" in str(stream.exchange.urls["api"])
    # A base URL given as well wins over the sandbox's.
    stream = MarketDataStream("bybit", testnet=True, url="http://127.0.0.1:9")
    assert stream.exchange.urls["api"]["public"] == "http://127.0.0.1:9"


@pytest.mark.asyncio
async def test_many_symbols_and_quick_changes_stay_within_binance_limits(make_emulator, make_stream):
    """Binance closes a connection that sends more than 5 control messages a second, and takes
    at most 1,024 streams on one: subscriptions go out in groups (one message and one
    connection each), and ccxt paces what shares a connection."""
    many = tuple(f"C{i:03d}/USDT" for i in range(150))
    emu = await make_emulator("binance", symbols=many, rate=3000.0)
    stream = await make_stream(emu, many)
    await wait_until(lambda: all(stored(stream, s) > 0 for s in many), 10, "every symbol")
    assert emu.stats.connections_open == 2  # 100 + 50
    assert emu.stats.control_messages == 2
    for symbol in many[:4]:
        await stream.unsubscribe([symbol])
    await stream.subscribe(list(many[:4]))
    await wait_until(lambda: emu.stats.subscriptions == len(many), 10, "every subscription")
    before = {s: stored(stream, s) for s in many}
    await wait_until(lambda: all(stored(stream, s) > before[s] for s in many), 10, "every symbol again")
    assert emu.stats.limit_closes == 0
    assert "disconnect" not in kinds(stream)
    # Connections left without subscriptions are closed: one per group remains.
    await wait_until(lambda: emu.stats.connections_open <= 4, 5, "idle connections to close")

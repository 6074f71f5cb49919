"""Unmodified ccxt.pro.binance against the emulator's Binance spot dialect (synthetic data)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from flight_md.emulator import Emulator
from tests.emulator.conftest import MS, ExchangeFactory, until

pytestmark = pytest.mark.asyncio

SYMBOLS = ("BTC/USDT", "ETH/USDT")


def ws_url(emu: Emulator, path: str = "/ws") -> str:
    return emu.url.replace("http://", "ws://") + path


async def test_load_markets_lists_the_configured_spot_markets(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("binance", SYMBOLS, rate=10) as emu:
        exchange = exchange_factory("binance", emu.url)
        markets = await exchange.load_markets()
        assert sorted(markets) == sorted(SYMBOLS)
        assert markets["BTC/USDT"]["id"] == "BTCUSDT"
        assert markets["BTC/USDT"]["spot"] is True
        assert markets["BTC/USDT"]["precision"]["price"] > 0


async def test_fetch_ticker_tickers_and_bids_asks(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("binance", SYMBOLS, rate=10) as emu:
        exchange = exchange_factory("binance", emu.url)
        ticker = await exchange.fetch_ticker("ETH/USDT")
        assert ticker["symbol"] == "ETH/USDT"
        assert 0 < ticker["bid"] < ticker["ask"]
        assert ticker["last"] > 0 and ticker["bidVolume"] > 0
        assert sorted(await exchange.fetch_tickers()) == sorted(SYMBOLS)
        assert list(await exchange.fetch_tickers(["BTC/USDT"])) == ["BTC/USDT"]
        books = await exchange.fetch_bids_asks(["BTC/USDT"])
        assert 0 < books["BTC/USDT"]["bid"] < books["BTC/USDT"]["ask"]


async def test_watch_bids_asks_streams_book_tickers_until_unwatched(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("binance", SYMBOLS, rate=200) as emu:
        exchange = exchange_factory("binance", emu.url)
        seen: set[str] = set()
        for _ in range(20):
            update = await asyncio.wait_for(exchange.watch_bids_asks(list(SYMBOLS)), 5 * MS)
            for symbol, ticker in update.items():
                assert 0 < ticker["bid"] < ticker["ask"]
                assert ticker["bidVolume"] > 0 and ticker["askVolume"] > 0
                seen.add(symbol)
        assert seen == set(SYMBOLS)
        assert emu.stats.subscriptions == 2
        await asyncio.wait_for(exchange.un_watch_bids_asks(list(SYMBOLS)), 5 * MS)
        # The acknowledgement follows every frame queued before it: the count is final.
        sent = emu.sent("bookTicker", "BTC/USDT")
        assert sent > 0
        assert emu.stats.subscriptions == 0
        # The barrier: BTC/USDT keeps moving (its mini ticker channel gets 20 frames), and not one
        # of those moves reaches the unwatched book ticker channel.
        await asyncio.wait_for(exchange.watch_ticker("BTC/USDT"), 5 * MS)
        await until(lambda: emu.sent("miniTicker", "BTC/USDT") >= 20, 10,
                    "20 BTC/USDT mini ticker frames")
        assert emu.sent("bookTicker", "BTC/USDT") == sent


async def test_watch_ticker_on_the_full_ticker_channel(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("binance", SYMBOLS, rate=100) as emu:
        exchange = exchange_factory("binance", emu.url)
        for _ in range(3):
            ticker = await asyncio.wait_for(exchange.watch_ticker("BTC/USDT", {"name": "ticker"}), 5 * MS)
            assert ticker["symbol"] == "BTC/USDT"
            assert 0 < ticker["bid"] < ticker["ask"]
            assert ticker["last"] > 0 and ticker["timestamp"] > 0
        await asyncio.wait_for(exchange.un_watch_tickers(["BTC/USDT"], {"name": "ticker"}), 5 * MS)
        assert emu.sent("ticker", "BTC/USDT") >= 3
        assert emu.stats.subscriptions == 0


async def test_watch_tickers_defaults_to_mini_tickers(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("binance", SYMBOLS, rate=100) as emu:
        exchange = exchange_factory("binance", emu.url)
        update = await asyncio.wait_for(exchange.watch_tickers(list(SYMBOLS)), 5 * MS)
        ticker = next(iter(update.values()))
        assert ticker["last"] > 0 and ticker["bid"] is None  # a miniTicker has no book
        assert emu.sent("miniTicker", ticker["symbol"]) >= 1


async def test_sent_counts_exactly_the_frames_a_client_received() -> None:
    async with Emulator("binance", SYMBOLS, rate=500) as emu, aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url(emu)) as ws:
            await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 1}))
            received = 0
            async with asyncio.timeout(5 * MS):
                while received < 100:
                    message = json.loads((await ws.receive()).data)
                    if "result" in message:
                        continue
                    assert message["s"] == "BTCUSDT" and set(message) == {"u", "s", "b", "B", "a", "A"}
                    received += 1
                await ws.send_str(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 2}))
                while True:
                    message = json.loads((await ws.receive()).data)
                    if message.get("id") == 2:
                        assert message == {"result": None, "id": 2}
                        break
                    received += 1
        assert emu.sent("bookTicker", "BTC/USDT") == received


async def test_more_than_five_messages_a_second_closes_the_connection() -> None:
    async with Emulator("binance", SYMBOLS, rate=0) as emu, aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url(emu)) as ws:
            for request_id in range(5):
                await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id}))
            for request_id in range(5):
                reply = await asyncio.wait_for(ws.receive(), 5 * MS)
                assert json.loads(reply.data) == {"result": [], "id": request_id}
            await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 5}))
            closing = await asyncio.wait_for(ws.receive(), 5 * MS)
            assert closing.type is aiohttp.WSMsgType.CLOSE
            assert closing.data == 1008
        assert emu.stats.limit_closes == 1


async def test_at_most_1024_streams_per_connection() -> None:
    names = [f"s{number}usdt@bookTicker" for number in range(1024)]
    async with Emulator("binance", SYMBOLS, rate=0) as emu, aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url(emu)) as ws:
            await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": names, "id": 1}))
            assert json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data) == {"result": None, "id": 1}
            await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 2}))
            reply = json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)
            assert reply["id"] == 2 and reply["error"]["code"] == 2
        assert emu.stats.subscriptions == 0  # all dropped with the connection


async def test_server_pings_and_combined_streams_wrap_frames() -> None:
    async with Emulator("binance", SYMBOLS, rate=200, ping_interval=0.1 * MS) as emu, \
            aiohttp.ClientSession() as session:
        url = ws_url(emu, "/stream?streams=btcusdt@bookTicker/ethusdt@trade")
        async with session.ws_connect(url, autoping=False) as ws:
            kinds: set[str] = set()
            pinged = False
            async with asyncio.timeout(5 * MS):
                while not (pinged and kinds == {"btcusdt@bookTicker", "ethusdt@trade"}):
                    message = await ws.receive()
                    if message.type is aiohttp.WSMsgType.PING:
                        pinged = True
                        await ws.pong(message.data)
                        continue
                    envelope = json.loads(message.data)
                    kinds.add(envelope["stream"])
                    assert set(envelope) == {"stream", "data"}
        assert emu.sent("trade", "ETH/USDT") >= 1


async def test_synthetic_data_is_deterministic_given_a_seed() -> None:
    async def first_frames(seed: int) -> list[dict[str, object]]:
        async with Emulator("binance", SYMBOLS, rate=400, seed=seed) as emu, aiohttp.ClientSession() as session, \
                session.ws_connect(ws_url(emu)) as ws:
            await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@bookTicker"], "id": 1}))
            frames = []
            async with asyncio.timeout(5 * MS):
                while len(frames) < 30:
                    message = json.loads((await ws.receive()).data)
                    if "u" in message:
                        frames.append(message)
            return frames

    first, again, other = await first_frames(7), await first_frames(7), await first_frames(8)
    assert first == again
    assert first != other
    assert all(0 < float(frame["b"]) < float(frame["a"]) for frame in first)  # type: ignore[arg-type]


async def test_synthetic_rate_is_close_to_the_requested_rate() -> None:
    """Over a window of 1,000 frames the emulator paces at about its rate.

    The window is counted in frames, not seconds. Never faster than 1.5x the rate (load only
    slows it down); the lower limit, 0.5x, is divided by ``MS`` for slow machines.
    """
    rate = 1000.0
    subscribe = {"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker", "ethusdt@bookTicker"], "id": 1}
    async with Emulator("binance", SYMBOLS, rate=rate) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        await ws.send_str(json.dumps(subscribe))
        drain = asyncio.get_running_loop().create_task(_drain(ws))
        try:
            await until(lambda: emu.stats.frames_total >= 200, 10, "the stream to start")
            loop = asyncio.get_running_loop()
            before, started = emu.stats.frames_total, loop.time()
            await until(lambda: emu.stats.frames_total - before >= 1000, 10, "1,000 more frames")
            achieved = (emu.stats.frames_total - before) / (loop.time() - started)
        finally:
            drain.cancel()
    assert 0.5 * rate / MS <= achieved <= 1.5 * rate, achieved


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass

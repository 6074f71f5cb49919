"""Unmodified ccxt.pro.bybit against the emulator's Bybit v5 dialect (synthetic data)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from flight_md.emulator import Emulator
from tests.emulator.conftest import MS, ExchangeFactory, until

pytestmark = pytest.mark.asyncio

SPOT = ("BTC/USDT", "ETH/USDT")
LINEAR = ("BTC/USDT:USDT", "ETH/USDT:USDT")


def ws_url(emu: Emulator, category: str) -> str:
    return emu.url.replace("http://", "ws://") + f"/v5/public/{category}"


async def test_load_markets_and_fetch_tickers(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("bybit", SPOT + LINEAR, rate=10) as emu:
        exchange = exchange_factory("bybit", emu.url)
        markets = await exchange.load_markets()
        assert sorted(markets) == sorted(SPOT + LINEAR)
        assert markets["BTC/USDT:USDT"]["linear"] is True and markets["BTC/USDT"]["spot"] is True
        spot = await exchange.fetch_ticker("BTC/USDT")
        linear = await exchange.fetch_ticker("ETH/USDT:USDT")
        for ticker in (spot, linear):
            assert 0 < ticker["bid"] < ticker["ask"] and ticker["last"] > 0
        assert sorted(await exchange.fetch_tickers(list(LINEAR))) == sorted(LINEAR)


async def test_instruments_info_pages_with_a_cursor(exchange_factory: ExchangeFactory) -> None:
    symbols = tuple(f"C{number:03d}/USDT:USDT" for number in range(620))
    async with Emulator("bybit", symbols, rate=0) as emu:
        exchange = exchange_factory("bybit", emu.url)
        markets = await exchange.load_markets()
        assert len(markets) == 620  # two pages of at most 500
        async with aiohttp.ClientSession() as session:
            url = f"{emu.url}/v5/market/instruments-info?category=linear&limit=300"
            async with session.get(url) as response:
                page = (await response.json())["result"]
        assert len(page["list"]) == 300 and page["nextPageCursor"]


async def test_watch_linear_tickers_snapshot_then_deltas(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("bybit", LINEAR, rate=200) as emu:
        exchange = exchange_factory("bybit", emu.url)
        seen: set[str] = set()
        for _ in range(20):
            update = await asyncio.wait_for(exchange.watch_tickers(list(LINEAR)), 5 * MS)
            for symbol, ticker in update.items():
                assert 0 < ticker["bid"] < ticker["ask"]
                assert ticker["last"] > 0 and ticker["high"] >= ticker["low"]  # merged from the snapshot
                seen.add(symbol)
        assert seen == set(LINEAR)
        await asyncio.wait_for(exchange.un_watch_tickers(list(LINEAR)), 5 * MS)
        sent = emu.sent("tickers", "BTC/USDT:USDT")
        assert sent > 0
        assert emu.stats.subscriptions == 0
        # The barrier: BTC/USDT:USDT keeps moving (its order book channel gets 20 frames), and
        # not one of those moves reaches the unwatched tickers channel.
        await asyncio.wait_for(exchange.watch_bids_asks(["BTC/USDT:USDT"]), 5 * MS)
        await until(lambda: emu.sent("orderbook.1", "BTC/USDT:USDT") >= 20, 10,
                    "20 BTC/USDT:USDT order book frames")
        assert emu.sent("tickers", "BTC/USDT:USDT") == sent


async def test_watch_spot_ticker_and_bids_asks(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("bybit", SPOT, rate=200) as emu:
        exchange = exchange_factory("bybit", emu.url)
        ticker = await asyncio.wait_for(exchange.watch_ticker("ETH/USDT"), 5 * MS)
        assert ticker["symbol"] == "ETH/USDT" and ticker["last"] > 0
        for _ in range(3):
            books = await asyncio.wait_for(exchange.watch_bids_asks(["BTC/USDT"]), 5 * MS)
            assert 0 < books["BTC/USDT"]["bid"] < books["BTC/USDT"]["ask"]
        assert emu.sent("orderbook.1", "BTC/USDT") >= 3
        assert emu.sent("tickers", "ETH/USDT") >= 1


async def test_ping_subscribe_and_spot_argument_limit() -> None:
    async with Emulator("bybit", SPOT + LINEAR, rate=0) as emu, aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url(emu, "linear")) as ws:
            await ws.send_str(json.dumps({"op": "ping", "req_id": "7"}))
            pong = json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)
            assert pong["ret_msg"] == "pong" and pong["op"] == "ping" and pong["req_id"] == "7"
            await ws.send_str(json.dumps({"op": "subscribe", "args": ["tickers.BTCUSDT"], "req_id": "8"}))
            ack = json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)
            assert ack["success"] is True and ack["op"] == "subscribe" and ack["req_id"] == "8"
            snapshot = json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)
            assert snapshot["type"] == "snapshot" and snapshot["topic"] == "tickers.BTCUSDT"
            await ws.send_str(json.dumps({"op": "subscribe", "args": ["tickers.NOPEUSDT"]}))
            failure = json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)
            assert failure["success"] is False
        async with session.ws_connect(ws_url(emu, "spot")) as ws:
            topics = [f"tickers.{name}USDT" for name in "ABCDEFGHIJK"]
            await ws.send_str(json.dumps({"op": "subscribe", "args": topics}))
            failure = json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)
            assert failure["success"] is False and "10" in failure["ret_msg"]

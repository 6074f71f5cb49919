"""Replaying real recorded sessions: ccxt.pro sees exactly the recorded values.

Expected values are parsed straight from ``../shared/recordings`` by the test, not by
the emulator's own reader.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from flight_md.emulator import Emulator
from tests.emulator.conftest import MS, ExchangeFactory, recorded_frames, recording_path

pytestmark = pytest.mark.asyncio

BINANCE_BOOKS = {"nknusdt": "NKN/USDT", "lrcbtc": "LRC/BTC", "blzeth": "BLZ/ETH", "runeeur": "RUNE/EUR"}
BYBIT_LINEAR = {"BTCUSDT": "BTC/USDT:USDT"}


def binance_book_frames() -> list[tuple[str, str]]:
    """``(stream, inner data text)`` of every recorded bookTicker frame, in recorded order."""
    frames = []
    for _path, text in recorded_frames("binance"):
        envelope = json.loads(text)
        if envelope.get("stream", "").endswith("@bookTicker"):
            start = text.index('"data":') + len('"data":')
            frames.append((envelope["stream"], text[start:-1]))
    return frames


async def test_binance_book_tickers_reach_ccxt_exactly_as_recorded(exchange_factory: ExchangeFactory) -> None:
    expected = [(BINANCE_BOOKS[stream.split("@")[0]], json.loads(data)) for stream, data in binance_book_frames()]
    symbols = sorted({symbol for symbol, _ in expected})
    async with Emulator("binance", replay=recording_path("binance"), speed=0, replay_gap=0.01 * MS) as emu:
        exchange = exchange_factory("binance", emu.url)
        seen: list[tuple[str, dict[str, Any]]] = []
        async with asyncio.timeout(20 * MS):
            while len(seen) < len(expected):
                update = await exchange.watch_bids_asks(symbols)
                for symbol, ticker in update.items():
                    seen.append((symbol, ticker["info"]))
                    raw = ticker["info"]
                    assert (ticker["bid"], ticker["bidVolume"]) == (float(raw["b"]), float(raw["B"]))
                    assert (ticker["ask"], ticker["askVolume"]) == (float(raw["a"]), float(raw["A"]))
        assert seen == expected
        assert sum(emu.sent("bookTicker", symbol) for symbol in symbols) == len(expected)
        # REST answers from the latest replayed state.
        last_nkn = [data for symbol, data in expected if symbol == "NKN/USDT"][-1]
        books = await exchange.fetch_bids_asks(["NKN/USDT"])
        assert books["NKN/USDT"]["bid"] == float(last_nkn["b"])
        assert books["NKN/USDT"]["ask"] == float(last_nkn["a"])


async def test_binance_raw_subscriber_receives_the_recorded_bytes() -> None:
    expected = [data for stream, data in binance_book_frames() if stream == "nknusdt@bookTicker"]
    async with Emulator("binance", replay=recording_path("binance"), speed=0) as emu, \
            aiohttp.ClientSession() as session:
        async with session.ws_connect(emu.url.replace("http://", "ws://") + "/ws/0") as ws:
            await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": ["nknusdt@bookTicker"], "id": 1}))
            assert json.loads((await ws.receive()).data) == {"result": None, "id": 1}
            received = []
            async with asyncio.timeout(10 * MS):
                while len(received) < len(expected):
                    received.append((await ws.receive()).data)
        assert received == expected


async def test_replay_speed_paces_frames_as_recorded() -> None:
    frames = [data for stream, data in binance_book_frames() if stream == "lrcbtc@bookTicker"]
    speed = 20.0
    async with Emulator("binance", replay=recording_path("binance"), speed=speed) as emu, \
            aiohttp.ClientSession() as session, session.ws_connect(emu.url.replace("http://", "ws://") + "/ws") as ws:
        await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": ["lrcbtc@bookTicker"], "id": 1}))
        await ws.receive()
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(20 * MS):
            for _ in frames:
                await ws.receive()
        elapsed = loop.time() - started
    recorded = [record for record in _recorded_times("lrcbtc@bookTicker")]
    # Frames never come earlier than their recorded time divided by the speed.
    assert elapsed >= 0.9 * (recorded[-1] - _first_time()) / speed


async def test_bybit_linear_tickers_reach_ccxt_with_the_recorded_values(exchange_factory: ExchangeFactory) -> None:
    expected: list[tuple[str, float, float, float]] = []
    state: dict[str, dict[str, Any]] = {}
    for path, text in recorded_frames("bybit"):
        frame = json.loads(text)
        market_id = frame.get("topic", "").removeprefix("tickers.")
        if path != "/v5/public/linear" or market_id not in BYBIT_LINEAR or not frame["topic"].startswith("tickers."):
            continue
        if frame["type"] == "snapshot":
            state[market_id] = dict(frame["data"])
        else:
            state[market_id].update(frame["data"])
        merged = state[market_id]
        expected.append((BYBIT_LINEAR[market_id], float(merged["bid1Price"]), float(merged["ask1Price"]),
                         float(merged["lastPrice"])))
    symbols = sorted(BYBIT_LINEAR.values())
    async with Emulator("bybit", replay=recording_path("bybit"), speed=0, replay_gap=0.01 * MS) as emu:
        exchange = exchange_factory("bybit", emu.url)
        markets = await exchange.load_markets()
        assert "BTC/USDT:USDT" in markets and "BTC/USDT" in markets
        seen: list[tuple[str, float, float, float]] = []
        async with asyncio.timeout(30 * MS):
            while len(seen) < len(expected):
                update = await exchange.watch_tickers(symbols)
                for symbol, ticker in update.items():
                    seen.append((symbol, ticker["bid"], ticker["ask"], ticker["last"]))
        assert seen == expected
        assert sum(emu.sent("tickers", symbol) for symbol in symbols) == len(expected)
        rest = await exchange.fetch_ticker("BTC/USDT:USDT")
        last_btc = [row for row in expected if row[0] == "BTC/USDT:USDT"][-1]
        assert (rest["bid"], rest["ask"], rest["last"]) == last_btc[1:]


async def test_bybit_spot_replay_loops() -> None:
    expected = [text for path, text in recorded_frames("bybit")
                if path == "/v5/public/spot" and text.startswith('{"topic":"tickers.BTCUSDT"')]
    async with Emulator("bybit", replay=recording_path("bybit"), speed=0, loop=True) as emu, \
            aiohttp.ClientSession() as session:
        async with session.ws_connect(emu.url.replace("http://", "ws://") + "/v5/public/spot") as ws:
            await ws.send_str(json.dumps({"op": "subscribe", "args": ["tickers.BTCUSDT"], "req_id": "1"}))
            assert json.loads((await ws.receive()).data)["success"] is True
            received = []
            async with asyncio.timeout(10 * MS):
                while len(received) < 2 * len(expected) + 1:
                    received.append((await ws.receive()).data)
    assert received == expected + expected + expected[:1]


def _recorded_times(stream: str) -> list[float]:
    import gzip

    times = []
    with gzip.open(recording_path("binance"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "recv" and record["data"].startswith(f'{{"stream":"{stream}"'):
                times.append(record["ts"])
    return times


def _first_time() -> float:
    import gzip

    with gzip.open(recording_path("binance"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "recv":
                return float(record["ts"])
    raise AssertionError("no frames recorded")

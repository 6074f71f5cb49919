"""The emulator tells the truth about what it serves (issue 10, items 5 and 8).

* Synthetic markets move whether or not a websocket streams them, so REST polls (and a
  REST-mode ``MarketDataStream``) see a live market, not a frozen one.
* At start, ``flight-md emulator --replay`` says on stderr which channels and symbols the
  recording holds (stdout stays the one URL line); a subscription to a stream it has no data
  for is warned about on the emulator side and counted, and answered with the venue's own
  error where the venue has one (Bybit's ``Invalid symbol``).

Expected streams are read straight from ``../shared/recordings/binance.jsonl.gz`` here, not
through the emulator's reader.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import urllib.request
from typing import Any

import aiohttp
import pytest

from flight_md.emulator import Emulator
from flight_md.ingest.stream import MarketDataStream
from tests.emulator.conftest import MS, ExchangeFactory, recording_path
from tests.support import EmulatorProcess, async_until, until

SYNTHETIC = {"binance": ("BTC/USDT", "ETH/USDT"), "bybit": ("BTC/USDT", "ETH/USDT:USDT")}
SUMMARY_LINE = re.compile(r"^flight-md emulator:\s+(\S+): (.+)$")


def recorded_streams() -> dict[str, set[str]]:
    """Channel -> unified symbols of every data frame in the Binance recording."""
    names: dict[str, str] = {}
    streams: list[str] = []
    with gzip.open(recording_path("binance"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "http" and "/api/v3/exchangeInfo" in record["url"]:
                for entry in json.loads(record["data"])["symbols"]:
                    names[entry["symbol"].lower()] = f"{entry['baseAsset']}/{entry['quoteAsset']}"
            elif record["t"] == "recv":
                stream = json.loads(record["data"]).get("stream")
                if isinstance(stream, str):
                    streams.append(stream)
    by_channel: dict[str, set[str]] = {}
    for stream in streams:
        market_id, _, channel = stream.partition("@")
        by_channel.setdefault(channel, set()).add(names[market_id])
    return by_channel


def emulator_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_emulator/stats", timeout=10 * MS) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


# -- item 5: markets move without listeners ----------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("exchange", sorted(SYNTHETIC))
async def test_rest_tickers_move_with_no_websocket_client(exchange: str,
                                                          exchange_factory: ExchangeFactory) -> None:
    symbol = SYNTHETIC[exchange][-1]
    async with Emulator(exchange, SYNTHETIC[exchange], rate=100) as emu:
        client = exchange_factory(exchange, emu.url)
        await client.load_markets()
        seen: set[tuple[Any, Any, Any]] = set()

        async def moved() -> bool:
            ticker = await client.fetch_ticker(symbol)
            seen.add((ticker["bid"], ticker["ask"], ticker["last"]))
            return len(seen) >= 5

        await async_until(moved, 10, f"five different {symbol} tickers over REST", interval=0.05)
        assert emu.stats.connections_opened == 0  # nobody listened on a websocket


@pytest.mark.asyncio
async def test_a_rest_mode_stream_stores_ticks_steadily_without_a_websocket() -> None:
    symbols = SYNTHETIC["binance"]
    async with Emulator("binance", symbols, rate=100) as emu:
        stream = MarketDataStream("binance", url=emu.url, mode="rest", poll_interval=0.05,
                                  reconnect_delay=0.1, max_reconnect_delay=0.5)
        try:
            await stream.connect()
            await stream.subscribe(list(symbols))

            def stored() -> dict[str, int]:
                return {stats.symbol: stats.stored for stats in stream.buffer.stats()}

            await async_until(lambda: len(stored()) == 2 and min(stored().values()) >= 5, 20,
                              "five polled ticks of each symbol")
            first = stored()
            await async_until(lambda: all(stored()[s] >= first[s] + 5 for s in symbols), 20,
                              "five more polled ticks of each symbol")
            for symbol in symbols:
                prices = stream.buffer.get_latest_sync(symbol, 10_000, exchange="binance")
                assert len(set(prices.column("bid").to_pylist())) > 1, symbol
        finally:
            await stream.disconnect()
        assert emu.stats.connections_opened == 0


# -- item 8: say what is replayed, warn about what is not --------------------------------


def test_replay_start_up_summary_lists_exactly_the_recorded_streams() -> None:
    expected = recorded_streams()
    expected["trade"] = expected["aggTrade"]  # recorded aggregate trades are served as trade events too
    with EmulatorProcess("--replay", str(recording_path("binance"))) as emu:
        until(lambda: emu.stderr, 10, "the start-up summary")  # printed before the URL
        summary: dict[str, set[str]] = {}
        for line in emu.stderr:
            match = SUMMARY_LINE.match(line.rstrip("\n"))
            if match:
                summary[match.group(1)] = set(match.group(2).split(", "))
        assert summary == expected
        assert emu.stdout == [emu.url + "\n"]  # stdout stays the one line tools read


@pytest.mark.asyncio
async def test_subscribing_to_what_the_recording_lacks_is_warned_and_counted() -> None:
    recorded = recorded_streams()
    assert "NKN/USDT" in recorded["bookTicker"] and "ticker" not in recorded
    emu = EmulatorProcess("--replay", str(recording_path("binance")), "--speed", "0", "--loop",
                          "--replay-gap", "0.01")
    emu.start()
    try:
        ws_url = emu.url.replace("http://", "ws://") + "/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            request = {"method": "SUBSCRIBE", "id": 1,
                       "params": ["nknusdt@bookTicker", "btcusdt@bookTicker", "nknusdt@ticker"]}
            await ws.send_str(json.dumps(request))
            reply, data = None, []
            async with asyncio.timeout(10 * MS):
                while reply is None or not data:
                    message = json.loads((await ws.receive()).data)
                    if message.get("id") == 1:
                        reply = message
                    elif "data" not in message and "s" in message:
                        data.append(message)
            # Binance accepts any well-formed stream name: its answer is no error.
            assert reply == {"result": None, "id": 1}
            assert {frame["s"] for frame in data} == {"NKNUSDT"}
            assert emulator_stats(emu.url)["unserved_subscriptions"] == 2
        warnings = until(lambda: [line for line in emu.stderr if "has no data for" in line
                                  and "WARNING" in line], 10, "the emulator's warnings")
        assert len(warnings) == 2
        assert "'btcusdt@bookTicker'" in warnings[0] and "'nknusdt@ticker'" in warnings[1]
    finally:
        emu.stop()


@pytest.mark.asyncio
async def test_bybit_answers_an_unknown_symbol_with_its_own_error_and_the_emulator_warns(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flight_md.emulator.server")
    async with Emulator("bybit", ("BTC/USDT:USDT",), rate=50) as emu, aiohttp.ClientSession() as session:
        url = emu.url.replace("http://", "ws://") + "/v5/public/linear"
        async with session.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"op": "subscribe", "args": ["tickers.ETHUSDT"], "req_id": "1"}))
            async with asyncio.timeout(10 * MS):
                reply = json.loads((await ws.receive()).data)
            assert reply["success"] is False and reply["ret_msg"] == "Invalid symbol :[tickers.ETHUSDT]"
            assert emu.stats.unserved_subscriptions == 1
            await ws.send_str(json.dumps({"op": "subscribe", "args": ["tickers.BTCUSDT"], "req_id": "2"}))
            async with asyncio.timeout(10 * MS):
                while not (reply := json.loads((await ws.receive()).data)).get("topic"):
                    pass
            assert reply["topic"] == "tickers.BTCUSDT"
            assert emu.stats.unserved_subscriptions == 1  # a served stream is not warned about
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "'tickers.ETHUSDT'" in warned[0]

"""Trades and order books of the Bybit dialect, synthetic and replayed, through unmodified ccxt.pro.

Synthetic: ccxt's trades and books are compared with the frames a raw websocket subscribed
to the same topics received (every frame of a stream is the same text for every
subscriber). Replay: expected values are parsed straight from the recording file.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from flight_md.emulator import Emulator
from flight_md.emulator.dialects.bybit import BOOK_LEVELS, BybitDialect
from flight_md.emulator.fault import FRAME_FAULTS, Fault
from flight_md.emulator.market import Market, StreamKey
from flight_md.emulator.synthetic import PriceWalk
from tests.emulator.conftest import MS, ExchangeFactory, recording_path, until

# Groundwork for issue 12 (trades and books): run with -m soak until ingestion stores
# these channels and the venue suite covers them by default.
pytestmark = pytest.mark.soak

LINEAR = "BTC/USDT:USDT"
SPOT = "ETH/USDT"


@asynccontextmanager
async def raw_topic(emu: Emulator, category: str, topic: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every data frame a raw subscriber of ``topic`` receives, appended as it arrives."""
    frames: list[dict[str, Any]] = []
    url = emu.url.replace("http", "ws") + f"/v5/public/{category}"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "args": [topic], "req_id": "1"}))
        assert json.loads((await ws.receive()).data)["success"] is True

        async def read() -> None:
            async for message in ws:
                frames.append(json.loads(message.data))

        reader = asyncio.create_task(read())
        try:
            yield frames
        finally:
            reader.cancel()


def nonzero(levels: list[list[str]], best_first_descending: bool) -> list[list[float]]:
    return sorted(([float(p), float(q)] for p, q in levels if float(q)), reverse=best_first_descending)


def test_synthetic_trades_and_books_are_consistent_with_the_ticker() -> None:
    market = Market.from_symbol(LINEAR)
    walk = PriceWalk(market, 3)
    dialect = BybitDialect((market,), {LINEAR: walk}, None)
    book = StreamKey("orderbook.50", LINEAR)
    first = json.loads(dialect.render(book, market, walk.quote, snapshot=True))
    assert first["type"] == "snapshot"
    u = first["data"]["u"]
    for step in range(150):
        quote = walk.step(1_000 + step)
        channel = ("publicTrade", "tickers", "orderbook.50")[step % 3]
        frame = json.loads(dialect.render(StreamKey(channel, LINEAR), market, quote, snapshot=False))
        data = frame["data"]
        if channel == "publicTrade":
            trade = data[0]
            # At the touch: a buy takes the ask, a sell hits the bid.
            assert trade["p"] == f"{quote.ask if trade['S'] == 'Buy' else quote.bid:.{market.price_decimals}f}"
            assert float(trade["v"]) == pytest.approx(quote.last_size)
        elif channel == "tickers":
            assert float(data["bid1Price"]) == pytest.approx(quote.bid)
        else:
            assert frame["type"] == "delta" and data["u"] == u + 1 and data["seq"] == quote.update_id
            u = data["u"]
            bids, asks = nonzero(data["b"], True), nonzero(data["a"], False)
            assert bids[0] == [pytest.approx(quote.bid), pytest.approx(quote.bid_size)]
            assert asks[0] == [pytest.approx(quote.ask), pytest.approx(quote.ask_size)]
            assert len(bids) == len(asks) == BOOK_LEVELS and bids[0][0] < asks[0][0]


def test_frame_faults_corrupt_trade_and_book_frames() -> None:
    market = Market.from_symbol(LINEAR)
    walk = PriceWalk(market, 3)
    dialect = BybitDialect((market,), {LINEAR: walk}, None)
    for channel in ("publicTrade", "orderbook.200"):
        text = dialect.render(StreamKey(channel, LINEAR), market, walk.step(1), snapshot=False)
        for fault in FRAME_FAULTS:
            corrupted = dialect.corrupt(fault, text)
            assert corrupted != text
            if fault is Fault.NON_NUMERIC:
                assert "abc" in corrupted


@pytest.mark.asyncio
async def test_watch_trades_gets_the_trades_sent_and_rest_lists_them(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("bybit", (LINEAR,), rate=300) as emu, \
            raw_topic(emu, "linear", "publicTrade.BTCUSDT") as sent:
        exchange = exchange_factory("bybit", emu.url)
        watched: list[dict[str, Any]] = []
        while len(watched) < 40:
            watched.extend(await asyncio.wait_for(exchange.watch_trades(LINEAR), 5 * MS))
        assert len({trade["id"] for trade in watched}) == len(watched)
        await until(lambda: {t["id"] for t in watched} <= {f["data"][0]["i"] for f in sent},
                    what="the raw subscriber to catch up")
        by_id = {frame["data"][0]["i"]: frame["data"][0] for frame in sent}
        for trade in watched:
            row = by_id[trade["id"]]
            assert (trade["price"], trade["amount"], trade["side"], trade["timestamp"]) == (
                float(row["p"]), float(row["v"]), row["S"].lower(), row["T"])
        fetched = {trade["id"]: trade for trade in await exchange.fetch_trades(LINEAR, limit=1000)}
        for trade in watched:
            assert (fetched[trade["id"]]["price"], fetched[trade["id"]]["side"]) == (trade["price"], trade["side"])


@pytest.mark.asyncio
@pytest.mark.parametrize(("symbol", "category", "market_id"), [(LINEAR, "linear", "BTCUSDT"),
                                                               (SPOT, "spot", "ETHUSDT")])
async def test_watch_order_book_is_the_streamed_book_never_crossed(exchange_factory: ExchangeFactory, symbol: str,
                                                                   category: str, market_id: str) -> None:
    # The ticker of the same market moves the walk between two book messages.
    async with Emulator("bybit", (symbol,), rate=300) as emu, \
            raw_topic(emu, category, f"orderbook.50.{market_id}") as sent, \
            raw_topic(emu, category, f"tickers.{market_id}"):
        exchange = exchange_factory("bybit", emu.url)
        for _ in range(40):
            book = await asyncio.wait_for(exchange.watch_order_book(symbol), 5 * MS)  # orderbook.50
            bids, asks = book["bids"], book["asks"]
            assert len(bids) == len(asks) == BOOK_LEVELS and bids[0][0] < asks[0][0]
            # Every message carries the whole book: ccxt's is exactly one message's non-zero levels
            # (of one the raw subscriber got, or gets soon: it may lag ccxt).
            await until(lambda top=(bids, asks): any(
                (nonzero(f["data"]["b"], True), nonzero(f["data"]["a"], False)) == top for f in sent),
                what="ccxt's book among the books sent")
        assert sent[0]["type"] == "snapshot"
        for a, b in itertools.pairwise(sent):
            assert b["type"] == "delta" and b["data"]["u"] == a["data"]["u"] + 1
            assert b["data"]["seq"] > a["data"]["seq"]
        rest = await exchange.fetch_order_book(symbol, 5)
        assert len(rest["bids"]) == 5 and rest["bids"][0][0] < rest["asks"][0][0]


def recorded_frames_by_topic() -> list[tuple[str, dict[str, Any]]]:
    """``(category, frame)`` of every recorded data frame, in recorded order."""
    frames: list[tuple[str, dict[str, Any]]] = []
    categories: dict[str, str] = {}
    with gzip.open(recording_path("bybit"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "connect":
                categories[record["conn"]] = record["addr"].rsplit("/", 1)[-1]
            elif record["t"] == "recv":
                frame = json.loads(record["data"])
                if "topic" in frame:
                    frames.append((categories[record["conn"]], frame))
    return frames


def unified(category: str, market_id: str) -> str:
    base = market_id.removesuffix("USDT")
    return f"{base}/USDT:USDT" if category == "linear" else f"{base}/USDT"


@pytest.mark.asyncio
async def test_replay_serves_every_recorded_trade_once(exchange_factory: ExchangeFactory) -> None:
    expected = sorted((unified(category, row["s"]), row["i"], float(row["p"]), float(row["v"]), row["S"].lower())
                      for category, frame in recorded_frames_by_topic() if frame["topic"].startswith("publicTrade.")
                      for row in frame["data"])
    assert expected
    by_category: dict[bool, list[str]] = {}
    for symbol in sorted({row[0] for row in expected}):
        by_category.setdefault(":" in symbol, []).append(symbol)
    async with Emulator("bybit", replay=recording_path("bybit"), speed=0) as emu:
        exchange = exchange_factory("bybit", emu.url)
        for symbols in by_category.values():
            assert await asyncio.wait_for(exchange.watch_trades_for_symbols(symbols), 5 * MS)
        # A replay ends: trades that arrived while no watch_trades call waited are in ccxt's
        # trade cache (what ingestion taps), not returned by a later call.
        await until(lambda: sum(len(trades) for trades in exchange.trades.values()) >= len(expected),
                    what="every recorded trade to reach ccxt")
        got = sorted((t["symbol"], t["id"], t["price"], t["amount"], t["side"])
                     for trades in exchange.trades.values() for t in trades)
        assert got == expected


@pytest.mark.asyncio
async def test_replayed_book_equals_the_book_rebuilt_from_the_recording(exchange_factory: ExchangeFactory) -> None:
    frames = [frame for category, frame in recorded_frames_by_topic()
              if category == "linear" and frame["topic"] == "orderbook.200.BTCUSDT"]
    sides: dict[str, dict[float, float]] = {"b": {}, "a": {}}
    for frame in frames:
        if frame["type"] == "snapshot":
            sides = {"b": {}, "a": {}}
        for side in ("b", "a"):
            for p, q in frame["data"][side]:
                if float(q):
                    sides[side][float(p)] = float(q)
                else:
                    sides[side].pop(float(p), None)
    bids = sorted(([p, q] for p, q in sides["b"].items()), reverse=True)[:20]
    asks = sorted([p, q] for p, q in sides["a"].items())[:20]
    async with Emulator("bybit", replay=recording_path("bybit"), speed=0) as emu:
        exchange = exchange_factory("bybit", emu.url)
        # ccxt asks for orderbook.50; the replay serves the recorded orderbook.200.
        book = await asyncio.wait_for(exchange.watch_order_book(LINEAR), 5 * MS)
        await until(lambda: emu.sent("orderbook", LINEAR) == len(frames), what="the whole recorded book sent")
        await until(lambda: exchange.orderbooks[LINEAR]["timestamp"] == frames[-1]["ts"],
                    what="ccxt to apply the last delta")
        book = exchange.orderbooks[LINEAR]
        assert (book["bids"][:20], book["asks"][:20]) == (bids, asks)
        assert book["bids"][0][0] < book["asks"][0][0]
        rest = await exchange.fetch_order_book(LINEAR, 20)
        assert (rest["bids"], rest["asks"]) == (bids, asks)

"""Trades and order books of the Binance dialect, synthetic and replayed, through unmodified ccxt.pro.

Synthetic: ccxt's trades and books are compared with the frames a raw websocket subscribed
to the same streams received (every frame of a stream is the same text for every
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
from flight_md.emulator.dialects.binance import BOOK_LEVELS, BinanceDialect
from flight_md.emulator.fault import FRAME_FAULTS, Fault
from flight_md.emulator.market import Market, StreamKey
from flight_md.emulator.synthetic import PriceWalk
from tests.emulator.conftest import MS, ExchangeFactory, recording_path, until

# Groundwork for issue 12 (trades and books): run with -m soak until ingestion stores
# these channels and the venue suite covers them by default.
pytestmark = pytest.mark.soak

SYMBOL = "BTC/USDT"
RECORDED_SYMBOLS = {"NKNUSDT": "NKN/USDT", "BLZETH": "BLZ/ETH", "LRCBTC": "LRC/BTC", "RUNEEUR": "RUNE/EUR"}


@asynccontextmanager
async def raw_stream(emu: Emulator, stream: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every data frame a raw ``/ws`` subscriber of ``stream`` receives, appended as it arrives."""
    frames: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(emu.url.replace("http", "ws") + "/ws") as ws:
        await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": [stream], "id": 1}))
        assert json.loads((await ws.receive()).data) == {"result": None, "id": 1}

        async def read() -> None:
            async for message in ws:
                frames.append(json.loads(message.data))

        reader = asyncio.create_task(read())
        try:
            yield frames
        finally:
            reader.cancel()


def test_synthetic_trades_and_books_are_consistent_with_the_ticker() -> None:
    market = Market.from_symbol(SYMBOL)
    walk = PriceWalk(market, 7)
    dialect = BinanceDialect((market,), {SYMBOL: walk}, None)
    last_id = None
    for step in range(200):
        quote = walk.step(1_000 + step)
        channel = ("trade", "ticker", "depth@100ms")[step % 3]
        frame = json.loads(dialect.render(StreamKey(channel, SYMBOL), market, quote, snapshot=False))
        if channel == "trade":
            # At the touch: the taker buys at the ask, sells at the bid (m: the buyer is the maker).
            assert frame["p"] == f"{quote.bid if frame['m'] else quote.ask:.8f}"
            assert float(frame["q"]) == pytest.approx(quote.last_size)
            assert last_id is None or frame["t"] == last_id + 1  # consecutive, whatever else the walk served
            last_id = frame["t"]
        elif channel == "ticker":
            assert (frame["b"], frame["a"]) == (f"{quote.bid:.8f}", f"{quote.ask:.8f}")
        else:
            bids = [(float(p), float(q)) for p, q in frame["b"] if float(q)]
            asks = [(float(p), float(q)) for p, q in frame["a"] if float(q)]
            assert max(bids)[0] == pytest.approx(quote.bid) and min(asks)[0] == pytest.approx(quote.ask)
            assert max(bids)[1] == pytest.approx(quote.bid_size) and min(asks)[1] == pytest.approx(quote.ask_size)
            assert len(bids) == len(asks) == BOOK_LEVELS and max(bids)[0] < min(asks)[0]
            assert frame["u"] == quote.update_id


def test_frame_faults_corrupt_trade_and_depth_frames() -> None:
    market = Market.from_symbol(SYMBOL)
    walk = PriceWalk(market, 7)
    dialect = BinanceDialect((market,), {SYMBOL: walk}, None)
    for channel in ("trade", "aggTrade", "depth@100ms"):
        text = dialect.render(StreamKey(channel, SYMBOL), market, walk.step(1), snapshot=False)
        for fault in FRAME_FAULTS:
            corrupted = dialect.corrupt(fault, text)
            assert corrupted != text
            if fault in (Fault.MISSING_FIELDS, Fault.NON_NUMERIC):
                frame = json.loads(corrupted)
                assert "s" not in frame if fault is Fault.MISSING_FIELDS else "abc" in corrupted


@pytest.mark.asyncio
async def test_watch_trades_gets_the_trades_sent_and_rest_backfills_them(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("binance", (SYMBOL,), rate=300) as emu, raw_stream(emu, "btcusdt@trade") as sent:
        exchange = exchange_factory("binance", emu.url)
        watched: list[dict[str, Any]] = []
        while len(watched) < 40:
            watched.extend(await asyncio.wait_for(exchange.watch_trades(SYMBOL), 5 * MS))
        ids = [int(trade["id"]) for trade in watched]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # each once, none missing
        await until(lambda: sent and sent[-1]["t"] >= ids[-1], what="the raw subscriber to catch up")
        by_id = {frame["t"]: frame for frame in sent}
        for trade in watched:
            frame = by_id[int(trade["id"])]
            assert (trade["price"], trade["amount"], trade["timestamp"]) == (float(frame["p"]), float(frame["q"]),
                                                                            frame["T"])
            assert trade["side"] == ("sell" if frame["m"] else "buy")
        # What ccxt's fetch_trades(since=...) backfills after a reconnect: the same trades.
        fetched = await exchange.fetch_trades(SYMBOL, since=watched[0]["timestamp"])
        fetched_by_id = {trade["id"]: trade for trade in fetched}
        for trade in watched:
            again = fetched_by_id[trade["id"]]
            assert (again["price"], again["amount"], again["side"]) == (trade["price"], trade["amount"],
                                                                        trade["side"])


@pytest.mark.asyncio
async def test_watch_order_book_equals_the_streamed_book_and_passes_ccxt_sequence_checks(
        exchange_factory: ExchangeFactory) -> None:
    # A second channel of the same market moves the walk between two depth events: the
    # events' U..u ranges must still chain, and the REST snapshot fall inside them.
    async with Emulator("binance", (SYMBOL,), rate=300) as emu, raw_stream(emu, "btcusdt@depth@100ms") as sent, \
            raw_stream(emu, "btcusdt@bookTicker"):
        exchange = exchange_factory("binance", emu.url)
        compared = 0
        for _ in range(40):
            # ccxt raises ChecksumError on any U != previous u + 1.
            book = await asyncio.wait_for(exchange.watch_order_book(SYMBOL), 5 * MS)
            bids, asks = book["bids"], book["asks"]
            assert len(bids) == len(asks) == BOOK_LEVELS
            assert bids[0][0] < asks[0][0]
            nonce = book["nonce"]
            await until(lambda: sent and sent[-1]["u"] >= nonce, what="the raw subscriber to catch up")  # noqa: B023
            frame = next((frame for frame in sent if frame["u"] == nonce), None)
            if frame is None:
                continue  # the REST snapshot, no event applied yet
            compared += 1
            # Each event carries the whole book: ccxt's book is exactly its non-zero levels.
            assert bids == sorted(([float(p), float(q)] for p, q in frame["b"] if float(q)), reverse=True)
            assert asks == sorted([float(p), float(q)] for p, q in frame["a"] if float(q))
        assert compared >= 35
        for a, b in itertools.pairwise(sent):
            assert b["U"] == a["u"] + 1
        rest = await exchange.fetch_order_book(SYMBOL, 5)
        assert len(rest["bids"]) == 5 and rest["bids"][0][0] < rest["asks"][0][0]


def recorded() -> list[dict[str, Any]]:
    """Inner ``data`` of every recorded websocket frame, and each REST depth snapshot, in order."""
    records = []
    with gzip.open(recording_path("binance"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "recv":
                records.append(json.loads(record["data"])["data"])
            elif record["t"] == "http" and "/api/v3/depth" in record["url"]:
                records.append({"snapshot": record["url"].split("symbol=")[1].split("&")[0],
                                **json.loads(record["data"])})
    return records


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["trade", "aggTrade"])
async def test_replay_serves_every_recorded_trade_once(exchange_factory: ExchangeFactory, name: str) -> None:
    aggregates = [data for data in recorded() if data.get("e") == "aggTrade"]
    assert aggregates
    # ccxt's id of a trade event is t, which the emulator takes from the aggregate's first trade id f.
    expected = sorted((RECORDED_SYMBOLS[data["s"]], str(data["a" if name == "aggTrade" else "f"]),
                       float(data["p"]), float(data["q"]), "sell" if data["m"] else "buy") for data in aggregates)
    symbols = sorted({symbol for symbol, *_ in expected})
    async with Emulator("binance", replay=recording_path("binance"), speed=0) as emu:
        exchange = exchange_factory("binance", emu.url)
        # ccxt's stream choice: params name (or the option watchTradesForSymbols.name), default trade.
        first = await asyncio.wait_for(exchange.watch_trades_for_symbols(symbols, params={"name": name}), 5 * MS)
        assert first
        # A replay ends: a trade that arrived while no watch_trades call waited is in ccxt's
        # trade cache (what ingestion taps), not returned by a later call.
        await until(lambda: sum(len(exchange.trades.get(symbol, ())) for symbol in symbols) >= len(expected),
                    what="every recorded trade to reach ccxt")
        got = sorted((t["symbol"], t["id"], t["price"], t["amount"], t["side"])
                     for symbol in symbols for t in exchange.trades[symbol])
        assert got == expected
        assert emu.sent(name, symbols[0]) == sum(1 for row in expected if row[0] == symbols[0])
        # REST (ccxt's fetch_trades: aggTrades) answers the trades replayed so far, with their recorded ids.
        for symbol in symbols:
            fetched = await exchange.fetch_trades(symbol)
            assert [(t["id"], t["price"], t["amount"]) for t in fetched] == [
                (str(data["a"]), float(data["p"]), float(data["q"])) for data in aggregates
                if RECORDED_SYMBOLS[data["s"]] == symbol]


def rebuilt_book(market_id: str, depth: int) -> tuple[int, list[list[float]], list[list[float]]]:
    """The book Binance's documented procedure builds from the recording: snapshot, then every
    diff event with ``u > lastUpdateId``; returns the last ``u`` and the top ``depth`` levels."""
    events = [data for data in recorded() if data.get("e") == "depthUpdate" and data["s"] == market_id]
    snapshot = next(data for data in recorded() if data.get("snapshot") == market_id)
    nonce = snapshot["lastUpdateId"]
    sides = {side: {float(p): float(q) for p, q in snapshot[key]} for side, key in (("b", "bids"), ("a", "asks"))}
    for event in events:
        if event["u"] <= nonce:
            continue
        assert event["U"] <= nonce + 1 <= event["u"]
        for side in ("b", "a"):
            for p, q in event[side]:
                if float(q):
                    sides[side][float(p)] = float(q)
                else:
                    sides[side].pop(float(p), None)
        nonce = event["u"]
    bids = sorted(([p, q] for p, q in sides["b"].items()), reverse=True)[:depth]
    asks = sorted([p, q] for p, q in sides["a"].items())[:depth]
    return nonce, bids, asks


@pytest.mark.asyncio
async def test_replayed_book_equals_the_book_rebuilt_from_the_recording(exchange_factory: ExchangeFactory) -> None:
    nonce, bids, asks = rebuilt_book("NKNUSDT", 20)
    async with Emulator("binance", replay=recording_path("binance"), speed=0) as emu:
        exchange = exchange_factory("binance", emu.url)
        book = await asyncio.wait_for(exchange.watch_order_book("NKN/USDT"), 5 * MS)
        while book["nonce"] < nonce:
            assert book["bids"][0][0] < book["asks"][0][0]
            book = await asyncio.wait_for(exchange.watch_order_book("NKN/USDT"), 5 * MS)
        assert book["nonce"] == nonce
        assert (book["bids"][:20], book["asks"][:20]) == (bids, asks)
        # REST answers the recorded snapshot.
        async with aiohttp.ClientSession() as session, \
                session.get(f"{emu.url}/api/v3/depth?symbol=NKNUSDT&limit=1000") as response:
            body = await response.json()
        assert body["lastUpdateId"] == next(data for data in recorded() if data.get("snapshot") == "NKNUSDT")[
            "lastUpdateId"]

"""Coinbase ``market_trades`` and ``level2`` from the emulator, through unmodified ccxt.pro.coinbase.

Expected values come from independent sources: a replica of the emulator's random walk
(:class:`~flight_md.emulator.synthetic.PriceWalk`, same seed and symbol) for synthetic data,
and the recording read here with ``gzip`` and ``json`` for the replay. Coinbase's trade
``side`` is the maker's (a trade at the ask is ``SELL``), and ccxt passes it on unchanged.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest

from flight_md.emulator import Emulator, Fault
from flight_md.emulator.market import parse_symbols
from flight_md.emulator.synthetic import PriceWalk, Quote
from tests.emulator.conftest import MS, ExchangeFactory, recording_path, until

pytestmark = [pytest.mark.soak, pytest.mark.asyncio, pytest.mark.timeout(60 * MS)]

BTC = "BTC/USD"
ETH = "ETH/USD"
DEPTH = 25  # the dialect's synthetic depth
P, S = 2, 6  # BTC/USD's grid in the emulator (see Market.from_symbol)
Trade = tuple[str, float, float, str]


def ws_url(emu: Emulator) -> str:
    return emu.url.replace("http://", "ws://") + "/"


def replica(symbol: str, steps: int = 5000) -> list[Quote]:
    """The emulator's walk of one market (seed 0): its first quote, then ``steps`` more."""
    walk = PriceWalk(parse_symbols((symbol,))[0], 0)
    return [walk.quote, *(walk.step(0) for _ in range(steps))]


def grid(value: float, decimals: int) -> float:
    return float(f"{value:.{decimals}f}")


def touch(quote: Quote) -> tuple[list[float], list[float]]:
    return [grid(quote.bid, P), grid(quote.bid_size, S)], [grid(quote.ask, P), grid(quote.ask_size, S)]


class Rebuilt:
    """A book rebuilt from ``l2_data`` events: price text -> quantity text, per side."""

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}

    def apply(self, event: dict[str, Any]) -> None:
        if event["type"] == "snapshot":
            self.bids, self.asks = {}, {}
        for update in event["updates"]:
            side = self.bids if update["side"] == "bid" else self.asks
            if float(update["new_quantity"]) == 0:
                side.pop(update["price_level"], None)
            else:
                side[update["price_level"]] = update["new_quantity"]

    def top(self, depth: int) -> tuple[list[list[float]], list[list[float]]]:
        bids = sorted(((float(px), float(sz)) for px, sz in self.bids.items()), reverse=True)[:depth]
        asks = sorted((float(px), float(sz)) for px, sz in self.asks.items())[:depth]
        return [list(level) for level in bids], [list(level) for level in asks]


async def send(ws: aiohttp.ClientWebSocketResponse, channel: str, *products: str) -> None:
    await ws.send_str(json.dumps({"type": "subscribe", "product_ids": list(products), "channel": channel}))


async def data_frames(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    """The next ``count`` data frames (subscriptions and heartbeats skipped)."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        frame = json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)
        if frame.get("channel") not in ("subscriptions", "heartbeats"):
            out.append(frame)
    return out


# -- synthetic ---------------------------------------------------------------------------------


async def test_watch_trades_returns_the_walks_trades_with_coinbases_maker_side(
        exchange_factory: ExchangeFactory) -> None:
    quotes = replica(BTC)
    async with Emulator("coinbase", (BTC, ETH), rate=300) as emu:
        exchange = exchange_factory("coinbase", emu.url)
        seen: list[dict[str, Any]] = []
        while len(seen) < 60:
            seen += await asyncio.wait_for(exchange.watch_trades(BTC), 5 * MS)
    # The snapshot holds the walk's current trade (REST reads moved the idle market while ccxt
    # loaded it), then every step's trade, with consecutive ids.
    by_id = {quote.trade_id: quote for quote in quotes}
    first = int(seen[0]["id"])
    assert [int(trade["id"]) for trade in seen] == list(range(first, first + len(seen)))
    for trade in seen:
        quote = by_id[int(trade["id"])]
        at = quote.bid if quote.buyer_maker else quote.ask
        maker_side = "buy" if quote.buyer_maker else "sell"  # a trade at the ask: the seller made it
        assert (trade["symbol"], trade["side"], trade["price"], trade["amount"]) == (
            BTC, maker_side, grid(at, P), grid(quote.last_size, S)), trade["id"]
    assert {trade["side"] for trade in seen} == {"buy", "sell"}


async def test_watch_order_book_tops_are_the_walks_touch_and_never_crossed(exchange_factory: ExchangeFactory) -> None:
    tops = [touch(quote) for quote in replica(BTC)]
    async with Emulator("coinbase", (BTC,), rate=300) as emu:
        exchange = exchange_factory("coinbase", emu.url)
        step = 0
        for _ in range(60):
            book = await asyncio.wait_for(exchange.watch_order_book(BTC), 5 * MS)
            assert len(book["bids"]) == len(book["asks"]) == DEPTH
            assert book["bids"][0][0] < book["asks"][0][0]
            # Each update is one step of the walk: the top is the touch of a step at or after the last one.
            top = (book["bids"][0], book["asks"][0])
            step = tops.index(top, step)


async def test_raw_frames_follow_the_walk_step_by_step_and_a_late_subscriber_agrees() -> None:
    quotes = replica(BTC)
    by_trade = {quote.trade_id: quote for quote in quotes}
    async with Emulator("coinbase", (BTC,), rate=300) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as first, session.ws_connect(ws_url(emu)) as late:
        for channel in ("ticker", "market_trades", "level2"):
            await send(first, channel, "BTC-USD")
        early = await data_frames(first, 90)
        await send(late, "level2", "BTC-USD")
        later = await data_frames(late, 40)
        rest = await data_frames(first, 150)
    books = {"first": Rebuilt(), "late": Rebuilt()}
    updates: dict[str, list[Any]] = {"first": [], "late": []}  # each connection's books after each update
    trades: list[dict[str, str]] = []
    steps: list[int] = []  # the walk step each ticker and book update shows, in arrival order
    touches = [touch(quote) for quote in quotes]
    for name, stream in (("first", early + rest), ("late", later)):
        for frame in stream:
            event = frame["events"][0]
            if frame["channel"] == "market_trades":
                trades += reversed(event["trades"])  # newest first on the wire
            elif frame["channel"] == "ticker" and name == "first":
                ticker = event["tickers"][0]
                top = ([float(ticker["best_bid"]), float(ticker["best_bid_quantity"])],
                       [float(ticker["best_ask"]), float(ticker["best_ask_quantity"])])
                steps.append(touches.index(top))
            elif frame["channel"] == "l2_data":
                books[name].apply(event)
                bids, asks = books[name].top(DEPTH)
                assert len(bids) == len(asks) == DEPTH and bids[0][0] < asks[0][0]
                if event["type"] == "update":  # a late snapshot may hold changes the others get next
                    if name == "first":
                        steps.append(touches.index((bids[0], asks[0])))
                    updates[name].append((bids, asks))
    assert steps == sorted(steps) and len(set(steps)) == len(steps) > 50
    # sequence_num is each connection's own: the late subscriber's updates are a run of the first's.
    late = updates["late"]
    start = updates["first"].index(late[0])
    assert len(late) > 20 and updates["first"][start:start + len(late)] == late
    # Steps that went to the ticker and the book made trades too: every one arrives, in order.
    ids = [int(trade["trade_id"]) for trade in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) > 50
    for trade in trades:
        quote = by_trade[int(trade["trade_id"])]
        assert (trade["price"], trade["size"], trade["side"]) == (
            f"{quote.last:.{P}f}", f"{quote.last_size:.{S}f}", "BUY" if quote.buyer_maker else "SELL")


async def test_rest_book_and_trades_follow_the_walk(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("coinbase", (BTC,), rate=0) as emu:
        exchange = exchange_factory("coinbase", emu.url)
        ticker = await exchange.fetch_ticker(BTC)
        book = await exchange.fetch_order_book(BTC, 5)
        assert (book["bids"][0][0], book["asks"][0][0]) == (ticker["bid"], ticker["ask"])
        assert len(book["bids"]) == len(book["asks"]) == 5
    async with Emulator("coinbase", (BTC,), rate=300) as emu:
        exchange = exchange_factory("coinbase", emu.url)
        watched: list[dict[str, Any]] = []
        while len(watched) < 20:
            watched += await asyncio.wait_for(exchange.watch_trades(BTC), 5 * MS)
        fetched = {trade["id"]: trade for trade in await exchange.fetch_trades(BTC, limit=1000)}
        for trade in watched:
            assert (fetched[trade["id"]]["price"], fetched[trade["id"]]["amount"],
                    fetched[trade["id"]]["side"]) == (trade["price"], trade["amount"], trade["side"])


async def test_a_cut_connection_resubscribes_to_a_fresh_book_and_no_trade_is_lost(
        exchange_factory: ExchangeFactory) -> None:
    fault = Fault.RESET  # the other cuts reach ccxt the same way (tests/emulator/test_coinbase_emulator.py)
    tops = [touch(quote) for quote in replica(BTC, 20_000)]
    async with Emulator("coinbase", (BTC,), rate=300) as emu:
        exchange = exchange_factory("coinbase", emu.url)
        await asyncio.wait_for(exchange.watch_order_book(BTC), 5 * MS)
        await asyncio.wait_for(exchange.watch_trades(BTC), 5 * MS)
        await emu.inject(fault)
        with pytest.raises(ccxtpro.NetworkError):
            for _ in range(200):
                await asyncio.wait_for(exchange.watch_order_book(BTC), 5 * MS)
        for _ in range(20):
            book = await asyncio.wait_for(exchange.watch_order_book(BTC), 5 * MS)
            assert (book["bids"][0], book["asks"][0]) in tops
        for _ in range(5):
            await asyncio.wait_for(exchange.watch_trades(BTC), 5 * MS)
        # The snapshot after the reconnect repeats recent trades: ccxt's cache keeps one of each,
        # and the trades made while disconnected are there too.
        ids = sorted(int(trade["id"]) for trade in exchange.trades[BTC])
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert emu.stats.connections_opened == 2


def intact(text: str) -> bool:
    """Whether a data frame is as the dialect renders it (no frame fault applied)."""
    try:
        frame = json.loads(text)
    except ValueError:
        return False
    if frame.get("channel") in ("subscriptions", "heartbeats"):
        return True
    event = frame["events"][0]
    rows = event.get("trades") or event.get("updates")
    return ("product_id" in event or all("price" in row for row in rows)) and "abc" not in text


@pytest.mark.parametrize("channel", ["level2", "market_trades"])
async def test_frame_faults_corrupt_book_and_trade_frames(channel: str) -> None:
    async with Emulator("coinbase", (BTC,), rate=200) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        await send(ws, channel, "BTC-USD")
        await data_frames(ws, 3)
        for fault in (Fault.MALFORMED, Fault.TRUNCATED, Fault.MISSING_FIELDS, Fault.NON_NUMERIC):
            await emu.inject(fault)
            while True:  # frames written before the fault was armed come first
                text = (await asyncio.wait_for(ws.receive(), 5 * MS)).data
                if not intact(text):
                    break
            if fault in (Fault.MALFORMED, Fault.TRUNCATED):
                with pytest.raises(ValueError):
                    json.loads(text)
                continue
            event = json.loads(text)["events"][0]
            if channel == "level2":
                assert ("product_id" not in event if fault is Fault.MISSING_FIELDS
                        else event["updates"][0]["price_level"] == "abc")
            else:
                # A trade without its price (ccxt files it, priceless); or a price "abc".
                assert ("price" not in event["trades"][0] if fault is Fault.MISSING_FIELDS
                        else event["trades"][0]["price"] == "abc")
        assert all(emu.stats.faults[fault] == 1 for fault in (Fault.MALFORMED, Fault.NON_NUMERIC))


# -- replay -------------------------------------------------------------------------------------


def recorded() -> tuple[dict[str, list[Trade]], dict[str, Rebuilt], dict[tuple[str, str], int]]:
    """Per product: every recorded trade in the order ccxt appends them (each frame's trades are
    newest first), the book rebuilt from the recording, and frames per (subscribed channel, product)."""
    trades: dict[str, list[Trade]] = {}
    books: dict[str, Rebuilt] = {}
    counts: dict[tuple[str, str], int] = {}
    with gzip.open(recording_path("coinbase"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] != "recv":
                continue
            frame = json.loads(record["data"])
            if frame.get("channel") == "market_trades":
                rows = frame["events"][0]["trades"]
                counts["market_trades", rows[0]["product_id"]] = counts.get(("market_trades", rows[0]["product_id"]), 0) + 1
                for event in frame["events"]:
                    for row in reversed(event["trades"]):
                        trades.setdefault(row["product_id"], []).append(
                            (row["trade_id"], float(row["price"]), float(row["size"]), row["side"].lower()))
            elif frame.get("channel") == "l2_data":
                product = frame["events"][0]["product_id"]
                counts["level2", product] = counts.get(("level2", product), 0) + 1
                for event in frame["events"]:
                    books.setdefault(event["product_id"], Rebuilt()).apply(event)
    return trades, books, counts


async def test_the_replay_serves_every_recorded_trade_once_and_ccxt_ends_with_the_recorded_book(
        exchange_factory: ExchangeFactory) -> None:
    trades, books, counts = recorded()
    products = {"BTC-USD": BTC, "ETH-USD": ETH}
    assert sorted(trades) == sorted(books) == sorted(products)
    async with Emulator("coinbase", replay=recording_path("coinbase"), speed=0) as emu:
        exchange = exchange_factory("coinbase", emu.url)
        symbols = list(products.values())
        await asyncio.wait_for(exchange.watch_trades_for_symbols(symbols), 10 * MS)
        await asyncio.wait_for(exchange.watch_order_book_for_symbols(symbols), 10 * MS)
        await until(lambda: all(emu.sent(channel, products[product]) == count
                                for (channel, product), count in counts.items()), 15,
                    "every recorded market_trades and l2_data frame sent")

        def parsed() -> bool:
            return all(len(exchange.trades.get(symbol, ())) == len(trades[product])
                       and exchange.orderbooks[symbol]["bids"][:DEPTH] == books[product].top(DEPTH)[0]
                       for product, symbol in products.items())

        await until(parsed, 5, "ccxt to parse every frame")
        for product, symbol in products.items():
            # Every recorded trade, once, with its recorded id, price, amount and side.
            assert [(t["id"], t["price"], t["amount"], t["side"]) for t in exchange.trades[symbol]] == trades[product]
            bids, asks = books[product].top(1000)
            book = exchange.orderbooks[symbol]
            assert (book["bids"][:1000], book["asks"][:1000]) == (bids, asks), symbol
            assert book["bids"][0][0] < book["asks"][0][0]
            # REST answers from the replayed frames too.
            rest = await exchange.fetch_order_book(symbol, 5)
            assert (rest["bids"], rest["asks"]) == (bids[:5], asks[:5]), symbol
            newest = sorted(trades[product], key=lambda trade: int(trade[0]))[-3:]
            fetched = await exchange.fetch_trades(symbol, limit=3)
            assert sorted((t["id"], t["price"], t["amount"], t["side"]) for t in fetched) == sorted(newest)

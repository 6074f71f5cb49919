"""Kraken trades and books from the emulator, through unmodified ccxt.pro and raw websockets.

The oracles are the test's own: Kraken's book checksum is implemented here from Kraken's
documentation (and proven against every checksum in the shared recording), books are
rebuilt here from the recording with :class:`~decimal.Decimal`, and the recorded trades are
read straight from the file with gzip and json, never through the emulator's code.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import heapq
import json
import zlib
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from flight_md.emulator import Emulator, Fault
from flight_md.emulator.dialects.kraken import KrakenDialect
from flight_md.emulator.market import StreamKey, parse_symbols
from flight_md.emulator.synthetic import PriceWalk
from tests.emulator.conftest import MS, ExchangeFactory, recording_path, until

# Groundwork for issue 12 (trades and books): run with -m soak until ingestion stores
# these channels and the venue suite covers them by default.
pytestmark = pytest.mark.soak

SYMBOLS = ("BTC/USD", "ETH/USD")
FAST_REST = {"enableRateLimit": False}
HEARTBEAT = {"channel": "heartbeat"}
Levels = dict[Decimal, Decimal]


# -- oracles -----------------------------------------------------------------------------


def checksum(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """Kraken's CRC32 over the top 10 asks then bids: each price and qty without '.' and leading zeros."""
    def digits(text: str) -> str:
        return text.replace(".", "").lstrip("0")
    return zlib.crc32("".join(digits(p) + digits(q) for p, q in [*asks[:10], *bids[:10]]).encode())


def v2_checksum(book: tuple[Levels, Levels], price_decimals: int, qty_decimals: int) -> int:
    """The v2 checksum of a book: numbers formatted to the pair's precision first."""
    bids, asks = book
    def fmt(levels: list[tuple[Decimal, Decimal]]) -> list[tuple[str, str]]:
        return [(f"{p:.{price_decimals}f}", f"{q:.{qty_decimals}f}") for p, q in levels]
    return checksum(fmt(sorted(asks.items())[:10]), fmt(sorted(bids.items(), reverse=True)[:10]))


def apply(side: Levels, levels: list[Any], depth: int, *, bids: bool) -> None:
    """Absolute levels (qty 0 deletes), then the worst beyond ``depth`` dropped, as Kraken says."""
    for level in levels:
        price, qty = (level["price"], level["qty"]) if isinstance(level, dict) else (level[0], level[1])
        price, qty = Decimal(str(price)), Decimal(str(qty))
        if qty == 0:
            side.pop(price, None)
        else:
            side[price] = qty
    while len(side) > depth:
        del side[min(side) if bids else max(side)]


def top(book: tuple[Levels, Levels], count: int) -> tuple[list[list[float]], list[list[float]]]:
    bids, asks = book
    return ([[float(p), float(q)] for p, q in sorted(bids.items(), reverse=True)[:count]],
            [[float(p), float(q)] for p, q in sorted(asks.items())[:count]])


@functools.cache
def recorded_v1() -> tuple[list[Any], ...]:
    """Every recorded v1 data frame (``[channelID, payload..., name, pair]``), straight from the file."""
    with gzip.open(recording_path("kraken"), "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    return tuple(json.loads(r["data"]) for r in records if r["t"] == "recv" and r["data"].startswith("["))


def recorded_pairs() -> dict[str, dict[str, Any]]:
    with gzip.open(recording_path("kraken"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "http" and record["url"].endswith("/AssetPairs"):
                pairs: dict[str, dict[str, Any]] = json.loads(record["data"])["result"]
                return {entry["wsname"]: entry for entry in pairs.values() if "wsname" in entry}
    raise AssertionError("no AssetPairs recorded")


def v2_name(wsname: str) -> str:
    return wsname.replace("XBT", "BTC").replace("XDG", "DOGE")


def rebuilt_books(depth: int = 1000) -> dict[str, tuple[Levels, Levels]]:
    """Every recorded book after its snapshot and all its deltas, by v2 symbol."""
    books: dict[str, tuple[Levels, Levels]] = {}
    for frame in recorded_v1():
        if not frame[-2].startswith("book-"):
            continue
        symbol, payloads = v2_name(frame[-1]), frame[1:-2]
        if "as" in payloads[0]:
            books[symbol] = ({}, {})
        for payload in payloads:
            apply(books[symbol][0], payload.get("bs", payload.get("b", [])), depth, bids=True)
            apply(books[symbol][1], payload.get("as", payload.get("a", [])), depth, bids=False)
    return books


# -- helpers -----------------------------------------------------------------------------


def ws_url(emu: Emulator) -> str:
    return emu.url.replace("http://", "ws://") + "/v2"


async def data_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next channel data frame (status, heartbeat and replies skipped)."""
    while True:
        message = await asyncio.wait_for(ws.receive(), 5 * MS)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        frame: dict[str, Any] = json.loads(message.data)
        if frame.get("channel") in ("book", "trade", "ticker"):
            return frame


async def subscribe(ws: aiohttp.ClientWebSocketResponse, **params: Any) -> None:
    await ws.send_str(json.dumps({"method": "subscribe", "params": params}))


# -- the recording proves the checksum oracle ------------------------------------------


def test_the_checksum_oracle_reproduces_every_recorded_kraken_checksum() -> None:
    # Levels keep the strings as sent (v1's checksum is over them), keyed by their value.
    books: dict[str, tuple[dict[Decimal, tuple[str, str]], dict[Decimal, tuple[str, str]]]] = {}
    checked = 0
    for frame in recorded_v1():
        if not frame[-2].startswith("book-"):
            continue
        pair, payloads = frame[-1], frame[1:-2]
        if "as" in payloads[0]:
            books[pair] = ({}, {})
        bids, asks = books[pair]
        recorded = None
        for payload in payloads:
            for side, name in ((bids, "b"), (asks, "a")):
                for level in payload.get(name + "s", payload.get(name, [])):
                    if Decimal(level[1]) == 0:
                        side.pop(Decimal(level[0]), None)
                    else:
                        side[Decimal(level[0])] = (level[0], level[1])
            recorded = payload.get("c", recorded)
        for side, worst in ((bids, min), (asks, max)):
            while len(side) > 1000:
                del side[worst(side)]
        if recorded is not None:
            assert checksum([asks[price] for price in heapq.nsmallest(10, asks)],
                            [bids[price] for price in heapq.nlargest(10, bids)]) == int(recorded)
            checked += 1
    assert checked == 4269


# -- synthetic ---------------------------------------------------------------------------


def test_synthetic_trades_hit_the_touch_and_the_book_top_is_the_quote() -> None:
    (market,) = parse_symbols("BTC/USD")
    walk = PriceWalk(market, seed=7)
    dialect = KrakenDialect((market,), {"BTC/USD": walk}, None)
    trade_key, book_key = StreamKey("trade", "BTC/USD"), StreamKey("book", "BTC/USD")
    dialect.render(book_key, dialect.markets[0], walk.quote, snapshot=True)
    ids = []
    for step in range(200):
        quote = walk.step(1_700_000_000_000 + step)
        (trade,) = json.loads(dialect.render(trade_key, dialect.markets[0], quote, snapshot=False))["data"]
        dialect.render(book_key, dialect.markets[0], quote, snapshot=False)  # the book moves to the quote
        (book,) = json.loads(dialect.render(book_key, dialect.markets[0], quote, snapshot=True))["data"]
        assert (book["bids"][0]["price"], book["asks"][0]["price"]) == (round(quote.bid, 2), round(quote.ask, 2))
        touch = book["asks"][0]["price"] if trade["side"] == "buy" else book["bids"][0]["price"]
        assert trade["price"] == touch
        ids.append(trade["trade_id"])
    assert ids == list(range(ids[0], ids[0] + 200))  # sequential, as Kraken's v2 trade_id


@pytest.mark.asyncio
async def test_watch_order_book_top_equals_the_ticker_and_rest(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("kraken", SYMBOLS, rate=0) as emu:  # snapshots only: one quote for all
        exchange = exchange_factory("kraken", emu.url, **FAST_REST)
        ticker = await asyncio.wait_for(exchange.watch_ticker("BTC/USD"), 5 * MS)
        book = await asyncio.wait_for(exchange.watch_order_book("BTC/USD"), 5 * MS)
        assert (book["bids"][0][0], book["asks"][0][0]) == (ticker["bid"], ticker["ask"])
        assert (book["bids"][0][1], book["asks"][0][1]) == (ticker["bidVolume"], ticker["askVolume"])
        assert len(book["bids"]) == len(book["asks"]) == 10
        prices = [p for p, _ in reversed(book["bids"])] + [p for p, _ in book["asks"]]
        assert prices == sorted(prices) and len(set(prices)) == 20
        rest = await exchange.fetch_order_book("BTC/USD", 5)
        assert ([lv[:2] for lv in rest["bids"]], [lv[:2] for lv in rest["asks"]]) == (book["bids"][:5], book["asks"][:5])
        assert (await exchange.fetch_ticker("BTC/USD"))["bid"] == ticker["bid"]


@pytest.mark.asyncio
async def test_synthetic_book_checksums_hold_and_ccxt_builds_the_same_book(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("kraken", SYMBOLS, rate=400) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        exchange = exchange_factory("kraken", emu.url, **FAST_REST)
        await exchange.load_markets()
        precision = exchange.markets["BTC/USD"]["info"]
        p, s = precision["pair_decimals"], precision["lot_decimals"]
        await subscribe(ws, channel="book", symbol=["BTC/USD"], depth=10)
        seen: dict[int, tuple[list[list[float]], list[list[float]]]] = {}
        book: tuple[Levels, Levels] = ({}, {})

        async def read() -> None:
            frame = await data_frame(ws)
            (data,) = frame["data"]
            if frame["type"] == "snapshot":
                book[0].clear()
                book[1].clear()
            apply(book[0], data["bids"], 10, bids=True)
            apply(book[1], data["asks"], 10, bids=False)
            assert data["checksum"] == v2_checksum(book, p, s), frame
            assert max(book[0]) < min(book[1])  # never crossed
            seen[data["checksum"]] = top(book, 10)

        for _ in range(100):
            await read()
        for _ in range(30):
            live = await asyncio.wait_for(exchange.watch_order_book("BTC/USD"), 5 * MS)
            # ccxt updates its book in place: copy it before the next await.
            got = {name: [list(level) for level in live[name]] for name in ("bids", "asks")}
            assert got["bids"][0][0] < got["asks"][0][0] and len(got["bids"]) == len(got["asks"]) == 10
        ours = ({Decimal(str(px)): Decimal(str(q)) for px, q in got["bids"]},
                {Decimal(str(px)): Decimal(str(q)) for px, q in got["asks"]})
        expected = v2_checksum(ours, p, s)
        async with asyncio.timeout(5 * MS):
            while expected not in seen:
                await read()
        assert (got["bids"], got["asks"]) == seen[expected]


@pytest.mark.asyncio
async def test_watch_trades_then_fetch_trades_since(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("kraken", SYMBOLS, rate=200) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        await subscribe(ws, channel="trade", symbol=["ETH/USD"])
        sent = {}
        exchange = exchange_factory("kraken", emu.url, **FAST_REST)
        watched: list[dict[str, Any]] = []
        async with asyncio.timeout(10 * MS):
            while len(watched) < 20:
                watched += await exchange.watch_trades("ETH/USD")  # the trades new since the last call
        while not {t["id"] for t in watched} <= sent.keys():
            (row,) = (await data_frame(ws))["data"]
            sent[str(row["trade_id"])] = (row["price"], row["qty"], row["side"])
        assert [(t["price"], t["amount"], t["side"]) for t in watched] == [sent[t["id"]] for t in watched]
        ids = [int(t["id"]) for t in watched]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        fetched = await exchange.fetch_trades("ETH/USD", since=watched[0]["timestamp"])
        by_id = {t["id"]: t for t in fetched}
        for trade in watched:
            assert (by_id[trade["id"]]["price"], by_id[trade["id"]]["amount"], by_id[trade["id"]]["side"],
                    by_id[trade["id"]]["timestamp"]) == (trade["price"], trade["amount"], trade["side"],
                                                         trade["timestamp"])


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", [Fault.MALFORMED, Fault.TRUNCATED, Fault.MISSING_FIELDS, Fault.NON_NUMERIC])
async def test_frame_faults_hit_book_and_trade_frames(fault: Fault) -> None:
    async with Emulator("kraken", SYMBOLS, rate=100) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        for channel in ("book", "trade"):
            await subscribe(ws, channel=channel, symbol=["BTC/USD"])
        await emu.inject(fault, count=6)
        broken = 0
        async with asyncio.timeout(5 * MS):
            while broken < 6:
                message = await ws.receive()
                try:
                    frame = json.loads(message.data)
                except ValueError:
                    broken += 1
                    continue
                data = frame.get("data") if isinstance(frame, dict) else None
                if frame.get("channel") in ("status", "heartbeat") or "method" in frame:
                    continue
                row = data[0] if isinstance(data, list) and data else {}
                levels = [lv["price"] for name in ("bids", "asks") for lv in row.get(name, [])]
                if "symbol" not in row or "abc" in (row.get("price"), row.get("checksum"), *levels):
                    broken += 1
        assert emu.stats.faults[fault] == 6


# -- replay of the v1 recording -----------------------------------------------------------


@pytest.mark.asyncio
async def test_replay_trades_and_books_come_out_as_recorded(exchange_factory: ExchangeFactory) -> None:
    """One replay, three clients: ccxt at depth 10 (with the trades), ccxt at depth 1000, a raw websocket."""
    trades: dict[str, list[tuple[float, float, str, int]]] = {}
    for frame in recorded_v1():
        if frame[-2] == "trade":
            trades.setdefault(v2_name(frame[-1]), []).extend(
                (float(r[0]), float(r[1]), {"b": "buy", "s": "sell"}[r[3]], int(Decimal(r[2]) * 1000))
                for r in frame[1])
    assert sum(map(len, trades.values())) == 10
    symbols = ["XMR/USD", "SC/EUR", "GRT/ETH"]
    books = rebuilt_books()
    pair = recorded_pairs()["XMR/USD"]
    p, s = int(pair["pair_decimals"]), int(pair["lot_decimals"])
    xmr_bids, xmr_asks = books["XMR/USD"]
    xmr_top10 = (dict(sorted(xmr_bids.items(), reverse=True)[:10]), dict(sorted(xmr_asks.items())[:10]))
    async with Emulator("kraken", replay=recording_path("kraken"), speed=0) as emu, \
            aiohttp.ClientSession() as session, session.ws_connect(ws_url(emu)) as ws:
        await subscribe(ws, channel="book", symbol=["XMR/USD"], depth=10)
        narrow = exchange_factory("kraken", emu.url, **FAST_REST)
        deep = exchange_factory("kraken", emu.url, **FAST_REST)
        for symbol in symbols:
            await asyncio.wait_for(narrow.watch_order_book(symbol, 10), 5 * MS)
            await asyncio.wait_for(deep.watch_order_book(symbol, 1000), 5 * MS)
        async with asyncio.timeout(10 * MS):
            while any(len(narrow.trades.get(s, ())) < len(rows) for s, rows in trades.items()):
                await narrow.watch_trades_for_symbols(sorted(trades))

        # The raw depth-10 stream: v2 checksums recomputed over the windowed book, every frame.
        book: tuple[Levels, Levels] = ({}, {})
        received = 0
        async with asyncio.timeout(10 * MS):
            while book != xmr_top10 or received == 0:
                frame = await data_frame(ws)
                (data,) = frame["data"]
                assert (frame["type"] == "snapshot") == (received == 0)
                apply(book[0], data["bids"], 10, bids=True)
                apply(book[1], data["asks"], 10, bids=False)
                assert len(book[0]) == len(book[1]) == 10 and max(book[0]) < min(book[1])
                assert data["checksum"] == v2_checksum(book, p, s)
                received += 1
        recorded = sum(1 for frame in recorded_v1() if frame[-2].startswith("book-") and frame[-1] == "XMR/USD")
        assert 0 < received < recorded  # changes beyond the top 10 are not sent to a depth-10 subscriber

        def served(exchange: Any, symbol: str, depth: int) -> Any:
            held = exchange.orderbooks.get(symbol)
            return None if held is None else (held["bids"][:depth], held["asks"][:depth])

        await until(lambda: all(served(narrow, symbol, 10) == top(books[symbol], 10)
                                and served(deep, symbol, 1000) == top(books[symbol], 1000) for symbol in symbols),
                    10, "ccxt's books to equal the recording's")
        for symbol in symbols:
            bids, asks = served(narrow, symbol, 10)
            assert bids[0][0] < asks[0][0] and len(bids) == min(10, len(books[symbol][0]))

        for symbol, rows in trades.items():  # every recorded trade, exactly once
            got = [(t["price"], t["amount"], t["side"], t["timestamp"]) for t in narrow.trades[symbol]]
            assert got == rows, symbol
            assert all(t["id"] is None for t in narrow.trades[symbol])  # v1 trades have no id

        # REST answers from what was replayed.
        fetched = await narrow.fetch_trades("XMR/USD")
        assert [(t["price"], t["amount"], t["side"], t["timestamp"]) for t in fetched] == trades["XMR/USD"]
        rest = await narrow.fetch_order_book("XMR/USD")  # Kraken's default count: 100
        assert ([lv[:2] for lv in rest["bids"]], [lv[:2] for lv in rest["asks"]]) == top(books["XMR/USD"], 100)

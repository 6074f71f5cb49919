"""OKX ``trades`` and ``books`` from the emulator, through unmodified ccxt.pro.okx and raw websockets.

Expected values come from independent sources: a replica of the emulator's random walk
(:class:`~flight_md.emulator.synthetic.PriceWalk`, same seed and symbol) for synthetic data,
and the recording read here with ``gzip`` and ``json`` for the replay. The book checksum is
recomputed here (OKX's CRC32 over the top 25 levels), not taken from the dialect.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Sequence
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest

from flight_md.emulator import Emulator, Fault
from flight_md.emulator.market import parse_symbols
from flight_md.emulator.synthetic import PriceWalk, Quote
from tests.emulator.conftest import MS, ExchangeFactory, recording_path, until

pytestmark = [pytest.mark.soak, pytest.mark.asyncio, pytest.mark.timeout(60 * MS)]

SPOT = "BTC/USDT"
LINEAR = "ETH/USDT:USDT"
DEPTH = 25  # the dialect's synthetic depth, and the levels OKX's checksum covers


def ws_url(emu: Emulator) -> str:
    return emu.url.replace("http://", "ws://") + "/ws/v5/public"


def replica(symbol: str, steps: int = 5000) -> list[Quote]:
    """The emulator's walk of one market (seed 0): its first quote, then ``steps`` more."""
    walk = PriceWalk(parse_symbols((symbol,))[0], 0)
    return [walk.quote, *(walk.step(0) for _ in range(steps))]


def grid(value: float, decimals: int) -> float:
    return float(f"{value:.{decimals}f}")


def checksum(bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> int:
    parts: list[str] = []
    for index in range(25):
        parts += bids[index][:2] if index < len(bids) else []
        parts += asks[index][:2] if index < len(asks) else []
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 2**32 if crc >= 2**31 else crc


class Rebuilt:
    """A book rebuilt from OKX frames: price text -> level, per side."""

    def __init__(self) -> None:
        self.bids: dict[str, list[str]] = {}
        self.asks: dict[str, list[str]] = {}

    def apply(self, row: dict[str, Any], snapshot: bool) -> None:
        if snapshot:
            self.bids, self.asks = {}, {}
        for side, levels in ((self.bids, row["bids"]), (self.asks, row["asks"])):
            for level in levels:
                if float(level[1]) == 0:
                    side.pop(level[0], None)
                else:
                    side[level[0]] = level

    def sides(self) -> tuple[list[list[str]], list[list[str]]]:
        return (sorted(self.bids.values(), key=lambda level: -float(level[0])),
                sorted(self.asks.values(), key=lambda level: float(level[0])))

    def top(self, depth: int) -> tuple[list[list[float]], list[list[float]]]:
        bids, asks = self.sides()
        return ([[float(px), float(sz)] for px, sz, *_ in bids[:depth]],
                [[float(px), float(sz)] for px, sz, *_ in asks[:depth]])


async def subscribe(ws: aiohttp.ClientWebSocketResponse, *args: tuple[str, str]) -> None:
    await ws.send_str(json.dumps({"op": "subscribe", "args": [{"channel": c, "instId": i} for c, i in args]}))


async def frames(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    """The next ``count`` data frames (acknowledgements skipped)."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        frame = json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)
        if "data" in frame:
            out.append(frame)
    return out


def intact(text: str) -> bool:
    """Whether a data frame is as the dialect renders it (no frame fault applied)."""
    try:
        frame = json.loads(text)
    except ValueError:
        return False
    rows = frame["data"]
    return "instId" in frame["arg"] and all(
        ("instId" in row if frame["arg"]["channel"] == "trades" else True) and "abc" not in json.dumps(row)
        for row in rows)


# -- synthetic ---------------------------------------------------------------------------------


async def test_watch_trades_returns_the_walks_trades_at_the_touch(exchange_factory: ExchangeFactory) -> None:
    quotes = replica(SPOT)
    p, s = 2, 6  # BTC/USDT's grid in the emulator (see Market.from_symbol)
    async with Emulator("okx", (SPOT, LINEAR), rate=300) as emu:
        exchange = exchange_factory("okx", emu.url)
        seen: list[dict[str, Any]] = []
        while len(seen) < 60:
            seen += await asyncio.wait_for(exchange.watch_trades(SPOT), 5 * MS)
    # Only trades stream BTC/USDT, so the k-th trade is the walk's k-th step.
    by_id = {quote.trade_id: quote for quote in quotes[1:]}
    first = int(seen[0]["id"])
    assert [int(trade["id"]) for trade in seen] == list(range(first, first + len(seen)))
    for trade in seen:
        quote = by_id[int(trade["id"])]
        side = "sell" if quote.buyer_maker else "buy"  # OKX's side is the taker's
        touch = quote.bid if quote.buyer_maker else quote.ask
        assert (trade["symbol"], trade["side"], trade["price"], trade["amount"]) == (
            SPOT, side, grid(touch, p), grid(quote.last_size, s)), trade["id"]
    assert {trade["side"] for trade in seen} == {"buy", "sell"}


async def test_watch_order_book_tops_are_the_walks_touch_and_ccxt_sequence_checks_pass(
        exchange_factory: ExchangeFactory) -> None:
    quotes = {quote.update_id: quote for quote in replica(SPOT)}
    async with Emulator("okx", (SPOT,), rate=300) as emu:
        exchange = exchange_factory("okx", emu.url)
        nonces: list[int] = []
        while len(nonces) < 60:
            book = await asyncio.wait_for(exchange.watch_order_book(SPOT, 10), 5 * MS)
            quote = quotes[book["nonce"]]  # seqId is the walk's book update id
            assert len(book["bids"]) == len(book["asks"]) == DEPTH  # ccxt keeps what OKX sends
            assert book["bids"][0] == [grid(quote.bid, 2), grid(quote.bid_size, 6)]
            assert book["asks"][0] == [grid(quote.ask, 2), grid(quote.ask_size, 6)]
            assert all(a[0] < b[0] for a, b in zip(book["asks"], book["asks"][1:], strict=False))
            assert all(a[0] > b[0] for a, b in zip(book["bids"], book["bids"][1:], strict=False))
            nonces.append(book["nonce"])
        assert nonces == sorted(nonces) and len(set(nonces)) > 30  # ccxt never raised InvalidNonce


async def test_raw_frames_chain_seq_ids_carry_okx_checksums_and_consecutive_trade_ids() -> None:
    quotes = replica(SPOT)
    by_update = {quote.update_id: quote for quote in quotes}
    trade_ids = [quote.trade_id for quote in quotes]
    async with Emulator("okx", (SPOT,), rate=300) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as first, session.ws_connect(ws_url(emu)) as late:
        await subscribe(first, ("books", "BTC-USDT"), ("trades", "BTC-USDT"), ("tickers", "BTC-USDT"))
        early = await frames(first, 60)
        await subscribe(late, ("books", "BTC-USDT"))
        later = await frames(late, 40)
        rest = await frames(first, 200)
    books: dict[str, Rebuilt] = {"first": Rebuilt(), "late": Rebuilt()}
    tops: dict[str, dict[int, Any]] = {"first": {}, "late": {}}
    trades: list[dict[str, str]] = []
    for name, stream in (("first", early + rest), ("late", later)):
        previous: int | None = None
        for frame in stream:
            channel = frame["arg"]["channel"]
            if channel == "trades":
                trades += frame["data"]
                continue
            if channel != "books":
                continue
            row = frame["data"][0]
            snapshot = frame["action"] == "snapshot"
            assert snapshot == (previous is None)
            assert row["prevSeqId"] == (-1 if snapshot else previous)
            previous = row["seqId"]
            books[name].apply(row, snapshot)
            bids, asks = books[name].sides()
            assert row["checksum"] == checksum(bids, asks)
            assert len(bids) == len(asks) == DEPTH and float(bids[0][0]) < float(asks[0][0])
            if not snapshot:  # a late snapshot carries the last seqId; its content is newer
                quote = by_update[row["seqId"]]
                assert (bids[0][:2], asks[0][:2]) == ([f"{quote.bid:.2f}", f"{quote.bid_size:.6f}"],
                                                      [f"{quote.ask:.2f}", f"{quote.ask_size:.6f}"])
                tops[name][row["seqId"]] = books[name].top(DEPTH)
    # The late subscriber's book agrees with the first one's at every seqId both saw.
    common = tops["first"].keys() & tops["late"].keys()
    assert len(common) > 20
    assert all(tops["first"][seq] == tops["late"][seq] for seq in common)
    # Steps that went to tickers and books still made trades: every one arrives, in order.
    ids = [int(row["tradeId"]) for row in trades]
    start = trade_ids.index(ids[0])
    assert ids == trade_ids[start:start + len(ids)] and len(ids) > 50


async def test_rest_book_and_trades_follow_the_walk(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("okx", (SPOT,), rate=0) as emu:
        exchange = exchange_factory("okx", emu.url)
        ticker = await exchange.fetch_ticker(SPOT)
        book = await exchange.fetch_order_book(SPOT, 5)
        assert (book["bids"][0][0], book["asks"][0][0]) == (ticker["bid"], ticker["ask"])
        assert len(book["bids"]) == len(book["asks"]) == 5
    async with Emulator("okx", (SPOT,), rate=300) as emu:
        exchange = exchange_factory("okx", emu.url)
        watched: list[dict[str, Any]] = []
        while len(watched) < 20:
            watched += await asyncio.wait_for(exchange.watch_trades(SPOT), 5 * MS)
        fetched = {trade["id"]: trade for trade in await exchange.fetch_trades(SPOT, limit=500)}
        for trade in watched:
            assert (fetched[trade["id"]]["price"], fetched[trade["id"]]["amount"],
                    fetched[trade["id"]]["side"]) == (trade["price"], trade["amount"], trade["side"])


@pytest.mark.parametrize("fault", [Fault.RESET, Fault.CLOSE_1006], ids=lambda fault: fault.value)
async def test_a_cut_connection_ends_in_a_resubscribed_consistent_book(exchange_factory: ExchangeFactory,
                                                                       fault: Fault) -> None:
    quotes = {quote.update_id: quote for quote in replica(SPOT, 20_000)}
    async with Emulator("okx", (SPOT,), rate=300) as emu:
        exchange = exchange_factory("okx", emu.url)
        await asyncio.wait_for(exchange.watch_order_book(SPOT), 5 * MS)
        await emu.inject(fault)
        with pytest.raises(ccxtpro.NetworkError):
            for _ in range(200):
                await asyncio.wait_for(exchange.watch_order_book(SPOT), 5 * MS)
        for _ in range(20):
            book = await asyncio.wait_for(exchange.watch_order_book(SPOT), 5 * MS)
            quote = quotes[book["nonce"]]
            assert (book["bids"][0][0], book["asks"][0][0]) == (grid(quote.bid, 2), grid(quote.ask, 2))
        assert emu.stats.connections_opened == 2


@pytest.mark.parametrize("channel", ["books", "trades"])
async def test_frame_faults_corrupt_book_and_trade_frames_and_a_lost_update_breaks_the_seq_chain(
        channel: str) -> None:
    async with Emulator("okx", (SPOT,), rate=200) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        await subscribe(ws, (channel, "BTC-USDT"))
        await frames(ws, 3)
        for fault in (Fault.MALFORMED, Fault.TRUNCATED, Fault.MISSING_FIELDS, Fault.NON_NUMERIC):
            await emu.inject(fault)
            while True:  # frames written before the fault was armed come first
                text = (await asyncio.wait_for(ws.receive(), 5 * MS)).data
                if not intact(text):
                    break
            following = json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)["data"][0]
            if fault in (Fault.MALFORMED, Fault.TRUNCATED):
                with pytest.raises(ValueError):
                    json.loads(text)
                continue
            broken = json.loads(text)
            row = broken["data"][0]
            if fault is Fault.MISSING_FIELDS:
                # trades rows name their market (ccxt still files them under arg.instId); books only in arg.
                assert "instId" not in (broken["arg"] if channel == "books" else row)
            elif channel == "books":
                assert "abc" in {level[0] for level in row["bids"] + row["asks"]}
            else:
                assert row["px"] == "abc"
            if channel == "books":
                # The corrupted frame still took its seqId: a client that drops it sees the gap.
                assert following["prevSeqId"] == row["seqId"]
        assert all(emu.stats.faults[fault] == 1 for fault in (Fault.MALFORMED, Fault.NON_NUMERIC))


# -- replay -------------------------------------------------------------------------------------


Trade = tuple[str, float, float, str]


def recorded(inst_ids: dict[str, str]) -> tuple[dict[str, list[Trade]], dict[str, Rebuilt], dict[tuple[str, str], int]]:
    """Per instId: every recorded trade, the book rebuilt from the recording; frames per (channel, instId)."""
    trades: dict[str, list[Trade]] = {}
    books: dict[str, Rebuilt] = {}
    counts: dict[tuple[str, str], int] = {}
    with gzip.open(recording_path("okx"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] != "recv" or not record["data"].startswith("{"):
                continue
            frame = json.loads(record["data"])
            if "data" not in frame or frame["arg"]["instId"] not in inst_ids:
                continue
            inst_id, channel = frame["arg"]["instId"], frame["arg"]["channel"]
            counts[channel, inst_id] = counts.get((channel, inst_id), 0) + 1
            if channel == "trades":
                trades.setdefault(inst_id, []).extend(
                    (row["tradeId"], float(row["px"]), float(row["sz"]), row["side"]) for row in frame["data"])
            elif channel == "books":
                book = books.setdefault(inst_id, Rebuilt())
                for row in frame["data"]:
                    book.apply(row, frame["action"] == "snapshot")
                    assert row["checksum"] == checksum(*book.sides())  # the rebuild is OKX's
    return trades, books, counts


async def test_the_replay_serves_every_recorded_trade_once_and_ccxt_ends_with_the_recorded_book(
        exchange_factory: ExchangeFactory) -> None:
    inst_ids = {"BTC-USDT": "BTC/USDT", "BTC-USD-220527": "BTC/USD:BTC-220527", "UNI-USD-SWAP": "UNI/USD:UNI"}
    trades, books, counts = recorded(inst_ids)
    assert sorted(trades) == sorted(books) == sorted(inst_ids)
    symbols = list(inst_ids.values())
    async with Emulator("okx", replay=recording_path("okx"), speed=0) as emu:
        exchange = exchange_factory("okx", emu.url)
        await exchange.load_markets()
        assert {inst_id: exchange.safe_symbol(inst_id) for inst_id in inst_ids} == inst_ids
        await asyncio.wait_for(exchange.watch_trades_for_symbols(symbols), 10 * MS)
        await asyncio.wait_for(exchange.watch_order_book_for_symbols(symbols), 10 * MS)
        await until(lambda: all(emu.sent(channel, inst_ids[inst_id]) == count
                                for (channel, inst_id), count in counts.items() if channel != "tickers"),
                    15, "every recorded trades and books frame sent")
        await until(lambda: all(len(exchange.trades.get(symbol, ())) == len(trades[inst_id])
                                and exchange.orderbooks[symbol]["bids"][:400] == books[inst_id].top(400)[0]
                                for inst_id, symbol in inst_ids.items()), 5, "ccxt to parse every frame")
        for inst_id, symbol in inst_ids.items():
            # Every recorded trade, once, in order, with its recorded id, price, amount and side.
            assert [(t["id"], t["price"], t["amount"], t["side"]) for t in exchange.trades[symbol]] == trades[inst_id]
            bids, asks = books[inst_id].top(400)
            book = exchange.orderbooks[symbol]
            assert (book["bids"][:400], book["asks"][:400]) == (bids, asks), symbol
            assert book["bids"][0][0] < book["asks"][0][0]
            # REST answers from the replayed frames too.
            rest = await exchange.fetch_order_book(symbol, 5)
            assert (rest["bids"], rest["asks"]) == ([level + [0] for level in bids[:5]],
                                                    [level + [0] for level in asks[:5]]), symbol
            fetched = await exchange.fetch_trades(symbol, limit=3)
            assert [(t["id"], t["price"], t["amount"], t["side"]) for t in fetched] == trades[inst_id][-3:]

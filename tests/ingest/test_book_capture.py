"""Book capture (:mod:`flight_md.ingest.books`): real ccxt.pro against the emulator's replays, into a real buffer.

The capture is installed into ccxt's frame handling the way the book stream installs it: a
subclass of the ccxt.pro class calls ``before`` / ``after`` around ccxt's own
``handle_message`` and ``connection_lost`` from ``on_close`` (:func:`observed`). Expected
books are rebuilt here from the recording files (snapshot, then every delta), read with gzip
and json, never through the emulator's code.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ccxt.pro as ccxtpro
import pyarrow as pa
import pytest

from flight_md.buffer import MarketDataBuffer
from flight_md.emulator import Emulator
from flight_md.events import EventKind, EventLog
from flight_md.ingest.books import BookCapture
from flight_md.ingest.endpoints import url_overrides
from flight_md.venues import venue
from tests.emulator.conftest import recording_path
from tests.support import MS, async_until

DEPTH = 10
Side = dict[Decimal, Decimal]
Top = tuple[list[list[float]], list[list[float]]]


# -- the capture, installed as the book stream installs it -------------------------------------


def observed(exchange_id: str, base_url: str, **config: Any) -> Any:
    """A ccxt.pro exchange whose frames go through ``exchange.capture`` (when set) around ccxt's handling."""
    base = getattr(ccxtpro, exchange_id)

    def handle_message(self: Any, client: Any, message: Any) -> None:
        capture: BookCapture | None = self.capture
        if capture is None:
            base.handle_message(self, client, message)
            return
        capture.before(client, message)
        try:
            base.handle_message(self, client, message)
        except Exception as error:  # noqa: BLE001 - as the stream's frame guard: one frame, not the connection
            capture.after(client, message, error)
            return
        capture.after(client, message, None)

    def on_close(self: Any, client: Any, error: Any) -> None:
        if self.capture is not None:
            self.capture.connection_lost(client)
        base.on_close(self, client, error)

    cls = type(base.__name__, (base,), {"handle_message": handle_message, "on_close": on_close, "capture": None})
    return cls({**url_overrides(exchange_id, base_url), "enableRateLimit": False, **config})


@dataclass
class Rig:
    """An emulator, an observed ccxt, its capture and what the capture stored and asked for."""

    emulator: Emulator
    exchange: Any
    capture: BookCapture
    buffer: MarketDataBuffer
    events: EventLog
    resyncs: list[str] = field(default_factory=list)

    def rows(self, symbol: str) -> pa.Table:
        return self.buffer.get_range_sync(symbol, exchange=self.exchange.id)

    def latest(self, symbol: str) -> Top | None:
        held = self.buffer.keys(self.exchange.id)
        if (self.exchange.id, symbol) not in held:
            return None
        table = self.buffer.get_latest_sync(symbol, 1, exchange=self.exchange.id)
        if table.num_rows == 0:
            return None
        row = table.slice(table.num_rows - 1).to_pylist()[0]
        return ([[lv["price"], lv["amount"]] for lv in row["bids"]], [[lv["price"], lv["amount"]] for lv in row["asks"]])

    def book_resyncs(self) -> list[Any]:
        return [e for e in self.events.events() if e.kind is EventKind.BOOK_RESYNC]


@asynccontextmanager
async def rig(exchange_id: str, *, depth: int = DEPTH, subscribed: Callable[[str], bool] = lambda _: True,
              on_resync: Callable[[str], None] | None = None, **emulator: Any) -> AsyncIterator[Rig]:
    """An emulator (``Emulator(exchange_id, **emulator)``) and an observed ccxt whose capture stores
    into a real book buffer; ``on_resync(symbol)`` is called after each resync is noted."""
    async with Emulator(exchange_id, **emulator) as emu:
        exchange = observed(exchange_id, emu.url)
        try:
            await exchange.load_markets()
            buffer = MarketDataBuffer(100_000, channel="book", book_depth=depth)
            events = EventLog()
            resyncs: list[str] = []

            def resync(symbol: str) -> None:
                resyncs.append(symbol)
                if on_resync is not None:
                    on_resync(symbol)

            capture = BookCapture(venue(exchange_id), exchange, buffer, events, depth,
                                  subscribed=subscribed, resync=resync)
            exchange.capture = capture
            yield Rig(emu, exchange, capture, buffer, events, resyncs)
        finally:
            await exchange.close()


def never_crossed(table: pa.Table) -> None:
    for row in table.select(["bids", "asks"]).to_pylist():
        if row["bids"] and row["asks"]:
            assert row["bids"][0]["price"] < row["asks"][0]["price"], row


# -- books rebuilt from the recordings -----------------------------------------------------------


def records(exchange: str) -> Iterator[dict[str, Any]]:
    with gzip.open(recording_path(exchange), "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def apply(side: Side, levels: Any, *, depth: int | None = None, bids: bool = True) -> None:
    for level in levels:
        price, qty = (level["price"], level["qty"]) if isinstance(level, dict) else (level[0], level[1])
        price, qty = Decimal(str(price)), Decimal(str(qty))
        if qty == 0:
            side.pop(price, None)
        else:
            side[price] = qty
    while depth is not None and len(side) > depth:
        del side[min(side) if bids else max(side)]


def top(bids: Side, asks: Side, count: int = DEPTH) -> Top:
    return ([[float(p), float(q)] for p, q in sorted(bids.items(), reverse=True)[:count]],
            [[float(p), float(q)] for p, q in sorted(asks.items())[:count]])


@dataclass
class Expected:
    """A venue's replayed books: the top levels after the last recorded delta, and book frames per symbol."""

    tops: dict[str, Top]
    frames: dict[str, int | None]  # None: not every frame reaches ccxt (Binance's before its snapshot, Kraken's windows)
    sequenced: bool = True  # the recorded frames carry the venue's sequence numbers (not Kraken's, not OKX's 2022 ones)


def binance_expected() -> Expected:
    snapshot: dict[str, Any] = {}
    deltas: list[dict[str, Any]] = []
    for record in records("binance"):
        if record["t"] == "http" and "/api/v3/depth" in record["url"] and "NKNUSDT" in record["url"]:
            snapshot = json.loads(record["data"])
        elif record["t"] == "recv" and '"depthUpdate"' in record["data"]:
            data = json.loads(record["data"]).get("data", {})
            if data.get("s") == "NKNUSDT":
                deltas.append(data)
    nonce = snapshot["lastUpdateId"]
    bids: Side = {}
    asks: Side = {}
    apply(bids, snapshot["bids"])
    apply(asks, snapshot["asks"])
    for delta in deltas:
        if delta["u"] <= nonce:
            continue
        assert delta["U"] <= nonce + 1 <= delta["u"]  # the recording is one unbroken chain
        apply(bids, delta["b"])
        apply(asks, delta["a"])
        nonce = delta["u"]
    return Expected({"NKN/USDT": top(bids, asks)}, {"NKN/USDT": None})


def bybit_expected() -> Expected:
    category: dict[str, str] = {}
    books: dict[str, tuple[Side, Side]] = {}
    frames: dict[str, int | None] = {}
    for record in records("bybit"):
        if record["t"] == "connect":
            category[record["conn"]] = record["addr"].rsplit("/", 1)[-1]
        elif record["t"] == "recv" and '"orderbook.200.BTCUSDT"' in record["data"]:
            frame = json.loads(record["data"])
            symbol = "BTC/USDT:USDT" if category[record["conn"]] == "linear" else "BTC/USDT"
            if frame["type"] == "snapshot":
                books[symbol] = ({}, {})
            apply(books[symbol][0], frame["data"]["b"])
            apply(books[symbol][1], frame["data"]["a"])
            frames[symbol] = (frames.get(symbol) or 0) + 1
    return Expected({symbol: top(*book) for symbol, book in books.items()}, frames)


def coinbase_expected() -> Expected:
    products = {"BTC-USD": "BTC/USD", "ETH-USD": "ETH/USD"}
    books: dict[str, tuple[Side, Side]] = {}
    frames: dict[str, int | None] = {}
    for record in records("coinbase"):
        if record["t"] != "recv" or '"l2_data"' not in record["data"][:200]:
            continue
        frame = json.loads(record["data"])
        touched = set()
        for event in frame["events"]:
            symbol = products[event["product_id"]]
            if event["type"] == "snapshot":
                books[symbol] = ({}, {})
            for update in event["updates"]:
                side = books[symbol][0 if update["side"] == "bid" else 1]
                apply(side, [(update["price_level"], update["new_quantity"])])
            touched.add(symbol)
        for symbol in touched:
            frames[symbol] = (frames.get(symbol) or 0) + 1
    return Expected({symbol: top(*book) for symbol, book in books.items()}, frames)


def okx_expected() -> Expected:
    inst_ids = {"BTC-USDT": "BTC/USDT", "BTC-USD-220527": "BTC/USD:BTC-220527", "UNI-USD-SWAP": "UNI/USD:UNI"}
    books: dict[str, tuple[Side, Side]] = {}
    frames: dict[str, int | None] = {}
    sequenced = True
    for record in records("okx"):
        if record["t"] != "recv" or '"books"' not in record["data"][:120]:
            continue
        frame = json.loads(record["data"])
        if "data" not in frame:
            continue
        symbol = inst_ids[frame["arg"]["instId"]]
        if frame["action"] == "snapshot":
            books[symbol] = ({}, {})
        for row in frame["data"]:
            apply(books[symbol][0], row["bids"])
            apply(books[symbol][1], row["asks"])
        frames[symbol] = (frames.get(symbol) or 0) + 1
        sequenced = sequenced and all("seqId" in row for row in frame["data"])
    return Expected({symbol: top(*book) for symbol, book in books.items()}, frames, sequenced)


def kraken_expected() -> Expected:
    # v1 book frames ([channelID, payload..., "book-N", pair]); the emulator serves them as v2.
    books: dict[str, tuple[Side, Side]] = {}
    wanted = {"XMR/USD", "SC/EUR", "GRT/ETH"}
    for record in records("kraken"):
        if record["t"] != "recv" or not record["data"].startswith("["):
            continue
        frame = json.loads(record["data"])
        symbol = frame[-1].replace("XBT", "BTC").replace("XDG", "DOGE")
        if not str(frame[-2]).startswith("book-") or symbol not in wanted:
            continue
        payloads = frame[1:-2]
        if "as" in payloads[0]:
            books[symbol] = ({}, {})
        for payload in payloads:
            apply(books[symbol][0], payload.get("bs", payload.get("b", [])))
            apply(books[symbol][1], payload.get("as", payload.get("a", [])))
    return Expected({symbol: top(*book) for symbol, book in books.items()}, dict.fromkeys(books), sequenced=False)


EXPECTED: dict[str, Callable[[], Expected]] = {
    "binance": binance_expected,
    "bybit": bybit_expected,
    "coinbase": coinbase_expected,
    "kraken": kraken_expected,
    "okx": okx_expected,
}


# -- replays into the capture (the exact replay per venue runs through the stream: test_book_stream) ----


async def watch_books(exchange: Any, symbols: list[str], depth: int) -> None:
    """Subscribe every book (one watch each: Bybit's spot and linear books are separate calls)."""
    for symbol in symbols:
        await asyncio.wait_for(exchange.watch_order_book(symbol, depth if exchange.id == "kraken" else None), 10 * MS)


@pytest.mark.asyncio
async def test_a_book_no_longer_subscribed_is_not_stored() -> None:
    wanted = {"BTC/USDT"}
    expected = okx_expected()
    async with rig("okx", subscribed=wanted.__contains__, replay=recording_path("okx"), speed=0) as r:
        await watch_books(r.exchange, ["BTC/USDT", "UNI/USD:UNI"], DEPTH)
        await async_until(lambda: r.latest("BTC/USDT") == expected.tops["BTC/USDT"], 10, "the BTC/USDT book")
        await async_until(lambda: r.capture.counters["unsubscribed"] == expected.frames["UNI/USD:UNI"], 5,
                          "every UNI/USD:UNI frame refused")
        assert r.latest("UNI/USD:UNI") is None


def test_a_bad_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="book depth must be a positive integer, got 0"):
        BookCapture(venue("okx"), object(), MarketDataBuffer(10, channel="book"), EventLog(), 0,
                    subscribed=lambda _: True, resync=lambda _: None)


# -- frames fed to ccxt by hand: a crossed book, a frame ccxt raised on, a lost connection ------------


def bybit_linear_frames() -> list[dict[str, Any]]:
    """The recorded linear BTCUSDT book frames (snapshot first), as the venue sent them."""
    category: dict[str, str] = {}
    frames = []
    for record in records("bybit"):
        if record["t"] == "connect":
            category[record["conn"]] = record["addr"].rsplit("/", 1)[-1]
        elif (record["t"] == "recv" and '"orderbook.200.BTCUSDT"' in record["data"]
              and category[record["conn"]] == "linear"):
            frames.append(json.loads(record["data"]))
    assert frames[0]["type"] == "snapshot" and len(frames) > 10
    return frames


@asynccontextmanager
async def hand_fed() -> AsyncIterator[tuple[Rig, Callable[[str], Any]]]:
    """A rig over Bybit's replay markets whose frames the test hands to ccxt itself (``feed(url)`` -> client)."""
    async with rig("bybit", replay=recording_path("bybit"), speed=0) as r:
        def client(url: str) -> Any:
            return r.exchange.client(url)  # a ccxt websocket client, never connected: frames come from the test
        yield r, client


@pytest.mark.asyncio
async def test_a_crossed_book_is_resynced_and_not_stored_until_its_next_snapshot() -> None:
    frames = bybit_linear_frames()
    symbol = "BTC/USDT:USDT"
    async with hand_fed() as (r, make_client):
        client = make_client("wss://emulator.invalid/v5/public/linear")
        for frame in frames[:4]:
            r.exchange.handle_message(client, frame)
        assert r.rows(symbol).num_rows == 4
        best_ask = r.exchange.orderbooks[symbol]["asks"][0][0]
        crossing = copy.deepcopy(frames[4])
        crossing["data"]["b"] = [[repr(best_ask), "1"]]  # a bid at the best ask, in sequence: only the book shows it
        crossing["data"]["a"] = []
        r.exchange.handle_message(client, crossing)
        (event,) = r.book_resyncs()
        assert event.symbols == (symbol,)
        assert event.detail == f"crossed book: best bid {best_ask} >= best ask {best_ask}"
        assert r.resyncs == [symbol] and r.rows(symbol).num_rows == 4
        r.exchange.handle_message(client, frames[5])  # in sequence, but the book is not the venue's: refused
        assert r.rows(symbol).num_rows == 4 and r.capture.counters["refused"] == 1
        r.exchange.handle_message(client, frames[0])  # a new snapshot brings it back
        r.exchange.handle_message(client, {**frames[1], "data": {**frames[1]["data"], "u": frames[0]["data"]["u"] + 1}})
        assert r.rows(symbol).num_rows == 6 and len(r.book_resyncs()) == 1
        assert r.capture.counters["crossed"] == 1
        never_crossed(r.rows(symbol))


@pytest.mark.asyncio
async def test_a_frame_ccxt_raised_on_resyncs_its_book() -> None:
    frames = bybit_linear_frames()
    symbol = "BTC/USDT:USDT"
    async with hand_fed() as (r, make_client):
        client = make_client("wss://emulator.invalid/v5/public/linear")
        for frame in frames[:2]:
            r.exchange.handle_message(client, frame)
        # The stream's guarded handle_message reports what ccxt raised on a frame: after(..., error).
        r.capture.before(client, frames[2])
        r.capture.after(client, frames[2], TypeError("'NoneType' object is not subscriptable"))
        (event,) = r.book_resyncs()
        assert event.detail == "ccxt could not apply the frame: TypeError: 'NoneType' object is not subscriptable"
        assert r.rows(symbol).num_rows == 2 and r.resyncs == [symbol]
        assert (r.capture.counters["ccxt_errors"], r.capture.counters["malformed"]) == (1, 1)


@pytest.mark.asyncio
async def test_a_lost_connection_s_books_wait_for_the_next_connection_s_snapshots() -> None:
    frames = bybit_linear_frames()
    symbol = "BTC/USDT:USDT"
    async with hand_fed() as (r, make_client):
        first = make_client("wss://emulator.invalid/v5/public/linear")
        for frame in frames[:3]:
            r.exchange.handle_message(first, frame)
        r.capture.connection_lost(first)
        r.exchange.clients.pop(first.url)
        second = make_client("wss://emulator.invalid/v5/public/linear")
        assert second is not first
        r.exchange.handle_message(second, frames[3])  # the next delta, on a connection without a snapshot
        assert r.rows(symbol).num_rows == 3 and r.capture.counters["refused"] == 1
        r.exchange.handle_message(second, frames[0])
        assert r.rows(symbol).num_rows == 4 and r.book_resyncs() == []

"""The parts of the trade path without sockets: the normaliser, the cache tap, de-duplication,
the venues' trade and book data; and the manager running several channels of one exchange."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import ccxt.pro as ccxt_pro
import pytest
from ccxt.async_support.base.ws.cache import ArrayCache, ArrayCacheBySymbolById

from flight_md.buffer import MarketDataBuffer, Store
from flight_md.emulator import Emulator
from flight_md.errors import InvalidArgument, UnknownExchange
from flight_md.events import EventKind, EventLog
from flight_md.ingest import ccxt_compat
from flight_md.ingest.manager import MarketDataManager, ThreadedControl
from flight_md.ingest.state import SymbolState
from flight_md.ingest.stream import MarketDataStream
from flight_md.ingest.trades import DEDUPE_WINDOW, TradeFanout, _Seen
from flight_md.normalize import DropReason, Side, to_trade
from flight_md.venues import VENUES, emulated, venue
from flight_md.venues.base import has_key

from .support import MS, wait_until

NOW = 1_700_000_000_000


def trade(**fields: Any) -> dict[str, Any]:
    return {"symbol": "BTC/USDT", "id": "7", "timestamp": NOW, "price": 100.0, "amount": 0.5,
            "side": "buy", **fields}


# -- normalising ------------------------------------------------------------------------------


def test_to_trade_takes_ccxts_unified_trade() -> None:
    assert to_trade(trade(), NOW + 1) == ("BTC/USDT", NOW, "7", 100.0, 0.5, Side.BUY)
    assert to_trade(trade(id=12345, side=None, timestamp=None), NOW + 1) == (
        "BTC/USDT", NOW + 1, "12345", 100.0, 0.5, None)  # no exchange time: the receive time
    assert to_trade(trade(id=None), NOW)[2] is None


@pytest.mark.parametrize(("fields", "reason"), [
    ({"symbol": None}, DropReason.MISSING_SYMBOL),
    ({"price": None}, DropReason.MISSING_PRICE),
    ({"price": 0.0}, DropReason.NON_POSITIVE_PRICE),
    ({"price": "abc"}, DropReason.NON_NUMERIC),
    ({"price": math.inf}, DropReason.NON_FINITE),
    ({"amount": None}, DropReason.MISSING_AMOUNT),
    ({"amount": -1.0}, DropReason.NEGATIVE_VALUE),
    ({"side": "BUY"}, DropReason.BAD_SIDE),
    ({"timestamp": 5}, DropReason.BAD_TIMESTAMP),
])
def test_a_bad_trade_is_a_reason_never_an_exception(fields: dict[str, Any], reason: DropReason) -> None:
    assert to_trade(trade(**fields), NOW) is reason


def test_a_trade_that_is_not_a_mapping_is_unparseable() -> None:
    assert to_trade(["BTC/USDT", 1.0], NOW) is DropReason.UNPARSEABLE_FRAME  # type: ignore[arg-type]


# -- the cache tap ----------------------------------------------------------------------------


def test_a_tapped_cache_reports_every_append_once_and_still_evicts() -> None:
    seen: list[tuple[str, str]] = []
    cache = ArrayCache(3)
    cache.append(trade(id="1"))  # Binance appends a new cache's first trade before storing it
    ccxt_compat.report_appends(cache, "BTC/USDT", lambda symbol, t: seen.append((symbol, t["id"])))
    for number in range(2, 7):
        cache.append(trade(id=str(number)))
    assert seen == [("BTC/USDT", str(n)) for n in range(1, 7)]
    assert [t["id"] for t in cache] == ["4", "5", "6"] and isinstance(cache, ArrayCache)
    ccxt_compat.report_appends(cache, "BTC/USDT", lambda *_: seen.append(("again", "")))
    assert seen[-1] == ("BTC/USDT", "6")  # re-tapping reports nothing held twice
    cache.append(trade(id="7"))
    assert seen[-1] == ("again", "")


def test_the_trade_tap_swaps_every_cache_ccxt_stores_and_coinbases_by_id_cache_too() -> None:
    seen: list[str] = []
    tap = ccxt_compat.TradeTap(lambda symbol, t: seen.append(f"{symbol}:{t['id']}"), {})
    by_id = ArrayCacheBySymbolById(10)
    tap["BTC/USD"] = by_id
    by_id.append(trade(symbol="BTC/USD", id="1"))
    by_id.append(trade(symbol="BTC/USD", id="1"))  # ccxt replaces it in its cache; we see both
    tap["BTC/USD"] = by_id  # Binance stores the cache on every message: no second swap
    by_id.append(trade(symbol="BTC/USD", id="2"))
    assert seen == ["BTC/USD:1", "BTC/USD:1", "BTC/USD:2"] and len(by_id) == 2
    with pytest.raises(TypeError, match="not an ArrayCache"):
        tap["ETH/USD"] = []


def test_install_tap_keeps_a_tap_and_rewraps_a_dict_ccxt_replaced() -> None:
    exchange = ccxt_pro.binance()
    def sink(symbol: str, item: Any) -> None:
        pass

    ccxt_compat.install_tap(exchange, "trades", sink)
    tap = exchange.trades
    ccxt_compat.install_tap(exchange, "trades", sink)
    assert exchange.trades is tap and type(tap) is ccxt_compat.TradeTap
    exchange.clean_ws_data()  # ccxt's own reset: a plain dict again
    ccxt_compat.install_tap(exchange, "trades", sink)
    assert type(exchange.trades) is ccxt_compat.TradeTap
    before = exchange.orderbooks
    ccxt_compat.install_tap(exchange, "orderbooks", sink)  # books are observed per frame
    assert exchange.orderbooks is before


# -- de-duplication ----------------------------------------------------------------------------


def test_holes_fill_once_each() -> None:
    seen = _Seen()
    seen.holes = [[10, 14, 0], [20, 20, 0]]
    assert [seen.fill(n) for n in (9, 12, 12, 10, 14, 20, 20, 15)] == [
        False, True, False, True, True, True, False, False]
    assert seen.holes == [[11, 11, 0], [13, 13, 0]]


def fanout(venue_id: str, exchange: Any = None,
           events: EventLog | None = None) -> tuple[TradeFanout, MarketDataBuffer, SymbolState]:
    buffer = MarketDataBuffer(10_000, channel="trades")
    state = SymbolState()
    made = TradeFanout(venue_id, venue(venue_id), buffer, set(), events if events is not None else EventLog(), exchange,
                       lambda symbol: state)
    return made, buffer, state


def stored_ids(buffer: MarketDataBuffer, exchange: str) -> list[str]:
    return buffer.get_latest_sync("BTC/USDT", 10_000, exchange=exchange).column("trade_id").to_pylist()


def test_non_sequential_ids_are_remembered_in_a_window() -> None:
    made, buffer, state = fanout("bybit")  # UUID ids
    for number in [1, 2, 1, 3, 2]:
        made.ingest("BTC/USDT", state, trade(id=f"u-{number}"), NOW)
    assert stored_ids(buffer, "bybit") == ["u-1", "u-2", "u-3"]
    assert made.counters["duplicates"] == 2 and made.counters["gaps"] == 0
    for number in range(4, DEDUPE_WINDOW + 5):
        made.ingest("BTC/USDT", state, trade(id=f"u-{number}"), NOW)
    made.ingest("BTC/USDT", state, trade(id="u-1"), NOW)  # forgotten: beyond the window
    assert stored_ids(buffer, "bybit")[-1] == "u-1"


def test_sequential_ids_at_or_below_the_highest_are_duplicates() -> None:
    made, buffer, state = fanout("okx")
    for number in [5, 6, 7, 6, 5, 8]:
        made.ingest("BTC/USDT", state, trade(id=str(number)), NOW)
    assert stored_ids(buffer, "okx") == ["5", "6", "7", "8"]
    assert made.counters == {"stored": 4, "duplicates": 2, "gaps": 0, "missing": 0, "backfilled": 0}


@pytest.mark.parametrize("venue_id", ["coinbase", "bybit"])
def test_a_restarted_stream_knows_the_ids_its_ring_holds(venue_id: str) -> None:
    """After a restart the ring holds the newest trades again (refilled from the history): a
    venue resending them on subscribe is not stored twice (a sequential venue's jump from the
    last stored id is then a gap, as in the tests above)."""
    before, buffer, state = fanout(venue_id)
    ids = [str(n) if venue_id == "coinbase" else f"u-{n}" for n in range(100, 110)]
    for trade_id in ids:
        before.ingest("BTC/USDT", state, trade(id=trade_id), NOW)
    events = EventLog()
    after = TradeFanout(venue_id, venue(venue_id), buffer, set(), events, None,
                        lambda symbol: state)  # the same rings, a new stream
    for trade_id in ids[-5:]:  # the venue's snapshot of recent trades, again
        after.ingest("BTC/USDT", state, trade(id=trade_id), NOW)
    assert stored_ids(buffer, venue_id) == ids
    assert after.counters["duplicates"] == 5 and after.counters["stored"] == 0
    following = "110" if venue_id == "coinbase" else "u-110"
    after.ingest("BTC/USDT", state, trade(id=following), NOW)  # the next one: no gap
    assert stored_ids(buffer, venue_id) == [*ids, following]
    assert after.counters["gaps"] == 0 and not events.events()


def test_trades_without_an_id_are_all_stored_and_bad_ones_counted() -> None:
    made, buffer, state = fanout("kraken")
    made.ingest("BTC/USDT", state, trade(id=None), NOW)
    made.ingest("BTC/USDT", state, trade(id=None), NOW)
    assert not made.ingest("BTC/USDT", state, trade(id=None, price=-1.0), NOW)
    assert stored_ids(buffer, "kraken") == [None, None]
    assert made.bad_frames == {DropReason.NON_POSITIVE_PRICE: 1} and state.dropped == 1


def test_coinbase_sides_are_the_makers_and_are_turned_round() -> None:
    made, buffer, state = fanout("coinbase")
    made.ingest("BTC/USDT", state, trade(id="1", side="sell"), NOW)
    assert buffer.get_latest_sync("BTC/USDT", 1, exchange="coinbase").column("side").to_pylist() == ["buy"]


@pytest.mark.asyncio
async def test_a_jump_is_one_gap_event_with_its_count_and_ids() -> None:
    events = EventLog()
    unreachable = ccxt_pro.binance({"urls": {"api": {"public": "http://127.0.0.1:9/api/v3"}}})
    made, _, state = fanout("binance", unreachable, events)
    try:
        for number in [100, 101, 105]:
            made.ingest("BTC/USDT", state, trade(id=str(number)), NOW)
        (gap,) = [e for e in events.events() if e.kind is EventKind.GAP]
        assert gap.symbols == ("BTC/USDT",)
        assert gap.detail == '{"count": 3, "first_id": "102", "last_id": "104"}'
        assert made.holes("BTC/USDT") == [(102, 104)]
        made.ingest("BTC/USDT", state, trade(id="103"), NOW)  # a late one fills its place
        assert made.holes("BTC/USDT") == [(102, 102), (104, 104)]
        assert made.counters["gaps"] == 1 and made.counters["missing"] == 3
        # Nobody answers on port 9: the backfill fails, says so, and the gap stays recorded.
        await wait_until(lambda: any(e.kind is EventKind.BACKFILL for e in events.events()), 10 * MS,
                         "the failed backfill")
        (backfill,) = [e for e in events.events() if e.kind is EventKind.BACKFILL]
        assert '"count": 0' in backfill.detail and '"error"' in backfill.detail
    finally:
        await unreachable.close()


# -- the venues --------------------------------------------------------------------------------


@pytest.mark.parametrize("venue_id", sorted(VENUES))
def test_every_venue_streams_trades_and_books_with_methods_ccxt_has(venue_id: str) -> None:
    item = VENUES[venue_id]
    exchange = getattr(ccxt_pro, venue_id)()
    for channel in ("trades", "book"):
        methods = item.channels[channel]  # type: ignore[index]
        assert exchange.has.get(methods.has_key), (venue_id, methods.watch)
        if methods.unwatch is not None:
            assert exchange.has.get(has_key(methods.unwatch)), (venue_id, methods.unwatch)
        assert all(exchange.has.get(has_key(name)) for name in methods.rest)
    assert item.channels["trades"].cache == "trades"  # type: ignore[index]
    assert list(item.book_depths) == sorted(item.book_depths)


def test_a_book_subscribes_the_smallest_depth_the_venue_offers_that_holds_n() -> None:
    assert [VENUES["bybit"].book_limit(n) for n in (1, 2, 10, 50, 51, 1000, 5000)] == [
        1, 50, 50, 50, 200, 1000, 1000]
    assert VENUES["kraken"].book_limit(10) == 10 and VENUES["kraken"].book_limit(11) == 25
    assert VENUES["okx"].book_limit(10) == 400 and VENUES["okx"].book_limit(3) == 400  # books only
    assert VENUES["coinbase"].book_limit(10) is None  # level2 is the whole book
    assert venue("bitstamp").book_limit(10) is None


def test_a_stream_needs_a_buffer_of_its_channel() -> None:
    with pytest.raises(InvalidArgument, match="a trades stream needs a trades buffer, got a ticker buffer"):
        MarketDataStream("binance", channel="trades", buffer=MarketDataBuffer(10))
    assert MarketDataStream("binance", channel="book", book_depth=5).buffer.book_depth == 5
    assert MarketDataStream("binance", channel="bidask", buffer=MarketDataBuffer(10)).buffer.channel == "ticker"


# -- the manager: one stream per (exchange, channel) -----------------------------------------


@pytest.mark.asyncio
async def test_the_manager_runs_each_channel_of_an_exchange_into_its_buffer_of_the_store() -> None:
    store = Store(5_000, book_depth=5)
    async with Emulator("binance", ["BTC/USDT", "ETH/USDT"], rate=200) as emu, \
            MarketDataManager(store=store) as manager:
        options = {"url": emu.url, "reconnect_delay": 0.05}
        ticker = await manager.add_stream("binance", ["BTC/USDT"], **options)
        trades = await manager.add_stream("binance", ["BTC/USDT"], channel="trades", **options)
        book = await manager.add_stream("binance", ["BTC/USDT"], channel="book", **options)
        assert manager.streams == {"binance": ticker} and manager.get_stream("binance") is ticker
        assert manager.stream("binance", "trades") is trades and trades.buffer is store.buffer("trades")
        assert book.buffer is store.buffer("book") and book.buffer.book_depth == 5
        with pytest.raises(InvalidArgument, match="a trades stream for 'binance' is already running"):
            await manager.add_stream("binance", channel="trades", **options)
        with pytest.raises(UnknownExchange, match="no bidask stream for exchange 'binance'; it streams: "
                                                  "ticker, trades, book"):
            manager.stream("binance", "bidask")
        control = ThreadedControl(manager, asyncio.get_running_loop())
        assert await control._subscribe("binance", ["ETH/USDT"], ["trades"]) == {
            "exchange": "binance", "subscribed": ["ETH/USDT"], "channels": ["trades"]}
        assert (ticker.symbols, trades.symbols, book.symbols) == (
            ("BTC/USDT",), ("BTC/USDT", "ETH/USDT"), ("BTC/USDT",))
        assert await control._subscribe("binance", ["ETH/USDT"]) == {
            "exchange": "binance", "subscribed": ["ETH/USDT"], "channels": ["ticker", "trades", "book"]}
        await wait_until(lambda: all(store.buffer(c).keys() for c in ("ticker", "trades", "book")), 10 * MS,
                         "every channel stored")
        assert sorted(store.channels()) == ["book", "ticker", "trades"]
        status = manager.status()
        assert [e.channel for e in status.exchanges] == ["ticker", "trades", "book"]
        assert set(status.exchanges[1].counters) >= {"stored", "duplicates", "gaps", "backfilled"}
        assert "resyncs" in status.exchanges[2].counters and status.exchanges[0].counters == {}
        assert await control._unsubscribe("binance", ["ETH/USDT"], ["book"]) == {
            "exchange": "binance", "unsubscribed": ["ETH/USDT"], "channels": ["book"]}
        assert await control._unsubscribe("binance", ["ETH/USDT"]) == {
            "exchange": "binance", "unsubscribed": ["ETH/USDT"], "channels": ["ticker", "trades"]}
        await manager.remove_stream("binance", "book")
        assert [s.channel.value for s in manager.streams_of("binance")] == ["ticker", "trades"]
        await manager.remove_stream("binance")
        assert not manager.all_streams()


def test_every_emulated_venue_is_a_registered_venue() -> None:
    assert set(emulated()) <= set(VENUES)


def test_the_event_log_keeps_subscriptions_per_channel() -> None:
    log = EventLog()
    log.record("binance", EventKind.SUBSCRIBE, ("BTC/USDT", "ETH/USDT"), channel="ticker")
    log.record("binance", EventKind.SUBSCRIBE, ("BTC/USDT",), channel="trades")
    log.record("binance", EventKind.UNSUBSCRIBE, ("BTC/USDT",), channel="trades")
    log.record("bybit", EventKind.SUBSCRIBE, ("BTC/USDT",))  # an event naming no channel
    # Dropping BTC/USDT's trades leaves it subscribed: its ticker stream still has it.
    assert log.subscribed() == [("binance", "BTC/USDT"), ("binance", "ETH/USDT"), ("bybit", "BTC/USDT")]
    assert log.subscribers("BTC/USDT") == ["binance", "bybit"]
    assert log.subscribed_channels("binance", "BTC/USDT") == ["ticker"]
    assert log.subscribed_channels("bybit", "BTC/USDT") == [""]
    assert log.events()[1].channel == "trades"
    assert "channel" not in log.to_table().schema.names  # not part of @events' schema


@pytest.mark.asyncio
async def test_an_okx_aggregate_stands_for_count_ids_ending_at_its_own() -> None:
    events = EventLog()
    unreachable = ccxt_pro.okx({"urls": {"api": {"rest": "http://127.0.0.1:9"}}})
    made, buffer, state = fanout("okx", unreachable, events)
    try:
        for number, count in [(10, "1"), (13, "3"), (14, "1"), (20, "2")]:
            made.ingest("BTC/USDT", state, trade(id=str(number), info={"count": count}), NOW)
        assert stored_ids(buffer, "okx") == ["10", "13", "14", "20"]
        (gap,) = [e for e in events.events() if e.kind is EventKind.GAP]
        assert gap.detail == '{"count": 4, "first_id": "15", "last_id": "18"}'
        await wait_until(lambda: any(e.kind is EventKind.BACKFILL for e in events.events()), 10 * MS,
                         "the failed backfill")
    finally:
        await unreachable.close()

"""Trades, every one exactly once: real ccxt.pro against the emulator, every venue of the registry.

Synthetic trades come from the emulator's bursts (``Emulator.burst``: a given number of trades
of one market at once, on a feed that is otherwise still, ``rate=0``), so every count is
exact. Replays read the expected trades from the recording files themselves.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from flight_md.emulator import Emulator
from flight_md.emulator.fault import Fault
from flight_md.errors import NotFound
from flight_md.events import EventKind
from flight_md.ingest.stream import MarketDataStream
from flight_md.normalize import Side, Trade
from flight_md.venues import VENUES, emulated
from tests.emulator.conftest import recording_path

from .support import MS, wait_until

TRADE_WIRE = {"binance": "trade", "bybit": "publicTrade", "coinbase": "market_trades",
              "kraken": "trade", "okx": "trades"}
"""The emulator's trade channel of each venue (what a burst renders)."""
QUIET = {"reconnect_delay": 0.05, "max_reconnect_delay": 0.2, "heartbeat_interval": 30.0 * MS}
"""A still feed (``rate=0``) must not look stale."""


def test_every_emulated_venue_has_a_trade_channel_here() -> None:
    assert sorted(TRADE_WIRE) == sorted(emulated())


def trades_of(stream: MarketDataStream, symbol: str) -> pa.Table:
    """Every trade the stream's buffer holds for ``symbol``, in stored order."""
    try:
        return stream.buffer.get_latest_sync(symbol, 1_000_000, exchange=stream.exchange_id)
    except NotFound:
        return pa.table({"trade_id": pa.array([], pa.string())})


def stored(stream: MarketDataStream, symbol: str) -> int:
    return trades_of(stream, symbol).num_rows


async def trades_stream(emu: Emulator, symbols: list[str], **kwargs: Any) -> MarketDataStream:
    stream = MarketDataStream(emu.exchange, url=emu.url, channel="trades",
                              **{**QUIET, "buffer_size": 50_000, **kwargs})
    await stream.connect()
    await stream.subscribe(symbols)
    return stream


async def subscribed(emu: Emulator, count: int) -> None:
    await wait_until(lambda: emu.stats.subscriptions >= count, 10 * MS, "the emulator to see the subscriptions")


@pytest.mark.asyncio
@pytest.mark.parametrize("venue_id", emulated())
async def test_trades_flow_on_every_venue_each_once(venue_id: str) -> None:
    symbols = list(VENUES[venue_id].test_symbols)
    # Coinbase starts a market_trades subscription with a snapshot of the recent trades: on a
    # still market, the walk's one trade.
    sent = 150 + (venue_id == "coinbase")
    async with Emulator(venue_id, symbols, rate=0) as emu:
        stream = await trades_stream(emu, symbols)
        got: list[Trade] = []
        stream.add_callback(got.append)
        try:
            await subscribed(emu, len(symbols))
            for symbol in symbols:
                emu.burst(TRADE_WIRE[venue_id], symbol, 150)
            await wait_until(lambda: all(stored(stream, s) >= sent for s in symbols), 10 * MS,
                             "every burst trade stored")
            await asyncio.sleep(0.05 * MS)  # nothing more may come: a duplicate would show now
            for symbol in symbols:
                table = trades_of(stream, symbol)
                ids = table.column("trade_id").to_pylist()
                assert table.num_rows == sent and len(set(ids)) == sent, symbol
                if VENUES[venue_id].sequential_trade_ids:
                    numbers = [int(i) for i in ids]
                    assert numbers == list(range(numbers[0], numbers[0] + sent))
                assert min(table.column("price").to_pylist()) > 0
                assert set(table.column("side").to_pylist()) <= {"buy", "sell"}
            # Callbacks get the same trades as typed value objects.
            assert len(got) == 2 * sent and all(isinstance(t, Trade) and t.exchange == venue_id for t in got)
            assert {t.side for t in got} <= {Side.BUY, Side.SELL}
            counters = stream.status().exchanges[0].counters
            assert counters == {"stored": 2 * sent, "duplicates": 0, "gaps": 0, "missing": 0, "backfilled": 0}
        finally:
            await stream.disconnect()


@pytest.mark.asyncio
@pytest.mark.parametrize("venue_id", emulated())
async def test_an_unsubscribed_symbols_trades_stop_the_others_go_on_and_resubscribing_is_no_gap(venue_id: str) -> None:
    kept, dropped = VENUES[venue_id].test_symbols[:2]
    async with Emulator(venue_id, [kept, dropped], rate=0) as emu:
        # Venues where ccxt cannot unsubscribe restart the session: the new one resubscribes.
        stream = await trades_stream(emu, [kept, dropped])
        try:
            await subscribed(emu, 2)
            await stream.unsubscribe([dropped])
            await wait_until(lambda: emu.stats.subscriptions == 1, 10 * MS, "the unsubscribe")
            before = stored(stream, dropped)
            emu.burst(TRADE_WIRE[venue_id], dropped, 20)
            emu.burst(TRADE_WIRE[venue_id], kept, 20)
            await wait_until(lambda: stored(stream, kept) >= 20, 10 * MS, "the kept symbol's trades")
            assert stored(stream, dropped) == before
            # Subscribed again: the 20 it missed on purpose are no gap.
            await stream.subscribe([dropped])
            await subscribed(emu, 2)
            emu.burst(TRADE_WIRE[venue_id], dropped, 10)
            await wait_until(lambda: stored(stream, dropped) >= before + 10, 10 * MS, "its trades again")
            assert stream.status().exchanges[0].counters["gaps"] == 0
            assert EventKind.GAP not in {e.kind for e in stream.events.events(venue_id)}
        finally:
            await stream.disconnect()


@pytest.mark.asyncio
async def test_a_burst_of_20000_trades_in_one_second_is_captured_whole_and_once() -> None:
    # ccxt keeps 1,000 trades per symbol (tradesLimit): a watch_trades loop would see a fraction.
    # The tap's path (decoder="ccxt"): the fast decoder's ccxt keeps none (test_decode.py).
    async with Emulator("binance", ["BTC/USDT"], rate=0) as emu:
        stream = await trades_stream(emu, ["BTC/USDT"], decoder="ccxt")
        try:
            await subscribed(emu, 1)
            emu.burst("trade", "BTC/USDT", 20_000)
            await wait_until(lambda: stored(stream, "BTC/USDT") >= 20_000, 30 * MS, "all 20,000 trades")
            await asyncio.sleep(0.05 * MS)
            ids = [int(i) for i in trades_of(stream, "BTC/USDT").column("trade_id").to_pylist()]
            assert ids == list(range(ids[0], ids[0] + 20_000))
            assert len(stream.exchange.trades["BTC/USDT"]) == 1000  # what ccxt itself kept
            assert stream.status().exchanges[0].counters["duplicates"] == 0
        finally:
            await stream.disconnect()


@pytest.mark.asyncio
async def test_coinbase_resends_recent_trades_on_resubscribe_and_they_are_dropped_and_counted() -> None:
    async with Emulator("coinbase", ["BTC/USD"], rate=0) as emu:
        stream = await trades_stream(emu, ["BTC/USD"])
        try:
            await subscribed(emu, 1)
            emu.burst("market_trades", "BTC/USD", 40)
            # 41: the subscription's snapshot carried the still market's one trade.
            await wait_until(lambda: stored(stream, "BTC/USD") == 41, 10 * MS, "the first 41 trades")
            await emu.inject(Fault.CLOSE_1006)
            # The new subscription starts with a snapshot of the recent trades: all 41 again.
            await wait_until(lambda: stream.status().exchanges[0].counters["duplicates"] >= 41, 10 * MS,
                             "the resent snapshot")
            emu.burst("market_trades", "BTC/USD", 10)
            await wait_until(lambda: stored(stream, "BTC/USD") == 51, 10 * MS, "the next 10 trades")
            ids = [int(i) for i in trades_of(stream, "BTC/USD").column("trade_id").to_pylist()]
            assert ids == list(range(ids[0], ids[0] + 51))
            counters = stream.status().exchanges[0].counters
            assert counters["duplicates"] == 41 and counters["gaps"] == 0
            assert EventKind.RECONNECT in {e.kind for e in stream.events.events("coinbase")}
            assert EventKind.GAP not in {e.kind for e in stream.events.events("coinbase")}
        finally:
            await stream.disconnect()


@pytest.mark.asyncio
@pytest.mark.parametrize(("venue_id", "symbol", "name"), [
    ("binance", "BTC/USDT", "trade"), ("binance", "BTC/USDT", "aggTrade"), ("okx", "BTC/USDT", "trades"),
    ("coinbase", "BTC/USD", "market_trades")])
async def test_trades_missed_while_disconnected_are_a_gap_and_are_backfilled(venue_id: str, symbol: str,
                                                                             name: str) -> None:
    options = {"options": {"watchTradesForSymbols": {"name": name}}} if venue_id == "binance" else {}
    # Coinbase's resubscription snapshot carries its recent trades: the missed ones come back
    # in it, and there is no gap (the 31 it already had are duplicates).
    from_snapshot = venue_id == "coinbase"
    async with Emulator(venue_id, [symbol], rate=0) as emu:
        stream = await trades_stream(emu, [symbol], ccxt_options=options)
        try:
            await subscribed(emu, 1)
            emu.burst(name, symbol, 30)
            first_part = 30 + from_snapshot  # Coinbase: the subscription snapshot's one trade
            await wait_until(lambda: stored(stream, symbol) == first_part, 10 * MS, "the first trades")
            await emu.inject(Fault.REFUSE)
            await emu.inject(Fault.CLOSE_1006)
            await wait_until(lambda: emu.stats.subscriptions == 0, 10 * MS, "the connection to go")
            emu.burst(name, symbol, 25)  # published while the stream is away
            emu.clear_faults()
            await subscribed(emu, 1)
            emu.burst(name, symbol, 5)
            await wait_until(lambda: stored(stream, symbol) == first_part + 30, 10 * MS, "the gap filled")
            ids = [int(i) for i in trades_of(stream, symbol).column("trade_id").to_pylist()]
            first = ids[0]
            total = first_part + 30
            # Every id once. Stored in arrival order: the first trades, then the live ones after
            # the reconnect and the 25 missed (backfilled in id order) as they came.
            assert sorted(ids) == list(range(first, first + total))
            assert ids[:first_part] == list(range(first, first + first_part))
            missed = [i for i in ids if first + first_part <= i < first + first_part + 25]
            assert missed == list(range(first + first_part, first + first_part + 25))
            kinds = [e.kind for e in stream.events.events(venue_id)]
            counters = stream.status().exchanges[0].counters
            if from_snapshot:
                assert EventKind.GAP not in kinds and EventKind.BACKFILL not in kinds
                assert counters == {"stored": total, "duplicates": first_part, "gaps": 0, "missing": 0,
                                    "backfilled": 0}
                return
            gaps = [e for e in stream.events.events(venue_id) if e.kind is EventKind.GAP]
            backfills = [e for e in stream.events.events(venue_id) if e.kind is EventKind.BACKFILL]
            assert [json.loads(e.detail) for e in gaps] == [
                {"count": 25, "first_id": str(first + 30), "last_id": str(first + 54)}]
            assert gaps[0].symbols == (symbol,)
            assert len(backfills) == 1 and json.loads(backfills[0].detail)["count"] == 25
            assert counters == {"stored": 60, "duplicates": 0, "gaps": 1, "missing": 25, "backfilled": 25}
        finally:
            await stream.disconnect()


@pytest.mark.asyncio
async def test_rest_polling_stores_each_trade_once() -> None:
    async with Emulator("binance", ["BTC/USDT"], rate=0) as emu:
        stream = MarketDataStream("binance", url=emu.url, channel="trades", mode="rest",
                                  poll_interval=0.05, **QUIET)
        await stream.connect()
        await stream.subscribe(["BTC/USDT"])
        try:
            # No websocket subscriber: the trades are published all the same (REST history).
            emu.burst("trade", "BTC/USDT", 20)
            await wait_until(lambda: stored(stream, "BTC/USDT") == 20, 10 * MS, "the first poll")
            emu.burst("trade", "BTC/USDT", 15)
            await wait_until(lambda: stored(stream, "BTC/USDT") == 35, 10 * MS, "the next poll")
            await asyncio.sleep(0.2 * MS)  # more polls answer the same trades: stored once
            ids = [int(i) for i in trades_of(stream, "BTC/USDT").column("trade_id").to_pylist()]
            assert ids == list(range(ids[0], ids[0] + 35))
            assert stream.status().exchanges[0].counters["duplicates"] == 0  # overlaps are no resends
        finally:
            await stream.disconnect()


# -- replays: expected values straight from the recording files ------------------------------


def records(venue_id: str) -> Iterator[dict[str, Any]]:
    with gzip.open(recording_path(venue_id), "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


Expected = dict[tuple[str, str], Counter[tuple[str | None, float, float, str]]]
"""(market type hint, market id) -> Counter of (trade id, price, amount, side)."""


def recorded_trades(venue_id: str) -> Expected:
    """Every trade of a venue's recording, as the venue published it (side: the taker's)."""
    found: Expected = {}

    def add(market: tuple[str, str], trade_id: str | None, price: Any, amount: Any, side: str) -> None:
        found.setdefault(market, Counter())[(trade_id, float(price), float(amount), side)] += 1

    categories: dict[str, str] = {}
    for record in records(venue_id):
        if record["t"] == "connect":
            categories[record["conn"]] = record["addr"]
        if record["t"] != "recv":
            continue
        text = record["data"]
        if venue_id == "binance":
            data = json.loads(text)["data"]
            if data.get("e") == "aggTrade":
                add(("spot", data["s"]), str(data["a"]), data["p"], data["q"], "sell" if data["m"] else "buy")
        elif venue_id == "bybit":
            frame = json.loads(text)
            if frame.get("topic", "").startswith("publicTrade."):
                kind = "spot" if categories[record["conn"]].endswith("/spot") else "contract"
                for row in frame["data"]:
                    add((kind, row["s"]), row["i"], row["p"], row["v"], row["S"].lower())
        elif venue_id == "coinbase":
            frame = json.loads(text)
            if frame.get("channel") == "market_trades":
                for event in frame["events"]:
                    for row in event["trades"]:
                        # Coinbase sends the maker's side: the taker's is the other one.
                        taker = {"BUY": "sell", "SELL": "buy"}[row["side"]]
                        add(("spot", row["product_id"]), row["trade_id"], row["price"], row["size"], taker)
        elif venue_id == "okx":
            if not text.startswith("{"):
                continue
            frame = json.loads(text)
            if frame.get("arg", {}).get("channel") == "trades" and "data" in frame:
                for row in frame["data"]:
                    add(("any", row["instId"]), row["tradeId"], row["px"], row["sz"], row["side"])
        elif venue_id == "kraken":
            if not text.startswith("["):
                continue
            frame = json.loads(text)
            if frame[-2] == "trade":  # v1 trades carry no id
                for row in frame[1]:
                    add(("wsname", frame[-1]), None, row[0], row[1], {"b": "buy", "s": "sell"}[row[3]])
    # A trade the venue sent twice (Coinbase's snapshot overlapping its updates) is one trade.
    return {market: Counter(dict.fromkeys(rows, 1)) if venue_id != "kraken" else rows
            for market, rows in found.items()}


def unified(exchange: Any, venue_id: str, kind: str, market_id: str) -> str:
    """ccxt's symbol of a recorded market id (Bybit spot and linear share ids: the URL says which)."""
    if venue_id == "kraken":  # v1 names the pair by its wsname; the emulator serves it under v2's
        return market_id.replace("XBT", "BTC").replace("XDG", "DOGE")
    if venue_id == "bybit":
        return str(exchange.safe_market(market_id, None, None, kind)["symbol"])
    return str(exchange.safe_symbol(market_id))


@pytest.mark.asyncio
@pytest.mark.parametrize("venue_id", emulated())
async def test_a_replay_stores_every_recorded_trade_exactly_once(venue_id: str) -> None:
    expected = recorded_trades(venue_id)
    assert expected
    options = {"ccxt_options": {"options": {"watchTradesForSymbols": {"name": "aggTrade"}}}} \
        if venue_id == "binance" else {}  # the Binance recording holds aggregate trades only
    async with Emulator(venue_id, replay=recording_path(venue_id), speed=0) as emu:
        stream = MarketDataStream(venue_id, url=emu.url, channel="trades", **QUIET, **options)
        await stream.connect()
        try:
            want = {unified(stream.exchange, venue_id, kind, market_id): rows
                    for (kind, market_id), rows in expected.items()}
            await stream.subscribe(sorted(want))
            total = {symbol: sum(rows.values()) for symbol, rows in want.items()}
            await wait_until(lambda: all(stored(stream, s) >= n for s, n in total.items()), 15 * MS,
                             "every recorded trade stored")
            await asyncio.sleep(0.1 * MS)  # a duplicate would arrive now
            for symbol, rows in want.items():
                table = trades_of(stream, symbol)
                got = Counter(zip(table.column("trade_id").to_pylist(), table.column("price").to_pylist(),
                                  table.column("amount").to_pylist(), table.column("side").to_pylist(),
                                  strict=True))
                if venue_id == "kraken":  # the emulator numbers v1's trades: compare all but the id
                    assert Counter(row[1:] for row in got.elements()) == Counter(
                        row[1:] for row in rows.elements()), symbol
                    assert {row[0] for row in got} == {None}  # v1 has no ids: nothing to de-duplicate by
                else:
                    assert got == rows, symbol
        finally:
            await stream.disconnect()

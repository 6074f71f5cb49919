"""Unmodified ccxt.pro.coinbase against the emulator's Coinbase Advanced Trade dialect.

Exact values come from independent sources: a replica of the emulator's random walk
(:class:`~flight_md.emulator.synthetic.PriceWalk`) for synthetic data, and
:func:`tests.venues.expected_coinbase.expected_replay` (the recording read with gzip and json)
for the replay. Protocol details that ccxt does not show (acknowledgements, error frames,
heartbeats) are checked on a raw websocket.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest

from flight_md.emulator import Emulator, Fault
from flight_md.emulator.market import parse_symbols
from flight_md.emulator.synthetic import PriceWalk
from flight_md.errors import NotFound
from flight_md.ingest.stream import MarketDataStream
from tests.emulator.conftest import MS, ExchangeFactory, recording_path, until
from tests.venues.expected_coinbase import expected_replay

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60 * MS)]

BTC = "BTC/USD"
ETH = "ETH/USD"
CROSS = "ETH/BTC"
FAST = {"reconnect_delay": 0.05, "max_reconnect_delay": 0.4, "heartbeat_interval": 2.0 * MS}
QUICK = {"rateLimit": 1}  # ccxt spaces Coinbase requests by 34 ms x their cost (3 to 10.6) otherwise
PRODUCTS = "/api/v3/brokerage/market/products"


def ws_url(emu: Emulator) -> str:
    return emu.url.replace("http://", "ws://") + "/"


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json(content_type=None)


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    return json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)


async def send(ws: aiohttp.ClientWebSocketResponse, kind: str, channel: str, *products: str) -> None:
    await ws.send_str(json.dumps({"type": kind, "product_ids": list(products), "channel": channel}))


def subscriptions(frame: dict[str, Any]) -> dict[str, list[str]]:
    assert frame["channel"] == "subscriptions", frame
    listed: dict[str, list[str]] = frame["events"][0]["subscriptions"]
    return listed


@asynccontextmanager
async def streaming(emu: Emulator, symbols: tuple[str, ...], **options: Any) -> AsyncIterator[MarketDataStream]:
    stream = MarketDataStream("coinbase", url=emu.url, **{**FAST, **options})
    try:
        await stream.start(list(symbols))
        yield stream
    finally:
        await stream.disconnect()


def rows(stream: MarketDataStream, symbol: str) -> list[tuple[Any, ...]]:
    try:
        count = stream.buffer.count(symbol, "coinbase")
    except NotFound:
        return []
    table = stream.buffer.get_latest_sync(symbol, count, exchange="coinbase")
    return [(row["price"], row["bid"], row["ask"]) for row in table.to_pylist()]


def grid(value: float, decimals: int) -> float:
    """A value as the dialect prints it and ccxt parses it back."""
    return float(f"{value:.{decimals}f}")


# -- markets and REST ------------------------------------------------------------------------


async def test_load_markets_currencies_and_rest_tickers(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("coinbase", (BTC, ETH, CROSS), rate=50) as emu:
        exchange = exchange_factory("coinbase", emu.url, **QUICK)
        markets = await exchange.load_markets()  # also fetch_currencies: /v2 currencies and rates
        assert sorted(markets) == sorted((BTC, ETH, CROSS))
        assert [markets[s]["id"] for s in (BTC, ETH, CROSS)] == ["BTC-USD", "ETH-USD", "ETH-BTC"]
        assert all(markets[s]["spot"] and markets[s]["active"] for s in markets)
        assert markets[BTC]["precision"]["price"] == 0.01
        assert sorted(exchange.currencies) == ["BTC", "ETH", "USD"]
        assert exchange.currencies["USD"]["type"] == "fiat" and exchange.currencies["BTC"]["type"] == "crypto"
        for symbol in (BTC, ETH, CROSS):
            ticker = await exchange.fetch_ticker(symbol)
            assert ticker["symbol"] == symbol and 0 < ticker["bid"] < ticker["ask"] and ticker["last"] > 0
            assert ticker["timestamp"] > 0
        polled = await exchange.fetch_tickers([BTC, ETH])
        assert sorted(polled) == [BTC, ETH] and all(t["last"] > 0 and t["bid"] is None for t in polled.values())
        status, rates = await get(emu.url + "/v2/exchange-rates")
        assert status == 200 and rates["data"]["currency"] == "USD"
        assert float(rates["data"]["rates"]["BTC"]) * float(polled[BTC]["last"]) == pytest.approx(1.0, rel=1e-3)
        status, futures = await get(emu.url + PRODUCTS + "?product_type=FUTURE")
        assert (status, futures["products"], futures["num_products"]) == (200, [], 0)
        status, error = await get(emu.url + PRODUCTS + "?product_type=OPTIONS")
        assert status == 400 and error["error"] == "INVALID_ARGUMENT"
        status, error = await get(emu.url + PRODUCTS + "/NOPE-USD/ticker")
        assert status == 404 and error["error"] == "NOT_FOUND" and "NOPE-USD" in error["message"]
        status, page = await get(emu.url + PRODUCTS + "?limit=1&offset=1")
        assert [row["product_id"] for row in page["products"]] == ["ETH-USD"]
        status, now = await get(emu.url + "/api/v3/brokerage/time")
        assert status == 200 and int(now["epochMillis"]) > 0
        assert await exchange.fetch_time() > 0  # /v2/time


async def test_coinbase_lists_spot_markets_only() -> None:
    with pytest.raises(ValueError, match="coinbase lists spot markets only; got 'BTC/USD:USD'"):
        Emulator("coinbase", (BTC, "BTC/USD:USD"))


# -- websocket protocol ----------------------------------------------------------------------


async def test_subscriptions_errors_and_heartbeats() -> None:
    async with Emulator("coinbase", (BTC, ETH), rate=0) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        await send(ws, "subscribe", "ticker", "BTC-USD")
        assert subscriptions(await receive_json(ws)) == {"ticker": ["BTC-USD"]}
        snapshot = await receive_json(ws)  # the current ticker, right after the subscription
        assert snapshot["channel"] == "ticker" and snapshot["events"][0]["type"] == "snapshot"
        assert snapshot["events"][0]["tickers"][0]["product_id"] == "BTC-USD"
        refused = [
            ({"type": "subscribe", "product_ids": ["NOPE-USD"], "channel": "ticker"}, "NOPE-USD is not a valid product"),
            ({"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "tickers"}, "not a valid channel"),
            ({"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "user"}, "requires authentication"),
            ({"type": "subscribe", "product_ids": [], "channel": "ticker"}, "needs product_ids"),
            ({"type": "dance", "channel": "ticker"}, "unknown message type"),
        ]
        for request, reason in refused:
            await ws.send_str(json.dumps(request))
            error = await receive_json(ws)
            assert error["type"] == "error" and error["message"].startswith("Failed to") and reason in error["reason"]
        await ws.send_str("hello")
        assert (await receive_json(ws))["reason"] == "malformed JSON request"
        await send(ws, "subscribe", "heartbeats")
        assert subscriptions(await receive_json(ws)) == {"heartbeats": ["heartbeats"], "ticker": ["BTC-USD"]}
        beats = [await receive_json(ws) for _ in range(2)]  # one a second
        assert [beat["channel"] for beat in beats] == ["heartbeats"] * 2
        assert beats[0]["sequence_num"] < beats[1]["sequence_num"]
        counters = [beat["events"][0]["heartbeat_counter"] for beat in beats]
        assert counters[0] + 1 == counters[1] and " +0000 UTC m=+" in beats[0]["events"][0]["current_time"]
        await send(ws, "unsubscribe", "ticker", "BTC-USD")
        assert subscriptions(await receive_json(ws)) == {"heartbeats": ["heartbeats"]}
        await send(ws, "unsubscribe", "heartbeats")
        assert subscriptions(await receive_json(ws)) == {}
        await until(lambda: emu.stats.subscriptions == 0)
    assert emu.stats.unserved_subscriptions == 3  # an unknown product, channel and a private channel


async def test_ccxt_watch_ticker_and_what_its_unwatch_can_do(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("coinbase", (BTC, ETH), rate=200) as emu:
        exchange = exchange_factory("coinbase", emu.url, **QUICK)
        for symbol in (BTC, ETH):
            for _ in range(5):
                ticker = await asyncio.wait_for(exchange.watch_ticker(symbol), 5 * MS)
                raw = ticker["info"]
                assert ticker["symbol"] == symbol and raw["product_id"] == symbol.replace("/", "-")
                assert (ticker["last"], ticker["bid"], ticker["ask"]) == \
                    (float(raw["price"]), float(raw["best_bid"]), float(raw["best_ask"]))
                assert ticker["bid"] < ticker["ask"] and ticker["timestamp"] > 0
                # No open on the wire: ccxt derives it from the last price and the 24h change.
                assert ticker["open"] == pytest.approx(
                    ticker["last"] / (1 + float(raw["price_percent_chg_24_h"]) / 100), rel=1e-9)
        # Coinbase answers with what stays subscribed (ETH): ccxt resolves an unwatch only on an
        # empty list, so unwatching one ticker of two never completes (hence the venue's
        # unwatch = None), though the exchange did stop sending it.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(exchange.un_watch_ticker(BTC), 1.0 * MS)
        assert emu.stats.subscriptions == 1
        sent = emu.sent("ticker", BTC)
        await until(lambda: emu.sent("ticker", ETH) >= 50, 10, "50 more ETH frames")
        assert emu.sent("ticker", BTC) == sent
        # The last subscription of a connection is unwatched in place.
        alone = exchange_factory("coinbase", emu.url, **QUICK)
        await asyncio.wait_for(alone.watch_ticker(ETH), 5 * MS)
        await asyncio.wait_for(alone.un_watch_ticker(ETH), 5 * MS)
        await until(lambda: emu.stats.subscriptions == 1)


async def test_ccxt_keep_alive_pings_are_answered(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("coinbase", (BTC,), rate=40) as emu:
        # ccxt pings every keepAlive ms and drops a connection whose pongs stop; 4 a second
        # stays under the 8 messages a second Coinbase allows.
        exchange = exchange_factory("coinbase", emu.url, streaming={"keepAlive": 250}, **QUICK)
        await asyncio.wait_for(exchange.watch_ticker(BTC), 5 * MS)
        sent = emu.sent("ticker", BTC)
        await until(lambda: emu.sent("ticker", BTC) >= sent + 40, 10, "a second of ticks: four pings")
        await asyncio.wait_for(exchange.watch_ticker(BTC), 5 * MS)  # raises if ccxt gave up
        assert emu.stats.connections_opened == 1 and emu.stats.limit_closes == 0


async def test_more_than_8_messages_a_second_close_the_connection() -> None:
    async with Emulator("coinbase", (BTC,), rate=0) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        for _ in range(9):
            await send(ws, "subscribe", "heartbeats")
        while (message := await asyncio.wait_for(ws.receive(), 5 * MS)).type is aiohttp.WSMsgType.TEXT:
            pass
        assert message.type is aiohttp.WSMsgType.CLOSE and message.data == 1008
        assert emu.stats.limit_closes == 1


@pytest.mark.parametrize("channel", ["ticker", "bidask"])
async def test_the_stream_stores_exactly_the_walk(channel: str) -> None:
    async with Emulator("coinbase", (BTC, ETH), rate=400) as emu, \
            streaming(emu, (BTC, ETH), channel=channel) as stream:
        await until(lambda: all(emu.sent("ticker", s) >= 50 for s in (BTC, ETH)), 10, "50 frames a symbol")
        await emu.inject(Fault.STALL)
        # Written intact before the stall: every one stored, once.
        await until(lambda: all(len(rows(stream, s)) == emu.sent("ticker", s) for s in (BTC, ETH)), 10,
                    "every frame sent to be stored")
        for market in parse_symbols((BTC, ETH)):
            walk = PriceWalk(market, 0)
            p = market.price_decimals

            def values(q: Any, p: int = p) -> tuple[float, float, float]:
                bid, ask = grid(q.bid, p), grid(q.ask, p)
                return (grid(q.last, p), bid, ask) if channel == "ticker" else ((bid + ask) / 2, bid, ask)

            # load_markets read the product list, whose prices move the idle walk in time; the
            # subscription then pushes the walk's current quote, and every step follows.
            got = rows(stream, market.symbol)
            quote = walk.quote
            for _ in range(10_000):
                if values(quote) == got[0]:
                    break
                quote = walk.step(0)
            quotes = [quote] + [walk.step(0) for _ in range(len(got) - 1)]
            assert got == [values(q) for q in quotes], market.symbol
        assert stream.status().exchanges[0].bad_frames == {}


@pytest.mark.parametrize("channel", ["ticker", "bidask"])
async def test_rest_mode_polls_fetch_ticker(channel: str) -> None:
    async with Emulator("coinbase", (BTC, ETH), rate=100) as emu, \
            streaming(emu, (BTC, ETH), channel=channel, mode="rest", poll_interval=0.05,
                      ccxt_options=QUICK) as stream:
        await until(lambda: all(len(rows(stream, s)) >= 2 for s in (BTC, ETH)), 10, "two polled ticks a symbol")
        for symbol in (BTC, ETH):
            price, bid, ask = rows(stream, symbol)[-1]
            assert 0 < bid < ask and price > 0
        assert emu.stats.connections_opened == 0


# -- faults ----------------------------------------------------------------------------------


async def watch_until_error(exchange: Any, emu: Emulator, fault: Fault, **options: Any) -> BaseException:
    await asyncio.wait_for(exchange.watch_ticker(BTC), 5 * MS)
    injected = asyncio.get_running_loop().create_task(emu.inject(fault, **options))
    try:
        async with asyncio.timeout(5 * MS):
            while True:
                try:
                    await exchange.watch_ticker(BTC)
                except ccxtpro.NetworkError as error:
                    return error
    finally:
        await injected


@pytest.mark.parametrize("fault", [Fault.RESET, Fault.CLOSE_1006, Fault.CLOSE_1001], ids=lambda fault: fault.value)
async def test_a_cut_connection_raises_then_reconnects(exchange_factory: ExchangeFactory, fault: Fault) -> None:
    async with Emulator("coinbase", (BTC,), rate=200) as emu:
        exchange = exchange_factory("coinbase", emu.url, **QUICK)
        error = await watch_until_error(exchange, emu, fault, duration=0.05)
        assert "closing code" in str(error) or "Connection" in type(error).__name__ + str(error)
        await until(lambda: emu.stats.connections_open == 0, 5, "the cut connection to close")
        ticker = await asyncio.wait_for(exchange.watch_ticker(BTC), 5 * MS)
        assert ticker["symbol"] == BTC and emu.stats.connections_opened == 2


async def test_coinbase_has_no_server_going_away_message() -> None:
    async with Emulator("coinbase", (BTC,), rate=0) as emu:
        with pytest.raises(ValueError, match="coinbase has none"):
            await emu.inject(Fault.SERVER_SHUTDOWN)


async def test_frame_faults_reach_ccxt_as_the_venue_would_send_them(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("coinbase", (BTC,), rate=200) as emu:
        exchange = exchange_factory("coinbase", emu.url, **QUICK)
        await asyncio.wait_for(exchange.watch_ticker(BTC), 5 * MS)
        await emu.inject(Fault.NON_NUMERIC, count=3)
        bids = [(await asyncio.wait_for(exchange.watch_ticker(BTC), 5 * MS))["bid"] for _ in range(8)]
        assert None in bids and bids[-1] is not None
        await emu.inject(Fault.MISSING_FIELDS)
        prices = [(await asyncio.wait_for(exchange.watch_ticker(BTC), 5 * MS))["last"] for _ in range(5)]
        assert None in prices and prices[-1] is not None
        assert emu.stats.faults[Fault.NON_NUMERIC] == 3 and emu.stats.faults[Fault.MISSING_FIELDS] == 1


async def test_every_frame_fault_is_counted_by_the_stream_and_the_stream_goes_on() -> None:
    faults = (Fault.MALFORMED, Fault.TRUNCATED, Fault.MISSING_FIELDS, Fault.NON_NUMERIC)
    async with Emulator("coinbase", (BTC,), rate=200) as emu, streaming(emu, (BTC,)) as stream:
        await until(lambda: len(rows(stream, BTC)) >= 5, 10, "five ticks")
        for fault in faults:
            await emu.inject(fault)
            await until(lambda f=fault: emu.stats.faults.get(f) == 1, 5, f"{fault} applied")
        stored = len(rows(stream, BTC))
        await until(lambda: len(rows(stream, BTC)) >= stored + 5, 10, "five ticks after the broken frames")
        status = stream.status().exchanges[0]
        assert status.bad_frames == {"malformed_frame": 2, "missing_price": 1, "non_numeric": 1}
        assert status.reconnects == 0


async def test_rest_faults_stall_and_refuse(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("coinbase", (BTC,), rate=100) as emu:
        exchange = exchange_factory("coinbase", emu.url, **QUICK)
        await exchange.load_markets()
        await emu.inject(Fault.REST_429, retry_after=2)
        with pytest.raises(ccxtpro.RateLimitExceeded):
            await exchange.fetch_ticker(BTC)
        await emu.inject(Fault.REST_5XX)
        with pytest.raises(ccxtpro.ExchangeNotAvailable):
            await exchange.fetch_ticker(BTC)
        assert (await exchange.fetch_ticker(BTC))["symbol"] == BTC
        await asyncio.wait_for(exchange.watch_ticker(BTC), 5 * MS)
        await emu.inject(Fault.STALL)
        with pytest.raises(TimeoutError):
            while True:
                await asyncio.wait_for(exchange.watch_ticker(BTC), 0.3 * MS)
        emu.clear_faults()
        assert (await asyncio.wait_for(exchange.watch_ticker(BTC), 5 * MS))["symbol"] == BTC
        await emu.inject(Fault.REFUSE)
        fresh = exchange_factory("coinbase", emu.url, **QUICK)
        with pytest.raises(ccxtpro.ExchangeNotAvailable):
            await fresh.load_markets()
        emu.clear_faults()
        await fresh.load_markets()
        await emu.inject(Fault.REFUSE)
        with pytest.raises(ccxtpro.NetworkError):
            await asyncio.wait_for(fresh.watch_ticker(BTC), 5 * MS)
        emu.clear_faults()
        assert (await asyncio.wait_for(fresh.watch_ticker(BTC), 5 * MS))["symbol"] == BTC
        assert emu.stats.faults[Fault.REFUSE] == 2


# -- replay ----------------------------------------------------------------------------------


async def test_the_replay_stores_exactly_the_recorded_tickers_of_every_symbol() -> None:
    path = recording_path("coinbase")
    expected = expected_replay(path)
    assert sorted(expected) == [BTC, ETH]
    symbols = tuple(sorted(expected))
    async with Emulator("coinbase", replay=path, speed=0) as emu, streaming(emu, symbols) as stream:
        await until(lambda: all(len(rows(stream, s)) == len(expected[s]) for s in symbols), 20,
                    "every recorded ticker stored")
        for symbol in symbols:
            assert rows(stream, symbol) == expected[symbol], symbol
        assert stream.status().exchanges[0].bad_frames == {}
        assert emu.stats.unserved_subscriptions == 0


async def test_the_replay_serves_the_recorded_products_and_rest_follows_it(exchange_factory: ExchangeFactory) -> None:
    path = recording_path("coinbase")
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        recorded = next(json.loads(line)["data"] for line in lines if '"t": "http"' in line or '"t":"http"' in line)
    expected = expected_replay(path)
    last = {symbol: values[-1] for symbol, values in expected.items()}
    async with Emulator("coinbase", replay=path, speed=0) as emu:
        async with aiohttp.ClientSession() as session, session.get(emu.url + PRODUCTS) as response:
            assert await response.text() == recorded  # byte for byte
        exchange = exchange_factory("coinbase", emu.url, **QUICK)
        markets = await exchange.load_markets()
        assert len(markets) == json.loads(recorded)["num_products"] and markets[BTC]["id"] == "BTC-USD"
        empty = await exchange.fetch_ticker(BTC)  # nothing replayed yet: no trade, no quote
        assert (empty["last"], empty["bid"], empty["ask"]) == (None, None, None)
        for symbol in (BTC, ETH):
            await asyncio.wait_for(exchange.watch_ticker(symbol), 5 * MS)
        await until(lambda: all(emu.sent("ticker", s) == len(expected[s]) for s in (BTC, ETH)), 10,
                    "the whole recording replayed")
        for symbol in (BTC, ETH):
            ticker = await exchange.fetch_ticker(symbol)
            assert (ticker["last"], ticker["bid"], ticker["ask"]) == last[symbol]
        polled = await exchange.fetch_tickers([BTC, ETH])
        assert {s: polled[s]["last"] for s in (BTC, ETH)} == {s: last[s][0] for s in (BTC, ETH)}
    # BTC-USDC is an alias of BTC-USD: subscribing it streams BTC-USD, as Coinbase does.
    async with Emulator("coinbase", replay=path, speed=0) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        await send(ws, "subscribe", "ticker", "BTC-USDC")
        assert subscriptions(await receive_json(ws)) == {"ticker": ["BTC-USDC"]}
        frame = await receive_json(ws)
        assert frame["events"][0]["tickers"][0]["product_id"] == "BTC-USD"

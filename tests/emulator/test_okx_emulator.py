"""Unmodified ccxt.pro.okx against the emulator's OKX v5 dialect: synthetic data, faults, replay.

Exact values come from independent sources: a replica of the emulator's random walk
(:class:`~flight_md.emulator.synthetic.PriceWalk`) for synthetic data, and
:func:`tests.venues.expected_okx.expected_replay` (the recording read with gzip and json)
for the replay.
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
from tests.venues.expected_okx import expected_replay

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60 * MS)]

SPOT = "BTC/USDT"
LINEAR = "ETH/USDT:USDT"
INVERSE = "UNI/USD:UNI"
FUTURE = "BTC/USD:BTC-250627"
SYMBOLS = (SPOT, LINEAR, INVERSE, FUTURE)
FAST = {"reconnect_delay": 0.05, "max_reconnect_delay": 0.4, "heartbeat_interval": 2.0 * MS}


def ws_url(emu: Emulator) -> str:
    return emu.url.replace("http://", "ws://") + "/ws/v5/public"


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.json(content_type=None)


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    return json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)


@asynccontextmanager
async def streaming(emu: Emulator, symbols: tuple[str, ...], **options: Any) -> AsyncIterator[MarketDataStream]:
    stream = MarketDataStream("okx", url=emu.url, **{**FAST, **options})
    try:
        await stream.start(list(symbols))
        yield stream
    finally:
        await stream.disconnect()


def rows(stream: MarketDataStream, symbol: str, columns: tuple[str, ...] = ("price", "bid", "ask")) -> list[Any]:
    try:
        count = stream.buffer.count(symbol, "okx")
    except NotFound:
        return []
    table = stream.buffer.get_latest_sync(symbol, count, exchange="okx")
    return [tuple(row[name] for name in columns) for row in table.to_pylist()]


def grid(value: float, decimals: int) -> float:
    """A value as the dialect prints it and ccxt parses it back."""
    return float(f"{value:.{decimals}f}")


# -- markets and REST ------------------------------------------------------------------------


async def test_load_markets_lists_spot_swaps_and_futures_and_rest_tickers(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("okx", SYMBOLS, rate=10) as emu:
        exchange = exchange_factory("okx", emu.url)
        markets = await exchange.load_markets()
        assert sorted(markets) == sorted(SYMBOLS)
        assert [markets[s]["id"] for s in SYMBOLS] == ["BTC-USDT", "ETH-USDT-SWAP", "UNI-USD-SWAP", "BTC-USD-250627"]
        assert [markets[s]["type"] for s in SYMBOLS] == ["spot", "swap", "swap", "future"]
        assert (markets[LINEAR]["linear"], markets[INVERSE]["inverse"], markets[FUTURE]["inverse"]) == (True,) * 3
        assert markets[FUTURE]["expiryDatetime"] == "2025-06-27T08:00:00.000Z"
        for symbol in SYMBOLS:
            ticker = await exchange.fetch_ticker(symbol)
            assert ticker["symbol"] == symbol and 0 < ticker["bid"] < ticker["ask"] and ticker["last"] > 0
            assert ticker["timestamp"] > 0
        # One call per instrument type, as ingestion groups the symbols.
        assert sorted(await exchange.fetch_tickers([LINEAR, INVERSE])) == sorted([LINEAR, INVERSE])
        assert list(await exchange.fetch_tickers([FUTURE])) == [FUTURE]
        with pytest.raises(ccxtpro.BadSymbol):
            await exchange.public_get_market_ticker({"instId": "NOPE-USDT"})
        with pytest.raises(ccxtpro.BadRequest):
            await exchange.public_get_market_tickers({})  # instType is required
        assert (await get_json(emu.url + "/api/v5/public/instruments?instType=OPTION"))["code"] == "50014"
        assert (await get_json(emu.url + "/api/v5/public/instruments?instType=MARGIN"))["code"] == "51000"
        time = await get_json(emu.url + "/api/v5/public/time")
        assert time["code"] == "0" and int(time["data"][0]["ts"]) > 0


async def test_a_contract_okx_does_not_list_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="okx has no contract 'BTC/USD:ETH'"):
        Emulator("okx", ("BTC/USD:ETH",))
    with pytest.raises(ValueError, match="bad expiry in 'BTC/USD:BTC-251399'"):
        Emulator("okx", ("BTC/USD:BTC-251399",))


# -- websocket protocol ----------------------------------------------------------------------


async def test_subscribe_acks_errors_and_text_ping() -> None:
    async with Emulator("okx", (SPOT,), rate=0) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        await ws.send_str("ping")
        assert (await asyncio.wait_for(ws.receive(), 5 * MS)).data == "pong"
        args = [{"channel": "tickers", "instId": "BTC-USDT"}, {"channel": "tickers", "instId": "NOPE-USDT"}]
        await ws.send_str(json.dumps({"op": "subscribe", "args": args}))
        ack = await receive_json(ws)
        assert ack["event"] == "subscribe" and ack["arg"] == args[0] and len(ack["connId"]) == 8
        error = await receive_json(ws)
        assert error["event"] == "error" and error["code"] == "60018" and "instId:NOPE-USDT" in error["msg"]
        pushed = await receive_json(ws)  # the current ticker, right after the subscription
        assert pushed["arg"] == args[0] and float(pushed["data"][0]["last"]) > 0
        await ws.send_str(json.dumps({"op": "subscribe", "args": [{"channel": "candle1m", "instId": "BTC-USDT"}],
                                      "id": "7"}))
        error = await receive_json(ws)
        assert error["code"] == "60018" and error["id"] == "7"
        for bad in ("hello", json.dumps({"op": "dance", "args": args}), json.dumps({"op": "subscribe", "args": []})):
            await ws.send_str(bad)
            error = await receive_json(ws)
            assert error["event"] == "error" and error["code"] == "60012" and error["msg"].startswith("Illegal request")
        await ws.send_str(json.dumps({"op": "unsubscribe", "args": args[:1]}))
        assert (await receive_json(ws))["event"] == "unsubscribe"
        await until(lambda: emu.stats.subscriptions == 0)
    assert emu.stats.unserved_subscriptions == 2  # NOPE-USDT, and candles (they live on /business)


async def test_ccxt_raises_the_venue_error_for_an_unknown_channel(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("okx", (SPOT,), rate=50) as emu:
        exchange = exchange_factory("okx", emu.url)
        with pytest.raises(ccxtpro.BadRequest, match="60018"):
            await asyncio.wait_for(exchange.watch_tickers([SPOT], {"channel": "nope-tickers"}), 5 * MS)


async def test_ccxt_keep_alive_pings_are_answered(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("okx", (SPOT,), rate=20) as emu:
        # ccxt pings every keepAlive ms and drops the connection after two unanswered pings.
        exchange = exchange_factory("okx", emu.url, streaming={"keepAlive": 50})
        await asyncio.wait_for(exchange.watch_tickers([SPOT]), 5 * MS)
        pinged = emu.stats.control_messages

        async def ten_more_pings() -> bool:
            await exchange.watch_tickers([SPOT])  # raises if ccxt gave up on the connection
            return emu.stats.control_messages >= pinged + 10

        await until(ten_more_pings, 10, "ten keep-alive pings")
        assert emu.stats.connections_opened == 1


async def test_watch_tickers_and_bids_asks_then_unwatch(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("okx", (SPOT, LINEAR), rate=200) as emu:
        exchange = exchange_factory("okx", emu.url)
        seen: set[str] = set()
        for _ in range(10):
            update = await asyncio.wait_for(exchange.watch_tickers([SPOT, LINEAR]), 5 * MS)
            for symbol, ticker in update.items():
                raw = ticker["info"]
                assert (ticker["last"], ticker["bid"], ticker["ask"]) == \
                    (float(raw["last"]), float(raw["bidPx"]), float(raw["askPx"]))
                assert ticker["bid"] < ticker["ask"] and ticker["timestamp"] == int(raw["ts"])
                seen.add(symbol)
        assert seen == {SPOT, LINEAR}
        await asyncio.wait_for(exchange.un_watch_tickers([SPOT, LINEAR]), 5 * MS)
        assert emu.stats.subscriptions == 0
        sent = emu.sent("tickers", SPOT)
        # The barrier: SPOT keeps moving on bbo-tbt, and not one of those moves reaches tickers.
        books = await asyncio.wait_for(exchange.watch_bids_asks([SPOT]), 5 * MS)
        assert books[SPOT]["bid"] < books[SPOT]["ask"] and books[SPOT]["last"] is None
        await until(lambda: emu.sent("bbo-tbt", SPOT) >= 20, 10, "20 bbo-tbt frames")
        assert emu.sent("tickers", SPOT) == sent


@pytest.mark.parametrize("channel", ["ticker", "bidask"])
async def test_the_stream_stores_exactly_the_walk(channel: str) -> None:
    wire = {"ticker": "tickers", "bidask": "bbo-tbt"}[channel]
    async with Emulator("okx", (SPOT, LINEAR), rate=400) as emu, \
            streaming(emu, (SPOT, LINEAR), channel=channel) as stream:
        await until(lambda: all(emu.sent(wire, s) >= 50 for s in (SPOT, LINEAR)), 10, "50 frames a symbol")
        await emu.inject(Fault.STALL)
        # Written intact before the stall: every one stored, once.
        await until(lambda: all(len(rows(stream, s)) == emu.sent(wire, s) for s in (SPOT, LINEAR)), 10,
                    "every frame sent to be stored")
        for market in parse_symbols((SPOT, LINEAR)):
            walk = PriceWalk(market, 0)
            # The subscription pushes the walk's current quote, then every step follows.
            quotes = [walk.quote] + [walk.step(0) for _ in range(emu.sent(wire, market.symbol) - 1)]
            p = market.price_decimals
            if channel == "ticker":
                want = [(grid(q.last, p), grid(q.bid, p), grid(q.ask, p)) for q in quotes]
            else:
                want = [((grid(q.bid, p) + grid(q.ask, p)) / 2, grid(q.bid, p), grid(q.ask, p)) for q in quotes]
            assert rows(stream, market.symbol) == want, market.symbol
        assert stream.status().exchanges[0].bad_frames == {}


@pytest.mark.parametrize("channel", ["ticker", "bidask"])
async def test_rest_mode_polls_every_instrument_type(channel: str) -> None:
    async with Emulator("okx", SYMBOLS, rate=100) as emu, \
            streaming(emu, SYMBOLS, channel=channel, mode="rest", poll_interval=0.05) as stream:
        await until(lambda: all(len(rows(stream, s)) >= 2 for s in SYMBOLS), 10, "two polled ticks a symbol")
        for symbol in SYMBOLS:
            price, bid, ask = rows(stream, symbol)[-1]
            assert 0 < bid < ask and price > 0
        assert emu.stats.connections_opened == 0


# -- faults ----------------------------------------------------------------------------------


async def watch_until_error(exchange: Any, emu: Emulator, fault: Fault, **options: Any) -> BaseException:
    await asyncio.wait_for(exchange.watch_tickers([SPOT]), 5 * MS)
    injected = asyncio.get_running_loop().create_task(emu.inject(fault, **options))
    try:
        async with asyncio.timeout(5 * MS):
            while True:
                try:
                    await exchange.watch_tickers([SPOT])
                except ccxtpro.NetworkError as error:
                    return error
    finally:
        await injected


@pytest.mark.parametrize("fault", [Fault.RESET, Fault.CLOSE_1006, Fault.CLOSE_1001, Fault.SERVER_SHUTDOWN],
                         ids=lambda fault: fault.value)
async def test_a_cut_connection_raises_then_reconnects(exchange_factory: ExchangeFactory, fault: Fault) -> None:
    async with Emulator("okx", (SPOT,), rate=200) as emu:
        exchange = exchange_factory("okx", emu.url)
        error = await watch_until_error(exchange, emu, fault, duration=0.05)
        # The 64008 notice is a NetworkError of its own, before the close.
        assert ("64008" if fault is Fault.SERVER_SHUTDOWN else "closing code") in str(error)
        await until(lambda: emu.stats.connections_open == 0, 5, "the cut connection to close")
        ticker = await asyncio.wait_for(exchange.watch_tickers([SPOT]), 5 * MS)
        assert SPOT in ticker and emu.stats.connections_opened == 2


async def test_the_shutdown_notice_comes_before_the_close() -> None:
    async with Emulator("okx", (SPOT,), rate=0) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        await ws.send_str("ping")
        await ws.receive()
        await emu.inject(Fault.SERVER_SHUTDOWN, duration=0.05 * MS)
        notice = await receive_json(ws)
        assert notice["event"] == "notice" and notice["code"] == "64008"
        closing = await asyncio.wait_for(ws.receive(), 5 * MS)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1001


async def test_frame_faults_reach_ccxt_as_the_venue_would_send_them(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("okx", (SPOT,), rate=200) as emu:
        exchange = exchange_factory("okx", emu.url)
        await asyncio.wait_for(exchange.watch_tickers([SPOT]), 5 * MS)
        await emu.inject(Fault.NON_NUMERIC, count=3)
        bids = [(await asyncio.wait_for(exchange.watch_tickers([SPOT]), 5 * MS))[SPOT]["bid"] for _ in range(8)]
        assert None in bids and bids[-1] is not None
        # The instId of the row is gone: ccxt still files it under arg.instId, with no symbol.
        await emu.inject(Fault.MISSING_FIELDS)
        symbols = [(await asyncio.wait_for(exchange.watch_tickers([SPOT]), 5 * MS))[SPOT]["symbol"] for _ in range(5)]
        assert None in symbols and symbols[-1] == SPOT
        assert emu.stats.faults[Fault.NON_NUMERIC] == 3 and emu.stats.faults[Fault.MISSING_FIELDS] == 1


@pytest.mark.parametrize("fault", [Fault.MALFORMED, Fault.TRUNCATED], ids=lambda fault: fault.value)
async def test_a_broken_frame_is_counted_and_the_stream_goes_on(fault: Fault) -> None:
    async with Emulator("okx", (SPOT,), rate=200) as emu, streaming(emu, (SPOT,)) as stream:
        await until(lambda: len(rows(stream, SPOT)) >= 5, 10, "five ticks")
        await emu.inject(fault)
        await until(lambda: emu.stats.faults.get(fault) == 1)
        stored = len(rows(stream, SPOT))
        await until(lambda: len(rows(stream, SPOT)) >= stored + 5, 10, "five ticks after the broken frame")
        status = stream.status()
        assert sum(status.exchanges[0].bad_frames.values()) == 1 and status.exchanges[0].reconnects == 0


async def test_rest_faults_stall_and_refuse(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("okx", (SPOT,), rate=100) as emu:
        exchange = exchange_factory("okx", emu.url)
        await exchange.load_markets()
        await emu.inject(Fault.REST_429, retry_after=2)
        with pytest.raises(ccxtpro.RateLimitExceeded):
            await exchange.fetch_ticker(SPOT)
        await emu.inject(Fault.REST_5XX)
        with pytest.raises(ccxtpro.ExchangeNotAvailable):
            await exchange.fetch_ticker(SPOT)
        assert (await exchange.fetch_ticker(SPOT))["symbol"] == SPOT
        await asyncio.wait_for(exchange.watch_tickers([SPOT]), 5 * MS)
        await emu.inject(Fault.STALL)
        with pytest.raises(TimeoutError):
            while True:
                await asyncio.wait_for(exchange.watch_tickers([SPOT]), 0.3 * MS)
        emu.clear_faults()
        assert SPOT in await asyncio.wait_for(exchange.watch_tickers([SPOT]), 5 * MS)
        await emu.inject(Fault.REFUSE)
        fresh = exchange_factory("okx", emu.url)
        with pytest.raises(ccxtpro.ExchangeNotAvailable):
            await fresh.load_markets()
        emu.clear_faults()
        await fresh.load_markets()
        await emu.inject(Fault.REFUSE)
        with pytest.raises(ccxtpro.NetworkError):
            await asyncio.wait_for(fresh.watch_tickers([SPOT]), 5 * MS)
        emu.clear_faults()
        assert SPOT in await asyncio.wait_for(fresh.watch_tickers([SPOT]), 5 * MS)
        assert emu.stats.faults[Fault.REFUSE] == 2


# -- replay ----------------------------------------------------------------------------------


async def test_the_replay_stores_exactly_the_recorded_tickers_of_every_symbol(
        exchange_factory: ExchangeFactory) -> None:
    path = recording_path("okx")
    expected = expected_replay(path)
    assert len(expected) == 3  # spot, inverse swap, dated future
    symbols = tuple(sorted(expected))
    async with Emulator("okx", replay=path, speed=0) as emu, streaming(emu, symbols) as stream:
        await until(lambda: all(len(rows(stream, s)) >= len(expected[s]) for s in symbols), 20,
                    "every recorded ticker")
        assert {symbol: rows(stream, symbol) for symbol in symbols} == expected
        assert stream.status().exchanges[0].bad_frames == {}
        # REST answers from the last replayed ticker.
        exchange = exchange_factory("okx", emu.url)
        for symbol in symbols:
            ticker = await exchange.fetch_ticker(symbol)
            assert (ticker["last"], ticker["bid"], ticker["ask"]) == expected[symbol][-1]


async def test_the_replay_serves_the_recorded_instrument_lists_byte_for_byte() -> None:
    recorded: dict[str, str] = {}
    with gzip.open(recording_path("okx"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "http":
                recorded.setdefault(record["url"].split("/api/v5/", 1)[1], record["data"])
    assert len(recorded) == 5
    async with Emulator("okx", replay=recording_path("okx"), speed=0) as emu, aiohttp.ClientSession() as session:
        for query, body in recorded.items():
            async with session.get(f"{emu.url}/api/v5/{query}") as response:
                assert await response.text() == body, query

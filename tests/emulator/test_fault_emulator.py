"""Every fault is observable by an unmodified ccxt.pro client, and the client recovers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest

from flight_md.emulator import Emulator, Fault
from tests.emulator.conftest import MS, ExchangeFactory, until

pytestmark = pytest.mark.asyncio

CASES = [("binance", "BTC/USDT"), ("bybit", "BTC/USDT:USDT")]
CUTS = [Fault.RESET, Fault.CLOSE_1006, Fault.CLOSE_1001, Fault.SERVER_SHUTDOWN]


async def watch_until_error(exchange: Any, symbol: str, emu: Emulator, fault: Fault) -> BaseException:
    """Keep watching while the fault is injected; return what the watch raised."""
    await asyncio.wait_for(exchange.watch_ticker(symbol), 5 * MS)
    injected = asyncio.get_running_loop().create_task(emu.inject(fault))
    try:
        async with asyncio.timeout(5 * MS):
            while True:
                try:
                    await exchange.watch_ticker(symbol)
                except ccxtpro.NetworkError as error:
                    return error
    finally:
        await injected


@pytest.mark.parametrize(("exchange_id", "symbol", "fault"),
                         [(exchange_id, symbol, fault) for exchange_id, symbol in CASES for fault in CUTS
                          if not (exchange_id == "bybit" and fault is Fault.SERVER_SHUTDOWN)],  # a binance event
                         ids=lambda value: str(value).split("/")[0])
async def test_a_cut_connection_raises_then_reconnects(exchange_factory: ExchangeFactory, exchange_id: str,
                                                      symbol: str, fault: Fault) -> None:
    async with Emulator(exchange_id, (symbol,), rate=200) as emu:
        exchange = exchange_factory(exchange_id, emu.url)
        error = await watch_until_error(exchange, symbol, emu, fault)
        assert "closing code" in str(error)
        assert emu.stats.faults[fault] == 1
        ticker = await asyncio.wait_for(exchange.watch_ticker(symbol), 5 * MS)
        assert ticker["symbol"] == symbol
        assert emu.stats.connections_opened == 2


async def test_server_shutdown_sends_the_binance_event_before_closing() -> None:
    async with Emulator("binance", ("BTC/USDT",), rate=0) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(emu.url.replace("http://", "ws://") + "/ws") as ws:
        await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
        await ws.receive()
        await emu.inject(Fault.SERVER_SHUTDOWN, duration=0.05 * MS)
        event = json.loads((await asyncio.wait_for(ws.receive(), 5 * MS)).data)
        assert event["e"] == "serverShutdown" and event["E"] > 0
        closing = await asyncio.wait_for(ws.receive(), 5 * MS)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1001


@pytest.mark.parametrize(("exchange_id", "symbol"), CASES, ids=lambda value: str(value).split("/")[0])
async def test_stall_silences_the_stream_then_it_resumes(exchange_factory: ExchangeFactory, exchange_id: str,
                                                         symbol: str) -> None:
    async with Emulator(exchange_id, (symbol,), rate=200) as emu:
        exchange = exchange_factory(exchange_id, emu.url)
        await asyncio.wait_for(exchange.watch_ticker(symbol), 5 * MS)
        # Long enough for the client to see what was in flight, then 0.3 s of silence.
        await emu.inject(Fault.STALL, duration=2.0 * MS)
        with pytest.raises(TimeoutError):
            while True:
                await asyncio.wait_for(exchange.watch_ticker(symbol), 0.3 * MS)
        sent = emu.stats.frames_total  # nothing more is written while the stall lasts
        # The stall ends by itself and the same client gets data again.
        ticker = await asyncio.wait_for(exchange.watch_ticker(symbol), 5 * MS)
        assert ticker["symbol"] == symbol and emu.stats.frames_total > sent


async def test_clear_faults_ends_a_stall(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("binance", ("BTC/USDT",), rate=200) as emu:
        exchange = exchange_factory("binance", emu.url)
        await asyncio.wait_for(exchange.watch_ticker("BTC/USDT"), 5 * MS)
        await emu.inject(Fault.STALL)  # until cleared
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(exchange.watch_ticker("BTC/USDT"), 0.3 * MS)
        emu.clear_faults()
        assert (await asyncio.wait_for(exchange.watch_ticker("BTC/USDT"), 5 * MS))["last"] > 0


@pytest.mark.parametrize("fault", [Fault.MALFORMED, Fault.TRUNCATED, Fault.MISSING_FIELDS],
                         ids=lambda fault: fault.value)
@pytest.mark.parametrize(("exchange_id", "symbol"), CASES, ids=lambda value: str(value).split("/")[0])
async def test_a_broken_frame_stops_ccxt_until_a_new_client_connects(
        exchange_factory: ExchangeFactory, exchange_id: str, symbol: str, fault: Fault) -> None:
    async with Emulator(exchange_id, (symbol,), rate=200) as emu:
        exchange = exchange_factory(exchange_id, emu.url)
        await asyncio.wait_for(exchange.watch_ticker(symbol), 5 * MS)
        await emu.inject(fault)
        await until(lambda: emu.stats.faults.get(fault) == 1)
        if exchange_id == "bybit" and fault is Fault.MISSING_FIELDS:
            # Bybit names the market in the topic too: ccxt shrugs the frame off.
            assert (await asyncio.wait_for(exchange.watch_ticker(symbol), 5 * MS))["symbol"] == symbol
        else:
            # ccxt's receive loop dies on the frame: the stream goes silent, no error is raised.
            with pytest.raises(TimeoutError):
                while True:
                    await asyncio.wait_for(exchange.watch_ticker(symbol), 0.5 * MS)
        assert emu.stats.faults[fault] == 1
        fresh = exchange_factory(exchange_id, emu.url)
        assert (await asyncio.wait_for(fresh.watch_ticker(symbol), 5 * MS))["symbol"] == symbol


@pytest.mark.parametrize(("exchange_id", "symbol"), CASES, ids=lambda value: str(value).split("/")[0])
async def test_a_non_numeric_price_reaches_ccxt_as_a_missing_value(
        exchange_factory: ExchangeFactory, exchange_id: str, symbol: str) -> None:
    async with Emulator(exchange_id, (symbol,), rate=200) as emu:
        exchange = exchange_factory(exchange_id, emu.url)
        await asyncio.wait_for(exchange.watch_ticker(symbol, {"name": "ticker"}), 5 * MS)
        await emu.inject(Fault.NON_NUMERIC, count=3)
        bids = []
        for _ in range(8):
            bids.append((await asyncio.wait_for(exchange.watch_ticker(symbol, {"name": "ticker"}), 5 * MS))["bid"])
        assert None in bids and bids[-1] is not None
        assert emu.stats.faults.get(Fault.NON_NUMERIC) == 3


@pytest.mark.parametrize(("exchange_id", "symbol"), CASES, ids=lambda value: str(value).split("/")[0])
async def test_rest_429_and_5xx_raise_then_requests_succeed(exchange_factory: ExchangeFactory, exchange_id: str,
                                                           symbol: str) -> None:
    async with Emulator(exchange_id, (symbol,), rate=10) as emu:
        exchange = exchange_factory(exchange_id, emu.url)
        await exchange.load_markets()
        await emu.inject(Fault.REST_429, retry_after=2)
        with pytest.raises((ccxtpro.RateLimitExceeded, ccxtpro.DDoSProtection)):
            await exchange.fetch_ticker(symbol)
        await emu.inject(Fault.REST_5XX, count=1)
        with pytest.raises(ccxtpro.ExchangeNotAvailable):
            await exchange.fetch_ticker(symbol)
        assert (await exchange.fetch_ticker(symbol))["symbol"] == symbol
        await emu.inject(Fault.REST_429, retry_after=2)
        async with aiohttp.ClientSession() as session, session.get(emu.url + "/v5/market/time") as response:
            assert response.status == 429 and response.headers["Retry-After"] == "2"
        assert emu.stats.faults[Fault.REST_429] == 2 and emu.stats.faults[Fault.REST_5XX] == 1


@pytest.mark.parametrize(("exchange_id", "symbol"), CASES, ids=lambda value: str(value).split("/")[0])
async def test_refuse_turns_away_rest_and_websockets_for_a_while(exchange_factory: ExchangeFactory,
                                                                 exchange_id: str, symbol: str) -> None:
    async with Emulator(exchange_id, (symbol,), rate=100) as emu:
        exchange = exchange_factory(exchange_id, emu.url)
        await exchange.load_markets()
        await emu.inject(Fault.REFUSE)  # until the window below replaces it
        with pytest.raises(ccxtpro.ExchangeNotAvailable):
            await exchange.fetch_ticker(symbol)
        with pytest.raises(ccxtpro.NetworkError):
            await asyncio.wait_for(exchange.watch_ticker(symbol), 5 * MS)
        assert emu.stats.faults[Fault.REFUSE] == 2  # the REST request and the websocket handshake
        # A window of 0.3 s ends by itself: REST answers again, then a fresh client streams.
        await emu.inject(Fault.REFUSE, duration=0.3)
        probe = exchange_factory(exchange_id, emu.url)

        async def answers() -> bool:
            try:
                await probe.fetch_ticker(symbol)
            except ccxtpro.ExchangeNotAvailable:
                return False
            return True

        await until(answers, 10, "the refuse window to end")
        fresh = exchange_factory(exchange_id, emu.url)
        assert (await asyncio.wait_for(fresh.watch_ticker(symbol), 5 * MS))["symbol"] == symbol


async def test_the_control_endpoint_switches_faults() -> None:
    async with Emulator("bybit", ("BTC/USDT",), rate=0) as emu, aiohttp.ClientSession() as session:
        async with session.post(emu.url + "/_emulator/faults", json={"fault": "rest_5xx", "count": 2}) as response:
            assert response.status == 200 and (await response.json())["fault"] == "rest_5xx"
        async with session.get(emu.url + "/v5/market/time") as response:
            assert response.status == 503
        async with session.delete(emu.url + "/_emulator/faults") as response:
            assert response.status == 200
        async with session.get(emu.url + "/v5/market/time") as response:
            assert response.status == 200
        async with session.post(emu.url + "/_emulator/faults", json={"fault": "nope"}) as response:
            assert response.status == 400 and "reset" in (await response.json())["error"]
        async with session.get(emu.url + "/_emulator/stats") as response:
            stats = await response.json()
        assert stats["faults"] == {"rest_5xx": 1} and stats["rest_requests"] == 2
    with pytest.raises(ValueError, match="bybit has none"):
        async with Emulator("bybit", ("BTC/USDT",), rate=0) as emu:
            await emu.inject(Fault.SERVER_SHUTDOWN)

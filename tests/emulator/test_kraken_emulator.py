"""Unmodified ccxt.pro.kraken against the emulator's Kraken dialect (websocket v2, REST).

Synthetic data for the protocol, recorded data for the values: the shared recording is
websocket v1, which the emulator transcodes to v2; a v2 recording (made here by ``flight-md
record`` from the synthetic emulator) is served verbatim. The expected values are read
straight from the files (:mod:`tests.venues.expected_kraken`, ``recorded_v1``,
``recorded_v2``), never through the emulator's own code.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest
import pytest_asyncio

from flight_md.emulator import Emulator, EmulatorThread, Fault
from flight_md.errors import NotFound
from flight_md.ingest.stream import MarketDataStream
from flight_md.record import record
from tests.emulator.conftest import MS, ExchangeFactory, recording_path, until
from tests.venues.expected_kraken import expected_replay

pytestmark = pytest.mark.asyncio

SYMBOLS = ("BTC/USD", "ETH/USD")
FAST_REST = {"enableRateLimit": False}
"""ccxt spaces Kraken's REST calls a second apart; a local emulator needs no pacing."""


def ws_url(emu: Emulator) -> str:
    return emu.url.replace("http://", "ws://") + "/v2"


HEARTBEAT = {"channel": "heartbeat"}


async def receive_text(ws: aiohttp.ClientWebSocketResponse, *, heartbeats: bool = False) -> str:
    """The next frame's text; heartbeats (about one a second once subscribed) skipped unless asked."""
    while True:
        message = await asyncio.wait_for(ws.receive(), 5 * MS)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        text: str = message.data
        if heartbeats or json.loads(text) != HEARTBEAT:
            return text


async def receive(ws: aiohttp.ClientWebSocketResponse, *, heartbeats: bool = False) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(await receive_text(ws, heartbeats=heartbeats))
    return decoded


async def greeted(ws: aiohttp.ClientWebSocketResponse) -> int:
    """Read the status banner every v2 connection starts with; its connection id."""
    status = await receive(ws, heartbeats=True)
    assert status["channel"] == "status" and status["type"] == "update", status
    (data,) = status["data"]
    assert (data["api_version"], data["system"], data["version"]) == ("v2", "online", "2.0.10")
    assert isinstance(data["connection_id"], int)
    return data["connection_id"]


@pytest_asyncio.fixture
async def streams() -> AsyncIterator[list[MarketDataStream]]:
    """Streams made by a test, disconnected at teardown."""
    made: list[MarketDataStream] = []
    yield made
    for stream in made:
        await stream.disconnect()


def stored(stream: MarketDataStream, symbol: str) -> int:
    try:
        return stream.buffer.count(symbol, "kraken")
    except NotFound:
        return 0


# -- REST --------------------------------------------------------------------------------


async def test_load_markets_assets_and_rest_tickers(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("kraken", (*SYMBOLS, "SOL/USDT", "ETH/BTC"), rate=10) as emu:
        exchange = exchange_factory("kraken", emu.url, **FAST_REST)  # loads Assets, then AssetPairs
        markets = await exchange.load_markets()
        assert sorted(markets) == ["BTC/USD", "ETH/BTC", "ETH/USD", "SOL/USDT"]
        assert [markets[s]["id"] for s in ("BTC/USD", "ETH/BTC", "SOL/USDT")] == ["XXBTZUSD", "XETHXXBT", "SOLUSDT"]
        assert markets["BTC/USD"]["info"]["wsname"] == "XBT/USD" and markets["BTC/USD"]["active"] is True
        assert {"BTC", "ETH", "USD", "USDT", "SOL"} <= set(exchange.currencies)
        ticker = await exchange.fetch_ticker("BTC/USD")
        assert 0 < ticker["bid"] < ticker["ask"] and ticker["last"] > 0 and ticker["open"] > 0
        assert ticker["timestamp"] is None  # Kraken's REST ticker has none
        tickers = await exchange.fetch_tickers(["ETH/USD", "ETH/BTC"])
        assert sorted(tickers) == ["ETH/BTC", "ETH/USD"]
        async with aiohttp.ClientSession() as session:
            async with session.get(emu.url + "/0/public/Ticker?pair=XBTUSD,NOPEUSD") as response:
                assert await response.json() == {"error": ["EQuery:Unknown asset pair"]}
            async with session.get(emu.url + "/0/public/Ticker?pair=XBTUSD") as response:
                assert list((await response.json())["result"]) == ["XXBTZUSD"]  # altname in, id out
            async with session.get(emu.url + "/0/public/Nope") as response:
                assert response.status == 404 and await response.json() == {"error": ["EGeneral:Unknown method"]}
        assert (await exchange.fetch_time()) > 0
        with pytest.raises(ccxtpro.BadSymbol):
            await exchange.fetch_ticker("NOPE/USD")


async def test_linear_symbols_are_refused() -> None:
    with pytest.raises(ValueError, match="spot markets only"):
        Emulator("kraken", ("BTC/USD:USD",))


# -- websocket v2 ------------------------------------------------------------------------


async def test_watch_tickers_and_bids_asks(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("kraken", SYMBOLS, rate=200) as emu:
        exchange = exchange_factory("kraken", emu.url, **FAST_REST)
        seen: set[str] = set()
        for _ in range(10):
            update = await asyncio.wait_for(exchange.watch_tickers(list(SYMBOLS)), 5 * MS)
            for symbol, ticker in update.items():
                assert 0 < ticker["bid"] < ticker["ask"] and ticker["last"] > 0
                assert ticker["timestamp"] is None  # ccxt gives Kraken's v2 ticker none
                assert ticker["open"] == pytest.approx(ticker["last"] - ticker["change"])
                seen.add(symbol)
        assert seen == set(SYMBOLS)
        bidask = exchange_factory("kraken", emu.url, **FAST_REST)
        for _ in range(3):
            books = await asyncio.wait_for(bidask.watch_bids_asks(["ETH/USD"]), 5 * MS)
            assert 0 < books["ETH/USD"]["bid"] < books["ETH/USD"]["ask"]
        assert "ETH/USD" in bidask.tickers  # the cache flight_md taps for bidask
        assert emu.sent("ticker", "BTC/USD") > 0 and emu.stats.subscriptions == 3


async def test_subscribe_unsubscribe_and_errors() -> None:
    async with Emulator("kraken", SYMBOLS, rate=50) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        await greeted(ws)
        await ws.send_str(json.dumps({"method": "ping", "req_id": 7}))
        pong = await receive(ws)
        assert pong["method"] == "pong" and pong["req_id"] == 7 and pong["time_in"] <= pong["time_out"]
        await ws.send_str(json.dumps({"method": "subscribe", "req_id": 8, "params": {
            "channel": "ticker", "symbol": ["BTC/USD", "XBT/USD", "BTCUSD"], "event_trigger": "bbo"}}))
        ack = await receive(ws)
        assert ack["success"] is True and ack["req_id"] == 8
        assert ack["result"] == {"channel": "ticker", "event_trigger": "bbo", "snapshot": True, "symbol": "BTC/USD"}
        # The v2 names are ccxt's (BTC); the legacy wsname is refused, as Kraken does.
        legacy, malformed = await receive(ws), await receive(ws)
        assert (legacy["success"], legacy["error"], legacy["symbol"]) == (
            False, "Currency pair not supported XBT/USD", "XBT/USD")
        assert malformed["error"] == "Currency pair not in ISO 4217-A3 format BTCUSD"
        snapshot = await receive(ws)
        assert snapshot["channel"] == "ticker" and snapshot["type"] == "snapshot"
        assert snapshot["data"][0]["symbol"] == "BTC/USD"
        update = await receive(ws)
        assert update["type"] == "update" and update["data"][0]["bid"] < update["data"][0]["ask"]
        for params, error in (({"channel": "ticker", "symbol": ["BTC/USD"]}, "Already subscribed"),
                              ({"channel": "book", "symbol": ["BTC/USD"], "depth": 27},
                               "Subscription depth not supported"),
                              ({"channel": "executions"}, "Private data and trading are unavailable"),
                              ({"channel": "nope", "symbol": ["BTC/USD"]}, "Channel not supported")):
            await ws.send_str(json.dumps({"method": "subscribe", "params": params}))
            async with asyncio.timeout(5 * MS):
                while "error" not in (reply := await receive(ws)):
                    assert reply.get("channel") == "ticker"  # data still flowing
            assert reply["success"] is False and reply["error"].startswith(error) and "req_id" not in reply
        await ws.send_str(json.dumps({"method": "unsubscribe", "params": {"channel": "ticker",
                                                                          "symbol": ["BTC/USD", "ETH/USD"]}}))
        async with asyncio.timeout(5 * MS):
            while reply.get("method") != "unsubscribe":
                reply = await receive(ws)
        assert reply["success"] is True and reply["result"]["symbol"] == "BTC/USD"
        missing = await receive(ws)
        assert (missing["error"], missing["symbol"]) == ("Subscription Not Found", "ETH/USD")
        await until(lambda: emu.stats.subscriptions == 0, 5, "the unsubscription")
        sent = emu.sent("ticker", "BTC/USD")
        # The barrier: ETH/USD frames flow on the same connection; not one more BTC/USD frame.
        await ws.send_str(json.dumps({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["ETH/USD"],
                                                                        "snapshot": False}}))
        assert (await receive(ws))["result"]["snapshot"] is False
        assert (await receive(ws))["type"] == "update"  # no snapshot asked, none sent
        await until(lambda: emu.sent("ticker", "ETH/USD") >= 10, 10, "10 ETH/USD frames")
        assert emu.sent("ticker", "BTC/USD") == sent
        await ws.send_str("{not json")
        async with asyncio.timeout(5 * MS):
            while "error" not in (reply := await receive(ws)):
                pass
        assert reply["error"] == "Malformed request"


async def test_ccxt_keep_alive_is_answered(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("kraken", SYMBOLS, rate=20) as emu:
        # ccxt pings {"method":"ping"} every keepAlive ms and drops a connection that has not
        # had a pong for two intervals: at 100 ms, five unanswered pings would have ended it.
        exchange = exchange_factory("kraken", emu.url, streaming={"keepAlive": 100})
        await asyncio.wait_for(exchange.watch_tickers(["BTC/USD"]), 5 * MS)
        client = exchange.clients[exchange.urls["api"]["ws"]["publicV2"]]
        await until(lambda: emu.stats.control_messages >= 2 and client.lastPong, 10, "the first keep-alive ping")
        first_pong = client.lastPong
        await until(lambda: emu.stats.control_messages >= 6, 10, "five keep-alive pings")
        await asyncio.wait_for(exchange.watch_tickers(["BTC/USD"]), 5 * MS)
        assert client.lastPong > first_pong and emu.stats.connections_opened == 1
        # A stall swallows the pings too: ccxt gives the connection up.
        await emu.inject(Fault.STALL)
        with pytest.raises(ccxtpro.RequestTimeout, match="ping-pong keepalive"):
            async with asyncio.timeout(5 * MS):
                while True:
                    await exchange.watch_tickers(["BTC/USD"])


async def test_status_on_connect_then_heartbeats_once_subscribed(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("kraken", SYMBOLS, rate=0) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as idle, session.ws_connect(ws_url(emu)) as subscribed:
        assert await greeted(idle) != await greeted(subscribed)  # one connection id each
        await subscribed.send_str(json.dumps({"method": "subscribe", "params": {
            "channel": "ticker", "symbol": ["BTC/USD"], "snapshot": False}}))
        assert (await receive(subscribed))["success"] is True
        # Unmodified ccxt takes the banner and the heartbeats in its stride (4.5.90 routes a v2
        # heartbeat to no handler, so its watch_heartbeat never resolves; nothing else minds).
        exchange = exchange_factory("kraken", emu.url, **FAST_REST)
        assert (await asyncio.wait_for(exchange.watch_ticker("ETH/USD"), 5 * MS))["symbol"] == "ETH/USD"
        # rate 0 and no snapshot: nothing but heartbeats follows, about one a second. Two of
        # them span a whole interval after ccxt subscribed: its connection has had one too.
        assert [await receive(subscribed, heartbeats=True) for _ in range(2)] == [HEARTBEAT] * 2
        assert (await asyncio.wait_for(exchange.watch_ticker("BTC/USD"), 5 * MS))["symbol"] == "BTC/USD"
        # Meanwhile the connection subscribed to nothing got none: its next frame is the pong.
        await idle.send_str(json.dumps({"method": "ping", "req_id": 1}))
        assert (await receive(idle, heartbeats=True))["method"] == "pong"
        assert emu.stats.connections_opened == 3 and emu.stats.connections_open == 3
        assert emu.stats.frames_total == 2  # ccxt's two snapshots; the banners and heartbeats are no data


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [Fault.RESET, Fault.CLOSE_1006, Fault.CLOSE_1001, Fault.SERVER_SHUTDOWN],
                         ids=lambda fault: fault.value)
async def test_a_cut_connection_raises_then_reconnects(exchange_factory: ExchangeFactory, fault: Fault) -> None:
    async with Emulator("kraken", SYMBOLS, rate=200) as emu:
        exchange = exchange_factory("kraken", emu.url, **FAST_REST)
        await asyncio.wait_for(exchange.watch_ticker("BTC/USD"), 5 * MS)
        injected = asyncio.get_running_loop().create_task(emu.inject(fault, duration=0.05))
        with pytest.raises(ccxtpro.NetworkError):
            async with asyncio.timeout(5 * MS):
                while True:
                    await exchange.watch_ticker("BTC/USD")
        await injected
        assert emu.stats.faults[fault] == 1
        assert (await asyncio.wait_for(exchange.watch_ticker("BTC/USD"), 5 * MS))["symbol"] == "BTC/USD"
        assert emu.stats.connections_opened == 2


async def test_server_shutdown_announces_maintenance_then_closes() -> None:
    async with Emulator("kraken", SYMBOLS, rate=0) as emu, aiohttp.ClientSession() as session, \
            session.ws_connect(ws_url(emu)) as ws:
        await greeted(ws)
        await ws.send_str(json.dumps({"method": "ping"}))
        await receive(ws)
        await emu.inject(Fault.SERVER_SHUTDOWN, duration=0.05 * MS)
        status = await receive(ws)
        assert status["channel"] == "status" and status["data"][0]["system"] == "maintenance"
        closing = await asyncio.wait_for(ws.receive(), 5 * MS)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1001


async def test_rest_faults_and_refuse(exchange_factory: ExchangeFactory) -> None:
    async with Emulator("kraken", SYMBOLS, rate=10) as emu:
        exchange = exchange_factory("kraken", emu.url, **FAST_REST)
        await exchange.load_markets()
        await emu.inject(Fault.REST_429, retry_after=2)
        with pytest.raises((ccxtpro.RateLimitExceeded, ccxtpro.DDoSProtection)):
            await exchange.fetch_ticker("BTC/USD")
        await emu.inject(Fault.REST_5XX)
        with pytest.raises(ccxtpro.ExchangeNotAvailable):
            await exchange.fetch_ticker("BTC/USD")
        assert (await exchange.fetch_ticker("BTC/USD"))["symbol"] == "BTC/USD"
        await emu.inject(Fault.REFUSE)
        with pytest.raises(ccxtpro.NetworkError):
            await asyncio.wait_for(exchange.watch_ticker("BTC/USD"), 5 * MS)
        emu.clear_faults()
        assert (await asyncio.wait_for(exchange.watch_ticker("BTC/USD"), 5 * MS))["symbol"] == "BTC/USD"
        assert emu.stats.faults == {Fault.REST_429: 1, Fault.REST_5XX: 1, Fault.REFUSE: 1}


async def test_bad_frames_are_counted_by_ingestion(streams: list[MarketDataStream]) -> None:
    async with Emulator("kraken", SYMBOLS, rate=200) as emu:
        stream = MarketDataStream("kraken", url=emu.url, heartbeat_interval=60.0, reconnect_delay=0.05)
        streams.append(stream)
        await stream.connect()
        await stream.subscribe(list(SYMBOLS))
        await until(lambda: all(stored(stream, s) >= 5 for s in SYMBOLS), 10, "ticks of both symbols")
        for fault in (Fault.MALFORMED, Fault.TRUNCATED, Fault.NON_NUMERIC):
            await emu.inject(fault)
            await until(lambda f=fault: emu.stats.faults.get(f) == 1, 5, f"{fault} applied")
        await until(lambda: sum(stream.status().exchanges[0].bad_frames.values()) == 3, 5, "three bad frames counted")
        assert stream.status().exchanges[0].bad_frames == {"malformed_frame": 2, "non_numeric": 1}
        assert stream.status().exchanges[0].reconnects == 0


# -- replay ------------------------------------------------------------------------------


def recorded_v1(channel: str) -> list[tuple[str, Any]]:
    """``(wsname, payload)`` of every recorded v1 frame of a channel, straight from the file."""
    frames = []
    with gzip.open(recording_path("kraken"), "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record["t"] == "recv" and record["data"].startswith("["):
                frame = json.loads(record["data"])
                if frame[-2] == channel:
                    frames.append((frame[-1], frame[1]))
    return frames


async def test_replay_reaches_the_buffer_exactly_as_recorded(streams: list[MarketDataStream]) -> None:
    expected = expected_replay(recording_path("kraken"))
    assert len(expected) == 10 and sum(map(len, expected.values())) == 18
    async with Emulator("kraken", replay=recording_path("kraken"), speed=0) as emu:
        stream = MarketDataStream("kraken", url=emu.url, heartbeat_interval=60.0)
        streams.append(stream)
        await stream.connect()
        await stream.subscribe(sorted(expected))
        await until(lambda: all(stored(stream, s) == len(rows) for s, rows in expected.items()), 20,
                    "every recorded ticker to be stored")
        for symbol, rows in expected.items():
            got = stream.buffer.get_latest_sync(symbol, 1000, exchange="kraken").to_pylist()
            assert [(r["price"], r["bid"], r["ask"]) for r in got] == rows, symbol
        # The transcoded change gives ccxt the recorded 24 h open back, digit for digit.
        opens = {ws: float(Decimal(data["o"][1])) for ws, data in recorded_v1("ticker")}
        xmr = stream.buffer.get_latest_sync("XMR/USD", 1000, exchange="kraken").to_pylist()
        assert xmr[-1]["open"] == opens["XMR/USD"] and xmr[-1]["volume"] == 33467.47183168
        assert stream.status().exchanges[0].bad_frames == {}


async def test_replay_serves_v2_frames_and_rest_from_the_recording(exchange_factory: ExchangeFactory) -> None:
    tickers = [data for ws, data in recorded_v1("ticker") if ws == "SC/EUR"]
    trades = [row for ws, data in recorded_v1("trade") if ws == "XMR/USD" for row in data]
    async with Emulator("kraken", replay=recording_path("kraken"), speed=0) as emu, \
            aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url(emu)) as ws:
            await greeted(ws)
            await ws.send_str(json.dumps({"method": "subscribe", "params": {"channel": "ticker",
                                                                            "symbol": ["SC/EUR"]}}))
            assert (await receive(ws))["success"] is True
            frames = [await receive(ws) for _ in tickers]
        assert [frame["type"] for frame in frames] == ["snapshot"] + ["update"] * (len(tickers) - 1)
        for frame, v1 in zip(frames, tickers, strict=True):
            data = frame["data"][0]
            assert (data["bid"], data["bid_qty"], data["ask"], data["last"]) == (
                float(v1["b"][0]), float(v1["b"][2]), float(v1["a"][0]), float(v1["c"][0]))
            assert (data["volume"], data["vwap"], data["low"], data["high"], data["trades"]) == (
                float(v1["v"][1]), float(v1["p"][1]), float(v1["l"][1]), float(v1["h"][1]), v1["t"][1])
            assert "timestamp" not in data  # v1 tickers carry none: never made up
        exchange = exchange_factory("kraken", emu.url, **FAST_REST)
        seen: list[tuple[float, float, str]] = []
        async with asyncio.timeout(10 * MS):
            while len(seen) < len(trades):
                for trade in await exchange.watch_trades("XMR/USD"):
                    seen.append((trade["price"], trade["amount"], trade["side"]))
        assert seen[-len(trades):] == [(float(r[0]), float(r[1]), {"b": "buy", "s": "sell"}[r[3]]) for r in trades]
        rest = await exchange.fetch_ticker("SC/EUR")  # the last replayed SC/EUR ticker, REST-shaped
        assert (rest["bid"], rest["ask"], rest["last"], rest["open"]) == (
            float(tickers[-1]["b"][0]), float(tickers[-1]["a"][0]), float(tickers[-1]["c"][0]),
            float(tickers[-1]["o"][0]))


# -- replay of a v2 recording ------------------------------------------------------------


@pytest.fixture(scope="module")
def v2_recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A websocket v2 session: ``flight-md record`` through real ccxt.pro from the synthetic emulator."""
    path = tmp_path_factory.mktemp("kraken-v2") / "kraken.jsonl.gz"
    with EmulatorThread(exchange="kraken", symbols=SYMBOLS, rate=60.0) as emulator:
        asyncio.run(record("kraken", SYMBOLS, path, duration=1.0, upstream=emulator.url))
    yield path


def recorded_v2(path: Path) -> list[tuple[dict[str, Any], str]]:
    """``(parsed, verbatim text)`` of every recorded v2 ticker frame, straight from the file."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    frames = [(json.loads(r["data"]), r["data"]) for r in records if r["t"] == "recv"]
    return [(frame, text) for frame, text in frames if frame.get("channel") == "ticker"]


async def test_a_v2_recording_is_served_verbatim(v2_recording: Path, exchange_factory: ExchangeFactory) -> None:
    recorded = [(frame, text) for frame, text in recorded_v2(v2_recording)
                if frame["data"][0]["symbol"] == "BTC/USD"]
    assert len(recorded) >= 5 and recorded[0][0]["type"] == "snapshot"
    async with Emulator("kraken", replay=v2_recording, speed=0) as emu, aiohttp.ClientSession() as session:
        assert emu.channels == {"ticker": SYMBOLS}  # status, replies and heartbeats are no streams
        async with session.ws_connect(ws_url(emu)) as ws:
            await greeted(ws)
            await ws.send_str(json.dumps({"method": "subscribe", "params": {"channel": "ticker",
                                                                            "symbol": ["BTC/USD"]}}))
            assert (await receive(ws))["success"] is True
            assert [await receive_text(ws) for _ in recorded] == [text for _, text in recorded]
        # REST answers from the last v2 ticker replayed, with its values; the open is last - change,
        # the open ccxt derives from the websocket ticker.
        last = recorded[-1][0]["data"][0]
        exchange = exchange_factory("kraken", emu.url, **FAST_REST)
        rest = await exchange.fetch_ticker("BTC/USD")
        assert (rest["bid"], rest["bidVolume"], rest["ask"], rest["askVolume"], rest["last"]) == (
            last["bid"], last["bid_qty"], last["ask"], last["ask_qty"], last["last"])
        assert (rest["high"], rest["low"], rest["vwap"], rest["baseVolume"]) == (
            last["high"], last["low"], last["vwap"], last["volume"])
        assert rest["open"] == float(Decimal(str(last["last"])) - Decimal(str(last["change"])))


async def test_a_v2_recording_reaches_the_buffer_exactly_as_recorded(v2_recording: Path,
                                                                    streams: list[MarketDataStream]) -> None:
    expected: dict[str, list[tuple[float, float, float]]] = {}
    for frame, _ in recorded_v2(v2_recording):
        data = frame["data"][0]
        expected.setdefault(data["symbol"], []).append((data["last"], data["bid"], data["ask"]))
    assert set(expected) == set(SYMBOLS)
    async with Emulator("kraken", replay=v2_recording, speed=0) as emu:
        stream = MarketDataStream("kraken", url=emu.url, heartbeat_interval=60.0)
        streams.append(stream)
        await stream.connect()
        await stream.subscribe(list(SYMBOLS))
        await until(lambda: all(stored(stream, s) == len(rows) for s, rows in expected.items()), 20,
                    "every recorded ticker to be stored")
        for symbol, rows in expected.items():
            got = stream.buffer.get_latest_sync(symbol, 1000, exchange="kraken").to_pylist()
            assert [(r["price"], r["bid"], r["ask"]) for r in got] == rows, symbol
        assert stream.status().exchanges[0].bad_frames == {}


async def test_a_recording_of_both_websocket_apis_is_refused(v2_recording: Path, tmp_path: Path) -> None:
    with gzip.open(v2_recording, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    v1 = [{"t": "connect", "conn": "v1", "ts": records[-1]["ts"], "addr": "wss://ws.kraken.com"},
          {"t": "recv", "conn": "v1", "ts": records[-1]["ts"], "data": '{"event":"heartbeat"}'}]
    mixed = tmp_path / "mixed.jsonl.gz"
    with gzip.open(mixed, "wt", encoding="utf-8") as out:
        out.writelines(json.dumps(r) + "\n" for r in records + v1)
    with pytest.raises(ValueError, match=r"websockets of both kraken v1 and v2 recorded \('/', '/v2'\)"):
        Emulator("kraken", replay=mixed)

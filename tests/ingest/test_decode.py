"""The fast decoders of Binance and Bybit store exactly what ccxt's parse stores.

Differential (:mod:`tests.ingest.decode_support`): every frame of each venue's recording, frames
the synthetic emulator sends, and faulty variants of them, through a ``decoder="ccxt"`` and a
``decoder="fast"`` stream: same updates in the same order, same drops, same counters. Then
end to end: real ccxt.pro streams against the emulator, fast and ccxt, store the same rows
for one seeded session, and the status says which decoder each uses.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from flight_md.emulator import Emulator
from flight_md.ingest.stream import MarketDataStream
from flight_md.normalize import Channel
from tests.ingest.decode_support import (
    Case,
    assert_decoder_matches_ccxt,
    emulator_frames,
    fast_and_ccxt_streams,
    mutations,
    recording_cases,
    stored_rows,
)
from tests.support import MS
from tests.support import async_until as wait_until

pytestmark = pytest.mark.asyncio

BINANCE_RECORDED = ("NKN/USDT", "LRC/BTC", "BLZ/ETH")  # RUNE/EUR is listed, left unsubscribed
BYBIT_RECORDED = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "BTC/USDT", "ETH/USDT")

RECORDED = [  # order-book frames after the first few: the decoder alone (probe_only)
    *recording_cases("binance", BINANCE_RECORDED, ws_path={"/stream": "/ws/0"}, unwrap=True,
                     is_book=lambda text: '"depthUpdate"' in text),
    *recording_cases("bybit", BYBIT_RECORDED, is_book=lambda text: '"orderbook.' in text),
]


@pytest.mark.parametrize("case", RECORDED, ids=str)
async def test_every_recorded_frame_decodes_as_ccxt_parses_it(
        case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await assert_decoder_matches_ccxt(case, monkeypatch)
    assert outcome.claimed + outcome.declined == len(case.frames) + len(case.probe_only)


# -- synthetic frames: the emulator's, and faulty variants of them ----------------------------------

BINANCE_SYNTHETIC = {
    Channel.BIDASK: ("btcusdt@bookTicker", ("b", "a", "B", "A", "s", "E")),
    Channel.TICKER: ("btcusdt@ticker", ("c", "o", "h", "l", "v", "b", "a", "E", "C", "s", "p",
                                        "w", "q", "P")),
    Channel.TRADES: ("btcusdt@trade", ("p", "q", "T", "t", "s", "m")),
}


async def binance_case(channel: Channel) -> Case:
    stream, fields = BINANCE_SYNTHETIC[channel]
    frames = await emulator_frames("binance", "/ws/0", json.dumps(
        {"method": "SUBSCRIBE", "params": [stream, stream.replace("btc", "eth")], "id": 1}), 60)
    template = json.loads(frames[-1])
    extra: list[dict[str, Any]] = []
    if channel is not Channel.TRADES:  # a crossed and a locked book
        crossed = dict(template, b=str(float(template["a"]) * 1.01))
        locked = dict(template, b=template["a"])
        extra += [crossed, locked, dict(template, s="RUNEEUR"), dict(template, s="ZZZUSDT")]
    else:
        extra += [dict(template, e="aggTrade", a=template["t"]), dict(template, t=template["t"]),
                  dict(template, s="ZZZUSDT")]
    extra.append({"stream": stream, "data": template})
    frames += mutations(template, fields) + [json.dumps(f) for f in extra]
    return Case("binance", channel, "/ws/0", tuple(frames), ("BTC/USDT", "ETH/USDT"),
                "synthetic", replay=False)


@pytest.mark.parametrize("channel", list(BINANCE_SYNTHETIC), ids=str)
async def test_binance_synthetic_and_faulty_frames_decode_as_ccxt_parses_them(
        channel: Channel, monkeypatch: pytest.MonkeyPatch) -> None:
    case = await binance_case(channel)
    outcome = await assert_decoder_matches_ccxt(case, monkeypatch)
    assert outcome.claimed >= 60  # the emulator's own frames are the decoder's
    assert outcome.declined > 0 and outcome.drops  # faults reached ccxt's counts, or the decoder's


BYBIT_TICKER_FIELDS = ("lastPrice", "bid1Price", "ask1Price", "highPrice24h", "lowPrice24h",
                       "prevPrice24h", "volume24h", "price24hPcnt", "symbol")


async def bybit_case(channel: Channel) -> Case:
    topic = "tickers" if channel is Channel.TICKER else "publicTrade"
    frames = await emulator_frames("bybit", "/v5/public/linear", json.dumps(
        {"op": "subscribe", "args": [f"{topic}.BTCUSDT", f"{topic}.ETHUSDT"], "req_id": "1"}), 60)
    template = json.loads(frames[-1])
    if channel is Channel.TICKER:
        fields: tuple[str, ...] = BYBIT_TICKER_FIELDS
        faulty = mutations(template, fields, wrap="data")
        frames += faulty + [json.dumps(dict(template, ts="abc")), json.dumps(dict(template, ts=5)),
                            json.dumps(dict(template, type="delta", data={"symbol": "BTCUSDT"}))]
        # a delta of one field after a snapshot, and a delta of a symbol with no snapshot
        frames += [json.dumps(dict(template, type="delta", data={"symbol": "BTCUSDT",
                                                                 "lastPrice": "123.5"})),
                   json.dumps(dict(template, topic="tickers.SOLUSDT", type="delta",
                                   data={"symbol": "SOLUSDT", "lastPrice": "3.5"}))]
    else:
        trade = template["data"][0]
        frames += [json.dumps(dict(template, data=[dict(trade, **{key: value})]))
                   for key in ("p", "v", "S", "T", "i", "s")
                   for value in ("abc", "", None, "0", "-1", "nan", 5, True)]
        frames += [json.dumps(dict(template, data=[trade, trade])), json.dumps(dict(template, data=[]))]
    return Case("bybit", channel, "/v5/public/linear", tuple(frames),
                ("BTC/USDT:USDT", "ETH/USDT:USDT"), "synthetic", replay=False)


@pytest.mark.parametrize("channel", [Channel.TICKER, Channel.TRADES], ids=str)
async def test_bybit_synthetic_and_faulty_frames_decode_as_ccxt_parses_them(
        channel: Channel, monkeypatch: pytest.MonkeyPatch) -> None:
    case = await bybit_case(channel)
    outcome = await assert_decoder_matches_ccxt(case, monkeypatch)
    assert outcome.claimed >= 50


# -- end to end ------------------------------------------------------------------------------------


def _rows(stream: MarketDataStream, symbol: str) -> list[tuple[Any, ...]]:
    # bookTicker has no timestamp: the receive time stands in
    return stored_rows(stream, symbol, timestamped=not (
        stream.channel is Channel.BIDASK and stream.exchange_id == "binance"))


WIRE = {("binance", "bidask"): "bookTicker", ("binance", "ticker"): "ticker",
        ("binance", "trades"): "trade", ("bybit", "ticker"): "tickers",
        ("bybit", "trades"): "publicTrade"}


@pytest.mark.parametrize(("venue_id", "channel"), list(WIRE), ids=[f"{v}-{c}" for v, c in WIRE])
async def test_fast_and_ccxt_streams_store_the_same_session(venue_id: str, channel: str) -> None:
    # One seeded emulator session streamed by both at once (each update goes to both): a
    # burst of updates of each symbol once both are subscribed, the market still before it.
    symbols = ("BTC/USDT", "ETH/USDT") if venue_id == "binance" else ("BTC/USDT:USDT", "ETH/USDT:USDT")
    count = 300
    async with Emulator(venue_id, symbols, rate=0, seed=11) as emu:
        async with fast_and_ccxt_streams(venue_id, emu.url, channel, symbols) as streams:
            await wait_until(lambda: emu.stats.subscriptions >= 2 * len(symbols), 10 * MS,
                             "both streams to subscribe every symbol")
            received = [sum(s.received for s in st.status().symbols) for st in streams]
            for symbol in symbols:
                emu.burst(WIRE[venue_id, channel], symbol, count)
            await wait_until(lambda: all(
                sum(s.received for s in st.status().symbols) >= before + count * len(symbols)
                for st, before in zip(streams, received, strict=True)),
                20 * MS, "both streams to receive the burst")
        fast, slow = streams
        # Bybit answers each subscription with a snapshot stamped when it is sent.
        skip = 1 if (venue_id, channel) == ("bybit", "ticker") else 0
        for symbol in symbols:
            assert _rows(fast, symbol)[skip:] == _rows(slow, symbol)[skip:]
            assert len(_rows(fast, symbol)) >= count
        assert fast.status().exchanges[0].bad_frames == slow.status().exchanges[0].bad_frames == {}


async def test_decoder_ccxt_and_a_channel_without_decoder_use_ccxt() -> None:
    async with Emulator("binance", ("BTC/USDT",), rate=50) as emu:
        # Bybit's bidask has no decoder (ccxt derives it from orderbook.1); built, not connected.
        for venue_id, channel, decoder, expected in (
                ("binance", "bidask", "ccxt", "ccxt"), ("bybit", "bidask", "fast", "ccxt"),
                ("binance", "bidask", "fast", "fast"), ("binance", "book", "fast", "fast")):
            stream = MarketDataStream(venue_id, url=emu.url, channel=channel, decoder=decoder)
            assert stream.decoder == decoder
            assert stream.status().exchanges[0].decoder == expected
    with pytest.raises(Exception, match="unknown decoder 'cython'"):
        MarketDataStream("binance", decoder="cython")


async def test_a_burst_of_20000_trades_is_stored_whole_and_once_by_the_fast_decoder() -> None:
    async with Emulator("binance", ["BTC/USDT"], rate=0) as emu:
        stream = MarketDataStream("binance", url=emu.url, channel="trades", buffer_size=50_000)
        await stream.connect()
        await stream.subscribe(["BTC/USDT"])
        try:
            await wait_until(lambda: emu.stats.subscriptions >= 1, 10 * MS, "the subscription")
            emu.burst("trade", "BTC/USDT", 20_000)
            await wait_until(lambda: stream.buffer.count("BTC/USDT", "binance") >= 20_000
                             if stream.status().symbols[0].received else False,
                             30 * MS, "all 20,000 trades")
            await asyncio.sleep(0)
            table = stream.buffer.get_latest_sync("BTC/USDT", 30_000, exchange="binance")
            ids = [int(i) for i in table.column("trade_id").to_pylist()]
            assert ids == list(range(ids[0], ids[0] + 20_000))
            assert "BTC/USDT" not in stream.exchange.trades  # ccxt parsed none of them
            assert stream.status().exchanges[0].counters["duplicates"] == 0
        finally:
            await stream.disconnect()


async def test_the_check_refuses_a_client_whose_handler_does_not_parse_text_frames() -> None:
    from flight_md.errors import StartupError
    from flight_md.ingest import ccxt_compat

    class Client:
        def handle_message(self, message: Any) -> None:
            """Reads no TEXT frame (a ccxt whose receive path moved)."""

    with pytest.raises(StartupError, match="decoder: a client's handle_message does not set"):
        ccxt_compat._check_decoder(Client)


async def test_a_bybit_exponent_that_would_stall_ccxt_is_dropped_at_once() -> None:
    # The one departure from ccxt's path: its Precise would build a billion-digit integer.
    from flight_md.core.decode import DecoderContext
    from flight_md.normalize import DropReason
    from flight_md.venues import VENUES
    from tests.ingest.decode_support import RecordingSink

    markets = {"BTCUSDT": [{"symbol": "BTC/USDT:USDT", "type": "swap", "spot": False,
                            "contract": True}]}
    decoder = VENUES["bybit"].decoders[Channel.TICKER](
        DecoderContext("ws://127.0.0.1:9/v5/public/linear", markets, {}, frozenset()))
    assert decoder is not None
    sink = RecordingSink()
    frame = json.dumps({"topic": "tickers.BTCUSDT", "type": "snapshot", "ts": 1_800_000_000_000,
                        "data": {"symbol": "BTCUSDT", "lastPrice": "1", "prevPrice24h": "0",
                                 "price24hPcnt": "1e999999999"}})
    assert decoder.decode(frame, 1_800_000_000_000, sink)
    assert sink.out == [("drop", None, DropReason.UNPARSEABLE_FRAME)]

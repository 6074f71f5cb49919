"""The fast decoders of OKX, Coinbase and Kraken store exactly what ccxt's parse stores.

Differential (:mod:`tests.ingest.decode_support`): through a ``decoder="ccxt"`` and a
``decoder="fast"`` stream, frame by frame, the same updates in the same order, the same drops
and reasons, the same counters, the same rows, for

* every frame of each venue's recording: OKX's and Coinbase's as the file holds them (the
  emulator serves them byte for byte), Kraken's as the emulator serves them
  (``Dialect.recorded_frames``: the 2021 websocket v1 session transcoded to v2, the protocol
  ccxt and the venue module use) and, as the file holds them, each v1 frame declined (order-book
  frames after the first few go to the decoder alone: ``decode_support``'s ``probe_only``);
* frames the synthetic emulator sends, the same frames corrupted by each of the emulator's
  frame faults (``Dialect.corrupt``), and variants of one frame with each numeric, symbol and
  time field missing or set to each of a catalogue of bad values, plus frames of other shapes
  (several rows, rows naming another market, unknown markets, crossed books, zero prices).

Then end to end: real ccxt.pro streams against the emulator, fast and ccxt, store the same
rows for one seeded session.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable
from typing import Any, Final

import pytest
from ccxt.base.exchange import Exchange as CcxtExchange
from ccxt.base.precise import Precise
from hypothesis import example, given, settings
from hypothesis import strategies as st

from flight_md.core import ccxt_parse
from flight_md.core.decode import DecoderContext
from flight_md.emulator import Emulator, default_recording
from flight_md.emulator.dialects import dialect_class
from flight_md.emulator.fault import FRAME_FAULTS
from flight_md.emulator.recording import Recording
from flight_md.ingest.stream import MarketDataStream
from flight_md.normalize import Channel, DropReason, to_row
from flight_md.venues import venue
from tests.ingest.decode_support import (
    FIXED_MS,
    Case,
    RecordingSink,
    assert_decoder_matches_ccxt,
    emulator_frames,
    fast_and_ccxt_streams,
    recording_cases,
    split_books,
    stored_rows,
)
from tests.support import MS
from tests.support import async_until as wait_until

# Each leaves one recorded market unsubscribed: neither path may store it.
OKX_RECORDED: Final = ("BTC/USDT", "BTC/USD:BTC-220527")  # UNI/USD:UNI left out
COINBASE_RECORDED: Final = ("BTC/USD",)  # ETH/USD left out
KRAKEN_RECORDED: Final = ("ADA/BTC", "BTC/CHF", "ETH/CHF", "GRT/ETH", "KSM/BTC", "OCEAN/BTC",
                          "OMG/USD", "SC/EUR", "XMR/USD")  # WAVES/EUR left out
WS_PATH: Final = {"okx": "/ws/v5/public", "coinbase": "/", "kraken": "/v2"}


BOOK_STREAMS: Final = ("level2", "book")
SERVED: Final = {"kraken": KRAKEN_RECORDED}  # the 2021 websocket v1 session, as v2


@functools.cache
def served_frames(venue_id: str) -> tuple[tuple[str, str], ...]:
    """``(stream channel, frame)`` of every frame the emulator serves from the venue's
    recording, in recorded order (read when a test needs it: Kraken's transcoding takes
    seconds)."""
    recording = Recording.load(default_recording(venue_id))
    dialect = dialect_class(venue_id)((), {}, recording)
    return tuple((key.channel, text) for message in recording.messages
                 for key, _wire, text in dialect.recorded_frames(message))


def served_case(venue_id: str, channel: Channel) -> Case:
    """Every frame the emulator serves from the venue's recording, every stream's (a decoder
    declines the others'); the book's after the first ``BOOK_FRAMES_KEPT`` are ``probe_only``
    (thousands: ccxt's order-book work on them, twice, was most of the time)."""
    served = served_frames(venue_id)
    books = {text for stream, text in served if stream.startswith(BOOK_STREAMS)}
    frames, probe = split_books([text for _stream, text in served], books.__contains__)
    return Case(venue_id, channel, WS_PATH[venue_id], frames, SERVED[venue_id], "served",
                probe_only=probe)


RECORDED: Final = [
    # OKX's and Coinbase's are served byte for byte: the file's frames, acks and pongs included.
    *recording_cases("okx", OKX_RECORDED, is_book=lambda text: '"books' in text),
    *recording_cases("coinbase", COINBASE_RECORDED, is_book=lambda text: '"l2_data"' in text),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("case", RECORDED, ids=str)
async def test_every_recorded_frame_decodes_as_ccxt_parses_it(
        case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = await assert_decoder_matches_ccxt(case, monkeypatch)
    assert outcome.claimed + outcome.declined == len(case.frames) + len(case.probe_only)
    assert outcome.claimed > 0 and outcome.stored > 0  # the decoder did the work


@pytest.mark.asyncio
@pytest.mark.parametrize("venue_id", list(SERVED))
@pytest.mark.parametrize("channel", [Channel.TICKER, Channel.BIDASK, Channel.TRADES], ids=str)
async def test_every_served_recorded_frame_decodes_as_ccxt_parses_it(
        venue_id: str, channel: Channel, monkeypatch: pytest.MonkeyPatch) -> None:
    case = served_case(venue_id, channel)
    outcome = await assert_decoder_matches_ccxt(case, monkeypatch)
    assert outcome.claimed + outcome.declined == len(case.frames) + len(case.probe_only)
    assert outcome.claimed > 0 and outcome.stored > 0


@pytest.mark.asyncio
async def test_every_frame_of_krakens_v1_recording_is_left_to_ccxt(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The file's frames are websocket v1 (arrays, v1 events), which ccxt's v2 client does not
    # parse: every decoder declines each, and ccxt's path and the fast one store nothing alike.
    for case in recording_cases("kraken", KRAKEN_RECORDED, is_book=lambda text: True):
        outcome = await assert_decoder_matches_ccxt(case, monkeypatch)
        assert outcome.claimed == 0 and outcome.stored == 0
        assert outcome.declined == len(case.frames) + len(case.probe_only) > 4000


# -- the replicas of ccxt's helpers, against ccxt's own ---------------------------------------

_decimal_text = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),  # Kraken's numbers, as ccxt reads them
    st.integers(-10**30, 10**30).map(str),
    st.builds(lambda i, d: f"{i}.{d}", st.integers(-10**9, 10**9), st.from_regex(r"[0-9]{1,20}", fullmatch=True)),
    st.sampled_from(["0", "-0", "100", "-100", "1e-05", "1E5", "1e+16", "0.0", "abc", "", "1e5e5", "nan",
                     "inf", " 7", "1_0", ".5", "5."]),
)


def _ccxt(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - which error ccxt raises is not the point
        return type(error).__name__ if isinstance(error, ValueError) else "error"


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


@settings(max_examples=200, deadline=None)
@given(_decimal_text, _decimal_text)
@example("1.7797162035136927e+308", "-1")  # beyond the float range: ccxt reads inf
@example("-1e400", "1")
def test_the_derived_opens_are_ccxts_precise_arithmetic_to_the_bit(close: str, change: str) -> None:
    expected = _ccxt(lambda: _float(Precise.string_div(
        close, Precise.string_add("1", Precise.string_div(change, "100")))))
    assert _ccxt(lambda: ccxt_parse.open_from_percentage(close, change)) == expected
    expected = _ccxt(lambda: _float(Precise.string_sub(close, change)))
    assert _ccxt(lambda: ccxt_parse.open_from_change(close, change)) == expected
    for ours, theirs in ((ccxt_parse.precise_add, Precise.string_add),
                         (ccxt_parse.precise_sub, Precise.string_sub),
                         (ccxt_parse.precise_div, Precise.string_div),
                         (ccxt_parse.precise_mul, Precise.string_mul)):
        assert _ccxt(lambda o=ours: o(close, change)) == _ccxt(lambda t=theirs: t(close, change))


_stamp = st.builds(
    lambda dt, fraction, tail: dt.strftime("%Y-%m-%dT%H:%M:%S") + fraction + tail,
    st.datetimes(), st.sampled_from(["", ".", ".1", ".12", ".123", ".123456", ".123456789"]),
    st.sampled_from(["Z", "", "+01:00", "-0530", "z"]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(_stamp, st.text(max_size=30)))
def test_parse8601_is_ccxts(text: str) -> None:
    assert ccxt_parse.parse8601(text) == CcxtExchange.parse8601(text)


_bad = st.one_of(st.none(), st.floats(), st.sampled_from([0.0, -0.0, -1.0]), st.integers(-5, 5))
_time = st.one_of(st.none(), st.integers(0, 2 * FIXED_MS), st.just(FIXED_MS - 1),
                  st.floats(1e12, 2e12))


@st.composite
def _values(draw: st.DrawFn) -> list[Any]:
    """Eight good ticker values (bid and ask sorted, or equal), at times one of them bad."""
    values: list[Any] = draw(st.lists(st.floats(1e-9, 1e12), min_size=8, max_size=8))
    values[2:4] = sorted(values[2:4])
    if draw(st.booleans()):
        values[2] = values[3]  # a locked book is kept
    if draw(st.booleans()):
        values[draw(st.integers(0, 7))] = draw(_bad)
    return values


@settings(max_examples=300, deadline=None)
@given(_time, _values())
def test_the_rows_of_good_values_are_to_rows(timestamp: Any, values: list[Any]) -> None:
    last, volume, bid, ask, high, low, open_, close = values
    ticker = {"symbol": "X/Y", "timestamp": timestamp, "last": last, "close": close, "bid": bid,
              "ask": ask, "high": high, "low": low, "open": open_, "baseVolume": volume}
    for channel, row in (
            (Channel.TICKER, ccxt_parse.ticker_row(timestamp, last, volume, bid, ask, high, low,
                                                   open_, close, FIXED_MS)),
            (Channel.BIDASK, ccxt_parse.bidask_row(timestamp, bid, ask, FIXED_MS))):
        if row is not None:  # None: the decoder asks to_row itself
            made = to_row(ticker, exchange="okx", channel=channel, receive_ms=FIXED_MS)
            assert not isinstance(made, DropReason)
            assert made[0] == "X/Y" and len(made[1]) == len(row)
            assert all(a == b or (math.isnan(a) and math.isnan(b))
                       for a, b in zip(made[1], row, strict=True))
            assert [type(a) for a in made[1]] == [type(b) for b in row]


_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.integers()
    | st.text(max_size=6) | st.sampled_from(["1.5", "0", "-2", "abc", "1e400", "0." + "0" * 80 + "1",
                                             "2026-08-09T21:05:42.514318Z", "BTC-USDT", "BTC-USD",
                                             "BTC/USD", "buy", "SELL"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


def _rows_of(keys: tuple[str, ...]) -> st.SearchStrategy[Any]:
    return st.lists(st.dictionaries(st.sampled_from(keys), _json, max_size=len(keys)), max_size=3) | _json


_FRAMES: Final = {
    "okx": st.fixed_dictionaries({
        "arg": st.fixed_dictionaries({"channel": st.sampled_from(["tickers", "bbo-tbt", "trades", "x"]),
                                      "instId": st.sampled_from(["BTC-USDT", "ZZZ-USDT"]) | _json}),
        "data": _rows_of(("instId", "last", "bidPx", "askPx", "open24h", "high24h", "low24h", "vol24h",
                          "volCcy24h", "ts", "asks", "bids", "px", "sz", "side", "tradeId", "count")),
    }, optional={"event": _json, "code": _json}),
    "coinbase": st.fixed_dictionaries({
        "channel": st.sampled_from(["ticker", "ticker_batch", "market_trades", "x"]),
        "timestamp": st.sampled_from(["2026-08-09T21:05:48.228568804Z"]) | _json,
        "events": st.lists(st.fixed_dictionaries({}, optional={
            "tickers": _rows_of(("product_id", "price", "best_bid", "best_ask", "high_24_h", "low_24_h",
                                 "volume_24_h", "price_percent_chg_24_h")),
            "trades": _rows_of(("product_id", "trade_id", "price", "size", "time", "side"))}),
            max_size=2) | _json,
    }, optional={"type": _json}),
    "kraken": st.fixed_dictionaries({
        "channel": st.sampled_from(["ticker", "trade", "x"]),
        "data": _rows_of(("symbol", "bid", "ask", "last", "volume", "vwap", "low", "high", "change",
                          "change_pct", "price", "qty", "side", "trade_id", "timestamp")),
    }, optional={"error": _json, "method": _json}),
}
_MARKETS: Final = {"okx": {"BTC-USDT": [{"symbol": "BTC/USDT"}]},
                   "coinbase": {"BTC-USD": [{"symbol": "BTC/USD"}]},
                   "kraken": {"XXBTZUSD": [{"symbol": "BTC/USD"}]}}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_FRAMES)).flatmap(lambda v: st.tuples(st.just(v), _FRAMES[v])))
def test_the_decoders_never_raise_and_deliver_nothing_they_decline(case: tuple[str, Any]) -> None:
    venue_id, frame = case
    text = json.dumps(frame)
    item = venue(venue_id)
    for channel, factory in item.decoders.items():
        decoder = factory(DecoderContext(url="ws://x/", markets_by_id=_MARKETS[venue_id], options={},
                                         raw_fields=item.raw_numeric_fields))
        assert decoder is not None
        sink = RecordingSink()
        if not decoder.decode(text, FIXED_MS, sink):
            assert sink.out == [], (channel, text)


_HUGE: Final = "1e-999999999"  # ccxt's Precise would build a billion-digit integer from it
_STALLING: Final = [
    ("okx", Channel.TICKER, {"arg": {"channel": "tickers", "instId": "BTC-USDT"},
                             "data": [{"instId": "BTC-USDT", "last": "1.5", "open24h": _HUGE}]}),
    ("okx", Channel.TRADES, {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [
        {"instId": "BTC-USDT", "px": "1.5", "sz": _HUGE, "ts": "1786309475345", "side": "buy"}]}),
    ("coinbase", Channel.TICKER, {"channel": "ticker", "events": [{"tickers": [
        {"product_id": "BTC-USD", "price": "1.5", "price_percent_chg_24_h": _HUGE}]}]}),
    ("coinbase", Channel.TRADES, {"channel": "market_trades", "events": [{"trades": [
        {"product_id": "BTC-USD", "price": _HUGE, "size": "1", "side": "BUY", "trade_id": "1",
         "time": "2026-08-09T21:05:42.514318Z"}]}]}),
    ("kraken", Channel.BIDASK, {"channel": "ticker", "data": [
        {"symbol": "BTC/USD", "bid": 1.0, "ask": 2.0, "last": 1.5, "change": _HUGE}]}),
    ("kraken", Channel.TRADES, {"channel": "trade", "data": [
        {"symbol": "BTC/USD", "price": 1.5, "qty": _HUGE, "side": "buy", "trade_id": 1,
         "timestamp": "2026-08-09T21:05:42.514318Z"}]}),
]


@pytest.mark.parametrize(("venue_id", "channel", "frame"), _STALLING,
                         ids=[f"{v}-{c}" for v, c, _ in _STALLING])
def test_a_huge_exponent_ccxt_would_stall_on_drops_the_frame_as_unparseable(
        venue_id: str, channel: Channel, frame: dict[str, Any]) -> None:
    # The one departure from ccxt's path (it would take minutes over the frame, then raise).
    item = venue(venue_id)
    decoder = item.decoders[channel](DecoderContext(
        url="ws://x/", markets_by_id=_MARKETS[venue_id], options={},
        raw_fields=item.raw_numeric_fields))
    assert decoder is not None
    sink = RecordingSink()
    assert decoder.decode(json.dumps(frame), FIXED_MS, sink)
    assert sink.out == [("drop", None, DropReason.UNPARSEABLE_FRAME)]


# -- synthetic frames: the emulator's, its faults, and variants ---------------------------------

_BAD: Final[tuple[Any, ...]] = ("abc", "", None, "0", "-1", "nan", "inf", "1e5", " 7", "1_0",
                                5, 2.5, 0, -3, True, [], {}, "-0")

Locate = Callable[[dict[str, Any]], dict[str, Any]]


def variants(template: dict[str, Any], locate: Locate, fields: tuple[str, ...]) -> list[str]:
    """``template`` with each of ``fields`` (in the dict ``locate`` finds) missing, then set to
    each bad value."""
    frames = []
    for name in fields:
        for value in (_MISSING, *_BAD):
            frame = copy.deepcopy(template)
            row = locate(frame)
            if value is _MISSING:
                row.pop(name, None)
            else:
                row[name] = value
            frames.append(json.dumps(frame))
    return frames


_MISSING: Final = object()


def faulted(venue_id: str, frames: list[str]) -> list[str]:
    """Each data frame corrupted by each of the emulator's frame faults, as the emulator
    corrupts them."""
    dialect = dialect_class(venue_id)((), {}, None)
    out = []
    for text in frames:
        for fault in sorted(FRAME_FAULTS):
            try:
                out.append(dialect.corrupt(fault, text))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # an ack the dialect corrupts only as a data frame
    return out


def _shapes(template: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> str:
    frame = copy.deepcopy(template)
    change(frame)
    return json.dumps(frame)


OKX_TICKER_FIELDS: Final = ("last", "bidPx", "askPx", "open24h", "high24h", "low24h", "vol24h",
                            "volCcy24h", "ts", "instId", "lastSz", "sodUtc0")


async def okx_case(channel: Channel) -> Case:
    wire = {Channel.TICKER: "tickers", Channel.BIDASK: "bbo-tbt", Channel.TRADES: "trades"}[channel]
    subscribe = json.dumps({"op": "subscribe", "args": [
        {"channel": wire, "instId": "BTC-USDT"}, {"channel": wire, "instId": "ETH-USDT-SWAP"}]})
    frames = await emulator_frames("okx", WS_PATH["okx"], subscribe, 60)
    data = [f for f in frames if f.startswith('{"arg"') and '"data"' in f]
    template = json.loads(data[-1])
    frames += faulted("okx", data[-8:])

    def row(frame: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = frame["data"][0]
        return found

    if channel is Channel.TICKER:
        frames += variants(template, row, OKX_TICKER_FIELDS)
        first = template["data"][0]
        frames += [
            _shapes(template, lambda f: f["data"].append(dict(first, last="123.5"))),
            _shapes(template, lambda f: f["data"].append(dict(first, instId="ETH-USDT-SWAP"))),
            _shapes(template, lambda f: f["data"][0].update(bidPx=str(float(first["askPx"]) * 2))),
            _shapes(template, lambda f: f.update(data=[])),
        ]
    elif channel is Channel.BIDASK:
        for side in ("bids", "asks"):
            for value in _BAD:
                frames.append(_shapes(template, lambda f, s=side, v=value: f["data"][0][s][0]
                                      .__setitem__(0, v)))
            frames += [_shapes(template, lambda f, s=side: f["data"][0].update({s: []})),
                       _shapes(template, lambda f, s=side: f["data"][0].update({s: "x"})),
                       _shapes(template, lambda f, s=side: f["data"][0].pop(s))]
        frames += variants(template, row, ("ts", "bidPx", "askPx", "instId"))
        frames += [_shapes(template, lambda f: f["data"].append(f["data"][0])),
                   _shapes(template, lambda f: f["data"][0]["bids"][0].__setitem__(0, "9e9"))]
    else:
        frames += variants(template, row, ("px", "sz", "ts", "side", "tradeId", "instId", "count",
                                           "fillPx", "fee"))
        first = template["data"][0]
        frames += [_shapes(template, lambda f: f["data"].extend([first, dict(first, px="0")])),
                   _shapes(template, lambda f: f["data"].append(dict(first, count="3"))),
                   _shapes(template, lambda f: f.update(data=[]))]
    frames += [_shapes(template, lambda f: f["arg"].update(instId="ZZZ-USDT")),
               _shapes(template, lambda f: f["arg"].update(channel="books5")),
               _shapes(template, lambda f: f.update(code="60012")),
               _shapes(template, lambda f: f.update(event="subscribe")), "pong"]
    return Case("okx", channel, WS_PATH["okx"], tuple(frames), ("BTC/USDT", "ETH/USDT:USDT"),
                "synthetic", replay=False)


COINBASE_TICKER_FIELDS: Final = ("price", "best_bid", "best_ask", "high_24_h", "low_24_h",
                                 "volume_24_h", "price_percent_chg_24_h", "product_id",
                                 "best_bid_quantity", "low_52_w")


async def coinbase_case(channel: Channel) -> Case:
    wire = "market_trades" if channel is Channel.TRADES else "ticker"
    subscribe = json.dumps({"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"],
                            "channel": wire})
    frames = await emulator_frames("coinbase", WS_PATH["coinbase"], subscribe, 60)
    data = [f for f in frames if f'"channel":"{wire}"' in f]
    template = json.loads(data[-1])
    frames += faulted("coinbase", data[-8:])
    if channel is Channel.TRADES:
        def row(frame: dict[str, Any]) -> dict[str, Any]:
            found: dict[str, Any] = frame["events"][0]["trades"][0]
            return found
        frames += variants(template, row, ("price", "size", "time", "side", "trade_id",
                                           "product_id", "size_in_quote", "amount"))
        first = template["events"][0]["trades"][0]
        frames += [
            _shapes(template, lambda f: row(f).update(side="UNKNOWN_ORDER_SIDE")),
            _shapes(template, lambda f: row(f).update(time="2026-08-09T21:05:42+01:00")),
            _shapes(template, lambda f: f["events"].append({"type": "update", "trades": [
                dict(first, trade_id="1"), dict(first, trade_id="2", price="0")]})),
            _shapes(template, lambda f: f["events"].append({"type": "update"})),
            _shapes(template, lambda f: f["events"][0]["trades"].append(
                dict(first, product_id="ETH-USD"))),
            _shapes(template, lambda f: f.update(events=[])),
        ]
    else:
        def row(frame: dict[str, Any]) -> dict[str, Any]:
            found: dict[str, Any] = frame["events"][0]["tickers"][0]
            return found
        frames += variants(template, row, COINBASE_TICKER_FIELDS)
        first = template["events"][0]["tickers"][0]
        frames += [
            _shapes(template, lambda f: row(f).update(price_percent_chg_24_h="-100")),
            _shapes(template, lambda f: row(f).update(best_bid=str(float(first["best_ask"]) * 2))),
            _shapes(template, lambda f: f["events"][0]["tickers"].extend(
                [dict(first, product_id="ETH-USD"), "x", dict(first, product_id="")])),
            _shapes(template, lambda f: f["events"].append({"type": "update", "tickers": [first]})),
            _shapes(template, lambda f: f.update(timestamp="yesterday")),
            _shapes(template, lambda f: f.update(channel="ticker_batch")),
            _shapes(template, lambda f: row(f).update(product_id="ZZZ-USD")),
        ]
    frames += [_shapes(template, lambda f: f.update(type="error", message="boom")),
               _shapes(template, lambda f: f.update(channel="heartbeats"))]
    return Case("coinbase", channel, WS_PATH["coinbase"], tuple(frames), ("BTC/USD",),
                "synthetic", replay=False)


KRAKEN_TICKER_FIELDS: Final = ("last", "bid", "ask", "high", "low", "volume", "vwap", "change",
                               "change_pct", "symbol", "bid_qty")


async def kraken_case(channel: Channel) -> Case:
    params: dict[str, Any] = {"channel": "trade" if channel is Channel.TRADES else "ticker",
                              "symbol": ["BTC/USD", "ETH/USD"]}
    if channel is Channel.BIDASK:
        params["event_trigger"] = "bbo"
    frames = await emulator_frames("kraken", WS_PATH["kraken"],
                                   json.dumps({"method": "subscribe", "params": params}), 60)
    data = [f for f in frames if f'"channel":"{params["channel"]}"' in f]
    template = json.loads(data[-1])
    frames += faulted("kraken", data[-8:])

    def row(frame: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = frame["data"][0]
        return found

    first = template["data"][0]
    if channel is Channel.TRADES:
        frames += variants(template, row, ("price", "qty", "timestamp", "side", "trade_id",
                                           "symbol", "ordertxid", "cost"))
        frames += [
            # sorted by (timestamp, text id) before they are stored: "10" before "9"
            _shapes(template, lambda f: f.update(data=[dict(first, trade_id=10),
                                                       dict(first, trade_id=9)])),
            _shapes(template, lambda f: f.update(data=[dict(first, trade_id=None),
                                                       dict(first, trade_id=9)])),
            _shapes(template, lambda f: f.update(data=[
                dict(first, timestamp="2026-01-01T00:00:01.5Z"), dict(first, price=0)])),
            _shapes(template, lambda f: f["data"].append(dict(first, symbol="ETH/USD"))),
            _shapes(template, lambda f: row(f).update(symbol="ZZZ/USD")),
            _shapes(template, lambda f: f.update(data=[])),
        ]
    else:
        frames += variants(template, row, KRAKEN_TICKER_FIELDS)
        frames += [
            _shapes(template, lambda f: row(f).pop("change")),  # the open from change_pct
            _shapes(template, lambda f: [row(f).pop("change"), row(f).update(change_pct=-100)]),
            _shapes(template, lambda f: row(f).update(bid=first["ask"] * 2)),
            _shapes(template, lambda f: f["data"].append(dict(first, symbol="ETH/USD"))),
            _shapes(template, lambda f: row(f).update(symbol="ZZZ/USD")),
            _shapes(template, lambda f: f.update(data=[])),
        ]
    frames += [_shapes(template, lambda f: f.update(error="boom")),
               _shapes(template, lambda f: f.update(method="pong")),
               json.dumps([42, first, "ticker", "XBT/USD"]), '{"channel":"heartbeat"}']
    return Case("kraken", channel, WS_PATH["kraken"], tuple(frames), ("BTC/USD", "ETH/USD"),
                "synthetic", replay=False)


SYNTHETIC: Final = {"okx": okx_case, "coinbase": coinbase_case, "kraken": kraken_case}


@pytest.mark.asyncio
@pytest.mark.parametrize("venue_id", list(SYNTHETIC))
@pytest.mark.parametrize("channel", [Channel.TICKER, Channel.BIDASK, Channel.TRADES], ids=str)
async def test_synthetic_faulty_and_odd_frames_decode_as_ccxt_parses_them(
        venue_id: str, channel: Channel, monkeypatch: pytest.MonkeyPatch) -> None:
    case = await SYNTHETIC[venue_id](channel)
    outcome = await assert_decoder_matches_ccxt(case, monkeypatch)
    assert outcome.claimed >= 40  # the emulator's own frames are the decoder's
    assert outcome.declined > 0 and outcome.drops  # faults reached ccxt's counts, or the decoder's


def _okx_trade(trade_id: int, count: int) -> str:
    return json.dumps({"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [{
        "instId": "BTC-USDT", "tradeId": str(trade_id), "px": "65000.5", "sz": "0.01",
        "side": "buy", "ts": str(1_786_309_475_345 + trade_id), "count": str(count)}]})


@pytest.mark.asyncio
async def test_okx_aggregated_trades_are_claimed_with_their_span(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # OKX's tradeId is an aggregate's last fill and count its fills: 103 with count 3 follows
    # 100 without a gap, 110 with count 2 (109-110) leaves 105-108 missing. The decoder claims every row
    # with its span, and the trade path counts the same gaps as ccxt's (Venue.trade_id_span).
    frames = tuple(_okx_trade(i, c) for i, c in ((100, 1), (103, 3), (104, 1), (110, 2)))
    sink = RecordingSink()
    decoder = venue("okx").decoders[Channel.TRADES](DecoderContext(
        url="ws://x/", markets_by_id=_MARKETS["okx"], options={},
        raw_fields=venue("okx").raw_numeric_fields))
    assert decoder is not None
    assert all(decoder.decode(frame, FIXED_MS, sink) for frame in frames)
    assert [item[3] for item in sink.out] == [1, 3, 1, 2]
    case = Case("okx", Channel.TRADES, WS_PATH["okx"], frames, ("BTC/USDT",), "count-span",
                replay=False)
    outcome = await assert_decoder_matches_ccxt(case, monkeypatch)
    assert outcome.claimed == len(frames) and outcome.stored == len(frames)
    assert outcome.counters["gaps"] == 1 and outcome.counters["missing"] == 4


# -- end to end ---------------------------------------------------------------------------------


def _rows(stream: MarketDataStream, symbol: str) -> list[tuple[Any, ...]]:
    # Kraken tickers have no timestamp: the receive time stands in
    return stored_rows(stream, symbol, timestamped=not (
        stream.exchange_id == "kraken" and stream.channel is not Channel.TRADES))


@pytest.mark.asyncio
@pytest.mark.parametrize(("venue_id", "channel"), [
    ("okx", "bidask"), ("okx", "trades"), ("coinbase", "ticker"), ("coinbase", "trades"),
    ("kraken", "ticker"), ("kraken", "trades"),
], ids=lambda v: str(v))
async def test_fast_and_ccxt_streams_store_the_same_session(venue_id: str, channel: str) -> None:
    symbols = venue(venue_id).test_symbols
    # One seeded emulator session, streamed by both at once: each update goes to both.
    async with Emulator(venue_id, symbols, rate=200, seed=11) as emu:
        async with fast_and_ccxt_streams(venue_id, emu.url, channel, symbols) as streams:
            await wait_until(lambda: all(state.received >= 40 for s in streams
                                         for state in s.status().symbols),
                             20 * MS, "both streams to store 40 updates of each symbol")
        fast, slow = streams
        for symbol in symbols:
            # Both subscribed a moment apart: compare the updates both saw.
            a, b = _rows(fast, symbol), _rows(slow, symbol)
            in_b = set(b)
            first = next(row for row in a if row in in_b)
            start_a, start_b = a.index(first), b.index(first)
            overlap = min(len(a) - start_a, len(b) - start_b)
            assert overlap >= 20
            assert a[start_a:start_a + overlap] == b[start_b:start_b + overlap]
        assert dict(fast.status().exchanges[0].bad_frames) == {}
        if channel == "trades":  # the decoder's trades never reached ccxt's caches
            assert not any(fast.exchange.trades.get(symbol) for symbol in symbols)

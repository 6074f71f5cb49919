"""flight_md.normalize: ccxt unified tickers -> MarketTick, and every reason to drop one."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_md.errors import ExchangeDataError
from flight_md.normalize import (
    MAX_FUTURE_MS,
    MIN_TIMESTAMP_MS,
    TICKER_LIKE,
    DropReason,
    fingerprint,
    normalize_ticker,
    to_tick,
)
from flight_md.schema import MarketTick

NOW = 1_795_000_000_000


def ticker(**fields: Any) -> dict[str, Any]:
    """A ccxt unified ticker as binance's 24hrTicker becomes one."""
    base: dict[str, Any] = {
        "symbol": "BTC/USDT", "timestamp": NOW - 5, "last": 100.5, "close": 100.5, "bid": 100.4,
        "ask": 100.6, "high": 110.0, "low": 90.0, "open": 95.0, "baseVolume": 1234.5,
        "info": {"s": "BTCUSDT", "c": "100.5", "b": "100.4", "a": "100.6"},
    }
    base.update(fields)
    return base


def tick(t: dict[str, Any], channel: str = "ticker", exchange: str = "binance") -> MarketTick | DropReason:
    return to_tick(t, exchange=exchange, channel=channel, receive_ms=NOW)


def test_ticker_channel_maps_the_24h_fields():
    assert tick(ticker()) == MarketTick("BTC/USDT", NOW - 5, 100.5, 1234.5, 100.4, 100.6, 110.0,
                                        90.0, 95.0, 100.5, "binance", NOW)


def test_price_falls_back_to_close_and_missing_values_are_none():
    result = tick(ticker(last=None, bid=None, ask=None, high=None, low=None, open=None,
                         baseVolume=None, info={}))
    assert isinstance(result, MarketTick)
    assert result.price == 100.5 and result.close == 100.5
    assert (result.bid, result.ask, result.high, result.low, result.open, result.volume) == (None,) * 6


def test_bidask_channel_is_the_mid_with_no_volume_or_ranges():
    result = tick(ticker(timestamp=None, last=None, close=None), "bidask")
    assert result == MarketTick("BTC/USDT", NOW, (100.4 + 100.6) / 2, None, 100.4, 100.6, None,
                                None, None, None, "binance", NOW)


def test_a_missing_timestamp_is_the_receive_time():
    result = tick(ticker(timestamp=None))
    assert isinstance(result, MarketTick) and result.timestamp == result.receive_timestamp == NOW


def test_zero_means_none_but_a_zero_volume_is_kept():
    result = tick(ticker(bid=0.0, high=0, open="0", baseVolume=0.0, info={}))
    assert isinstance(result, MarketTick)
    assert (result.bid, result.high, result.open, result.volume) == (None, None, None, 0.0)


def test_numeric_strings_are_accepted():
    result = tick(ticker(last="101.25", baseVolume="7", timestamp=str(NOW)))
    assert isinstance(result, MarketTick) and result.price == 101.25 and result.volume == 7.0
    assert result.timestamp == NOW


@pytest.mark.parametrize("fields, channel, reason", [
    ({"symbol": None}, "ticker", DropReason.MISSING_SYMBOL),
    ({"symbol": ""}, "ticker", DropReason.MISSING_SYMBOL),
    ({"symbol": 42}, "ticker", DropReason.MISSING_SYMBOL),
    ({"last": None, "close": None}, "ticker", DropReason.MISSING_PRICE),
    ({"bid": None}, "bidask", DropReason.MISSING_PRICE),
    ({"ask": 0.0}, "bidask", DropReason.MISSING_PRICE),
    ({"last": "abc"}, "ticker", DropReason.NON_NUMERIC),
    ({"last": True}, "ticker", DropReason.NON_NUMERIC),
    ({"bid": [1.0]}, "ticker", DropReason.NON_NUMERIC),
    ({"baseVolume": {}}, "ticker", DropReason.NON_NUMERIC),
    ({"last": float("nan")}, "ticker", DropReason.NON_FINITE),
    ({"high": float("inf")}, "ticker", DropReason.NON_FINITE),
    ({"ask": "-inf"}, "ticker", DropReason.NON_FINITE),
    ({"last": 0.0}, "ticker", DropReason.NON_POSITIVE_PRICE),
    ({"last": -1.0}, "ticker", DropReason.NON_POSITIVE_PRICE),
    ({"bid": -1.0}, "ticker", DropReason.NEGATIVE_VALUE),
    ({"low": -5}, "ticker", DropReason.NEGATIVE_VALUE),
    ({"baseVolume": -0.1}, "ticker", DropReason.NEGATIVE_VALUE),
    ({"bid": 101.0, "ask": 100.0}, "ticker", DropReason.CROSSED_BOOK),
    ({"bid": 101.0, "ask": 100.0}, "bidask", DropReason.CROSSED_BOOK),
    ({"timestamp": "soon"}, "ticker", DropReason.BAD_TIMESTAMP),
    ({"timestamp": NOW // 1000}, "ticker", DropReason.BAD_TIMESTAMP),  # seconds, not ms
    ({"timestamp": MIN_TIMESTAMP_MS - 1}, "ticker", DropReason.BAD_TIMESTAMP),
    ({"timestamp": NOW + MAX_FUTURE_MS + 1}, "ticker", DropReason.BAD_TIMESTAMP),
    ({"timestamp": float("nan")}, "ticker", DropReason.BAD_TIMESTAMP),
])
def test_bad_data_is_a_reason_never_an_exception(fields, channel, reason):
    assert tick(ticker(**fields), channel) is reason
    with pytest.raises(ExchangeDataError, match=reason.value):
        normalize_ticker(ticker(**fields), exchange="binance", channel=channel, receive_ms=NOW)


@pytest.mark.parametrize("not_a_ticker", [None, [], "BTC/USDT", 3])
def test_something_that_is_not_a_ticker_is_a_reason(not_a_ticker):
    assert to_tick(not_a_ticker, exchange="binance", channel="ticker",
                   receive_ms=NOW) is DropReason.UNPARSEABLE_FRAME


def test_a_locked_book_is_kept():
    result = tick(ticker(bid=100.5, ask=100.5), "bidask")
    assert isinstance(result, MarketTick) and result.price == 100.5


@pytest.mark.parametrize("exchange, info", [
    ("binance", {"s": "BTCUSDT", "b": "abc"}),  # ccxt parses "abc" to None; the raw payload tells
    ("binance", {"bidPrice": "NaN"}),
    ("bybit", {"symbol": "BTCUSDT", "bid1Price": "abc"}),
])
def test_the_raw_payload_of_known_exchanges_is_checked(exchange, info):
    reason = tick(ticker(bid=None, info=info), exchange=exchange)
    assert reason in (DropReason.NON_NUMERIC, DropReason.NON_FINITE)


def test_raw_values_other_exchanges_or_empty_strings_are_not_checked():
    assert isinstance(tick(ticker(info={"b": "abc"}), exchange="kraken"), MarketTick)
    assert isinstance(tick(ticker(info={"bid1Price": ""}), exchange="bybit"), MarketTick)
    assert isinstance(tick(ticker(info=None)), MarketTick)


def test_fingerprint_compares_values_not_identity_or_timestamp():
    a, b = ticker(), ticker(timestamp=NOW + 1000, info={"other": 1})
    assert a is not b and fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(ticker(bid=100.45))


_value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3),
                                                                        st.integers(), max_size=2))
_fields = st.sampled_from(["symbol", "timestamp", "last", "close", "bid", "ask", "high", "low",
                           "open", "baseVolume", "info"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_fields, _value), st.sampled_from(sorted(TICKER_LIKE)),
       st.sampled_from(["binance", "bybit", "okx"]))
def test_any_input_gives_a_clean_tick_or_a_reason(fields, channel, exchange):
    result = to_tick(fields, exchange=exchange, channel=channel, receive_ms=NOW)
    if isinstance(result, DropReason):
        return
    assert isinstance(result, MarketTick) and result.symbol and result.exchange == exchange
    assert result.price > 0 and math.isfinite(result.price)
    for value in (result.volume, result.bid, result.ask, result.high, result.low, result.open,
                  result.close):
        assert value is None or (math.isfinite(value) and value >= 0)
    assert MIN_TIMESTAMP_MS <= result.timestamp <= NOW + MAX_FUTURE_MS
    if result.bid is not None and result.ask is not None:
        assert result.bid <= result.ask


@given(st.floats(0.01, 1e7), st.floats(0, 1e5))
def test_the_mid_lies_between_bid_and_ask(bid, spread):
    result = tick(ticker(bid=bid, ask=bid + spread, info={}), "bidask")
    assert isinstance(result, MarketTick) and bid <= result.price <= bid + spread


def test_normalize_imports_neither_ccxt_nor_flight():
    code = ("import sys, flight_md.normalize; "
            "print(sorted(m for m in ('ccxt', 'pyarrow.flight', 'aiohttp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

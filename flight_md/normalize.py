"""ccxt unified ticker dicts -> :class:`~flight_md.schema.MarketTick` rows; pure.

:func:`to_tick` returns a :class:`~flight_md.schema.MarketTick`; :func:`to_row` returns the
same values as the buffer's stored row (NaN for a missing value), the ingestion hot path.

This module imports neither asyncio nor ccxt: it is a function of its arguments, and a bad
value never raises out of :func:`to_tick` (it returns a :class:`DropReason` instead), so
ingestion can count and drop a bad update without touching its connection.

Where each field comes from
===========================

``Channel.TICKER`` (the full 24h ticker: ccxt ``watch_tickers`` / ``fetch_tickers``; Binance
``<symbol>@ticker``, Bybit ``tickers.<symbol>``):

==================  ===============================================================
``price``           ``last`` (the last trade price), else ``close``
``volume``          ``baseVolume``: 24h rolling base-asset volume
``high/low/open``   24h rolling high, low and open
``close``           ``close``
``bid/ask``         best bid and ask where the channel carries them (Bybit spot
                    tickers do not: ``None``)
``timestamp``       the exchange's event time (``timestamp``); when the exchange sends
                    none (Bybit REST tickers) the receive time
==================  ===============================================================

``Channel.BIDASK`` (real-time best bid/ask: ccxt ``watch_bids_asks`` / ``fetch_bids_asks``;
Binance ``<symbol>@bookTicker``, Bybit ``orderbook.1.<symbol>``):

==================  ===============================================================
``price``           the mid ``(bid + ask) / 2`` (the channel carries no trade)
``bid/ask``         best bid and ask (both required)
``volume``          ``None``: the channel has no traded volume
``high/low/open``   ``None``
``close``           ``None``
``timestamp``       the exchange's time where it sends one (Bybit); Binance
                    ``bookTicker`` carries **no timestamp**, so it is the receive time
==================  ===============================================================

``receive_timestamp`` is always the local wall-clock time (Unix ms) at which ingestion got
the update. A value the exchange did not send is ``None``, never 0 and never NaN.

What counts as bad data
=======================

An update is dropped, with the :class:`DropReason` in brackets, when:

* it has no symbol [``missing_symbol``];
* a numeric field is not a number, e.g. ``"abc"`` or ``True`` [``non_numeric``], or is
  NaN or infinite [``non_finite``]. ccxt turns a non-numeric string into ``None`` while it
  parses, so for venues that list their raw numeric fields the raw payload
  (``info``) is checked too, whenever a field the tick is made of came out empty;
* there is no price: neither ``last`` nor ``close`` for a ticker, a missing (or 0) bid
  or ask for a best bid/ask [``missing_price``];
* the price is zero or negative [``non_positive_price``];
* any other price, or a volume, is negative [``negative_value``]. A bid, ask, high, low,
  open or close of exactly 0 is how exchanges say "none" (an empty book side, no trade
  today): it becomes ``None``. A volume of 0 is a real value and is kept;
* the best bid is above the best ask [``crossed_book``]. Decision: one venue's top of
  book is never crossed, so a crossed pair means the values are not from one consistent
  snapshot; the whole update is dropped rather than served with a quote that is wrong on
  one side. A locked book (bid == ask) is kept;
* the exchange timestamp is not a number, is before 2010-01-01, or is more than a day
  ahead of the receive time (a seconds/milliseconds mix-up, a corrupt field)
  [``bad_timestamp``].

Trades
======

``Channel.TRADES`` (ccxt ``watch_trades_for_symbols`` / ``fetch_trades``): :func:`to_trade`
turns one ccxt unified trade into a :class:`Trade`'s fields: ``timestamp`` the exchange's
trade time (the receive time where the venue sends none), ``trade_id`` ccxt's ``id`` as a
string (``None`` where the venue has none), ``price``, ``amount`` (ccxt's unified amount: base
units on spot markets, contracts on derivatives), ``side`` the taker's side (``buy``/``sell``,
``None`` where the venue does not say). A trade is dropped for no symbol, a price that is
missing, not a finite number or not positive [``missing_price``, ``non_numeric``,
``non_finite``, ``non_positive_price``], an amount that is missing or negative
[``missing_amount``, ``negative_value``], a side other than buy/sell [``bad_side``] or a bad
timestamp (as for tickers). A book row is :class:`BookTop`.

``malformed_frame`` and ``unparseable_frame`` are counted by ingestion itself for frames
that never became a ticker: invalid or truncated JSON, and frames ccxt's own parser
raised on (e.g. a missing symbol field). A ticker that is not a mapping at all is
``unparseable_frame`` too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from flight_md.errors import ExchangeDataError
from flight_md.schema import MarketTick

Row = tuple[float, ...]
"""A tick's numbers in :data:`~flight_md.schema.NUMERIC_FIELDS` order, NaN for missing."""
_NAN: Final = math.nan
_INF: Final = math.inf

__all__ = [
    "MAX_FUTURE_MS",
    "MIN_TIMESTAMP_MS",
    "TICKER_LIKE",
    "BookTop",
    "Channel",
    "DropReason",
    "Side",
    "Trade",
    "fingerprint",
    "normalize_ticker",
    "raw_numeric_fields",
    "row_to_tick",
    "to_row",
    "to_tick",
    "to_trade",
]

MIN_TIMESTAMP_MS: Final = 1_262_304_000_000
"""2010-01-01T00:00:00Z: no crypto exchange timestamp is older."""
MAX_FUTURE_MS: Final = 86_400_000
"""How far an exchange timestamp may run ahead of the local receive time (one day)."""

def raw_numeric_fields(exchange: str) -> frozenset[str] | None:
    """Raw payload fields that must be numeric on ``exchange`` (its venue's list), else ``None``.

    ccxt maps a non-numeric string to ``None`` while it parses, which would make ``"abc"``
    indistinguishable from a field the exchange did not send; these lists let
    :func:`to_tick` tell the two apart. Exchanges without a list skip the check.
    """
    from flight_md.venues import VENUES  # the registry imports this module

    found = VENUES.get(exchange)
    return found.raw_numeric_fields or None if found is not None else None


class Channel(StrEnum):
    """What an exchange stream carries."""

    TICKER = "ticker"
    """The full 24h rolling ticker."""
    BIDASK = "bidask"
    """Real-time best bid and ask."""
    TRADES = "trades"
    """Every trade the exchange publishes, exactly once (issue 12)."""
    BOOK = "book"
    """The top N levels of the order book after every update (issue 12)."""


TICKER_LIKE: Final = frozenset({Channel.TICKER, Channel.BIDASK})
"""The channels whose updates are ccxt tickers (:func:`to_row`'s channels)."""


class DropReason(StrEnum):
    """Why an exchange update did not become a tick (the keys of ``bad_frames``)."""

    MISSING_SYMBOL = "missing_symbol"
    MISSING_PRICE = "missing_price"
    NON_NUMERIC = "non_numeric"
    NON_FINITE = "non_finite"
    NON_POSITIVE_PRICE = "non_positive_price"
    NEGATIVE_VALUE = "negative_value"
    CROSSED_BOOK = "crossed_book"
    BAD_TIMESTAMP = "bad_timestamp"
    MISSING_AMOUNT = "missing_amount"
    """A trade without an amount."""
    BAD_SIDE = "bad_side"
    """A trade whose side is neither buy nor sell."""
    MALFORMED_FRAME = "malformed_frame"
    """Counted by ingestion: a frame that is not valid JSON (e.g. truncated)."""
    UNPARSEABLE_FRAME = "unparseable_frame"
    """Counted by ingestion: ccxt's parser raised on the frame."""


class Side(StrEnum):
    """The taker's side of a trade."""

    BUY = "buy"
    SELL = "sell"


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade, as stored in the ``trades`` channel and handed to trade callbacks.

    Attributes:
        symbol: Unified ccxt symbol.
        exchange: ccxt exchange id.
        timestamp: The exchange's trade time, Unix ms.
        trade_id: The exchange's id of the trade (``None`` where it has none).
        price: Trade price.
        amount: ccxt's unified amount (base units on spot, contracts on derivatives).
        side: The taker's side, ``None`` where the venue does not say.
        receive_timestamp: Local wall-clock time ingestion got it, Unix ms.
    """

    symbol: str
    exchange: str
    timestamp: int
    trade_id: str | None
    price: float
    amount: float
    side: Side | None
    receive_timestamp: int


@dataclass(frozen=True, slots=True)
class BookTop:
    """The top levels of one order book after an update (``book`` channel callbacks).

    Attributes:
        symbol: Unified ccxt symbol.
        exchange: ccxt exchange id.
        timestamp: The book's exchange time, Unix ms (the receive time where none).
        bids: ``(price, amount)`` levels, best (highest) first.
        asks: ``(price, amount)`` levels, best (lowest) first.
        nonce: The venue's sequence/update id of the update, ``None`` where it has none.
        receive_timestamp: Local wall-clock time ingestion got it, Unix ms.
    """

    symbol: str
    exchange: str
    timestamp: int
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]
    nonce: int | None
    receive_timestamp: int


TradeFields = tuple[str, int, str | None, float, float, Side | None]
"""``(symbol, timestamp, trade_id, price, amount, side)`` of a good trade."""
_SIDE_OF: Final = {"buy": Side.BUY, "sell": Side.SELL, None: None}


class _Bad(Exception):
    """Internal: carries the reason out of the field helpers (never escapes this module)."""

    def __init__(self, reason: DropReason, field: str) -> None:
        super().__init__(reason, field)
        self.reason = reason
        self.field = field


def _number(value: Any, field: str) -> float | None:
    """A finite float, ``None`` for a missing value, or :class:`_Bad`."""
    if value is None:
        return None
    if isinstance(value, float):
        number = value
    elif isinstance(value, bool):
        raise _Bad(DropReason.NON_NUMERIC, field)
    elif isinstance(value, (int, str)):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise _Bad(DropReason.NON_NUMERIC, field) from None
    else:
        raise _Bad(DropReason.NON_NUMERIC, field)
    if not math.isfinite(number):
        raise _Bad(DropReason.NON_FINITE, field)
    return number


def _quote(value: Any, field: str) -> float | None:
    """A price-like optional field: 0 means "none", negative is bad."""
    if type(value) is float and 0.0 < value < _INF:
        return value  # what ccxt hands over almost always
    number = _number(value, field)
    if number is None or number > 0.0:
        return number
    if number == 0.0:
        return None
    raise _Bad(DropReason.NEGATIVE_VALUE, field)


def _volume(value: Any, field: str) -> float | None:
    number = _number(value, field)
    if number is not None and number < 0.0:
        raise _Bad(DropReason.NEGATIVE_VALUE, field)
    return number


def _timestamp(value: Any, receive_ms: int) -> int:
    if value is None:
        return receive_ms
    try:
        number = _number(value, "timestamp")
    except _Bad:
        raise _Bad(DropReason.BAD_TIMESTAMP, "timestamp") from None
    assert number is not None
    if number < MIN_TIMESTAMP_MS or number > receive_ms + MAX_FUTURE_MS:
        raise _Bad(DropReason.BAD_TIMESTAMP, "timestamp")
    return int(number)


def _check_raw(info: Any, fields: frozenset[str]) -> None:
    if not isinstance(info, Mapping):
        return
    for key in fields:
        value = info.get(key)
        if value is None or value == "" or isinstance(value, (list, dict)):
            continue  # absent, Bybit's "no value", or structure ccxt parses itself
        _number(value, key)


def _opt(value: float | None) -> float:
    return _NAN if value is None else value


def _build(ticker: Mapping[str, Any], fields: frozenset[str] | None, channel: Channel,
           receive_ms: int) -> tuple[str, Row]:
    # ccxt's tickers are dicts: the ABC check (slow next to the rest of a tick) is for others.
    if type(ticker) is not dict and not isinstance(ticker, Mapping):
        raise _Bad(DropReason.UNPARSEABLE_FRAME, "ticker")
    get = ticker.get
    symbol = get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise _Bad(DropReason.MISSING_SYMBOL, "symbol")
    # The unified fields a tick is made of (a ticker: last, close, bid, ask, high, low, open,
    # baseVolume; a bid/ask: bid, ask) are each read once: this runs for every tick.
    raw_bid, raw_ask = get("bid"), get("ask")
    if channel is Channel.BIDASK:
        if fields and (raw_bid is None or raw_ask is None):
            _check_raw(get("info"), fields)  # ccxt left a field empty: absent, or not a number?
        timestamp = _timestamp(get("timestamp"), receive_ms)
        bid, ask = _quote(raw_bid, "bid"), _quote(raw_ask, "ask")
        if bid is not None and ask is not None and bid > ask:
            raise _Bad(DropReason.CROSSED_BOOK, "bid")
        if bid is None or ask is None:
            raise _Bad(DropReason.MISSING_PRICE, "bid" if bid is None else "ask")
        return symbol, (timestamp, (bid + ask) / 2.0, _NAN, bid, ask, _NAN, _NAN, _NAN, _NAN,
                        receive_ms)
    raw_last, raw_close, raw_high, raw_low, raw_open, raw_volume = (
        get("last"), get("close"), get("high"), get("low"), get("open"), get("baseVolume"))
    if fields and (raw_last is None or raw_close is None or raw_bid is None or raw_ask is None
                   or raw_high is None or raw_low is None or raw_open is None
                   or raw_volume is None):
        _check_raw(get("info"), fields)  # ccxt left a field empty: absent, or not a number?
    timestamp = _timestamp(get("timestamp"), receive_ms)
    bid, ask = _quote(raw_bid, "bid"), _quote(raw_ask, "ask")
    if bid is not None and ask is not None and bid > ask:
        raise _Bad(DropReason.CROSSED_BOOK, "bid")
    last = _number(raw_last, "last")
    close = _quote(raw_close, "close")
    price = last if last is not None else close
    if price is None:
        raise _Bad(DropReason.MISSING_PRICE, "last")
    if price <= 0.0:
        raise _Bad(DropReason.NON_POSITIVE_PRICE, "last")
    return symbol, (
        timestamp, price, _opt(_volume(raw_volume, "baseVolume")), _opt(bid), _opt(ask),
        _opt(_quote(raw_high, "high")), _opt(_quote(raw_low, "low")),
        _opt(_quote(raw_open, "open")), _opt(close), receive_ms)


def _ticker_like(channel: Channel | str) -> Channel:
    """``channel`` as a :class:`Channel` whose updates are tickers, else :class:`ValueError`."""
    found = Channel(channel)
    if found not in TICKER_LIKE:
        raise ValueError(f"channel {str(found)!r} carries no tickers; ticker channels: "
                         f"{', '.join(sorted(TICKER_LIKE))}")
    return found


def to_trade(trade: Mapping[str, Any], receive_ms: int) -> TradeFields | DropReason:
    """A ccxt unified trade's stored fields, or why it is bad (see "Trades" above); pure,
    never raises on bad data."""
    if type(trade) is not dict and not isinstance(trade, Mapping):
        return DropReason.UNPARSEABLE_FRAME
    get = trade.get
    symbol = get("symbol")
    if type(symbol) is not str or not symbol:
        return DropReason.MISSING_SYMBOL
    # What ccxt hands over (finite floats, an int time in range) is taken as it is: this runs
    # for every trade; anything else goes through the checks.
    price, amount, timestamp = get("price"), get("amount"), get("timestamp")
    if not (type(price) is float and 0.0 < price < _INF and type(amount) is float
            and 0.0 <= amount < _INF and type(timestamp) is int
            and MIN_TIMESTAMP_MS <= timestamp <= receive_ms + MAX_FUTURE_MS):
        try:
            price = _number(price, "price")
            if price is None:
                return DropReason.MISSING_PRICE
            if price <= 0.0:
                return DropReason.NON_POSITIVE_PRICE
            amount = _volume(amount, "amount")
            if amount is None:
                return DropReason.MISSING_AMOUNT
            timestamp = _timestamp(timestamp, receive_ms)
        except _Bad as bad:
            return bad.reason
    raw_side = get("side")
    side = _SIDE_OF.get(raw_side) if raw_side is None or isinstance(raw_side, str) else None
    if side is None and raw_side is not None:
        return DropReason.BAD_SIDE
    raw_id = get("id")
    trade_id = raw_id if type(raw_id) is str and raw_id else (
        None if raw_id is None or raw_id == "" else str(raw_id))
    return symbol, timestamp, trade_id, price, amount, side


def row_to_tick(symbol: str, row: Row, exchange: str) -> MarketTick:
    """The :class:`MarketTick` of a row made by :func:`to_row` (NaN back to ``None``)."""
    timestamp, price, volume, bid, ask, high, low, open_, close, receive_ms = row
    return MarketTick(symbol, int(timestamp), price, _none(volume), _none(bid), _none(ask),
                      _none(high), _none(low), _none(open_), _none(close), exchange,
                      int(receive_ms))


def _none(value: float) -> float | None:
    return None if math.isnan(value) else value


def to_row(ticker: Mapping[str, Any], *, exchange: str, channel: Channel,
           receive_ms: int, raw_fields: frozenset[str] | None = None) -> tuple[str, Row] | DropReason:
    """Like :func:`to_tick`, but return ``(symbol, row)``: the buffer's stored form.

    The row can go straight to :meth:`MarketDataBuffer.append_row
    <flight_md.buffer.MarketDataBuffer.append_row>`; :func:`row_to_tick` turns it into a
    :class:`MarketTick`. ``channel`` must be a :class:`Channel` here. ``raw_fields`` is the
    venue's raw numeric field list when the caller has it (the ingestion hot path); by
    default it is looked up by ``exchange``.
    """
    try:
        fields = raw_numeric_fields(exchange) if raw_fields is None else raw_fields
        return _build(ticker, fields, channel, receive_ms)
    except _Bad as bad:
        return bad.reason


def to_tick(ticker: Mapping[str, Any], *, exchange: str, channel: Channel | str,
            receive_ms: int) -> MarketTick | DropReason:
    """Normalize one ccxt unified ticker, or say why it is bad.

    Args:
        ticker: A ccxt unified ticker (``symbol``, ``timestamp``, ``last``, ``bid``, ...,
            ``info`` holding the raw payload).
        exchange: ccxt exchange id; selects the raw-payload check.
        channel: What the ticker came from (see the module docstring).
        receive_ms: Local wall-clock time the update arrived, Unix ms.

    Returns:
        The tick, or the :class:`DropReason` it was rejected for. Never raises on bad data.
    """
    try:
        symbol, row = _build(ticker, raw_numeric_fields(exchange), _ticker_like(channel),
                             receive_ms)
    except _Bad as bad:
        return bad.reason
    return row_to_tick(symbol, row, exchange)


def normalize_ticker(ticker: Mapping[str, Any], *, exchange: str,
                     channel: Channel | str = Channel.TICKER,
                     receive_ms: int) -> MarketTick:
    """Like :func:`to_tick`, but raise on bad data.

    Raises:
        ExchangeDataError: The ticker cannot become a tick; the message names the reason
            and the field.
    """
    try:
        symbol, row = _build(ticker, raw_numeric_fields(exchange), _ticker_like(channel),
                             receive_ms)
    except _Bad as bad:
        named = ticker.get("symbol") if isinstance(ticker, Mapping) else None
        raise ExchangeDataError(
            f"bad {channel} update from {exchange} for {named!r}: {bad.reason} "
            f"(field {bad.field!r})") from None
    return row_to_tick(symbol, row, exchange)


_FINGERPRINT_FIELDS: Final = ("last", "close", "bid", "ask", "high", "low", "open", "baseVolume")


def fingerprint(ticker: Mapping[str, Any]) -> tuple[Any, ...]:
    """The values that make two polled tickers "the same update".

    REST polling stores a ticker only when this changes, so an unchanged market polled
    twice is stored once. Values are compared, not object identity (ccxt builds a new
    dict for every response). The timestamp is left out: Binance stamps a REST ticker with
    the request time, so it changes on every poll even when the market did not.
    """
    return tuple(ticker.get(name) for name in _FINGERPRINT_FIELDS)

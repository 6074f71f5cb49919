"""Kraken spot: websocket v2 (``wss://ws.kraken.com/v2``) and REST ``/0/public``.

Channels: ``ticker`` is the v2 ``ticker`` channel (ccxt ``watch_tickers``: published on every
trade); ``bidask`` is the same channel with ``event_trigger: "bbo"`` (ccxt ``watch_bids_asks``:
published on every change of the best bid or offer). ccxt parses both with ``handle_ticker``,
which writes every update into ``exchange.tickers``, so that is the cache of both channels.
A v2 ticker is a full ticker (no deltas). ccxt gives it **no timestamp** (the receive time
stands in) and no ``open``: ccxt derives the open from ``last - change``. ccxt has no
``un_watch_tickers`` for Kraken: dropping a symbol restarts the session. REST tickers
(``GET /0/public/Ticker``) carry no timestamp either. ccxt's ``set_sandbox_mode`` is
unsupported on Kraken (no ``--testnet``).

Symbols: v2 names are ccxt's unified symbols (``BTC/USD``, ``DOGE/USD``); the REST market
list (``AssetPairs``) still publishes the legacy ``wsname`` (``XBT/USD``) and ids
(``XXBTZUSD``), which ccxt maps through its common currencies (``XXBT``, ``XBT`` -> ``BTC``).

URLs (``urls.api``): ``public`` and ``private`` -> the base (ccxt appends ``/0/public/<method>``
and ``/0/private/<method>``); ``zendesk`` -> ``/api/v2/help_center/en-us/articles`` (help
articles ccxt reads for withdrawal fees, never for market data); ``urls.api.ws``:
``publicV2`` -> ``/v2`` (the only websocket ccxt's market data uses), ``public`` (v1) -> ``/``,
``private`` -> ``/auth``, ``privateV2`` -> ``/auth/v2``, ``beta`` -> ``/beta``, ``beta-private``
-> ``/beta-auth``. The real hosts differ only by name (``ws.kraken.com``,
``ws-auth.kraken.com``, ``beta-ws.kraken.com``): one local host needs a path per host, and
redirecting the ones nobody emulates still keeps every connection local. Kraken's
``fetch_markets`` makes one call (``GET /0/public/AssetPairs``), and ``load_markets`` a second
(``GET /0/public/Assets``) only where ``fetchCurrencies`` is on (ingestion turns it off), so
no option restricts market types.

Limits: Kraken documents no per-message symbol limit or control-message rate for public
subscriptions; 100 symbols a subscribe message keeps a request small.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from flight_md.core.ccxt_parse import (
    Decline,
    Unparseable,
    bidask_row,
    number,
    open_from_change,
    open_from_percentage,
    parse8601,
    precise_text,
    quote,
    safe_number,
    safe_string,
    ticker_row,
)
from flight_md.core.decode import DecoderContext, DecodeSink, FrameDecoder, book_named_levels
from flight_md.normalize import Channel, DropReason, TradeFields, to_row, to_trade
from flight_md.venues.base import BOOKS_CACHE, TRADES_CACHE, ChannelMethods, Venue

_WS = {
    "publicV2": "/v2", "public": "/", "private": "/auth", "privateV2": "/auth/v2",
    "beta": "/beta", "beta-private": "/beta-auth",
}
_ZENDESK = "/api/v2/help_center/en-us/articles"


def _overrides(rest: str, ws: str) -> dict[str, Any]:
    api: dict[str, Any] = {"public": rest, "private": rest, "zendesk": rest + _ZENDESK}
    api["ws"] = {key: ws + path for key, path in _WS.items()}
    return {"urls": {"api": api}, "options": {}}


_REST = ("fetch_tickers", "fetch_ticker")


# -- fast decoders (flight_md.core.decode) ----------------------------------------------------
#
# What ccxt 4.5.90 does with each websocket v2 frame, which the decoders reproduce:
#
# * ``handle_message`` routes by ``channel``, then looks for ``error``/``errorMessage`` and an
#   ``event``/``method``. A decoder claims ``channel`` frames carrying none of those.
# * ``ticker`` (``handle_ticker``, both event triggers): only ``data[0]``, stored under its own
#   ``symbol`` (v2 names are ccxt's unified symbols; no market lookup). No timestamp. last/
#   close ``last``, bid/ask/high/low as sent, all zero-omitted, ``baseVolume`` ``volume``;
#   ``safe_ticker`` derives the open with ``Precise``: ``close - change``, or without a change
#   ``close / (1 + change_pct / 100)``; ``Precise`` also multiplies ``volume`` by ``vwap``. It
#   raises on text that is not a number: such a frame is declined.
# * ``trade`` (``handle_trades``): ``market(data[0].symbol)`` (raises for a symbol it does not
#   list: declined) names **every** trade of the frame; ``parse_trades`` parses each (id
#   ``trade_id``, price, ``qty``, ``parse8601(timestamp)``, side), ``safe_trade`` multiplies
#   price by amount with ``Precise``, and the list is sorted by ``(timestamp, id)`` (ids are
#   text) before it is appended.
#
# Websocket v1 frames (arrays) are not ccxt's: ccxt ignores them, and so do the decoders.

_NOT_OURS: Final = ("error", "errorMessage", "event", "method")


def _data(frame: str | bytes, channel: str) -> list[Any] | None:
    """The ``data`` list of a frame of ``channel``, else ``None``."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if type(message) is not dict or message.get("channel") != channel:
        return None
    for key in _NOT_OURS:
        if key in message:
            return None
    data = message.get("data")
    return data if type(data) is list and data else None


def _open(close: str | None, change: str | None, percentage: str | None) -> float | None:
    """The open ``safe_ticker`` derives (zero-omitted)."""
    if close is None:
        return None
    if change is not None:
        opened: float | None = open_from_change(close, change)
    elif percentage is not None:
        opened = open_from_percentage(close, percentage)
    else:
        return None
    return None if opened == 0.0 else opened


class KrakenTickerDecoder:
    """``ticker`` frames as ccxt's ``handle_ticker`` + ``to_row``, for ``Channel.TICKER`` and
    ``Channel.BIDASK`` (the same channel, triggered by the best bid/offer)."""

    __slots__ = ("_channel", "_fields")

    def __init__(self, context: DecoderContext, channel: Channel) -> None:
        self._fields = context.raw_fields
        self._channel = channel

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        """See :meth:`flight_md.core.decode.FrameDecoder.decode`."""
        data = _data(frame, "ticker")
        row = data[0] if data is not None else None
        if type(row) is not dict:
            return False
        symbol = row.get("symbol")
        if type(symbol) is not str or not symbol:
            return False  # ccxt stores it under None (or a number's text)
        get = row.get
        try:
            volume, vwap = get("volume"), get("vwap")
            if type(volume) is not float:
                precise_text(volume)
            if type(vwap) is not float:
                precise_text(vwap)  # quoteVolume = volume * vwap
            last = precise_text(get("last"))
            change = precise_text(get("change"))
            percentage = precise_text(get("change_pct"))
            close_number = number(last)
            close = None if close_number == 0.0 else last
            if percentage is not None and number(percentage) == 0.0:
                percentage = None  # omit_zero
            opened = _open(close, change, percentage)  # ccxt derives it for both channels
        except Unparseable:
            sink.drop(None, DropReason.UNPARSEABLE_FRAME)
            return True
        except (Decline, ValueError):  # ValueError: where ccxt's Precise raises too
            return False
        price = None if close is None else close_number
        bid, ask = quote(get("bid")), quote(get("ask"))
        if self._channel is Channel.BIDASK:
            good = bidask_row(None, bid, ask, receive_ms)
            ticker = {"symbol": symbol, "timestamp": None, "bid": bid, "ask": ask, "info": row}
        else:
            high, low = quote(get("high")), quote(get("low"))
            base_volume = safe_number(volume)
            good = ticker_row(None, price, base_volume, bid, ask, high, low, opened, price,
                              receive_ms)
            ticker = {"symbol": symbol, "timestamp": None, "last": price, "close": price,
                      "bid": bid, "ask": ask, "high": high, "low": low, "open": opened,
                      "baseVolume": base_volume, "info": row}
        if good is not None:  # the common case, without to_row's checks
            sink.tick(symbol, good, False)
            return True
        made = to_row(ticker, exchange="kraken", channel=self._channel, receive_ms=receive_ms,
                      raw_fields=self._fields)
        if isinstance(made, DropReason):
            sink.drop(symbol, made)
        else:
            sink.tick(symbol, made[1], False)
        return True

    def reset(self) -> None:
        """No per-connection state: every push is a whole ticker."""


_Parsed = tuple[int, str | None, dict[str, Any]]
"""A trade as ``parse_trades`` sorts it: ``(timestamp, id, unified trade)``."""


def _by_time_then_id(parsed: list[_Parsed]) -> list[_Parsed]:
    """ccxt's ``sort_by_2(trades, "timestamp", "id")``: ``None`` ids sort as ``""`` once
    comparing one raised; ``TypeError`` where ccxt's fallback raises too."""
    try:
        return sorted(parsed, key=lambda item: (item[0], item[1]))
    except TypeError:
        return sorted(parsed, key=lambda item: (item[0], "" if item[1] is None else item[1]))


class KrakenTradesDecoder:
    """``trade`` frames (``Channel.TRADES``) as ccxt's ``handle_trades`` + ``to_trade``."""

    __slots__ = ("_symbols",)

    def __init__(self, context: DecoderContext) -> None:
        self._symbols = frozenset(market["symbol"] for markets in context.markets_by_id.values()
                                  for market in markets if isinstance(market.get("symbol"), str))

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        """See :meth:`flight_md.core.decode.FrameDecoder.decode`."""
        data = _data(frame, "trade")
        first = data[0] if data is not None else None
        symbol = first.get("symbol") if type(first) is dict else None
        if type(symbol) is not str or symbol not in self._symbols:
            return False  # ccxt's market(symbol) raises, or finds it by id
        assert data is not None
        parsed: list[_Parsed] = []
        try:
            for row in data:
                if type(row) is not dict or "ordertxid" in row or "cost" in row:
                    return False  # a private trade's shape
                timestamp = parse8601(safe_string(row.get("timestamp")))
                if timestamp is None:
                    return False  # the sink's trade is stamped by the exchange
                trade_id = safe_string(row.get("trade_id"))
                price = precise_text(row.get("price"))
                amount = precise_text(row.get("qty"))
                parsed.append((timestamp, trade_id, {
                    "symbol": symbol, "id": trade_id, "timestamp": timestamp,
                    "price": number(price), "amount": number(amount),
                    "side": safe_string(row.get("side"))}))
            ordered = _by_time_then_id(parsed)
        except Unparseable:
            sink.drop(None, DropReason.UNPARSEABLE_FRAME)
            return True
        except (Decline, TypeError):
            return False
        made: list[TradeFields | DropReason] = [to_trade(trade, receive_ms)
                                                for _, _, trade in ordered]
        for result in made:
            if isinstance(result, DropReason):
                sink.drop(symbol, result)
            else:
                sink.trade(result, True, 1)
        return True

    def reset(self) -> None:
        """No per-connection state: every row is one whole trade."""


def _ticker_decoder(context: DecoderContext) -> FrameDecoder | None:
    return KrakenTickerDecoder(context, Channel.TICKER)


def _bidask_decoder(context: DecoderContext) -> FrameDecoder | None:
    return KrakenTickerDecoder(context, Channel.BIDASK)


def _trades_decoder(context: DecoderContext) -> FrameDecoder | None:
    return KrakenTradesDecoder(context)


class KrakenBookDecoder:
    """v2 ``book`` frames, parsed once, for the book stream's capture (:meth:`DecodeSink.book
    <flight_md.core.decode.DecodeSink.book>`), which applies them to the books its verifier
    keeps (:class:`~flight_md.core.books.KrakenVerifier`: the checksum's book is the stored
    one); ccxt never sees them. Declined: every other frame, a frame of more or fewer than one
    row (ccxt applies only the first), every book frame the verifier would not find well formed
    (no symbol, no integer ``checksum``, an update without its ``timestamp`` string), and one
    whose levels ccxt's ``custom_handle_deltas`` could read other than the verifier does
    (:func:`~flight_md.core.decode.book_named_levels`): ccxt's path, with the kept book as
    ccxt's, then counts it as it would."""

    __slots__ = ()

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return False
        if type(message) is not dict or message.get("channel") != "book":
            return False
        kind = message.get("type")
        if kind != "snapshot" and kind != "update":
            return False
        for key in _NOT_OURS:
            if key in message:
                return False
        data = message.get("data")
        if type(data) is not list or len(data) != 1:
            return False
        row = data[0]
        if (type(row) is not dict or type(row.get("symbol")) is not str or not row["symbol"]
                or type(row.get("checksum")) is not int
                or (kind == "update" and type(row.get("timestamp")) is not str)
                or not book_named_levels(row.get("bids", []), "price", "qty")
                or not book_named_levels(row.get("asks", []), "price", "qty")):
            return False
        return sink.book(message)

    def reset(self) -> None:
        """No per-connection state: the capture's verifier keeps the books."""


def _book_decoder(context: DecoderContext) -> FrameDecoder | None:
    return KrakenBookDecoder()


VENUE = Venue(
    id="kraken",
    title="Kraken spot (websocket v2)",
    channels={
        Channel.TICKER: ChannelMethods("watch_tickers", None, "tickers", rest=_REST),
        # ccxt's handle_ticker serves both: a bbo-triggered ticker lands in `tickers` too.
        Channel.BIDASK: ChannelMethods("watch_bids_asks", None, "tickers", rest=_REST),
        # ccxt has no un_watch_trades / un_watch_order_book for Kraken.
        Channel.TRADES: ChannelMethods("watch_trades_for_symbols", None, TRADES_CACHE,
                                       rest=("fetch_trades",)),
        Channel.BOOK: ChannelMethods("watch_order_book_for_symbols", None, BOOKS_CACHE, rest=()),
    },
    symbols_per_message=100,
    book_depths=(10, 25, 100, 500, 1000),
    url_overrides=_overrides,
    # v2 ticker data (numbers on the wire) and the REST ticker's "o" (a string; its other
    # fields are arrays, which ccxt parses itself).
    raw_numeric_fields=frozenset({
        "bid", "bid_qty", "ask", "ask_qty", "last", "volume", "vwap", "low", "high", "change",
        "change_pct", "o",
    }),
    dialect="flight_md.emulator.dialects.kraken:KrakenDialect",
    demo_symbols=("BTC/USD", "ETH/USD", "SOL/USD", "BTC/EUR", "ETH/BTC"),
    test_symbols=("BTC/USD", "ETH/USD"),
    recording="kraken.jsonl.gz",
    quirks=(
        "tickers carry no exchange timestamp (websocket and REST): the receive time stands in",
        "the websocket ticker has no open: ccxt derives it from last - change (the 24h change)",
        "bidask is the ticker channel triggered by best bid/offer changes (event_trigger bbo)",
        "ccxt cannot unsubscribe Kraken tickers: dropping a symbol restarts the session",
        "no sandbox in ccxt: --testnet is refused",
    ),
    live_hosts={
        "/api/v2/help_center": "https://kraken.zendesk.com",
        "/v2": "wss://ws.kraken.com",
        "/0": "https://api.kraken.com",
    },
    decoders={Channel.TICKER: _ticker_decoder, Channel.BIDASK: _bidask_decoder,
              Channel.TRADES: _trades_decoder, Channel.BOOK: _book_decoder},
)

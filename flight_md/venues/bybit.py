"""Bybit v5: public websockets per category and REST ``/v5/market``.

Channels: ``ticker`` is ``tickers.<symbol>`` (linear: a snapshot, then deltas of the changed
fields, merged by ccxt; spot tickers carry **no best bid/ask**); ``bidask`` is
``orderbook.1.<symbol>`` (ccxt ``watch_bids_asks``; ccxt cannot unsubscribe it, so dropping a
symbol restarts the session). REST tickers carry no timestamp (the receive time stands in).

URLs: ``urls.api`` ``spot``, ``futures``, ``v2``, ``public``, ``private`` -> the base
(``{hostname}`` templates replaced); ``urls.api.ws.public.{spot,linear,inverse,option}`` ->
``/v5/public/<category>``; private websockets keep their paths. Redirected,
``fetchMarkets.types = ["spot", "linear"]``, so ``load_markets`` calls only
``GET /v5/market/instruments-info`` for ``category=spot`` and ``category=linear``.

Limits: spot accepts at most 10 topics a subscribe request.

Fast decoders (:mod:`flight_md.core.decode`) for ``ticker`` (``tickers.<symbol>``) and
``trades`` (``publicTrade.<symbol>``), reproducing ccxt 4.5's ``handle_ticker`` (``parse_ticker``,
``safe_ticker`` with its ``Precise`` arithmetic) and ``handle_trades`` (``parse_ws_trade``,
``safe_trade``). A ticker delta is merged into the symbol's previous raw ticker as ccxt merges
it into its own: the decoder keeps that state per connection, so once it claims ``tickers``
frames it claims them all (ccxt's own state is no longer fed); a frame ccxt's parse raises on
is delivered as the ``unparseable_frame`` ccxt's would have been. ``bidask``
(``orderbook.1``) stays on ccxt: ccxt derives it from an order book it maintains.
A ticker delta whose ``data.symbol`` names another market than its topic is, as in ccxt's
path, counted under the topic's symbol and stored under the other (``DecodeSink.tick``'s
``key``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from flight_md.core import decode
from flight_md.core.ccxt_parse import (
    number,
    omit_zero,
    precise_add,
    precise_div,
    precise_mul,
    precise_sub,
)
from flight_md.core.decode import DecoderContext, DecodeSink, FrameDecoder
from flight_md.normalize import Channel, DropReason
from flight_md.venues.base import BOOK_METHODS, TRADES_METHODS, ChannelMethods, Venue

_REST_KEYS = ("spot", "futures", "v2", "public", "private")
_CATEGORIES = ("spot", "linear", "inverse", "option")


def _overrides(rest: str, ws: str) -> dict[str, Any]:
    api: dict[str, Any] = {key: rest for key in _REST_KEYS}
    api["ws"] = {
        "public": {category: f"{ws}/v5/public/{category}" for category in _CATEGORIES},
        "private": {
            "spot": {"unified": f"{ws}/v5/private", "nonUnified": f"{ws}/spot/private/v3"},
            "contract": f"{ws}/v5/private",
            "usdc": f"{ws}/trade/option/usdc/private/v1",
            "trade": f"{ws}/v5/trade",
        },
    }
    return {"urls": {"api": api}, "options": {"fetchMarkets": {"types": ["spot", "linear"]}}}


# -- fast decoders ------------------------------------------------------------------------------

_NOT_DATA: Final = ("code", "ret_code", "retCode", "success", "ret_msg", "pong", "event", "op",
                    "req_id", "reqId", "conn_id")
"""Keys of frames ccxt's ``handle_message`` treats before a topic's handler (errors, pongs,
subscription answers): such a frame is declined."""
_TICKER_TOPIC: Final = re.compile(r"tickers\.([A-Za-z0-9_-]+)").fullmatch
_TRADE_TOPIC: Final = re.compile(r"publicTrade\.([A-Za-z0-9_-]+)").fullmatch


class _Raise(Exception):
    """ccxt's parse raises on the frame (a market lookup that fails). Where its ``Precise``
    meets text that is no number, :mod:`flight_md.core.ccxt_parse`'s replica raises
    :class:`ValueError` (:class:`~flight_md.core.ccxt_parse.ExponentTooLarge` for an exponent
    beyond :data:`~flight_md.core.ccxt_parse.MAX_EXPONENT`, where ccxt's would stall: the one
    place the decoder departs from ccxt, dropping such a frame as ``unparseable_frame`` too)."""


def _frame(frame: str | bytes) -> dict[str, Any] | None:
    """A topic frame ccxt would hand to a topic's handler, else ``None`` (decline)."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if type(message) is not dict or any(key in message for key in _NOT_DATA):
        return None
    return message


class _Symbols:
    """ccxt's ``safe_market(id, None, None, type)`` of the loaded markets, by type."""

    __slots__ = ("by_id", "contract", "spot")

    def __init__(self, context: DecoderContext) -> None:
        self.by_id = context.markets_by_id
        self.spot = decode.symbols_by_id(self.by_id, "spot")
        self.contract = decode.symbols_by_id(self.by_id, "contract")

    def of(self, market_id: str, kind: str) -> str:
        return (self.spot if kind == "spot" else self.contract).get(market_id, market_id)


class _TickerDecoder:
    """``tickers.<symbol>`` snapshots and deltas -> ticker rows (ccxt ``handle_ticker``)."""

    __slots__ = ("_raw", "_raw_fields", "_symbols")

    def __init__(self, context: DecoderContext) -> None:
        self._symbols = _Symbols(context)
        self._raw_fields = context.raw_fields
        self._raw: dict[str, dict[str, Any]] = {}  # ccxt's tickers[symbol]["info"]

    def reset(self) -> None:
        self._raw.clear()

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        message = _frame(frame)
        if message is None:
            return False
        topic = message.get("topic")
        found = _TICKER_TOPIC(topic) if type(topic) is str else None
        if found is None:
            return False
        update = decode.ccxt_string(message.get("type")) or ""
        data = message.get("data")
        if type(data) is not dict:
            data = {}
        kind = "spot" if decode.ccxt_string(data.get("usdIndexPrice")) is not None else "contract"
        if update == "snapshot":
            info = data
        elif update == "delta":
            key = self._symbols.of(found.group(1), kind)
            info = {**self._raw.get(key, {}), **data}
        else:
            return True  # ccxt parses nothing of it
        try:
            symbol, values = self._parse(info)
        except (_Raise, ValueError):
            sink.drop(None, DropReason.UNPARSEABLE_FRAME)
            return True
        if update == "snapshot":
            if symbol is None:
                return True
            key = symbol
        self._raw[key] = info
        if not symbol:  # a delta merged into no snapshot: ccxt stores a ticker without a symbol
            sink.drop(key, DropReason.MISSING_SYMBOL)
            return True
        last, bid, ask, high, low, open_, volume = values
        decode.ticker(sink, symbol, decode.ccxt_int(message.get("ts")), last=last, bid=bid,
                      ask=ask, high=high, low=low, open_=open_, volume=volume, info=info,
                      raw_fields=self._raw_fields, receive_ms=receive_ms, key=key)
        return True

    def _parse(self, ticker: Mapping[str, Any]) -> tuple[str | None, tuple[float | None, ...]]:
        """bybit ``parse_ticker`` then ``safe_ticker``: the symbol and the values a row is made
        of (last, bid, ask, high, low, open, baseVolume); :class:`ValueError` where ccxt raises."""
        text = decode.ccxt_string
        kind = "spot" if text(ticker.get("openInterestValue")) is None else "contract"
        market_id = text(ticker.get("symbol"))
        symbol = None if market_id is None else self._symbols.of(market_id, kind)
        last, open_ = text(ticker.get("lastPrice")), text(ticker.get("prevPrice24h"))
        percentage = precise_mul(text(ticker.get("price24hPcnt")), "100")
        quote_volume, base_volume = text(ticker.get("turnover24h")), text(ticker.get("volume24h"))
        # safe_ticker (change, average and vwap are None in parse_ticker's structure)
        open_ = omit_zero(open_)
        close = omit_zero(last)
        percentage = omit_zero(percentage)
        precise_div(omit_zero(quote_volume), base_volume)  # vwap: raises where ccxt's does
        change: str | None = None
        if percentage is not None and open_ is None and close is not None:
            open_ = precise_div(close, precise_add("1", precise_div(percentage, "100")))
        if close is not None and open_ is not None:
            change = precise_sub(close, open_)
        elif close is not None and percentage is not None:
            change = precise_mul(precise_div(percentage, "100"), precise_div(close, "100"))
        elif open_ is not None and percentage is not None:
            change = precise_mul(open_, precise_div(percentage, "100"))
        if open_ is not None:
            if percentage is None and change is not None:
                precise_mul(precise_div(change, open_), "100")
            if close is None and change is not None:
                close = precise_add(open_, change)
            if close is not None:
                precise_div(precise_add(open_, close), "2")  # average: its precision cannot make it raise
        quote = decode.ccxt_quote
        return symbol, (number(omit_zero(close)), quote(ticker.get("bid1Price")),
                        quote(ticker.get("ask1Price")), quote(ticker.get("highPrice24h")),
                        quote(ticker.get("lowPrice24h")), number(omit_zero(open_)),
                        number(base_volume))


class _TradeDecoder:
    """``publicTrade.<symbol>`` -> trades (ccxt ``handle_trades``, ``parse_ws_trade``)."""

    __slots__ = ("_kind", "_markets", "_symbols")

    def __init__(self, context: DecoderContext) -> None:
        self._symbols = _Symbols(context)
        self._kind = "spot" if "spot" in context.url else "contract"  # ccxt: client.url
        self._markets: Mapping[str, Sequence[Mapping[str, Any]]] = context.markets_by_id

    def reset(self) -> None:
        """Nothing is kept between frames."""

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        message = _frame(frame)
        if message is None:
            return False
        topic = message.get("topic")
        found = _TRADE_TOPIC(topic) if type(topic) is str else None
        if found is None or found.group(1) not in self._markets:
            return False
        data = message.get("data")
        if type(data) is not list:
            data = []
        if any(type(item) is not dict for item in data):
            return False
        key = self._symbols.of(found.group(1), self._kind)
        market = self._market(found.group(1), self._kind)
        if market is None:
            return False
        for item in data:
            try:
                made = self._parse(item, market)
            except (_Raise, ValueError):
                sink.drop(None, DropReason.UNPARSEABLE_FRAME)
                return True
            decode.trade(sink, key, made[0], made[1], made[2], made[3], made[4], receive_ms)
        return True

    def _market(self, market_id: str, kind: str) -> Mapping[str, Any] | None:
        markets = self._markets[market_id]
        if len(markets) == 1:
            return markets[0]
        return next((m for m in markets if m.get(kind) is True), None)

    def _parse(self, trade: Mapping[str, Any], market: Mapping[str, Any]
               ) -> tuple[int | None, str | None, float | None, float | None, str | None]:
        """``(timestamp, id, price, amount, side)`` as bybit ``parse_ws_trade`` and
        ``safe_trade`` make them; :class:`ValueError` or :class:`_Raise` where ccxt raises."""
        text = decode.ccxt_string
        trade_id = decode.ccxt_string_n(trade, ("i", "T", "v"))
        stamp = decode.ccxt_int(trade["t"]) if "t" in trade else None
        if stamp is None:
            stamp = decode.ccxt_int(trade["T"]) if "T" in trade else None
        raw_side = trade.get("S")
        side = text(raw_side)
        if side is not None:
            side = side.lower()
        else:
            side = "buy" if trade.get("m") is True else "sell"
        price = text(trade.get("p"))
        amount = text(trade.get("q")) or text(trade.get("v"))
        resolved = self._resolved(trade, market)
        size = text(resolved.get("contractSize"))
        multiply = price
        if size is not None:
            if resolved.get("inverse") is True:
                multiply = precise_div("1", price)
            multiply = precise_mul(multiply, size)
        precise_mul(multiply, amount)  # cost: raises where ccxt's does
        return stamp, trade_id, number(price), number(amount), side

    def _resolved(self, trade: Mapping[str, Any], market: Mapping[str, Any]) -> Mapping[str, Any]:
        """ccxt's ``safe_market(trade.s, market, None, market.type)``."""
        market_id = decode.ccxt_string(trade.get("s"))
        found = self._markets.get(market_id) if market_id is not None else None
        if not found:
            return market
        if len(found) == 1:
            return found[0]
        kind = decode.ccxt_string(market.get("type")) or ""
        for candidate in found:
            if kind not in candidate:
                raise _Raise  # ccxt's currentMarket[type]: a KeyError
            if candidate[kind] is True:
                return candidate
        return market


def _ticker(context: DecoderContext) -> FrameDecoder:
    return _TickerDecoder(context)


def _trades(context: DecoderContext) -> FrameDecoder:
    return _TradeDecoder(context)


class _BookDecoder:
    """``orderbook.<depth>.<symbol>`` frames, parsed once, for the book stream's capture
    (:meth:`DecodeSink.book <flight_md.core.decode.DecodeSink.book>`), which applies them to
    the books its verifier keeps (:class:`~flight_md.core.books.BybitVerifier`); ccxt never
    sees them. Declined: every other frame, and every book frame the verifier would not find
    well formed (``data.s`` not the topic's, a ``type`` neither ``snapshot`` nor ``delta``, no
    integer ``u``, a ``ts`` that is no integer) or whose levels ccxt's ``handle_order_book``
    could read other than the verifier does (:func:`~flight_md.core.decode.book_levels`):
    ccxt's path, with the kept book as ccxt's, then counts it as it would."""

    __slots__ = ()

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        if (_BOOK_TEXT if type(frame) is str else _BOOK_BYTES) not in frame:  # type: ignore[operator]
            return False
        message = _frame(frame)
        if message is None:
            return False
        topic, data, kind = message.get("topic"), message.get("data"), message.get("type")
        if (type(topic) is not str or not topic.startswith("orderbook.") or type(data) is not dict
                or (kind != "snapshot" and kind != "delta") or type(data.get("u")) is not int
                or type(message.get("ts", 0)) is not int):
            return False
        market_id = data.get("s")
        if (type(market_id) is not str or not topic.endswith(market_id)
                or topic.rsplit(".", 1)[-1] != market_id or not decode.book_levels(data.get("b"))
                or not decode.book_levels(data.get("a"))):
            return False
        return sink.book(message)

    def reset(self) -> None:
        pass


_BOOK_TEXT: Final = '"orderbook.'
_BOOK_BYTES: Final = b'"orderbook.'


def _book(context: DecoderContext) -> FrameDecoder:
    return _BookDecoder()


VENUE = Venue(
    id="bybit",
    title="Bybit v5 (spot and linear)",
    channels={
        Channel.TICKER: ChannelMethods("watch_tickers", "un_watch_tickers", "tickers"),
        Channel.BIDASK: ChannelMethods("watch_bids_asks", None, "bidsasks",
                                       rest=("fetch_bids_asks", "fetch_tickers", "fetch_ticker")),
        Channel.TRADES: TRADES_METHODS,  # publicTrade.<symbol>: ids are UUIDs, not sequential
        Channel.BOOK: BOOK_METHODS,  # orderbook.<depth>.<symbol>
    },
    symbols_per_message=10,
    book_depths=(1, 50, 200, 1000),
    url_overrides=_overrides,
    decoders={Channel.TICKER: _ticker, Channel.TRADES: _trades, Channel.BOOK: _book},
    # tickers.<symbol> websocket data and /v5/market/tickers rows.
    raw_numeric_fields=frozenset({
        "lastPrice", "bid1Price", "bid1Size", "ask1Price", "ask1Size", "prevPrice24h",
        "highPrice24h", "lowPrice24h", "volume24h", "turnover24h", "markPrice", "indexPrice",
    }),
    dialect="flight_md.emulator.dialects.bybit:BybitDialect",
    demo_symbols=("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"),
    test_symbols=("BTC/USDT:USDT", "ETH/USDT:USDT"),
    recording="bybit.jsonl.gz",
    quirks=(
        "spot tickers carry no best bid/ask; linear tickers arrive as a snapshot then deltas",
        "REST tickers carry no exchange timestamp: the receive time stands in",
        "ccxt cannot unsubscribe orderbook.1 (bidask): dropping a symbol restarts the session",
    ),
    # ccxt's urls.api with {hostname} = bybit.com: REST on api., websockets on stream.
    live_hosts={
        "/v5": "https://api.bybit.com", "/v5/public": "wss://stream.bybit.com",
        "/v5/private": "wss://stream.bybit.com", "/v5/trade": "wss://stream.bybit.com",
        "/spot/private/v3": "wss://stream.bybit.com",
        "/trade/option/usdc/private/v1": "wss://stream.bybit.com",
    },
)

"""Binance spot: combined websocket streams and REST v3.

Channels: ``ticker`` is ``<symbol>@ticker`` (ccxt ``watch_tickers`` with
``watchTickers.name = ticker``: the default ``miniTicker`` has no bid and ask); ``bidask`` is
``<symbol>@bookTicker``, which carries **no timestamp** (the receive time stands in);
``trades`` is ``<symbol>@trade`` (ccxt's default; the ccxt option
``watchTradesForSymbols.name = "aggTrade"`` selects aggregate trades, ids ``a``, which is what
the recording holds); ``book`` is the diff stream ``<symbol>@depth@100ms`` on a REST snapshot
(ccxt's ``watch_order_book_for_symbols``; the depth asked is the snapshot's).

URLs (``urls.api``): every REST key (``public``, ``private``, ``v1``, ``sapi*``, ``fapi*``,
``dapi*``, ``eapi*``, ``papi*``) keeps its path (``/api/v3``, ``/fapi/v1``, ...);
``urls.api.ws``: ``spot``, ``margin`` -> ``/ws``; ``linear`` -> ``/ws`` (ccxt rewrites it to
``/public/ws`` or ``/market/ws``); ``inverse`` -> ``/dws``; ``option*``, ``stock``, ``papi``,
``ws-api.*`` keep their paths. Redirected, ``fetchMarkets.types = ["spot"]``, so
``load_markets`` calls only ``GET /api/v3/exchangeInfo``; spot only also keeps market ids
unambiguous (ccxt tells a spot stream by ``/stream`` in the host name, which a local URL
lacks).

Limits: 100 symbols per subscribe message, each group on its own connection (at most 1,024
streams a connection); ccxt paces control messages to 4 a second, under Binance's 5.

Fast decoders (:mod:`flight_md.core.decode`) for ``bidask`` (``bookTicker``), ``ticker``
(``24hrTicker``) and ``trades`` (``trade``, ``aggTrade``), raw or in a combined stream's
``{"stream", "data"}`` envelope, reproducing ccxt 4.5's ``handle_bids_asks`` /
``handle_tickers`` / ``handle_trade`` (``parse_ws_ticker``, ``parse_trade``, ``safe_ticker``,
``safe_trade``). They decline (ccxt parses) any frame outside that plain shape: another
event, a list, a missing or non-string ``s``, a numeric field ccxt would run through its
``Precise`` arithmetic that is not a plain decimal, a ticker whose open or close ccxt would
derive from the change, an inverse market, fallback field names (``price``, ``bidPrice``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from flight_md.core import decode
from flight_md.core.decode import DecoderContext, DecodeSink, FrameDecoder
from flight_md.normalize import Channel
from flight_md.venues.base import BOOK_METHODS, TRADES_METHODS, ChannelMethods, Venue

_REST = {
    "public": "/api/v3", "private": "/api/v3", "v1": "/api/v1",
    "sapi": "/sapi/v1", "sapiV2": "/sapi/v2", "sapiV3": "/sapi/v3", "sapiV4": "/sapi/v4",
    "fapiPublic": "/fapi/v1", "fapiPublicV2": "/fapi/v2", "fapiPublicV3": "/fapi/v3",
    "fapiPrivate": "/fapi/v1", "fapiPrivateV2": "/fapi/v2", "fapiPrivateV3": "/fapi/v3",
    "fapiData": "/futures/data",
    "dapiPublic": "/dapi/v1", "dapiPrivate": "/dapi/v1", "dapiPrivateV2": "/dapi/v2",
    "dapiData": "/futures/data",
    "eapiPublic": "/eapi/v1", "eapiPrivate": "/eapi/v1",
    "papi": "/papi/v1", "papiV2": "/papi/v2",
}
_WS = {
    "spot": "/ws", "margin": "/ws", "linear": "/ws", "inverse": "/dws", "stock": "/equity/ws",
    "option": "/public/ws", "optionMarket": "/market/ws", "optionPrivate": "/private/ws",
    "papi": "/pm/ws",
}
_WS_API = {"spot": "/ws-api/v3", "linear": "/ws-fapi/v1", "inverse": "/ws-dapi/v1"}


def _overrides(rest: str, ws: str) -> dict[str, Any]:
    api: dict[str, Any] = {key: rest + path for key, path in _REST.items()}
    api["ws"] = {key: ws + path for key, path in _WS.items()}
    api["ws"]["ws-api"] = {key: ws + path for key, path in _WS_API.items()}
    return {"urls": {"api": api}, "options": {"fetchMarkets": {"types": ["spot"]}}}


def _trade_backfill(options: Mapping[str, Any], first_id: int) -> dict[str, Any]:
    # ccxt's fetch_trades reads aggTrades (ids a, from any fromId) by default. A trade
    # stream's ids (t) are those of /api/v3/trades and /historicalTrades; ccxt refuses the
    # latter without an API key, so a trade stream backfills from the last 1,000 trades.
    watch = options.get("watchTradesForSymbols")
    name = watch.get("name") if isinstance(watch, Mapping) else None
    if name == "aggTrade":
        return {"fromId": first_id}
    return {"fetchTradesMethod": "publicGetTrades", "limit": 1000}


# -- fast decoders ------------------------------------------------------------------------------

_TRADE_NUMBERS: Final = ("p", "q")
_BOOK_TICKER_KEYS: Final = frozenset({"u", "s", "b", "B", "a", "A"})
"""A spot bookTicker event (it has no ``e``; ccxt routes a frame with ``a`` and ``b`` to it)."""
_BOOK_TICKER_OPTIONAL: Final = frozenset({"E", "T"})
_TICKER_NUMBERS: Final = ("c", "o", "h", "l", "v", "q", "b", "B", "a", "A", "p", "P", "w", "x", "Q")
_TICKER_FALLBACKS: Final = frozenset(("price", "bidPrice", "askPrice", "bidQty", "askQty", "time", "symbol",
                            "id", "status", "error", "event", "data"))
_TRADE_FALLBACKS: Final = frozenset(("x", "isDustTrade", "price", "qty", "quantity", "time", "executionAt",
                           "tradeId", "executionId", "isBuyerMaker", "symbol", "optionSide",
                           "side", "isBuyer", "status", "error", "event", "data", "id"))


def _event(frame: str | bytes) -> dict[str, Any] | None:
    """The event a raw or combined-stream frame carries, as ccxt's ``handle_message`` unwraps
    it, or ``None`` for anything else (not JSON, not an object, another envelope)."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if type(message) is not dict:
        return None
    if "stream" in message:
        data = message.get("data")
        if len(message) != 2 or type(message["stream"]) is not str or type(data) is not dict:
            return None
        message = data
    return message


class _Markets:
    """What every Binance decoder needs of the loaded markets (ccxt's ``safe_market`` by the
    connection's URL)."""

    __slots__ = ("inverse", "raw_fields", "symbols")

    def __init__(self, context: DecoderContext) -> None:
        # ccxt's is_spot_url: a spot stream's host has /stream (a redirected URL has not).
        url = context.url
        kind = "spot" if "/stream" in url or "demo-stream" in url else "contract"
        self.symbols = decode.symbols_by_id(context.markets_by_id, kind)
        self.inverse = frozenset(
            market_id for market_id, markets in context.markets_by_id.items()
            if any(m.get("inverse") is True for m in markets))
        self.raw_fields = context.raw_fields

    def symbol(self, market_id: Any) -> str | None:
        """The unified symbol of a frame's ``s``, ``None`` (decline) where ccxt would not name
        it plainly."""
        if type(market_id) is not str or not market_id or market_id in self.inverse:
            return None
        return self.symbols.get(market_id, market_id)


def _clean(message: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
    """Whether every present field of ``keys`` is a plain decimal string."""
    clean = decode.clean_decimal
    for key in keys:
        value = message.get(key)
        if value is not None and (type(value) is not str or clean(value) is None):
            return False
    return True


class _BookTickerDecoder:
    """``<symbol>@bookTicker`` -> bidask rows (ccxt ``handle_bids_asks``)."""

    __slots__ = ("_markets",)

    def __init__(self, context: DecoderContext) -> None:
        self._markets = _Markets(context)

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        message = _event(frame)
        if message is None or "e" in message:
            return False
        keys = message.keys()
        if not _BOOK_TICKER_KEYS <= keys or not keys - _BOOK_TICKER_KEYS <= _BOOK_TICKER_OPTIONAL:
            return False
        symbol = self._markets.symbol(message["s"])
        if symbol is None:
            return False
        # parse_ws_ticker: timestamp = safe_integer_2(E, time); safe_ticker: bid, ask.
        stamp = message.get("E")
        decode.bidask(sink, symbol, None if stamp is None else decode.ccxt_int(stamp),
                      decode.ccxt_quote(message["b"]), decode.ccxt_quote(message["a"]), message,
                      self._markets.raw_fields, receive_ms)
        return True

    def reset(self) -> None:
        """Nothing is kept between frames."""


class _TickerDecoder:
    """``<symbol>@ticker`` (``24hrTicker``) -> ticker rows (ccxt ``handle_tickers``)."""

    __slots__ = ("_markets",)

    def __init__(self, context: DecoderContext) -> None:
        self._markets = _Markets(context)

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        message = _event(frame)
        if message is None or message.get("e") != "24hrTicker":
            return False
        if not message.keys().isdisjoint(_TICKER_FALLBACKS) or not _clean(message, _TICKER_NUMBERS):
            return False
        symbol = self._markets.symbol(message.get("s"))
        if symbol is None:
            return False
        quote = decode.ccxt_quote
        last, open_ = quote(message.get("c")), quote(message.get("o"))
        if last is None or open_ is None:
            return False  # safe_ticker derives the missing one from the change (Precise)
        try:
            stamp = decode.ccxt_int_n(message, ("C", "E", "time"))  # parse_ws_ticker
        except decode.Decline:
            return False
        decode.ticker(sink, symbol, stamp, last=last, bid=quote(message.get("b")),
                      ask=quote(message.get("a")), high=quote(message.get("h")),
                      low=quote(message.get("l")), open_=open_,
                      volume=decode.ccxt_number(message.get("v")), info=message,
                      raw_fields=self._markets.raw_fields, receive_ms=receive_ms)
        return True

    def reset(self) -> None:
        """Nothing is kept between frames."""


class _TradeDecoder:
    """``<symbol>@trade`` / ``@aggTrade`` -> trades (ccxt ``handle_trade``, ``parse_trade``)."""

    __slots__ = ("_markets",)

    def __init__(self, context: DecoderContext) -> None:
        self._markets = _Markets(context)

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        message = _event(frame)
        if message is None:
            return False
        event = message.get("e")
        if event != "trade" and event != "aggTrade":
            return False
        if not message.keys().isdisjoint(_TRADE_FALLBACKS) or not _clean(message, _TRADE_NUMBERS):
            return False
        price, amount = message.get("p"), message.get("q")
        if price is None or amount is None:
            return False  # safe_trade's cost: Precise of None
        symbol = self._markets.symbol(message.get("s"))
        if symbol is None:
            return False
        # parse_trade: id = safe_string_n(t, a, ...); timestamp = safe_integer_n(T, ...);
        # side from m (isBuyerMaker) when it is a bool.
        trade_id = decode.ccxt_string_n(message, ("t", "a", "tradeId", "id", "executionId"))
        try:
            stamp = decode.ccxt_int_n(message, ("T", "time", "executionAt"))
        except decode.Decline:
            return False
        maker = message.get("m")
        side = None if type(maker) is not bool else ("sell" if maker else "buy")
        decode.trade(sink, symbol, stamp, trade_id, float(price), float(amount), side,
                     receive_ms)
        return True

    def reset(self) -> None:
        """Nothing is kept between frames."""


def _book_ticker(context: DecoderContext) -> FrameDecoder:
    return _BookTickerDecoder(context)


def _ticker(context: DecoderContext) -> FrameDecoder:
    return _TickerDecoder(context)


def _trades(context: DecoderContext) -> FrameDecoder:
    return _TradeDecoder(context)


_DEPTH_KEYS: Final = frozenset({"e", "E", "s", "U", "u", "b", "a"})


class _BookDecoder:
    """Spot ``depthUpdate`` frames (raw or in a combined stream's envelope), parsed once, for
    the book stream's capture (:meth:`DecodeSink.book <flight_md.core.decode.DecodeSink.book>`).
    The capture takes them only for a book whose kept one it seeded from ccxt's REST snapshot
    (:class:`~flight_md.core.books.BinanceVerifier`): until then, and again after a resync or
    a new connection, they go to ccxt, which buffers them for its snapshot. Declined: every
    other frame, and every depth frame with other keys than a spot event's, update ids that
    are no integers, or levels ccxt could read other than the verifier does
    (:func:`~flight_md.core.decode.book_levels`)."""

    __slots__ = ()

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        if (_DEPTH_TEXT if type(frame) is str else _DEPTH_BYTES) not in frame:  # type: ignore[operator]
            return False
        message = _event(frame)
        if message is None or message.get("e") != "depthUpdate" or not _DEPTH_KEYS.issuperset(message):
            return False
        symbol, first, last = message.get("s"), message.get("U"), message.get("u")
        if (type(symbol) is not str or not symbol or type(first) is not int or type(last) is not int
                or first > last or type(message.get("E", 0)) is not int
                or not decode.book_levels(message.get("b")) or not decode.book_levels(message.get("a"))):
            return False
        return sink.book(message)

    def reset(self) -> None:
        """No per-connection state: the capture's verifier keeps the books."""


_DEPTH_TEXT: Final = '"depthUpdate"'
_DEPTH_BYTES: Final = b'"depthUpdate"'


def _book(context: DecoderContext) -> FrameDecoder:
    return _BookDecoder()


VENUE = Venue(
    id="binance",
    title="Binance spot",
    channels={
        Channel.TICKER: ChannelMethods("watch_tickers", "un_watch_tickers", "tickers"),
        Channel.BIDASK: ChannelMethods("watch_bids_asks", "un_watch_bids_asks", "bidsasks",
                                       rest=("fetch_bids_asks", "fetch_tickers", "fetch_ticker")),
        Channel.TRADES: TRADES_METHODS,
        Channel.BOOK: BOOK_METHODS,
    },
    symbols_per_message=100,
    # The diff stream (<symbol>@depth@100ms) updates the whole book; the depth is that of the
    # REST snapshot ccxt fetches to start it (GET /api/v3/depth). At least 1,000 levels, as
    # Binance advises: a level below a shallow snapshot is missing from ccxt's book until a diff
    # touches it, and surfaces as a wrong top N when the price moves there.
    book_depths=(1000, 5000),
    sequential_trade_ids=True,  # trade: t; aggTrade: a (both count up by one per market)
    trade_backfill=_trade_backfill,
    streams_per_connection=1024,
    control_per_second=5,
    connection_per_group=True,
    # watch_tickers defaults to miniTicker, which has no bid and ask. With API keys set,
    # load_markets would also call the private margin/allPairs to flag margin markets.
    ccxt_config={"options": {"watchTickers": {"name": "ticker"}, "fetchMargins": False}},
    url_overrides=_overrides,
    # 24hrTicker and bookTicker websocket events, /api/v3/ticker/24hr and /ticker/bookTicker rows.
    raw_numeric_fields=frozenset({
        "c", "o", "h", "l", "v", "q", "b", "B", "a", "A", "p", "P", "w", "x", "Q",
        "lastPrice", "openPrice", "highPrice", "lowPrice", "volume", "quoteVolume",
        "bidPrice", "bidQty", "askPrice", "askQty", "prevClosePrice", "weightedAvgPrice",
    }),
    decoders={Channel.BIDASK: _book_ticker, Channel.TICKER: _ticker, Channel.TRADES: _trades,
              Channel.BOOK: _book},
    dialect="flight_md.emulator.dialects.binance:BinanceDialect",
    demo_symbols=("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"),
    test_symbols=("BTC/USDT", "ETH/USDT"),
    recording="binance.jsonl.gz",
    quirks=(
        "bookTicker (the bidask channel) carries no exchange timestamp: the receive time stands in",
        "the ticker channel is the full 24hrTicker (ccxt's default miniTicker has no bid/ask)",
    ),
    # ccxt's urls.api hosts for the redirected paths that keep their path on the real host
    # (``/dws`` is dstream.binance.com's ``/ws``: not listed, spot never uses it).
    live_hosts={
        "/api": "https://api.binance.com", "/sapi": "https://api.binance.com",
        "/fapi": "https://fapi.binance.com", "/futures/data": "https://fapi.binance.com",
        "/dapi": "https://dapi.binance.com", "/eapi": "https://eapi.binance.com",
        "/papi": "https://papi.binance.com",
        "/ws": "wss://stream.binance.com:9443", "/ws-api/v3": "wss://ws-api.binance.com:443",
        "/ws-fapi/v1": "wss://ws-fapi.binance.com", "/ws-dapi/v1": "wss://ws-dapi.binance.com",
        "/public/ws": "wss://fstream.binance.com", "/market/ws": "wss://fstream.binance.com",
        "/private/ws": "wss://fstream.binance.com", "/pm/ws": "wss://fstream.binance.com",
        "/equity/ws": "wss://nbstream.binance.com",
    },
)

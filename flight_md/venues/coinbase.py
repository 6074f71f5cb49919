"""Coinbase Advanced Trade: one public websocket and REST ``/api/v3/brokerage`` (spot).

Channels: ``ticker`` is Coinbase's ``ticker`` channel through ccxt ``watch_ticker``, called
once per symbol (``per_symbol``): it carries every update, where ccxt's ``watch_tickers``
subscribes ``ticker_batch``, which Coinbase batches about every 5 s. Each push is the full
ticker (no deltas): last price, best bid/ask with sizes, 24 h high/low/volume/change and
52-week high/low, stamped with the message's ``timestamp``; it has **no open** (ccxt
derives one from the last price and the 24 h change) and no quote volume. ``bidask`` is the same channel and cache: ccxt has no bid/ask stream for
Coinbase, so the normaliser builds the bid/ask row from the ticker's best bid and ask. ccxt
writes every parsed ticker into ``exchange.tickers``.

Unsubscribing: ccxt's ``un_watch_ticker`` resolves only when Coinbase's ``subscriptions``
answer lists no subscription left on the connection, and it refuses a second unsubscribe
while one is pending. Dropping one of several symbols therefore never completes in ccxt
4.5.90 (and would leave ccxt refusing every later unsubscribe), so ``unwatch`` is ``None``:
dropping a symbol restarts the session, which subscribes only what is still wanted.

REST: ccxt's ``fetch_bids_asks`` is a private call (``/brokerage/best_bid_ask``), and
``fetch_tickers`` (``GET /api/v3/brokerage/market/products``) returns no best bid/ask, so
both channels poll ``fetch_ticker`` (``GET /api/v3/brokerage/market/products/{id}/ticker``:
the last trade and the best bid/ask, one request per symbol).

Unified symbols: ``BASE/QUOTE`` of the product id ``BASE-QUOTE`` (``BTC/USD``: ``BTC-USD``).
Coinbase lists ``BTC-USDC`` as an alias of ``BTC-USD``: subscribed, it streams ``BTC-USD``
data, which ccxt files under ``BTC/USD``, so stream the ``USD`` symbol.

URLs (``urls.api``): ``rest`` -> the base (ccxt appends ``/api/v3/<path>`` for the Advanced
Trade API and ``/v2/<path>`` for the v2 API: currencies, exchange rates, time); ``ws`` -> the
websocket base, path ``/`` (``wss://advanced-trade-ws.coinbase.com`` has no path; ccxt.pro
uses that one websocket for every channel). ``load_markets`` calls ``GET
/api/v3/brokerage/market/products`` twice, the second time with ``product_type=FUTURE``
(no option restricts it; the emulator lists no futures), and, where ``fetchCurrencies`` is
on (ingestion turns it off), ``GET /v2/currencies``, ``/v2/currencies/crypto`` and
``/v2/exchange-rates``. No option is needed.

Limits: Coinbase allows 8 unauthenticated websocket messages a second (per IP); ccxt paces
its websocket sends with its REST rate limiter (one token per ``rateLimit`` = 34 ms), so
``options.ws.cost = 5`` makes a subscribe cost 170 ms: at most 6 a second. ``watch_ticker``
sends one product a subscribe message (``symbols_per_message = 1``): subscribing 60 symbols
takes about 10 s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import orjson

from flight_md.core.ccxt_parse import (
    Decline,
    Unparseable,
    bidask_row,
    number,
    open_from_percentage,
    parse8601,
    precise_text,
    quote,
    safe_string,
    ticker_row,
)
from flight_md.core.decode import (
    DecoderContext,
    DecodeSink,
    FrameDecoder,
    book_named_levels,
    symbols_by_id,
)
from flight_md.normalize import Channel, DropReason, to_row, to_trade
from flight_md.venues.base import BOOKS_CACHE, TRADES_CACHE, ChannelMethods, Venue

# Both channels are the per-symbol ticker: see the module docstring.
_TICKER = ChannelMethods("watch_ticker", None, "tickers", per_symbol=True, rest=("fetch_ticker",))
# ccxt's un_watch_trades / un_watch_order_book wait for a subscriptions answer listing nothing
# left on the connection, like un_watch_ticker (see the module docstring): no unwatch.
_TRADES = ChannelMethods("watch_trades_for_symbols", None, TRADES_CACHE, rest=("fetch_trades",))
_BOOK = ChannelMethods("watch_order_book_for_symbols", None, BOOKS_CACHE, rest=())


def _overrides(rest: str, ws: str) -> dict[str, Any]:
    return {"urls": {"api": {"rest": rest, "ws": ws}}, "options": {}}


def _alias_of(market: Mapping[str, Any]) -> str | None:
    # A product's own "alias" names the product whose updates it streams (BTC-USDC: BTC-USD).
    info = market.get("info")
    alias = info.get("alias") if isinstance(info, Mapping) else None
    return alias if isinstance(alias, str) and alias else None



# -- fast decoders (flight_md.core.decode) ----------------------------------------------------
#
# What ccxt 4.5.90 does with each frame, which the decoders reproduce:
#
# * ``handle_message`` raises on a top-level ``"type": "error"`` and routes by ``channel``. A
#   decoder claims frames of its channels without a top-level ``type``.
# * ``ticker`` / ``ticker_batch`` (``handle_tickers``): the frame's ``timestamp`` (ISO 8601,
#   nanoseconds) through ``parse8601`` stamps every ticker in it. Each dict of each event's
#   ``tickers`` with a ``product_id`` is ``parse_ws_ticker``: symbol ``safe_symbol(id, None,
#   "-")``, last/close ``price``, bid/ask ``best_bid``/``best_ask``, high/low ``*_24_h``,
#   ``baseVolume`` ``volume_24_h``, all zero-omitted but the volume, and **no open**:
#   ``safe_ticker`` derives it from the close and ``price_percent_chg_24_h`` with ``Precise``
#   (``close / (1 + pct / 100)``, 18 decimals, truncated), which raises on text that is not a
#   number (such a frame is declined). ccxt stores each under its symbol, in order.
# * ``market_trades`` (``handle_trade``): the cache key is ``safe_symbol`` of the first event's
#   first trade; each event's trades are appended newest-first reversed (oldest first), each
#   ``parse_trade``: id ``trade_id``, price ``price``, amount ``size`` (``Precise`` multiplies
#   them), ``parse8601(time)``, side ``side`` lowercased (``unknown_order_side``: none). The
#   side is the maker's: the decoder delivers it as ccxt does and the trade path turns it round
#   (``maker_side_trades``).
#
# A product ccxt's markets do not know, a frame mixing products, a trade of another shape
# (``parse_trade`` also reads REST and private fields) and anything else these rules do not
# cover are declined: ccxt handles the frame as if there were no decoder.

_TICKER_CHANNELS: Final = frozenset({"ticker", "ticker_batch"})
_TRADE_KEYS: Final = frozenset({"trade_id", "product_id", "price", "size", "side", "time"})


def _loads(frame: str | bytes, channels: frozenset[str]) -> dict[str, Any] | None:
    """The frame's object if it is a data frame of one of ``channels``, else ``None``."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if type(message) is not dict or message.get("channel") not in channels or "type" in message:
        return None
    return message


def _open(close: float | None, percentage: str | None) -> float | None:
    """The open ``safe_ticker`` derives: ``close / (1 + percentage / 100)`` in ``Precise``
    (zero-omitted), where both are there."""
    if close is None or percentage is None:
        return None
    # safe_ticker re-reads the close as text: str() of the float parse_ws_ticker made.
    opened = open_from_percentage(str(close), percentage)
    return None if opened == 0.0 else opened


class CoinbaseTickerDecoder:
    """``ticker`` frames as ccxt's ``handle_tickers`` + ``to_row``: ``Channel.TICKER``, or
    ``Channel.BIDASK`` (the same channel, the row made of its best bid and ask)."""

    __slots__ = ("_channel", "_fields", "_symbols")

    def __init__(self, context: DecoderContext, channel: Channel) -> None:
        self._symbols = symbols_by_id(context.markets_by_id)
        self._fields = context.raw_fields
        self._channel = channel

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        """See :meth:`flight_md.core.decode.FrameDecoder.decode`."""
        message = _loads(frame, _TICKER_CHANNELS)
        if message is None:
            return False
        events = message.get("events")
        if type(events) is not list:
            return False
        timestamp = parse8601(safe_string(message.get("timestamp")))
        made: list[tuple[str, tuple[str, Any] | DropReason]] = []
        try:
            for event in events:
                tickers = event.get("tickers") if type(event) is dict else None
                if type(tickers) is not list:
                    continue  # ccxt: safe_list(..., []) of a missing or odd event
                for row in tickers:
                    if type(row) is not dict:
                        continue  # ccxt's safe_string finds no product_id: skipped
                    product = safe_string(row.get("product_id"))
                    if product is None:
                        continue  # ccxt skips a ticker without a product
                    symbol = self._symbols.get(product)
                    if symbol is None:
                        return False  # ccxt would build a symbol from the id's parts
                    made.append((symbol, self._ticker(symbol, row, timestamp, receive_ms)))
        except Unparseable:
            sink.drop(None, DropReason.UNPARSEABLE_FRAME)
            return True
        except (Decline, ValueError):  # ValueError: where ccxt's Precise raises too
            return False
        stamped = timestamp is not None
        for symbol, result in made:
            if isinstance(result, DropReason):
                sink.drop(symbol, result)
            else:
                sink.tick(symbol, result[1], stamped)
        return True

    def _ticker(self, symbol: str, row: dict[str, Any], timestamp: int | None,
                receive_ms: int) -> tuple[str, Any] | DropReason:
        price = safe_string(row.get("price"))
        last = number(price)
        percentage = precise_text(row.get("price_percent_chg_24_h"))
        if last is not None and not math.isfinite(last):
            raise Decline  # Precise of str(nan) / str(inf) raises in safe_ticker
        close = None if last == 0.0 else last
        if percentage is not None and number(percentage) == 0.0:
            percentage = None  # omit_zero
        bid, ask = quote(row.get("best_bid")), quote(row.get("best_ask"))
        if self._channel is Channel.BIDASK:
            good = bidask_row(timestamp, bid, ask, receive_ms)
            if good is not None:  # the common case, without to_row's checks
                return symbol, good
            ticker = {"symbol": symbol, "timestamp": timestamp, "bid": bid, "ask": ask,
                      "last": close, "info": row}
        else:
            high, low = quote(row.get("high_24_h")), quote(row.get("low_24_h"))
            opened = _open(close, percentage)
            volume = number(safe_string(row.get("volume_24_h")))
            good = ticker_row(timestamp, close, volume, bid, ask, high, low, opened, close,
                              receive_ms)
            if good is not None:
                return symbol, good
            ticker = {"symbol": symbol, "timestamp": timestamp, "last": close, "close": close,
                      "bid": bid, "ask": ask, "high": high, "low": low, "open": opened,
                      "baseVolume": volume, "info": row}
        return to_row(ticker, exchange="coinbase", channel=self._channel, receive_ms=receive_ms,
                      raw_fields=self._fields)

    def reset(self) -> None:
        """No per-connection state: every push is a whole ticker."""


def _side(trade: Mapping[str, Any]) -> str | None:
    """ccxt's ``safe_string_lower_2(trade, "resource", "side")``, ``unknown_order_side`` as none."""
    side = safe_string(trade.get("side"))
    if side is None:
        return None
    side = side.lower()
    return None if side == "unknown_order_side" else side


class CoinbaseTradesDecoder:
    """``market_trades`` frames (``Channel.TRADES``) as ccxt's ``handle_trade`` + ``to_trade``."""

    __slots__ = ("_symbols",)

    def __init__(self, context: DecoderContext) -> None:
        self._symbols = symbols_by_id(context.markets_by_id)

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        """See :meth:`flight_md.core.decode.FrameDecoder.decode`."""
        message = _loads(frame, _MARKET_TRADES)
        if message is None:
            return False
        events = message.get("events")
        if type(events) is not list or not events or type(events[0]) is not dict:
            return False
        first = events[0].get("trades")
        if type(first) is not list or not first or type(first[0]) is not dict:
            return False  # ccxt would name the cache after no product (and raise)
        product = first[0].get("product_id")
        if type(product) is not str:
            return False
        symbol = self._symbols.get(product)
        if symbol is None:
            return False
        made: list[Any] = []
        try:
            for event in events:
                trades = event.get("trades") if type(event) is dict else None
                if type(trades) is not list:
                    continue  # ccxt: an event without trades
                for index in range(len(trades) - 1, -1, -1):  # newest first on the wire
                    made.append(self._trade(symbol, product, trades[index], receive_ms))
        except Unparseable:
            sink.drop(None, DropReason.UNPARSEABLE_FRAME)
            return True
        except Decline:
            return False
        for result in made:
            if isinstance(result, DropReason):
                sink.drop(symbol, result)
            else:
                sink.trade(result, True, 1)
        return True

    @staticmethod
    def _trade(symbol: str, product: str, row: Any, receive_ms: int) -> Any:
        if type(row) is not dict or not row.keys() <= _TRADE_KEYS or row.get("product_id") != product:
            raise Decline  # another product, or a trade shape parse_trade reads otherwise
        timestamp = parse8601(safe_string(row.get("time")))
        if timestamp is None:
            raise Decline  # the sink's trade is stamped by the exchange
        price = precise_text(row.get("price"))
        amount = precise_text(row.get("size"))
        trade = {"symbol": symbol, "id": safe_string(row.get("trade_id")), "timestamp": timestamp,
                 "price": number(price), "amount": number(amount), "side": _side(row)}
        return to_trade(trade, receive_ms)

    def reset(self) -> None:
        """No per-connection state: every row is one whole trade."""


_MARKET_TRADES: Final = frozenset({"market_trades"})


def _ticker_decoder(context: DecoderContext) -> FrameDecoder | None:
    return CoinbaseTickerDecoder(context, Channel.TICKER)


def _bidask_decoder(context: DecoderContext) -> FrameDecoder | None:
    return CoinbaseTickerDecoder(context, Channel.BIDASK)


def _trades_decoder(context: DecoderContext) -> FrameDecoder | None:
    return CoinbaseTradesDecoder(context)


_L2: Final = frozenset({"l2_data"})
_BOOK_EVENTS: Final = frozenset({"snapshot", "update"})
_BOOK_SIDES: Final = frozenset({"bid", "offer"})


class CoinbaseBookDecoder:
    """``l2_data`` frames, parsed once, for the book stream's capture (:meth:`DecodeSink.book
    <flight_md.core.decode.DecodeSink.book>`), which applies them to the books its verifier
    keeps (:class:`~flight_md.core.books.CoinbaseVerifier`, which also numbers every frame of
    the connection: the ones declined reach it through ccxt's path); ccxt never sees them.
    Declined: every other frame, and every ``l2_data`` frame the verifier would not find well
    formed (no integer ``sequence_num``, an event without its ``product_id``, of another
    ``type``) or that ccxt's ``handle_order_book`` could read other than the verifier does (a
    ``timestamp`` that is no string, a side neither ``bid`` nor ``offer``, levels
    :func:`~flight_md.core.decode.book_named_levels` refuses): ccxt's path, with the kept
    book as ccxt's, then counts it as it would."""

    __slots__ = ()

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        if (_L2_TEXT if type(frame) is str else _L2_BYTES) not in frame:  # type: ignore[operator]
            return False
        message = _loads(frame, _L2)
        if (message is None or type(message.get("sequence_num")) is not int
                or type(message.get("timestamp")) is not str):
            return False
        events = message.get("events")
        if type(events) is not list or not events:
            return False
        sides = _BOOK_SIDES
        for event in events:
            if type(event) is not dict:
                return False
            product, kind, updates = event.get("product_id"), event.get("type"), event.get("updates")
            if (type(product) is not str or not product or type(kind) is not str
                    or kind not in _BOOK_EVENTS or type(updates) is not list
                    or not book_named_levels(updates, "price_level", "new_quantity")):
                return False
            for update in updates:
                side = update.get("side")
                if type(side) is not str or side not in sides:
                    return False
        return sink.book(message)

    def reset(self) -> None:
        """No per-connection state: the capture's verifier keeps the books."""


_L2_TEXT: Final = '"l2_data"'
_L2_BYTES: Final = b'"l2_data"'


def _book_decoder(context: DecoderContext) -> FrameDecoder | None:
    return CoinbaseBookDecoder()


VENUE = Venue(
    id="coinbase",
    title="Coinbase Advanced Trade (spot)",
    channels={Channel.TICKER: _TICKER, Channel.BIDASK: _TICKER, Channel.TRADES: _TRADES,
              Channel.BOOK: _BOOK},
    sequential_trade_ids=True,  # market_trades trade_id counts up by one per product
    # market_trades' side is the maker's (a taker buy at the ask is SELL), as ccxt passes it on.
    maker_side_trades=True,
    symbols_per_message=1,
    control_per_second=8,
    # 5 tokens of ccxt's 34 ms bucket per websocket message: under Coinbase's 8 a second.
    ccxt_config={"options": {"ws": {"cost": 5}}},
    url_overrides=_overrides,
    # ticker websocket events, /market/products rows and the trades of /products/{id}/ticker.
    raw_numeric_fields=frozenset({
        "price", "volume_24_h", "low_24_h", "high_24_h", "low_52_w", "high_52_w",
        "price_percent_chg_24_h", "best_bid", "best_ask", "best_bid_quantity", "best_ask_quantity",
        "volume_24h", "price_percentage_change_24h", "approximate_quote_24h_volume", "size",
    }),
    dialect="flight_md.emulator.dialects.coinbase:CoinbaseDialect",
    demo_symbols=("BTC/USD", "ETH/USD", "SOL/USD", "BTC/EUR", "ETH/BTC"),
    test_symbols=("BTC/USD", "ETH/USD"),
    recording="coinbase.jsonl.gz",
    quirks=(
        ("the ticker carries last, best bid/ask with sizes, 24h high/low/volume/change and the "
         "message timestamp; no open (ccxt derives it from last and the 24h change) and no quote volume"),
        "bidask is the ticker channel: the row is the ticker's best bid and ask",
        ("ccxt cannot unsubscribe one Coinbase ticker of several: dropping a symbol restarts the "
         "session"),
        ("REST polls fetch_ticker, one request per symbol (last trade, best bid/ask; no 24h "
         "figures); ccxt's fetch_bids_asks is private"),
        ("BTC/USDC and other USDC aliases stream as BTC/USD: subscribing one is refused with "
         "the USD symbol to use"),
    ),
    live_hosts={
        "/api/v3": "https://api.coinbase.com",
        "/v2": "https://api.coinbase.com",
        "/": "wss://advanced-trade-ws.coinbase.com",
    },
    alias_of=_alias_of,
    decoders={Channel.TICKER: _ticker_decoder, Channel.BIDASK: _bidask_decoder,
              Channel.TRADES: _trades_decoder, Channel.BOOK: _book_decoder},
)

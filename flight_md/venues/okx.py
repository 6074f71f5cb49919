"""OKX v5: one public websocket (``/ws/v5/public``) and REST ``/api/v5`` for spot, swaps,
dated futures and options.

Channels: ``ticker`` is ``tickers`` (ccxt ``watch_tickers``: every push is the full ticker:
last, best bid/ask with sizes, 24 h open/high/low/volumes and the exchange timestamp ``ts``);
``bidask`` is ``bbo-tbt`` (ccxt ``watch_bids_asks``: the best bid and ask with sizes, tick by
tick, with ``ts``; ccxt has no ``un_watch_bids_asks`` for OKX, so dropping a symbol restarts
the session). Every parsed update lands in ``exchange.tickers`` (``tickers``) or
``exchange.bidsasks`` (``bbo-tbt``). ccxt has no ``fetch_bids_asks`` for OKX: the bid/ask
REST fallback polls ``fetch_tickers`` (``GET /api/v5/market/tickers``, one call per
instrument type), which carries ``bidPx``/``askPx``.

Unified symbols: spot ``BTC/USDT`` (id ``BTC-USDT``), linear swap ``BTC/USDT:USDT``
(``BTC-USDT-SWAP``), inverse swap ``UNI/USD:UNI`` (``UNI-USD-SWAP``), dated future
``BTC/USD:BTC-220527`` (``BTC-USD-220527``), option ``BTC/USD:BTC-220514-22000-C``.

URLs (``urls.api``): ``rest`` -> the base (ccxt appends ``/api/v5/<path>``; the default is
``https://{hostname}``, ``www.okx.com``); ``ws`` -> ``<ws base>/ws/v5`` (ccxt appends
``/public``, ``/business`` for candles, ``/private``; only ``/public`` carries the market
data flight_md reads). No option is needed: ``load_markets`` calls ``GET
/api/v5/public/instruments`` for ``instType`` SPOT, FUTURES, SWAP and, per underlying of
``options.defaultUnderlying`` (``BTC-USD``, ``ETH-USD``), OPTION, and the emulator serves all
of them (``fetch_currencies`` is private on OKX and skipped without keys).

Limits: a subscribe request may be at most 64 KB (some 1,500 ``tickers`` arguments); 100
symbols a message keeps far below it. OKX limits subscribe/unsubscribe/login requests to
480 an hour per connection and new connections to 3 a second per IP (not per second per
connection, so ``control_per_second`` is unset); it drops a connection silent for 30 s,
which ccxt prevents by sending the text ``ping`` every 18 s (answered ``pong``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from flight_md.core.ccxt_parse import (
    Decline,
    Unparseable,
    bidask_row,
    number,
    precise_text,
    quote,
    safe_integer,
    safe_string,
    ticker_row,
)
from flight_md.core.decode import (
    DecoderContext,
    DecodeSink,
    FrameDecoder,
    Markets,
    book_levels,
    symbols_by_id,
)
from flight_md.normalize import Channel, DropReason, to_row, to_trade
from flight_md.venues.base import BOOK_METHODS, TRADES_METHODS, ChannelMethods, Venue


def _overrides(rest: str, ws: str) -> dict[str, Any]:
    return {"urls": {"api": {"rest": rest, "ws": f"{ws}/ws/v5"}}, "options": {}}


def _trade_id_span(info: Mapping[str, Any]) -> int:
    # OKX's trades channel pushes one row per taker order: tradeId is the last fill's id and
    # count the fills aggregated (docs: "the last trade ID in the trades aggregation"; not
    # verified against the live venue here: the 2022 recording and the emulator send count 1).
    count = info.get("count")
    return int(count) if isinstance(count, str) and count.isdigit() and int(count) > 0 else 1



# -- fast decoders (flight_md.core.decode) ----------------------------------------------------
#
# What ccxt 4.5.90 does with each frame, which the decoders reproduce:
#
# * ``handle_message`` first runs ``handle_error_message`` (a ``code`` other than "0" raises),
#   then routes ``event``/``op`` frames to their handlers and data frames by ``arg.channel``.
#   A decoder claims data frames of its channel only, without ``event``, ``op`` or ``code``.
# * ``tickers`` (``handle_ticker``): the key ccxt stores under is ``safe_market(arg.instId,
#   None, "-")``'s symbol; each ``data`` row is ``parse_ticker(row)`` (its own ``instId``), then
#   ``safe_ticker``: ``last``/``close`` = ``omit_zero(last)``, ``open``/``high``/``low``/``bid``/
#   ``ask`` likewise zero-omitted, ``baseVolume`` = ``vol24h``, ``timestamp`` =
#   ``safe_integer(ts)``. ``safe_ticker`` computes change, percentage, average and (spot) vwap
#   from ``last``, ``open24h``, ``vol24h`` and ``volCcy24h`` with ``Precise``, which raises on
#   text that is not a number: such a frame is declined (ccxt counts it unparseable). Every
#   other field is ``parse_number`` (``None`` for text that is not a number), and
#   :func:`~flight_md.normalize.to_row` checks the raw row (``info``), so the decoder hands it
#   the same unified values and the same ``info``.
# * ``bbo-tbt`` (``handle_order_book`` -> ``handle_bid_ask``; ``handle_ticker`` calls it for a
#   ``tickers`` frame too): only ``data[0]``, named by ``arg.instId``; bid/ask are
#   ``bidPx``/``askPx`` where present, else ``bids[0][0]`` / ``asks[0][0]``; no ``Precise``.
# * ``trades`` (``handle_trades``): the cache key is ``safe_symbol(arg.instId)``; each row is
#   ``parse_trade(row)``: id ``tradeId``, symbol from its own ``instId``, price ``fillPx`` else
#   ``px``, amount ``fillSz`` else ``sz``, ``safe_integer(ts)``, side as sent; ``safe_trade``
#   multiplies price by amount with ``Precise`` (raises on text that is not a number).
#
# An id ccxt's markets do not know (so ``safe_market`` would build a symbol from the id's
# parts), a row naming another instrument than its ``arg``, and any value of a shape these
# rules do not cover are declined: ccxt handles the frame as if there were no decoder.

_NOT_OURS: Final = ("event", "op", "code")


def _loads(frame: str | bytes) -> dict[str, Any] | None:
    """The frame's object, or ``None`` (not JSON, not an object, or not a data frame)."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if type(message) is not dict or "data" not in message:
        return None
    for key in _NOT_OURS:
        if key in message:
            return None
    return message


def _arg(message: Mapping[str, Any], channel: str, symbols: Markets) -> tuple[str, str] | None:
    """``(instId, symbol)`` of a data frame of ``channel`` on a market ccxt knows."""
    arg = message.get("arg")
    if type(arg) is not dict or arg.get("channel") != channel:
        return None
    inst_id = arg.get("instId")
    if type(inst_id) is not str:
        return None
    symbol = symbols.get(inst_id)
    return None if symbol is None else (inst_id, symbol)


def _data_frame(frame: str | bytes, channels: tuple[str, ...],
                symbols: Markets) -> tuple[str, str, Any] | None:
    """``(instId, symbol, data)`` of a data frame of one of ``channels`` (the first that
    matches) on a market ccxt knows, else ``None``."""
    message = _loads(frame)
    if message is None:
        return None
    for channel in channels:
        named = _arg(message, channel, symbols)
        if named is not None:
            return named[0], named[1], message["data"]
    return None


class OkxTickerDecoder:
    """``tickers`` frames (``Channel.TICKER``) as ccxt's ``handle_ticker`` + ``to_row``."""

    __slots__ = ("_fields", "_symbols")

    def __init__(self, context: DecoderContext) -> None:
        self._symbols = symbols_by_id(context.markets_by_id)
        self._fields = context.raw_fields

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        """See :meth:`flight_md.core.decode.FrameDecoder.decode`."""
        framed = _data_frame(frame, ("tickers",), self._symbols)
        if framed is None:
            return False
        inst_id, symbol, data = framed
        if type(data) is not list:
            return False
        made: list[tuple[tuple[str, Any] | DropReason, bool]] = []
        try:
            for row in data:
                if type(row) is not dict or row.get("instId") != inst_id:
                    return False  # parse_ticker would name it by another (or no) instrument
                last = precise_text(row.get("last"))
                open_ = precise_text(row.get("open24h"))
                volume = precise_text(row.get("vol24h"))
                precise_text(row.get("volCcy24h"))  # spot vwap: Precise
                price = number(last)
                if price == 0.0:
                    price = None
                timestamp = safe_integer(row.get("ts"))
                bid, ask = quote(row.get("bidPx")), quote(row.get("askPx"))
                high, low = quote(row.get("high24h")), quote(row.get("low24h"))
                opened, base_volume = quote(open_), number(volume)
                good = ticker_row(timestamp, price, base_volume, bid, ask, high, low, opened,
                                  price, receive_ms)
                if good is not None:  # the common case, without to_row's checks
                    made.append(((symbol, good), timestamp is not None))
                    continue
                ticker = {
                    "symbol": symbol, "timestamp": timestamp, "last": price, "close": price,
                    "bid": bid, "ask": ask, "high": high, "low": low, "open": opened,
                    "baseVolume": base_volume, "info": row,
                }
                made.append((to_row(ticker, exchange="okx", channel=Channel.TICKER,
                                    receive_ms=receive_ms, raw_fields=self._fields),
                             timestamp is not None))
        except Unparseable:
            sink.drop(None, DropReason.UNPARSEABLE_FRAME)
            return True
        except Decline:
            return False
        for result, stamped in made:
            if isinstance(result, DropReason):
                sink.drop(symbol, result)
            else:
                sink.tick(symbol, result[1], stamped)
        return True

    def reset(self) -> None:
        """No per-connection state: every push is a whole ticker."""


class OkxBidAskDecoder:
    """``bbo-tbt`` frames (``Channel.BIDASK``) as ccxt's ``handle_bid_ask`` + ``to_row``; also
    ``tickers`` frames, whose best bid and ask ccxt stores as a bid/ask too."""

    __slots__ = ("_fields", "_symbols")

    def __init__(self, context: DecoderContext) -> None:
        self._symbols = symbols_by_id(context.markets_by_id)
        self._fields = context.raw_fields

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        """See :meth:`flight_md.core.decode.FrameDecoder.decode`."""
        framed = _data_frame(frame, ("bbo-tbt", "tickers"), self._symbols)
        if framed is None:
            return False
        inst_id, symbol, data = framed
        row = data[0] if type(data) is list and data else None
        if type(row) is not dict or row.get("instId", inst_id) != inst_id:
            return False  # no row (ccxt stores an empty ticker), or a row naming another market
        ask = safe_string(row.get("askPx"))
        bid = safe_string(row.get("bidPx"))
        if ask is None:
            ask = _first_price(row.get("asks"))
        if bid is None:
            bid = _first_price(row.get("bids"))
        ask_number, bid_number = number(ask), number(bid)
        timestamp = safe_integer(row.get("ts"))
        good = bidask_row(timestamp, bid_number, ask_number, receive_ms)
        if good is not None:  # the common case, without to_row's checks
            sink.tick(symbol, good, timestamp is not None)
            return True
        ticker = {
            "symbol": symbol, "timestamp": timestamp,
            "bid": None if bid_number == 0.0 else bid_number,
            "ask": None if ask_number == 0.0 else ask_number, "info": row,
        }
        made = to_row(ticker, exchange="okx", channel=Channel.BIDASK, receive_ms=receive_ms,
                      raw_fields=self._fields)
        if isinstance(made, DropReason):
            sink.drop(symbol, made)
        else:
            sink.tick(symbol, made[1], ticker["timestamp"] is not None)
        return True

    def reset(self) -> None:
        """No per-connection state: every push is the whole best bid and ask."""


def _first_price(levels: Any) -> str | None:
    """ccxt's ``safe_string(safe_list(safe_list(row, side, []), 0, []), 0)``."""
    if type(levels) is not list or not levels:
        return None
    level = levels[0]
    if type(level) is not list or not level:
        return None
    return safe_string(level[0])


class OkxTradesDecoder:
    """``trades`` frames (``Channel.TRADES``) as ccxt's ``handle_trades`` + ``to_trade``."""

    __slots__ = ("_symbols",)

    def __init__(self, context: DecoderContext) -> None:
        self._symbols = symbols_by_id(context.markets_by_id)

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        """See :meth:`flight_md.core.decode.FrameDecoder.decode`."""
        framed = _data_frame(frame, ("trades",), self._symbols)
        if framed is None:
            return False
        inst_id, symbol, data = framed
        if type(data) is not list:
            return False
        made: list[tuple[Any, int]] = []
        try:
            for row in data:
                if type(row) is not dict or row.get("instId") != inst_id:
                    return False
                if "fillPx" in row or "fillSz" in row or "fee" in row:
                    return False  # a private fill's shape, not the public channel's
                timestamp = safe_integer(row.get("ts"))
                if timestamp is None:
                    return False  # the sink's trade is stamped by the exchange
                price = precise_text(row.get("px"))
                amount = precise_text(row.get("sz"))
                trade = {"symbol": symbol, "id": safe_string(row.get("tradeId")),
                         "timestamp": timestamp, "price": number(price),
                         "amount": number(amount), "side": safe_string(row.get("side"))}
                made.append((to_trade(trade, receive_ms), _trade_id_span(row)))
        except Unparseable:
            sink.drop(None, DropReason.UNPARSEABLE_FRAME)
            return True
        except Decline:
            return False
        for result, span in made:
            if isinstance(result, DropReason):
                sink.drop(symbol, result)
            else:
                sink.trade(result, True, span)
        return True

    def reset(self) -> None:
        """No per-connection state: every row is one whole trade."""


def _ticker_decoder(context: DecoderContext) -> FrameDecoder | None:
    return OkxTickerDecoder(context)


def _bidask_decoder(context: DecoderContext) -> FrameDecoder | None:
    return OkxBidAskDecoder(context)


def _trades_decoder(context: DecoderContext) -> FrameDecoder | None:
    return OkxTradesDecoder(context)


_BOOK_CHANNELS: Final = frozenset({"books", "books-l2-tbt", "books50-l2-tbt"})
_ACTIONS: Final = frozenset({"snapshot", "update"})
"""The depth channels the verifier checks and keeps (:class:`~flight_md.core.books.OkxVerifier`)."""


class OkxBookDecoder:
    """``books`` (``books-l2-tbt``, ``books50-l2-tbt``) frames, parsed once, for the book
    stream's capture (:meth:`DecodeSink.book <flight_md.core.decode.DecodeSink.book>`), which
    applies them to the books its verifier keeps; ccxt never sees them (so ccxt never makes
    a book of its own, and ignores an update it is handed later). Declined: every other
    frame, and every book frame the verifier would not find well formed (an ``action``
    neither ``snapshot`` nor ``update``, an empty ``instId``, a ``seqId``, ``prevSeqId`` or
    ``checksum`` that is no integer, a ``ts`` that is no string) or whose levels
    ccxt's ``handle_order_book_message`` could read other than the verifier does
    (:func:`~flight_md.core.decode.book_levels`): ccxt's path, with the kept book as
    ccxt's, then counts it as it would."""

    __slots__ = ()

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        message = _loads(frame)
        if message is None:
            return False
        arg, data = message.get("arg"), message["data"]
        if type(arg) is not dict or type(data) is not list or not data:
            return False
        channel, inst_id, action = arg.get("channel"), arg.get("instId"), message.get("action")
        if (type(channel) is not str or channel not in _BOOK_CHANNELS or type(inst_id) is not str
                or not inst_id or type(action) is not str or action not in _ACTIONS):
            return False
        for row in data:
            # seqId, prevSeqId, checksum: absent (OKX before 2023) or integers.
            if (type(row) is not dict or type(row.get("seqId", 0)) is not int
                    or type(row.get("prevSeqId", 0)) is not int
                    or type(row.get("checksum", 0)) is not int
                    or type(row.get("ts")) is not str or not book_levels(row.get("bids", []))
                    or not book_levels(row.get("asks", []))):
                return False
        return sink.book(message)

    def reset(self) -> None:
        """No per-connection state: the capture's verifier keeps the books."""


def _book_decoder(context: DecoderContext) -> FrameDecoder | None:
    return OkxBookDecoder()


VENUE = Venue(
    id="okx",
    title="OKX v5 (spot, swaps, futures)",
    channels={
        Channel.TICKER: ChannelMethods("watch_tickers", "un_watch_tickers", "tickers"),
        Channel.BIDASK: ChannelMethods("watch_bids_asks", None, "bidsasks",
                                       rest=("fetch_tickers", "fetch_ticker")),
        Channel.TRADES: TRADES_METHODS,  # trades: tradeId counts up by one per instrument
        Channel.BOOK: BOOK_METHODS,
    },
    symbols_per_message=100,
    # ccxt's channel for a limit: 1 bbo-tbt, 2..5 books5, 50 books50-l2-tbt, 400 books (its
    # default). Only books (400 levels, snapshot + deltas with seqId and checksum) carries every
    # update: books5 pushes a 5-level snapshot at most every 100 ms, bbo-tbt is the bidask
    # channel, and the two l2-tbt channels need a VIP login.
    book_depths=(400,),
    sequential_trade_ids=True,
    trade_id_span=_trade_id_span,
    url_overrides=_overrides,
    # tickers websocket data and /api/v5/market/ticker(s) rows (the same fields);
    # bbo-tbt carries its prices in lists, which ccxt parses itself.
    raw_numeric_fields=frozenset({
        "last", "lastSz", "askPx", "askSz", "bidPx", "bidSz", "open24h", "high24h", "low24h",
        "volCcy24h", "vol24h", "sodUtc0", "sodUtc8",
    }),
    dialect="flight_md.emulator.dialects.okx:OkxDialect",
    demo_symbols=("BTC/USDT", "ETH/USDT", "SOL/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT"),
    test_symbols=("BTC/USDT", "ETH/USDT:USDT"),
    recording="okx.jsonl.gz",
    quirks=(
        ("the ticker channel carries last, best bid/ask with sizes, 24h open/high/low/volumes and "
         "the exchange timestamp; no mark or index price"),
        "swap and future tickers count baseVolume in contracts (OKX vol24h), not in the base currency",
        ("bidask is bbo-tbt (tick-by-tick best bid/ask, no last price); ccxt cannot unsubscribe it: "
         "dropping a symbol restarts the session"),
        "ccxt has no REST bids/asks for OKX: the bidask REST fallback polls fetch_tickers",
    ),
    live_hosts={"/api/v5": "https://www.okx.com", "/ws/v5": "wss://ws.okx.com:443"},
    decoders={Channel.TICKER: _ticker_decoder, Channel.BIDASK: _bidask_decoder,
              Channel.TRADES: _trades_decoder, Channel.BOOK: _book_decoder},
)

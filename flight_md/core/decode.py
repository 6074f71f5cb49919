"""The fast decoders' contract: a venue's frames straight into rows, ccxt doing the rest.

ccxt parses each websocket frame into a unified structure (a dict per ticker or trade) that
:mod:`flight_md.normalize` then turns into a row. For the hot channels (``bidask``,
``ticker``, ``trades``) a venue module may define a :class:`FrameDecoder` that reads the
frame's text itself (orjson) and writes the rows ccxt's path would have stored, without
building ccxt's structures. ccxt keeps everything else: markets, connections, subscriptions,
keep-alive, reconnects, authentication and every frame the decoder does not claim.

The contract, which a differential test checks over every frame of every recording:

* :meth:`FrameDecoder.decode` returns ``False`` for a frame it does not know (a subscribe
  acknowledgement, a pong, another channel, anything unexpected); ccxt then handles the frame
  as if no decoder were there. It returns ``True`` only when it delivered *everything* the
  ccxt path would have delivered for that frame (rows and drops, in the same order) to the
  :class:`DecodeSink`; ccxt does not see the frame.
* A claimed frame gives the same rows as ccxt plus :func:`flight_md.normalize.to_row` /
  :func:`~flight_md.normalize.to_trade`: same values (NaN where ccxt gave ``None``), same
  symbols, same drops with the same :class:`~flight_md.normalize.DropReason`.
* A decoder never raises on bad input: a frame it cannot read is either declined (``False``,
  so ccxt's own error handling counts it) or delivered as the drops ccxt's path would count.
* Decoders are pure (no I/O, no asyncio, no ccxt import); any state they need (a venue that
  sends deltas against a previous ticker) is theirs and is reset by :meth:`reset` when the
  connection is replaced.

Registering one: a venue module lists a :data:`DecoderFactory` per channel in
:attr:`Venue.decoders <flight_md.venues.base.Venue.decoders>`. Ingestion calls it once per
websocket connection (ccxt client) of a stream of that channel, with a
:class:`DecoderContext` (the connection's URL, ccxt's loaded markets and options); the
factory returns the connection's decoder, or ``None`` where it cannot decode that
connection (every frame then goes to ccxt). ``decoder="ccxt"`` on a stream never calls it.

Book decoders (``Channel.BOOK``) deliver no rows: they recognise the venue's book frames,
parse them once (orjson) and hand each to :meth:`DecodeSink.book`, which the book stream's
capture answers (:mod:`flight_md.ingest.books`): its verifier keeps the books, so the rows are
made of its levels. A book decoder declines every frame ccxt's book code could treat other
than the verifier does (:func:`book_levels`), so those keep ccxt's path exactly.

This module imports neither asyncio, ccxt nor pyarrow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

from flight_md.core import ccxt_parse
from flight_md.normalize import (
    MAX_FUTURE_MS,
    MIN_TIMESTAMP_MS,
    Channel,
    DropReason,
    Side,
    TradeFields,
    to_row,
    to_trade,
)

__all__ = [
    "Decline",
    "DecodeSink",
    "DecoderContext",
    "DecoderFactory",
    "DecoderKind",
    "FrameDecoder",
    "Markets",
    "bidask",
    "book_levels",
    "book_named_levels",
    "ccxt_first",
    "ccxt_int",
    "ccxt_int_n",
    "ccxt_number",
    "ccxt_quote",
    "ccxt_string",
    "ccxt_string_n",
    "clean_decimal",
    "symbols_by_id",
    "ticker",
    "trade",
]

Markets = Mapping[str, str]
"""A venue's market id as its frames name it (``BTCUSDT``) -> the unified symbol (``BTC/USDT``),
for the markets ccxt loaded."""


class DecoderKind(StrEnum):
    """What parses a stream's websocket frames (``decoder=`` of a stream, ``--decoder``)."""

    FAST = "fast"
    """The venue's fast decoder for the channel where it has one, else ccxt."""
    CCXT = "ccxt"
    """ccxt parses every frame."""


class DecodeSink(Protocol):
    """Where a decoder delivers what one frame holds (the stream's tick or trade path)."""

    def tick(self, symbol: str, row: Sequence[float], stamped: bool,
             key: str | None = None) -> None:
        """A good ``ticker``/``bidask`` row, exactly :func:`flight_md.normalize.to_row`'s
        second element; ``stamped``: the exchange sent a timestamp (else ``row[0]`` is the
        receive time); ``key``: where it differs from ``symbol`` (the ticker's own), the key
        ccxt stored it under in its cache, which the stream's subscriptions and counts go by
        (a Bybit delta naming another market than its topic)."""

    def trade(self, fields: TradeFields, stamped: bool = True, span: int = 1) -> None:
        """A good trade, exactly what :func:`flight_md.normalize.to_trade` returns for it;
        ``stamped``: ccxt's trade had a ``timestamp`` (else ``fields[1]`` is the receive
        time); ``span``: what :attr:`Venue.trade_id_span
        <flight_md.venues.base.Venue.trade_id_span>` gives for its payload (OKX ``count``)."""

    def drop(self, symbol: str | None, reason: DropReason) -> None:
        """An update the ccxt path would have dropped (``symbol``: ``None`` when it had none)."""

    def book(self, frame: Mapping[str, Any]) -> bool:
        """A book frame, parsed (a ``book`` decoder's only delivery): the book stream's capture
        verifies it and applies it to its kept book (:mod:`flight_md.ingest.books`, "the fast
        path"); ``False`` (only a stream without a book capture) leaves the frame to ccxt."""


class FrameDecoder(Protocol):
    """One venue's decoder of one channel, built with the markets ccxt loaded."""

    def decode(self, frame: str | bytes, receive_ms: int, sink: DecodeSink) -> bool:
        """Deliver ``frame``'s updates to ``sink`` and return ``True``, or return ``False``
        (nothing delivered) for a frame ccxt must handle."""

    def reset(self) -> None:
        """Forget per-connection state (the websocket was replaced)."""


@dataclass(frozen=True, slots=True)
class DecoderContext:
    """What a decoder of one websocket connection is built with.

    Attributes:
        url: The connection's websocket URL (Bybit tells spot from linear by its path).
        markets_by_id: ccxt's ``markets_by_id`` once markets are loaded: a market id ->
            the unified markets (plain dicts) carrying it (several where ids collide across
            types, as Bybit's spot and linear ``BTCUSDT``).
        options: The ccxt exchange's ``options`` (Binance's ``watchTradesForSymbols.name``).
        raw_fields: The venue's raw numeric fields
            (:attr:`~flight_md.venues.base.Venue.raw_numeric_fields`), for the same checks
            :func:`flight_md.normalize.to_row` makes of ccxt's ``info``.
    """

    url: str
    markets_by_id: Mapping[str, Sequence[Mapping[str, Any]]]
    options: Mapping[str, Any]
    raw_fields: frozenset[str]


DecoderFactory = Callable[[DecoderContext], FrameDecoder | None]
"""A venue's decoder maker for one channel (``None``: this connection is left to ccxt)."""


def symbols_by_id(markets_by_id: Mapping[str, Sequence[Mapping[str, Any]]],
                  market_type: str | None = None) -> Markets:
    """Market id -> unified symbol as ccxt's ``safe_market(id, None, None, market_type)``
    resolves it: the only market of an id, else the first whose ``market_type`` flag
    (``spot``, ``contract``, ...) is true. An id it resolves to no market is left out: ccxt
    then names the update by the id itself (``markets.get(id, id)`` does the same)."""
    found: dict[str, str] = {}
    for market_id, markets in markets_by_id.items():
        if len(markets) == 1:
            symbol = markets[0].get("symbol")
        elif market_type is None:
            continue
        else:
            symbol = next((m.get("symbol") for m in markets if m.get(market_type) is True), None)
        if isinstance(symbol, str):
            found[market_id] = symbol
    return found


# -- ccxt's conversions, for decoders to reproduce what ccxt's parse makes of a field -------------

clean_decimal: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?").fullmatch
"""Whether a string is a plain decimal (``"0.00123"``): what every venue sends, and the only form
on which ccxt's ``float`` and its ``Precise`` string arithmetic agree (``Precise`` raises on
``"nan"``, ``"1e5"`` parses differently). A decoder declines a frame whose fields ccxt would
run through ``Precise`` unless they are clean."""

_INF: Final = math.inf
_SIDES: Final[Mapping[str | None, Side | None]] = {"buy": Side.BUY, "sell": Side.SELL, None: None}

# ccxt's one-value helpers live in flight_md.core.ccxt_parse (the one checked place of ccxt's
# parse internals); these names are the decoders' vocabulary for them.
ccxt_string: Final = ccxt_parse.safe_string
"""ccxt's ``safe_string`` of a value (:func:`flight_md.core.ccxt_parse.safe_string`)."""
ccxt_quote: Final = ccxt_parse.quote
"""``parse_number(omit_zero(safe_string(value)))`` (:func:`flight_md.core.ccxt_parse.quote`)."""
ccxt_number: Final = ccxt_parse.safe_number
"""ccxt's ``safe_number`` (:func:`flight_md.core.ccxt_parse.safe_number`: a zero stays zero)."""
ccxt_int: Final = ccxt_parse.safe_integer
"""ccxt's ``safe_integer`` (:func:`flight_md.core.ccxt_parse.safe_integer`)."""
Decline = ccxt_parse.Decline


def ccxt_first(message: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """The first of ``keys`` whose value is neither ``None`` nor ``""`` (ccxt 4.5.90
    ``Exchange.get_object_value_from_key_list``, under its ``safe_*_n`` helpers)."""
    get = message.get
    for key in keys:
        value = get(key)
        if value is not None and value != "":
            return value
    return None


def ccxt_int_n(message: Mapping[str, Any], keys: Sequence[str]) -> int | None:
    """ccxt 4.5.90 ``Exchange.safe_integer_n`` (``safe_integer_2``'s cousin that does not try the next key
    when the first present one is bad). Raises :class:`Decline` where ccxt raises (an infinite
    value: ``OverflowError``)."""
    value = ccxt_first(message, keys)
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, TypeError):
        return None
    except OverflowError:
        raise Decline from None


def ccxt_string_n(message: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    """ccxt 4.5.90 ``Exchange.safe_string_n``: the first present value as a string, if it is one."""
    value = ccxt_first(message, keys)
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is float or kind is int:
        return str(value)
    return None


# -- rows, exactly as flight_md.normalize makes them of ccxt's structures -------------------------


def bidask(sink: DecodeSink, symbol: str, timestamp: int | None, bid: float | None,
           ask: float | None, info: Mapping[str, Any], raw_fields: frozenset[str],
           receive_ms: int) -> None:
    """Deliver the best bid/ask ccxt's parse would have made (``timestamp``, ``bid``, ``ask``:
    ccxt's unified values; ``info``: the raw payload): the row
    :func:`~flight_md.normalize.to_row` makes of it, or its drop."""
    good = ccxt_parse.bidask_row(timestamp, bid, ask, receive_ms)
    if good is not None:  # the common case, without to_row's checks
        sink.tick(symbol, good, timestamp is not None)
        return
    made = to_row({"symbol": symbol, "timestamp": timestamp, "bid": bid, "ask": ask,
                   "info": info}, exchange="", channel=Channel.BIDASK, receive_ms=receive_ms,
                  raw_fields=raw_fields)
    if isinstance(made, DropReason):
        sink.drop(symbol, made)
    else:
        sink.tick(made[0], made[1], timestamp is not None)


def ticker(sink: DecodeSink, symbol: str, timestamp: int | None, *, last: float | None,
           bid: float | None, ask: float | None, high: float | None, low: float | None,
           open_: float | None, volume: float | None, info: Mapping[str, Any],
           raw_fields: frozenset[str], receive_ms: int, key: str | None = None) -> None:
    """Deliver the full ticker ccxt's parse would have made (``last`` is also its ``close``,
    as ccxt's ``safe_ticker`` makes them): the row :func:`~flight_md.normalize.to_row` makes
    of it, or its drop; ``key``: ccxt's cache key where it is not ``symbol``
    (:meth:`DecodeSink.tick`)."""
    if key is None or key == symbol:
        good = ccxt_parse.ticker_row(timestamp, last, volume, bid, ask, high, low, open_, last,
                                     receive_ms)
        if good is not None:  # the common case, without to_row's checks
            sink.tick(symbol, good, timestamp is not None)
            return
    made = to_row({"symbol": symbol, "timestamp": timestamp, "last": last, "close": last,
                   "bid": bid, "ask": ask, "high": high, "low": low, "open": open_,
                   "baseVolume": volume, "info": info}, exchange="", channel=Channel.TICKER,
                  receive_ms=receive_ms, raw_fields=raw_fields)
    if isinstance(made, DropReason):
        sink.drop(symbol if key is None else key, made)
    elif key is None or key == made[0]:
        sink.tick(made[0], made[1], timestamp is not None)
    else:
        sink.tick(made[0], made[1], timestamp is not None, key)


def trade(sink: DecodeSink, symbol: str, timestamp: int | None, trade_id: str | None,
          price: float | None, amount: float | None, side: str | None, receive_ms: int,
          span: int = 1) -> None:
    """Deliver the trade ccxt's parse would have made (its unified values): what
    :func:`~flight_md.normalize.to_trade` makes of it, or its drop."""
    if (type(price) is float and 0.0 < price < _INF and type(amount) is float
            and 0.0 <= amount < _INF and type(timestamp) is int
            and MIN_TIMESTAMP_MS <= timestamp <= receive_ms + MAX_FUTURE_MS
            and side in _SIDES and (trade_id is None or type(trade_id) is str)):
        # to_trade's own fast case, without the dict it reads
        sink.trade((symbol, timestamp, trade_id or None, price, amount, _SIDES[side]), True, span)
        return
    made = to_trade({"symbol": symbol, "timestamp": timestamp, "id": trade_id, "price": price,
                     "amount": amount, "side": side}, receive_ms)
    if isinstance(made, DropReason):
        sink.drop(symbol, made)
    else:
        sink.trade(made, timestamp is not None, span)


_LEVEL_NUMBERS: Final = (str, float, int)


def book_levels(levels: object) -> bool:
    """Whether a frame's list of book levels is one a book decoder may claim: a list of lists
    of at least a price and an amount, each a string or a JSON number that ``float`` reads.
    ccxt 4.5.90 reads a level by ``safe_string``/``safe_number`` (``None`` for anything else, a
    ``bool`` included) or ``safe_float``; on these values ``float`` of the value, which the
    verifier's kept book stores, is what ccxt stores. On any other ccxt's book side may raise
    or not, depending on the levels it holds: such a frame goes to ccxt (with the kept book as
    ccxt's: :mod:`flight_md.ingest.books`), whose error is then counted as on its path."""
    if type(levels) is not list:
        return False
    numbers = _LEVEL_NUMBERS
    try:
        for level in levels:
            if (type(level) is not list or len(level) < 2 or type(level[0]) not in numbers
                    or type(level[1]) not in numbers):
                return False
            float(level[0])
            float(level[1])
    except (ValueError, OverflowError):
        return False
    return True


def book_named_levels(levels: object, price: str, amount: str) -> bool:
    """:func:`book_levels` of levels that are objects (Kraken v2 ``{"price": ..., "qty":
    ...}``, Coinbase's ``price_level`` and ``new_quantity``): a list of dicts whose ``price``
    and ``amount`` are each a string or a JSON number."""
    if type(levels) is not list:
        return False
    numbers = _LEVEL_NUMBERS
    try:
        for level in levels:
            if (type(level) is not dict or type(level.get(price)) not in numbers
                    or type(level.get(amount)) not in numbers):
                return False
            float(level[price])
            float(level[amount])
    except (ValueError, OverflowError):
        return False
    return True

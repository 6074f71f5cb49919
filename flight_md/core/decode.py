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

This module imports neither asyncio, ccxt nor pyarrow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from flight_md.normalize import DropReason, TradeFields

__all__ = ["DecodeSink", "DecoderContext", "DecoderFactory", "FrameDecoder", "Markets",
           "symbols_by_id"]

Markets = Mapping[str, str]
"""A venue's market id as its frames name it (``BTCUSDT``) -> the unified symbol (``BTC/USDT``),
for the markets ccxt loaded."""


class DecodeSink(Protocol):
    """Where a decoder delivers what one frame holds (the stream's tick or trade path)."""

    def tick(self, symbol: str, row: Sequence[float], stamped: bool) -> None:
        """A good ``ticker``/``bidask`` row, exactly :func:`flight_md.normalize.to_row`'s
        second element; ``stamped``: the exchange sent a timestamp (else ``row[0]`` is the
        receive time)."""

    def trade(self, fields: TradeFields) -> None:
        """A good trade, exactly what :func:`flight_md.normalize.to_trade` returns for it."""

    def drop(self, symbol: str | None, reason: DropReason) -> None:
        """An update the ccxt path would have dropped (``symbol``: ``None`` when it had none)."""


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

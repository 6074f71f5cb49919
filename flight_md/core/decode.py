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

This module imports neither asyncio, ccxt nor pyarrow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from flight_md.normalize import DropReason, TradeFields

__all__ = ["DecodeSink", "FrameDecoder", "Markets"]

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

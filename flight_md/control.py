"""The contract between the Flight service and ingestion.

Flight handlers run on gRPC threads; ingestion runs on one asyncio loop thread. Besides the
buffer, this is where they meet: the service calls an :class:`IngestionControl` from a gRPC
thread, and the implementation (:class:`flight_md.ingest.manager.ThreadedControl`) hands the
work to the loop with ``asyncio.run_coroutine_threadsafe(...).result(timeout)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ClockSkew", "ExchangeStatus", "IngestionControl", "IngestionStatus", "SymbolStatus"]


@dataclass(frozen=True, slots=True)
class ClockSkew:
    """Receive time minus exchange time over a rolling window, in ms (``None``: no tick had an
    exchange time). Computed by :class:`flight_md.ingest.skew.SkewWindow`.

    Attributes:
        median_ms: Nearest-rank median.
        p99_ms: Nearest-rank 99th percentile.
        samples: Ticks the figures are computed from.
        window_ms: The window, ms of receive time (0: no window, nothing measured).
    """

    median_ms: int | None = None
    p99_ms: int | None = None
    samples: int = 0
    window_ms: int = 0


@dataclass(frozen=True, slots=True)
class SymbolStatus:
    """Ingestion counters of one (exchange, symbol).

    Attributes:
        exchange: ccxt exchange id.
        symbol: Unified symbol.
        subscribed: Whether the stream currently wants this symbol.
        received: Updates received from the exchange (good and bad).
        dropped: Updates dropped as bad data (non-numeric, non-positive price, ...).
        stale: Whether the symbol has been silent longer than the heartbeat interval.
        last_message_ms: Local time of the last update for the symbol, Unix ms, or ``None``.
    """

    exchange: str
    symbol: str
    subscribed: bool
    received: int
    dropped: int
    stale: bool
    last_message_ms: int | None


@dataclass(frozen=True, slots=True)
class ExchangeStatus:
    """State of one exchange stream.

    Attributes:
        exchange: ccxt exchange id.
        state: A :class:`flight_md.ingest.stream.ConnectionState` value.
        mode: ``"websocket"`` or ``"rest"`` (what is running now).
        channel: ``"ticker"`` or ``"bidask"``.
        reconnects: Reconnections since the stream started.
        symbols: Subscribed symbols.
        bad_frames: Exchange messages dropped as malformed, by reason.
        callback_errors: Exceptions raised by user callbacks.
        last_error: The last connection error (message only, never secrets), or ``None``.
            It stays after the stream recovers: ``last_error_ms`` dates it.
        last_error_ms: When ``last_error`` happened, local Unix ms, or ``None``.
        clock_skew: Receive time minus exchange time over the last minute
            (:mod:`flight_md.ingest.skew`); ``None`` figures where no tick carried an
            exchange time.
    """

    exchange: str
    state: str
    mode: str
    channel: str
    reconnects: int
    symbols: tuple[str, ...]
    bad_frames: dict[str, int] = field(default_factory=dict)
    callback_errors: int = 0
    last_error: str | None = None
    last_error_ms: int | None = None
    clock_skew: ClockSkew = field(default_factory=ClockSkew)


@dataclass(frozen=True, slots=True)
class IngestionStatus:
    """Everything ``status`` reports about ingestion."""

    exchanges: tuple[ExchangeStatus, ...]
    symbols: tuple[SymbolStatus, ...]


class IngestionControl(Protocol):
    """What the Flight service may ask of ingestion, from any thread.

    Each method blocks the calling thread for at most its timeout and raises only
    :class:`flight_md.errors.FlightMdError` subclasses: ``UnknownExchange`` for an exchange
    without a stream, ``InvalidArgument`` for an exchange id that must be given because several
    run (or a symbol the exchange does not list), ``Unavailable`` on timeout or when the
    exchange cannot be reached.
    """

    def subscribe(self, exchange: str | None, symbols: Sequence[str]) -> dict[str, Any]:
        """Start streaming ``symbols``; returns ``{"exchange": id, "subscribed": [...]}``."""
        ...

    def unsubscribe(self, exchange: str | None, symbols: Sequence[str]) -> dict[str, Any]:
        """Stop streaming ``symbols``; returns ``{"exchange": id, "unsubscribed": [...]}``."""
        ...

    def status(self) -> IngestionStatus:
        """A consistent snapshot of every stream."""
        ...

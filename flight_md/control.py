"""The contract between the Flight service and ingestion.

Flight handlers run on gRPC threads; ingestion runs on one asyncio loop thread. Besides the
buffer, this is where they meet: the service calls an :class:`IngestionControl` from a gRPC
thread, and the implementation (:class:`flight_md.ingest.manager.ThreadedControl`) hands the
work to the loop with ``asyncio.run_coroutine_threadsafe(...).result(timeout)``. With
ingestion in a child process (:class:`flight_md.ingest.process.ProcessControl`) the same calls
cross the pipe of :mod:`flight_md.ingest.process`; what they return is plain picklable data.

:class:`MarketInfo` (one market as ccxt loaded it) and :data:`MARKET_SCHEMA` (its Arrow form,
the ``@markets`` table) are defined here, once: ingestion fills the one, the service serves the
other, and :func:`markets_table` turns the first into the second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, Protocol, TypeVar

import pyarrow as pa

__all__ = [
    "MARKET_SCHEMA",
    "ClockSkew",
    "ExchangeStatus",
    "IngestionControl",
    "IngestionStatus",
    "MarketInfo",
    "SymbolStatus",
    "markets_table",
    "submit_to_loop",
]


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
        channel: The channel of the stream these counts are of (``None``: the exchange's
            tick channel, where a source does not say).
    """

    exchange: str
    symbol: str
    subscribed: bool
    received: int
    dropped: int
    stale: bool
    last_message_ms: int | None
    channel: str | None = None


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
        counters: The channel's own counts (``trades``: stored, duplicates, gaps, missing,
            backfilled; ``book``: stored, resyncs, ...); empty for ticker and bidask.
        decoder: What parses the stream's websocket frames: ``"fast"`` (the venue's fast
            decoder, :mod:`flight_md.core.decode`) or ``"ccxt"``.
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
    counters: dict[str, int] = field(default_factory=dict)
    decoder: str = "ccxt"


@dataclass(frozen=True, slots=True)
class IngestionStatus:
    """Everything ``status`` reports about ingestion."""

    exchanges: tuple[ExchangeStatus, ...]
    symbols: tuple[SymbolStatus, ...]


@dataclass(frozen=True, slots=True)
class MarketInfo:
    """One market of an exchange, as ccxt's ``load_markets`` describes it (``exchange.markets``).

    Attributes:
        exchange: ccxt exchange id.
        symbol: Unified symbol (``BTC/USDT``, ``BTC/USDT:USDT``, ``BTC/USD:BTC-261225``).
        id: The exchange's own id of the market (``BTCUSDT``).
        base: Base currency code.
        quote: Quote currency code.
        type: ccxt's market type: ``spot``, ``margin``, ``swap``, ``future`` or ``option``.
        contract: Whether it is a derivative contract (``None``: ccxt does not say).
        linear: A contract settled in the quote currency (``None`` for spot).
        inverse: A contract settled in the base currency (``None`` for spot).
        contract_size: Units of the base one contract is worth (``None`` for spot).
        settle: Settlement currency code (``None`` for spot).
        expiry: Expiry of a future or option, Unix ms (``None``: none, e.g. spot and swaps).
        price_tick: Smallest price step, as a number (see :mod:`flight_md.ingest.manager` for
            how ccxt's precision modes are normalised; ``None``: ccxt gives none).
        amount_tick: Smallest amount step, as a number (likewise).
        active: Whether the exchange trades it now (``None``: ccxt does not say).
        subscribed: Whether the server streams it now.
    """

    exchange: str
    symbol: str
    id: str
    base: str
    quote: str
    type: str
    contract: bool | None
    linear: bool | None
    inverse: bool | None
    contract_size: float | None
    settle: str | None
    expiry: int | None
    price_tick: float | None
    amount_tick: float | None
    active: bool | None
    subscribed: bool


MARKET_SCHEMA: Final = pa.schema([
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("base", pa.string(), nullable=False),
    pa.field("quote", pa.string(), nullable=False),
    pa.field("type", pa.string(), nullable=False),
    pa.field("contract", pa.bool_()),
    pa.field("linear", pa.bool_()),
    pa.field("inverse", pa.bool_()),
    pa.field("contract_size", pa.float64()),
    pa.field("settle", pa.string()),
    pa.field("expiry", pa.int64()),
    pa.field("price_tick", pa.float64()),
    pa.field("amount_tick", pa.float64()),
    pa.field("active", pa.bool_()),
    pa.field("subscribed", pa.bool_(), nullable=False),
])
"""The schema of the ``@markets`` table: one row per :class:`MarketInfo`, same names, same order."""

_MARKET_FIELDS: Final = tuple(f.name for f in fields(MarketInfo))
assert _MARKET_FIELDS == tuple(MARKET_SCHEMA.names), "MarketInfo and MARKET_SCHEMA disagree"


def markets_table(markets: Iterable[MarketInfo], columns: Sequence[str] | None = None) -> pa.Table:
    """The ``@markets`` table of ``markets`` (in the order given), projected to ``columns``."""
    rows = list(markets)
    names = _MARKET_FIELDS if columns is None else tuple(columns)
    schema = pa.schema([MARKET_SCHEMA.field(name) for name in names])
    return pa.table({name: pa.array([getattr(m, name) for m in rows],
                                    type=schema.field(name).type) for name in names},
                    schema=schema)


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

    def markets(self, exchange: str | None, pattern: str | None = None,
                ) -> tuple[MarketInfo, ...]:
        """Every market each stream's exchange loaded (``exchange``: that stream's only;
        ``pattern``: a symbol glob, as :func:`fnmatch.fnmatchcase`), by exchange in the order
        streams were added, then by symbol. A stream whose markets have not loaded yet (its
        exchange unreachable so far) contributes none."""
        ...


T = TypeVar("T")


def submit_to_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], *,
                   on_loop: str, closed: str) -> concurrent.futures.Future[T]:
    """Hand ``coro`` to ``loop`` from another thread (a gRPC handler): the one bridge of the
    controls that run on an asyncio loop (:class:`flight_md.ingest.manager.ThreadedControl`,
    :class:`flight_md.bus.control.BusControl`); each waits for the future with its own timeout.

    Raises:
        RuntimeError: called on ``loop`` itself (waiting would block the loop it waits for);
            ``on_loop`` is the message.
        Unavailable: the loop is closed; ``closed`` is the message.
    """
    from flight_md.errors import Unavailable

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError(on_loop)
    try:
        return asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:  # the loop is closed
        coro.close()
        raise Unavailable(closed) from None

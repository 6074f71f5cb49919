"""One exchange's live market data: ccxt.pro websockets, or REST polling, into the buffer.

:class:`MarketDataStream` owns one ccxt exchange instance and runs on one asyncio loop.

Capturing every update
    A loop awaiting ``watch_tickers()`` sees only the latest value when messages arrive
    faster than it runs (measured: 34% of updates at 5,000 msg/s). But ccxt stores every
    ticker it parses in its public cache, ``exchange.tickers[symbol] = parsed`` (bid/ask:
    ``exchange.bidsasks``), exactly once per exchange message. The stream replaces that
    cache with :class:`_Tap`, a ``dict`` whose ``__setitem__`` stores and then hands the
    ``(symbol, ticker)`` pair to the stream. The watch loop still runs: it creates the
    subscriptions and surfaces connection errors; the ticks come from the tap. The tap is
    re-installed before every watch call if ccxt replaced the cache (``clean_ws_data``).
    REST fetches (``fetch_tickers`` ...) do not write the cache, so polling cannot double
    count.

One bad frame never tears down a connection
    ccxt's receive loop calls the message handler without a ``try``: one frame that is
    not JSON, or that ccxt's parser raises on, stops reading the whole connection
    (ccxt 4.5.90). Every websocket client is therefore created with its handler wrapped
    by :class:`_FrameGuard`, which counts such a frame in ``bad_frames`` and goes on. It
    also ignores (and closes) connections left over from an earlier session, so a late
    handshake can never deliver a second copy of a tick; and a closing old connection can
    no longer unregister the new one for the same URL (:func:`_guarded_class`).

Reconnecting (cryptofeed's connection handler)
    ccxt.pro neither backs off nor resubscribes after an error. A websocket *session*
    runs one watcher per subscription group (symbols of one market type, at most
    the venue's ``symbols_per_message`` per subscribe message; some venues open one
    connection per group) and a
    watchdog. The first error or a silence longer than ``heartbeat_interval`` ends the
    session: every ccxt websocket is closed, the stream waits ``reconnect_delay`` doubled
    per failed attempt up to ``max_reconnect_delay`` with jitter (reset after a good
    message), and a new session resubscribes every symbol. ``CancelledError`` always
    propagates. After ``max_reconnect_attempts`` failed attempts (default: never) the
    state becomes ``FAILED``.

REST polling
    Used when the exchange has no websocket support in ccxt, when ``mode="rest"``, and in
    ``mode="auto"`` after ``rest_fallback_after`` consecutive websocket failures; auto
    mode probes the websocket every ``ws_probe_interval`` seconds and returns to it when
    it answers. A polled ticker is stored only when its values changed. 429 and 5xx
    answers back off like a reconnect (at least ``Retry-After``).

Gaps are visible
    Connect, disconnect, reconnect, stale, subscribe, unsubscribe, mode and failed events
    go to the :class:`~flight_md.events.EventLog` with the symbols and the reason.

Unsubscribing
    The exchange is asked to drop the whole group the symbol was subscribed in, and the
    rest of the group is subscribed again (a gap of one round trip for those symbols,
    noted in the ``unsubscribe`` event); a connection left without subscriptions is
    closed. Where ccxt cannot unsubscribe (the venue's ``unwatch`` is ``None``), the session
    is restarted.
    Updates for unsubscribed symbols that are still in flight are ignored.

Secrets (``api_key``, ``api_secret``) are handed to ccxt and kept nowhere else on the
stream but in the redactor that scrubs them from every error text the stream logs, records
or reports; ccxt is given a logger of ours whose records (request headers at DEBUG carry
the API key) are scrubbed the same way.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, Self, TypeAlias

import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro

from flight_md.buffer import DEFAULT_BUFFER_SIZE, MarketDataBuffer
from flight_md.config import STREAM_DEFAULTS as _DEFAULTS
from flight_md.control import ExchangeStatus, IngestionStatus, SymbolStatus
from flight_md.errors import InvalidArgument, Unavailable
from flight_md.events import EventKind, EventLog
from flight_md.ingest.endpoints import apply_url_overrides, url_overrides
from flight_md.ingest.policy import GiveUp, PolicySettings, ReconnectPolicy, retry_after_seconds
from flight_md.ingest.skew import SkewWindow
from flight_md.normalize import Channel, DropReason, fingerprint, row_to_tick, to_row
from flight_md.schema import MarketTick, now_ms
from flight_md.venues import VENUES, has_key, venue

__all__ = [
    "Callback",
    "ConnectionState",
    "MarketDataStream",
    "Mode",
]

logger = logging.getLogger(__name__)

Callback: TypeAlias = Callable[[MarketTick], Awaitable[None] | None]
"""A tick consumer: a plain function, or a coroutine function (awaited in order)."""

REARM_INTERVAL_S: Final = 0.02
"""A watcher re-arms its ``watch_*`` call at most this often. Ticks never depend on it (the
tap sees every update ccxt parses); the call only keeps the group subscribed and surfaces
connection errors. Re-arming on every update cost O(group size) per update: ccxt races one
future per symbol of the group, ~20 % of the ingestion thread at 200 symbols."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds to wait for a websocket close handshake before dropping the connection."""
UNWATCH_TIMEOUT: Final = 10.0
PROBE_TIMEOUT: Final = 10.0
MAX_ERROR_CHARS: Final = 300


class ConnectionState(StrEnum):
    """Where a stream is in its life."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    DOWN = "down"
    """Reported for the streams of an ingestion process that is not running (being restarted)."""


class Mode(StrEnum):
    """How a stream gets its data."""

    AUTO = "auto"
    """Websocket where ccxt supports it, REST polling while the websocket keeps failing."""
    WEBSOCKET = "websocket"
    REST = "rest"


class _Stale(Exception):
    """Internal: the watchdog found the session silent."""


class _Tap(dict[str, Any]):
    """ccxt's ``tickers`` / ``bidsasks`` cache, reporting every store to a stream.

    It is a plain ``dict`` to ccxt: only ``__setitem__`` is extended, and it stores first.
    """

    __slots__ = ("sink",)

    def __init__(self, sink: Callable[[str, Any], None], initial: Mapping[str, Any]) -> None:
        super().__init__(initial)
        self.sink = sink

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.sink(key, value)


class _FrameGuard:
    """A ccxt websocket client's message handler that survives one bad frame.

    Messages of a client that is no longer the exchange's current client for its URL
    (left over from an earlier session) are dropped and the client is closed.
    """

    __slots__ = ("_client", "_exchange", "_handle")

    def __init__(self, client: Any, exchange: Any) -> None:
        self._client = client
        self._exchange = exchange
        self._handle = client.handle_message

    def __call__(self, message: Any) -> None:
        client = self._client
        clients = self._exchange.clients
        if clients is None or clients.get(client.url) is not client:
            if not getattr(client, "flight_md_closing", False):
                client.flight_md_closing = True
                orphan = self._exchange.flight_md_orphan
                if orphan is not None:
                    orphan(client)
            return
        try:
            self._handle(message)
        except Exception as error:  # noqa: BLE001 - one bad frame must not stop the receive loop
            hook = self._exchange.flight_md_frame_error
            if hook is not None:
                hook(error)


_GUARDED: dict[type, type] = {}


def _report_closed(exchange: Any, ws_client: Any, error: Any, current: bool) -> None:
    """Tell the stream that its current connection failed or closed (not one we closed)."""
    hook = exchange.flight_md_closed
    if hook is not None and current and not getattr(ws_client, "flight_md_closing", False):
        hook(error)


def _guarded_class(cls: type) -> type:
    """A subclass of a ccxt.pro exchange, made safe for reconnecting under load.

    Its websocket clients get a :class:`_FrameGuard`, and ``on_close`` forgets a closed
    client only if it is still the one registered for its URL (ccxt forgets by URL, so an
    old client finishing its close would otherwise unregister its successor, which would
    then be reopened next to it and deliver every tick twice).
    """
    guarded = _GUARDED.get(cls)
    if guarded is None:
        def client(self: Any, url: str) -> Any:
            ws_client = cls.client(self, url)  # type: ignore[attr-defined]
            if "handle_message" not in vars(ws_client):
                ws_client.handle_message = _FrameGuard(ws_client, self)
            return ws_client

        def on_close(self: Any, ws_client: Any, error: Any) -> None:
            # ccxt forgets a closed client by URL; a client retired earlier may close after
            # its URL got a new client, which must not be forgotten in its place.
            current = (self.clients or {}).get(ws_client.url)
            if current is None or current is ws_client:
                cls.on_close(self, ws_client, error)  # type: ignore[attr-defined]
            _report_closed(self, ws_client, error, current is ws_client)

        def on_error(self: Any, ws_client: Any, error: Any) -> None:
            current = (self.clients or {}).get(ws_client.url)
            cls.on_error(self, ws_client, error)  # type: ignore[attr-defined]
            _report_closed(self, ws_client, error, current is ws_client)

        def ws_dial_delay(self: Any, url: str) -> float:
            # ccxt 4.5.90 keeps its own per-URL dial backoff (0.1 s doubling to 30 s, no
            # jitter) after a refused handshake. The stream's policy already waits before
            # every new session; ccxt's wait on top of it would stretch retries past
            # max_reconnect_delay. One policy decides: dial at once.
            return 0.0

        guarded = type(cls.__name__, (cls,), {
            "client": client,
            "on_close": on_close,
            "on_error": on_error,
            "ws_dial_delay": ws_dial_delay,
            "flight_md_closed": None,
            "flight_md_orphan": None,
            "flight_md_frame_error": None,
            "__module__": __name__,
            "__doc__": f"ccxt.pro {cls.__name__} whose websocket clients survive bad frames.",
        })
        _GUARDED[cls] = guarded
    return guarded


class _SymbolState:
    """Counters of one subscribed (or formerly subscribed) symbol."""

    __slots__ = ("dropped", "last_mono", "last_ms", "polled", "received", "since", "subscribed")

    def __init__(self) -> None:
        self.subscribed = False
        self.received = 0
        self.dropped = 0
        self.last_ms: int | None = None
        self.last_mono: float | None = None
        self.since = time.monotonic()
        self.polled: tuple[Any, ...] | None = None  # REST: fingerprint of the last stored ticker


class _Subscriber:
    """A registered callback and, for a coroutine function, its in-order delivery queue."""

    __slots__ = ("fn", "is_async", "queue", "task")

    def __init__(self, fn: Callback) -> None:
        self.fn = fn
        call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
        self.queue: asyncio.Queue[MarketTick] | None = None
        self.task: asyncio.Task[None] | None = None


class _Session:
    """One websocket session: the group watchers, and how it ended."""

    __slots__ = ("ended", "good", "watchers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.watchers: dict[tuple[str, ...], asyncio.Task[None]] = {}
        self.ended: asyncio.Future[BaseException] = loop.create_future()
        self.good = False

    def fail(self, error: BaseException) -> None:
        if not self.ended.done():
            self.ended.set_result(error)


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _redactor(secrets: Iterable[str | None]) -> Callable[[str], str]:
    values = tuple(sorted((s for s in secrets if s), key=len, reverse=True))

    def redact(text: str) -> str:
        for value in values:
            text = text.replace(value, "***")
        return text

    return redact


class _RedactingFilter(logging.Filter):
    """Removes a stream's secrets from the records of the logger ccxt is given."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self._redact(message)
        if clean != message:
            record.msg = clean
            record.args = None
        return True


def _preview(names: Sequence[str], limit: int = 10) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class MarketDataStream:
    """Live tickers of one exchange into a :class:`~flight_md.buffer.MarketDataBuffer`.

    Args:
        exchange_id: ccxt exchange id, e.g. ``"binance"``.
        testnet: Use the exchange's sandbox (``set_sandbox_mode(True)``).
        api_key: Passed to ccxt only; never logged, stored on the stream or reported.
        api_secret: Passed to ccxt only, likewise.
        buffer_size: Ticks kept per symbol when the stream creates its own buffer.
        heartbeat_interval: Seconds of silence after which a subscribed stream is stale
            (and reconnected), and a symbol is reported stale.
        reconnect_delay: First reconnect delay, seconds; doubled per failed attempt.
        max_reconnect_delay: Cap of the reconnect delay, seconds.
        buffer: Store ticks here (shared with other streams) instead of a new buffer.
        events: Record connection events here instead of a new log.
        channel: ``"ticker"`` (full 24h ticker, ``watch_tickers``) or ``"bidask"``
            (real-time best bid/ask, ``watch_bids_asks``).
        mode: ``"auto"``, ``"websocket"`` or ``"rest"``.
        poll_interval: Seconds between REST polls.
        url: Base URL (``http://host:port``) to point ccxt's REST and websocket URLs at,
            e.g. the local emulator (:func:`flight_md.ingest.endpoints.url_overrides`).
        urls: A ccxt ``urls`` dict merged over the exchange's own.
        max_reconnect_attempts: Failed reconnect attempts before ``FAILED``; ``None``
            retries forever.
        ccxt_options: More ccxt constructor config, merged last.
        rest_fallback_after: Consecutive websocket failures after which auto mode polls.
        ws_probe_interval: Seconds between websocket probes while auto mode polls.

    Raises:
        InvalidArgument: Unknown exchange, bad channel, mode or interval, a mode the
            exchange does not support in ccxt, or a testnet the exchange does not have.
    """

    def __init__(
        self,
        exchange_id: str,
        testnet: bool = False,
        api_key: str | None = None,
        api_secret: str | None = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        heartbeat_interval: float = _DEFAULTS["heartbeat_interval"],
        reconnect_delay: float = _DEFAULTS["reconnect_delay"],
        max_reconnect_delay: float = _DEFAULTS["max_reconnect_delay"],
        *,
        buffer: MarketDataBuffer | None = None,
        events: EventLog | None = None,
        channel: Channel | str = _DEFAULTS["channel"],
        mode: Mode | str = _DEFAULTS["mode"],
        poll_interval: float = _DEFAULTS["poll_interval"],
        url: str | None = None,
        urls: Mapping[str, Any] | None = None,
        max_reconnect_attempts: int | None = None,
        ccxt_options: Mapping[str, Any] | None = None,
        rest_fallback_after: int = _DEFAULTS["rest_fallback_after"],
        ws_probe_interval: float = _DEFAULTS["ws_probe_interval"],
    ) -> None:
        if not isinstance(exchange_id, str) or exchange_id not in ccxt_async.exchanges:
            raise InvalidArgument(f"unknown exchange {exchange_id!r}; expected a ccxt exchange id "
                                  f"such as {', '.join(map(repr, VENUES))}")
        self.venue = venue(exchange_id)
        try:
            self.channel = Channel(channel)
        except ValueError:
            raise InvalidArgument(f"unknown channel {channel!r}; expected one of: "
                                  f"{', '.join(Channel)}") from None
        try:
            self.mode = Mode(mode)
        except ValueError:
            raise InvalidArgument(f"unknown mode {mode!r}; expected one of: "
                                  f"{', '.join(Mode)}") from None
        self.heartbeat_interval = _positive("heartbeat_interval", heartbeat_interval)
        self.reconnect_delay = _positive("reconnect_delay", reconnect_delay)
        self.max_reconnect_delay = max(_positive("max_reconnect_delay", max_reconnect_delay),
                                       self.reconnect_delay)
        self.poll_interval = _positive("poll_interval", poll_interval)
        self.ws_probe_interval = _positive("ws_probe_interval", ws_probe_interval)
        if max_reconnect_attempts is not None and (
                isinstance(max_reconnect_attempts, bool) or not isinstance(max_reconnect_attempts, int)
                or max_reconnect_attempts < 0):
            raise InvalidArgument(f"max_reconnect_attempts must be None or an integer >= 0, "
                                  f"got {max_reconnect_attempts!r}")
        if isinstance(rest_fallback_after, bool) or not isinstance(rest_fallback_after, int) \
                or rest_fallback_after < 1:
            raise InvalidArgument(f"rest_fallback_after must be an integer >= 1, "
                                  f"got {rest_fallback_after!r}")
        self.exchange_id = exchange_id
        self.testnet = testnet
        self.max_reconnect_attempts = max_reconnect_attempts
        self.rest_fallback_after = rest_fallback_after
        self._buffer = buffer if buffer is not None else MarketDataBuffer(buffer_size)
        self._events = events if events is not None else EventLog()
        self._redact = _redactor((api_key, api_secret))
        # ccxt logs request headers (the API key among them) at DEBUG: give it a logger of
        # our own whose records are redacted.
        self._ccxt_logger = logging.getLogger(f"{__name__}.ccxt.{exchange_id}")
        self._log_filter = _RedactingFilter(self._redact) if (api_key or api_secret) else None
        self._exchange = self._make_exchange(exchange_id, testnet, api_key, api_secret, url, urls,
                                             ccxt_options)
        self._exchange_closed = False
        has = self._exchange.has
        pro = exchange_id in ccxt_pro.exchanges
        methods = self.venue.channels.get(self.channel)
        if methods is None:
            raise InvalidArgument(f"{exchange_id} has no {self.channel} channel; it has: "
                                  f"{', '.join(self.venue.channels)}")
        self._methods = methods
        self._ws_method = methods.watch
        self._unwatch_method = methods.unwatch
        self._cache = methods.cache
        self._ws_supported = pro and bool(has.get(methods.has_key))
        rest = [name if has.get(has_key(name)) else None
                for name in methods.rest]
        self._rest_method = next((m for m in rest if m is not None), None)
        if self.mode is Mode.WEBSOCKET and not self._ws_supported:
            raise InvalidArgument(f"{exchange_id} has no websocket {self.channel} channel in ccxt; "
                                  "use mode='rest' or 'auto'")
        if self.mode is Mode.REST and self._rest_method is None:
            raise InvalidArgument(f"{exchange_id} cannot fetch {self.channel} over REST in ccxt")
        if not self._ws_supported and self._rest_method is None:
            raise InvalidArgument(f"{exchange_id} offers no {self.channel} data in ccxt")
        self._active_mode = Mode.WEBSOCKET if (self._ws_supported and self.mode is not Mode.REST) \
            else Mode.REST
        self._max_group = self.venue.symbols_per_message
        self._state = ConnectionState.DISCONNECTED
        self._symbols: dict[str, _SymbolState] = {}
        self._bad_frames: Counter[str] = Counter()
        self._callback_errors = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._last_error_ms: int | None = None
        self._skew = SkewWindow()
        # Every reconnect decision (backoff, give-up, fallback, staleness) is the pure policy's.
        self._policy = ReconnectPolicy(
            PolicySettings(reconnect_delay=self.reconnect_delay,
                           max_reconnect_delay=self.max_reconnect_delay,
                           max_reconnect_attempts=max_reconnect_attempts,
                           rest_fallback_after=rest_fallback_after,
                           heartbeat_interval=self.heartbeat_interval),
            can_fall_back=self.mode is Mode.AUTO and self._rest_method is not None)
        self._last_frame = time.monotonic()
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._subscribers: list[_Subscriber] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._sink = self._on_ws_update
        if pro:
            self._exchange.flight_md_frame_error = self._on_frame_error
            self._exchange.flight_md_closed = self._on_ws_closed
            self._exchange.flight_md_orphan = self._close_later

    # -- construction -----------------------------------------------------------------------

    def _make_exchange(self, exchange_id: str, testnet: bool, api_key: str | None,
                       api_secret: str | None, url: str | None, urls: Mapping[str, Any] | None,
                       ccxt_options: Mapping[str, Any] | None) -> Any:
        # Currencies are never needed for market data, and loading them is a private call on
        # Binance and Bybit: with API keys set it would be made, and fail on a public-only host.
        config: dict[str, Any] = {"enableRateLimit": True, "has": {"fetchCurrencies": False},
                                  "logger": self._ccxt_logger}
        config = _deep_merge(config, self.venue.ccxt_config)
        if url is not None:
            try:
                config = _deep_merge(config, url_overrides(exchange_id, url))
            except ValueError as error:
                raise InvalidArgument(str(error)) from None
        if urls:
            config = _deep_merge(config, {"urls": urls})
        if ccxt_options:
            config = _deep_merge(config, ccxt_options)
        if api_key:
            config["apiKey"] = api_key
        if api_secret:
            config["secret"] = api_secret
        if exchange_id in ccxt_pro.exchanges:
            cls = _guarded_class(getattr(ccxt_pro, exchange_id))
        else:
            cls = getattr(ccxt_async, exchange_id)
        exchange = cls(config)
        if testnet:
            try:
                exchange.set_sandbox_mode(True)
            except (ccxt_async.NotSupported, TypeError, KeyError):
                # ccxt raises NotSupported, or for an exchange whose urls['test'] is None
                # (kraken), a TypeError: either way there is no sandbox.
                raise InvalidArgument(f"{exchange_id} has no testnet (sandbox) in ccxt") from None
            if url is not None:
                apply_url_overrides(exchange, url)
        return exchange

    # -- public properties ------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The connection state."""
        return self._state

    @property
    def active_mode(self) -> Mode:
        """What runs now: :attr:`Mode.WEBSOCKET` or :attr:`Mode.REST`."""
        return self._active_mode

    @property
    def buffer(self) -> MarketDataBuffer:
        """Where ticks are stored."""
        return self._buffer

    @property
    def events(self) -> EventLog:
        """Where connection events are recorded."""
        return self._events

    @property
    def exchange(self) -> Any:
        """The ccxt exchange instance (owned by the stream; do not close it)."""
        return self._exchange

    @property
    def symbols(self) -> tuple[str, ...]:
        """Subscribed symbols, in subscription order."""
        return tuple(s for s, st in self._symbols.items() if st.subscribed)

    def __repr__(self) -> str:
        return (f"MarketDataStream(exchange={self.exchange_id!r}, channel={self.channel.value!r}, "
                f"mode={self.mode.value!r}, active={self._active_mode.value!r}, "
                f"state={self._state.value!r}, symbols={len(self.symbols)})")

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Load the exchange's markets and start streaming (idempotent).

        Raises:
            Unavailable: The exchange cannot be reached; the stream stays disconnected.
        """
        if self._task is not None and not self._task.done():
            return
        reason = await self._first_load()
        if reason is not None:
            await self._abandon()
            raise Unavailable(f"cannot reach {self.exchange_id}: {reason}")
        self._markets_loaded()
        self._start_supervisor()

    async def start(self, symbols: Sequence[str] = (), *,
                    on_invalid: Callable[[InvalidArgument], None] | None = None) -> None:
        """Connect and subscribe ``symbols``, and if the exchange cannot be reached, keep trying.

        What a daemon wants (``flight-md serve``): where :meth:`connect` raises
        :class:`~flight_md.errors.Unavailable`, this returns with the stream ``RECONNECTING``
        (``last_error`` says why) and loads the markets in the background with the reconnect
        backoff; once they load, ``symbols`` are subscribed and streaming starts. Idempotent
        like :meth:`connect`.

        Args:
            symbols: Symbols to subscribe once connected.
            on_invalid: Called (on the loop) if, once the markets load in the background, a
                symbol turns out not to be listed; the stream is then ``FAILED``. A symbol found
                missing right away is raised instead.

        Raises:
            InvalidArgument: No symbols, a symbol that is not a string, or (when the markets
                load at once) a symbol the exchange does not list.
            Unavailable: ``max_reconnect_attempts=0`` and the exchange cannot be reached.
        """
        wanted = self._check_symbols(symbols, "subscribe") if symbols else []
        if self._task is not None and not self._task.done():
            if wanted and self._exchange.markets:
                await self.subscribe(wanted)
            return
        reason = await self._first_load()
        if reason is not None:
            try:
                self._policy.failed(websocket=False)
            except GiveUp:
                await self._abandon()
                raise Unavailable(f"cannot reach {self.exchange_id}: {reason}") from None
            self._set_state(ConnectionState.RECONNECTING)
            self._task = asyncio.get_running_loop().create_task(
                self._connect_later(wanted, on_invalid), name=f"flight-md-{self.exchange_id}")
            return
        self._markets_loaded()
        self._start_supervisor()
        if wanted:
            await self.subscribe(wanted)

    def _start_supervisor(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"flight-md-{self.exchange_id}")

    async def _first_load(self) -> str | None:
        """Begin a connection and load the markets once: ``None`` when they loaded, else the
        (recorded) reason. Cancelled, it leaves the stream disconnected."""
        self._begin()
        try:
            await self._exchange.load_markets()
        except asyncio.CancelledError:
            await self._abandon()
            raise
        except Exception as error:  # noqa: BLE001 - whatever ccxt raised, the exchange is unreachable
            return self._markets_failed(error)
        return None

    async def _abandon(self) -> None:
        """Give up connecting: release ccxt's session, stay disconnected."""
        await self._close_exchange()
        self._set_state(ConnectionState.DISCONNECTED)

    def _begin(self) -> None:
        self._policy.reset()
        self._set_state(ConnectionState.CONNECTING)
        if self._log_filter is not None and self._log_filter not in self._ccxt_logger.filters:
            self._ccxt_logger.addFilter(self._log_filter)
        self._exchange.open()  # ccxt.close() marks the instance closed; reopen after disconnect
        self._exchange_closed = False

    def _markets_failed(self, error: BaseException) -> str:
        reason = self._note_error(error)
        self._events.record(self.exchange_id, EventKind.ERROR, (),
                            f"cannot load markets: {reason}")
        logger.warning("%s: cannot load markets: %s", self.exchange_id, reason)
        return reason

    def _markets_loaded(self) -> None:
        self._set_state(ConnectionState.CONNECTED)
        self._events.record(self.exchange_id, EventKind.CONNECT, self.symbols,
                            f"{len(self._exchange.markets)} markets loaded; "
                            f"mode {self._active_mode.value}, channel {self.channel.value}")
        logger.info("%s: connected (%d markets; %s, %s)", self.exchange_id,
                    len(self._exchange.markets), self._active_mode.value, self.channel.value)
        for subscriber in self._subscribers:
            self._start_worker(subscriber)

    async def _connect_later(self, wanted: Sequence[str],
                             on_invalid: Callable[[InvalidArgument], None] | None) -> None:
        """:meth:`start`'s background part: load the markets with backoff, then stream."""
        try:
            while True:
                await asyncio.sleep(self._policy.next_delay())
                try:
                    await self._exchange.load_markets()
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - unreachable still: back off, retry
                    self._markets_failed(error)
                    self._policy.failed(websocket=False)
                    continue
                break
        except GiveUp as give_up:
            self._set_state(ConnectionState.FAILED)
            self._events.record(self.exchange_id, EventKind.FAILED, wanted,
                                f"{give_up} loading markets; last error: {self._last_error}")
            logger.error("%s: %s loading markets", self.exchange_id, give_up)
            return
        self._policy.reset()
        self._markets_loaded()
        if wanted:
            try:
                await self.subscribe(wanted)
            except InvalidArgument as error:
                self._last_error, self._last_error_ms = str(error), now_ms()
                self._set_state(ConnectionState.FAILED)
                self._events.record(self.exchange_id, EventKind.FAILED, wanted, str(error))
                if on_invalid is None:
                    logger.error("%s: %s", self.exchange_id, error)
                else:
                    on_invalid(error)
                return
        await self._supervise()

    async def disconnect(self) -> None:
        """Stop streaming and release every connection (idempotent)."""
        task, self._task = self._task, None
        was = self._state
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._stop_workers()
        for future in list(self._background):
            future.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._close_exchange()
        if was is not ConnectionState.DISCONNECTED:
            self._events.record(self.exchange_id, EventKind.DISCONNECT, self.symbols,
                                "closed by the user")
            logger.info("%s: disconnected", self.exchange_id)
        self._set_state(ConnectionState.DISCONNECTED)
        if self._log_filter is not None:
            self._ccxt_logger.removeFilter(self._log_filter)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.disconnect()

    async def _close_exchange(self) -> None:
        if self._exchange_closed:
            return
        self._exchange_closed = True
        try:
            await self._close_ws_clients()
            await self._exchange.close()
        except Exception as error:  # noqa: BLE001 - closing must not mask what the caller is doing
            logger.warning("%s: error while closing ccxt: %s", self.exchange_id,
                           self._describe(error))

    # -- subscriptions ----------------------------------------------------------------------

    def _check_symbols(self, symbols: Iterable[str], action: str) -> list[str]:
        if isinstance(symbols, str):
            symbols = [symbols]
        try:
            wanted = list(dict.fromkeys(symbols))
        except TypeError:
            raise InvalidArgument(f"symbols must be a list of strings, got {symbols!r}") from None
        if not wanted:
            raise InvalidArgument(f"no symbols to {action}")
        bad = [s for s in wanted if not isinstance(s, str) or not s]
        if bad:
            raise InvalidArgument(f"symbols must be non-empty strings, got {bad[0]!r}")
        return wanted

    async def subscribe(self, symbols: Sequence[str]) -> tuple[str, ...]:
        """Start streaming ``symbols`` (those already subscribed are left as they are).

        Args:
            symbols: Unified ccxt symbols the exchange lists, e.g. ``["BTC/USDT"]``.

        Returns:
            The symbols newly subscribed.

        Raises:
            InvalidArgument: A symbol the exchange does not list (the message suggests
                close matches), or no symbols.
            Unavailable: The stream is not connected, or has failed.
        """
        wanted = self._check_symbols(symbols, "subscribe")
        markets = self._exchange.markets
        if self._task is None:
            raise Unavailable(f"{self.exchange_id} stream is not connected; call connect() first")
        if not markets:
            raise Unavailable(f"{self.exchange_id} is not reachable yet ({self._last_error}); "
                              "retrying: subscribe again once it is connected")
        if self._state is ConnectionState.FAILED:
            raise Unavailable(f"{self.exchange_id} stream has failed ({self._last_error}); "
                              "call connect() to restart it")
        for symbol in wanted:
            if symbol not in markets:
                close = difflib.get_close_matches(symbol, list(markets), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else \
                    f"; it lists {len(markets)} markets"
                raise InvalidArgument(f"unknown symbol {symbol!r} on {self.exchange_id}{hint}")
        async with self._lock:
            new = [s for s in wanted if s not in self._symbols or not self._symbols[s].subscribed]
            if not new:
                return ()
            for symbol in new:
                state = self._symbols.setdefault(symbol, _SymbolState())
                state.subscribed = True
                state.since = time.monotonic()
                state.polled = None
            self._events.record(self.exchange_id, EventKind.SUBSCRIBE, new,
                                f"subscribed over {self._active_mode.value}")
            logger.info("%s: subscribed %s", self.exchange_id, _preview(new))
            session = self._session
            if session is not None and not session.ended.done():
                for group in self._pack(new):
                    self._start_watcher(session, group)
            self._changed.set()
        return tuple(new)

    async def unsubscribe(self, symbols: Sequence[str]) -> tuple[str, ...]:
        """Stop streaming ``symbols``; their stored ticks stay in the buffer.

        Returns:
            The symbols unsubscribed.

        Raises:
            InvalidArgument: A symbol that is not subscribed, or no symbols.
        """
        wanted = self._check_symbols(symbols, "unsubscribe")
        async with self._lock:
            current = self.symbols
            missing = [s for s in wanted if s not in current]
            if missing:
                raise InvalidArgument(f"symbol {missing[0]!r} is not subscribed on "
                                      f"{self.exchange_id}; subscribed: {_preview(current)}")
            for symbol in wanted:
                self._symbols[symbol].subscribed = False
            detail = f"unsubscribed over {self._active_mode.value}"
            session = self._session
            if session is not None and not session.ended.done():
                detail += await self._unwatch(session, set(wanted))
            self._events.record(self.exchange_id, EventKind.UNSUBSCRIBE, wanted, detail)
            logger.info("%s: unsubscribed %s", self.exchange_id, _preview(wanted))
            self._changed.set()
        return tuple(wanted)

    async def _unwatch(self, session: _Session, removed: set[str]) -> str:
        """Drop ``removed`` from a live session; regroup what shared their subscriptions."""
        resubscribed: list[str] = []
        for group in [g for g in session.watchers if removed.intersection(g)]:
            task = session.watchers.pop(group)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            try:
                if self._unwatch_method is None:
                    raise ConnectionError(f"ccxt cannot unsubscribe {self.exchange_id} {self.channel}")
                await asyncio.wait_for(self._call(self._unwatch_method, group), UNWATCH_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure: resubscribe from scratch
                # The exchange cannot unsubscribe in place (or did not answer): a new session
                # subscribes only what is still wanted.
                reason = self._describe(error)
                session.fail(ConnectionError(f"resubscribing after unsubscribe ({reason})"))
                return f"; reconnecting to unsubscribe ({reason})"
            self._close_idle_clients()
            rest = [s for s in group if s not in removed]
            resubscribed.extend(rest)
            for regrouped in self._pack(rest):
                self._start_watcher(session, regrouped)
        if resubscribed:
            return f"; resubscribed {len(resubscribed)} symbols that shared its subscription"
        return ""

    def _close_idle_clients(self) -> None:
        """Close websockets left without subscriptions (Binance: one per former group)."""
        clients = getattr(self._exchange, "clients", None) or {}
        for url, client in list(clients.items()):
            if not client.subscriptions and not client.futures:
                del clients[url]
                client.flight_md_closing = True
                self._close_later(client)

    def _pack(self, symbols: Iterable[str]) -> list[tuple[str, ...]]:
        """Subscription groups: one market type each, at most ``_max_group`` symbols."""
        kinds: dict[tuple[Any, ...], list[str]] = {}
        markets = self._exchange.markets or {}
        for symbol in symbols:
            market = markets.get(symbol) or {}
            kind = (market.get("type"), market.get("linear"), market.get("inverse"))
            kinds.setdefault(kind, []).append(symbol)
        size = self._max_group
        return [tuple(members[i:i + size]) for members in kinds.values()
                for i in range(0, len(members), size)]

    # -- callbacks --------------------------------------------------------------------------

    def add_callback(self, callback: Callback) -> None:
        """Call ``callback(tick)`` for every stored tick.

        A plain function runs inline; a coroutine function is awaited in order by a task
        of its own (its backlog grows if it is slower than the feed). An exception from a
        callback is logged and counted in ``callback_errors``; streaming goes on.
        """
        if not callable(callback):
            raise InvalidArgument(f"callback must be callable, got {callback!r}")
        subscriber = _Subscriber(callback)
        self._subscribers.append(subscriber)
        if self._task is not None:
            self._start_worker(subscriber)

    def remove_callback(self, callback: Callback) -> None:
        """Stop calling ``callback`` (its queued ticks are dropped).

        Raises:
            InvalidArgument: The callback was not added.
        """
        for subscriber in self._subscribers:
            if subscriber.fn == callback:
                self._subscribers.remove(subscriber)
                if subscriber.task is not None:
                    subscriber.task.cancel()
                return
        raise InvalidArgument(f"callback {callback!r} is not registered")

    def _start_worker(self, subscriber: _Subscriber) -> None:
        if not subscriber.is_async or (subscriber.task is not None and not subscriber.task.done()):
            return
        if subscriber.queue is None:
            subscriber.queue = asyncio.Queue()
        subscriber.task = asyncio.get_running_loop().create_task(
            self._deliver(subscriber), name=f"flight-md-{self.exchange_id}-callback")

    async def _deliver(self, subscriber: _Subscriber) -> None:
        queue = subscriber.queue
        assert queue is not None
        while True:
            tick = await queue.get()
            try:
                await subscriber.fn(tick)  # type: ignore[misc]
            except asyncio.CancelledError:
                raise
            except Exception:
                self._callback_errors += 1
                logger.exception("%s %s: callback %r raised", self.exchange_id, tick.symbol,
                                 subscriber.fn)
            finally:
                queue.task_done()

    async def _stop_workers(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        for subscriber in self._subscribers:
            if subscriber.task is None:
                continue
            if subscriber.queue is not None and not subscriber.task.done():
                try:  # deliver what is queued, briefly
                    await asyncio.wait_for(subscriber.queue.join(), CLOSE_TIMEOUT)
                except TimeoutError:
                    logger.warning("%s: dropping %d ticks queued for callback %r",
                                   self.exchange_id, subscriber.queue.qsize(), subscriber.fn)
            subscriber.task.cancel()
            tasks.append(subscriber.task)
            subscriber.task = None
            subscriber.queue = None
        await asyncio.gather(*tasks, return_exceptions=True)

    def _dispatch(self, tick: MarketTick) -> None:
        for subscriber in self._subscribers:
            if subscriber.is_async:
                if subscriber.queue is not None:
                    subscriber.queue.put_nowait(tick)
                continue
            try:
                result = subscriber.fn(tick)
                if inspect.isawaitable(result):  # a sync-looking callable that returned one
                    future = asyncio.ensure_future(result)
                    self._background.add(future)
                    future.add_done_callback(self._awaited_callback_done)
            except Exception:
                self._callback_errors += 1
                logger.exception("%s %s: callback %r raised", self.exchange_id, tick.symbol,
                                 subscriber.fn)

    def _awaited_callback_done(self, future: asyncio.Future[Any]) -> None:
        self._background.discard(future)
        if not future.cancelled() and future.exception() is not None:
            self._callback_errors += 1
            logger.error("%s: callback raised", self.exchange_id, exc_info=future.exception())

    # -- the tick path ----------------------------------------------------------------------

    def _on_ws_update(self, symbol: str, ticker: Any) -> None:
        """The tap's sink: ccxt has just parsed one update (runs inside ccxt's handler)."""
        if self._active_mode is not Mode.WEBSOCKET:
            return  # a REST-mode probe
        state = self._symbols.get(symbol)
        if state is None or not state.subscribed:
            return  # unsubscribed: the exchange may still be sending it
        try:
            good = self._ingest(symbol, state, ticker, now_ms())
        except Exception:  # never raise into ccxt's handler
            logger.exception("%s %s: ingesting an update failed", self.exchange_id, symbol)
            return
        session = self._session
        if good and session is not None and not session.good:
            self._session_good(session)

    def _ingest(self, symbol: str, state: _SymbolState, ticker: Any, receive_ms: int) -> bool:
        mono = time.monotonic()
        state.received += 1
        state.last_ms = receive_ms
        state.last_mono = mono
        self._last_frame = mono
        made = to_row(ticker, exchange=self.exchange_id, channel=self.channel,
                      receive_ms=receive_ms, raw_fields=self.venue.raw_numeric_fields)
        if isinstance(made, DropReason):
            state.dropped += 1
            count = self._bad_frames[made] = self._bad_frames[made] + 1
            self._log_bad(count, "%s %s: dropped a bad update (%s; %d so far)",
                          self.exchange_id, symbol, made, count)
            return False
        # The row is valid by construction (normalize checked every value): it is stored
        # without a MarketTick round trip, which is built only for callbacks.
        row = made[1]
        self._buffer.append_row(self.exchange_id, made[0], row)
        if ticker.get("timestamp") is not None:  # else the row's timestamp is receive_ms
            self._skew.add(receive_ms, int(row[0]))
        if self._subscribers:
            self._dispatch(row_to_tick(made[0], made[1], self.exchange_id))
        return True

    def _on_ws_closed(self, error: Any) -> None:
        """ccxt saw the current websocket fail or close: end the session (as a watcher that
        was waiting on it would have; watchers wait between calls, see REARM_INTERVAL_S)."""
        session = self._session
        if session is not None:
            session.fail(error if isinstance(error, BaseException) else
                         ConnectionError("the websocket was closed by the exchange"))

    def _on_frame_error(self, error: BaseException) -> None:
        """A frame ccxt could not decode or parse (called by :class:`_FrameGuard`)."""
        reason = DropReason.MALFORMED_FRAME if isinstance(error, json.JSONDecodeError) \
            else DropReason.UNPARSEABLE_FRAME
        self._last_frame = time.monotonic()
        count = self._bad_frames[reason] = self._bad_frames[reason] + 1
        self._log_bad(count, "%s: dropped a bad frame (%s: %s; %d so far)", self.exchange_id,
                      reason, self._describe(error), count)

    @staticmethod
    def _log_bad(count: int, message: str, *args: Any) -> None:
        # 1st, 2nd, 4th, 8th, ...: a flood of bad frames cannot flood the log.
        level = logging.WARNING if count & (count - 1) == 0 else logging.DEBUG
        logger.log(level, message, *args)

    # -- supervision ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            while True:
                if self._active_mode is Mode.WEBSOCKET:
                    await self._run_websocket()
                    self._switch_mode(Mode.REST, f"websocket failed {self._policy.ws_failures} times "
                                      f"in a row; polling every {self.poll_interval:g} s")
                else:
                    await self._run_rest()
                    self._switch_mode(Mode.WEBSOCKET, "websocket answers again")
        except GiveUp as give_up:
            self._set_state(ConnectionState.FAILED)
            self._events.record(self.exchange_id, EventKind.FAILED, self.symbols, str(give_up))
            logger.error("%s: %s", self.exchange_id, give_up)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a bug must leave a visible FAILED state
            reason = self._note_error(error)
            self._set_state(ConnectionState.FAILED)
            self._events.record(self.exchange_id, EventKind.FAILED, self.symbols,
                                f"ingestion stopped by an unexpected error: {reason}")
            logger.error("%s: ingestion stopped by an unexpected error: %s", self.exchange_id,
                         reason)

    def _switch_mode(self, mode: Mode, reason: str) -> None:
        self._active_mode = mode
        self._policy.mode_switched()
        self._events.record(self.exchange_id, EventKind.MODE, self.symbols,
                            f"{mode.value}: {reason}")
        logger.warning("%s: switching to %s: %s", self.exchange_id, mode.value, reason)

    async def _wait_for_symbols(self) -> None:
        while not self.symbols:
            self._changed.clear()
            await self._changed.wait()

    def _failed(self, error: BaseException, what: str, *, websocket: bool) -> None:
        """Account a failed session or poll; raise :class:`GiveUp` when out of attempts."""
        reason = self._note_error(error)
        try:
            self._policy.failed(websocket=websocket)
        except GiveUp as give_up:
            raise GiveUp(f"{give_up}; last error: {reason}") from None
        self._set_state(ConnectionState.RECONNECTING)
        logger.warning("%s: %s (%s); retrying (attempt %d)", self.exchange_id, what, reason,
                       self._policy.failures)

    def _recovered(self, how: str, *, websocket: bool) -> None:
        self._policy.good(websocket=websocket)
        was = self._state
        if was is ConnectionState.CONNECTED:
            return
        self._set_state(ConnectionState.CONNECTED)
        if was is ConnectionState.RECONNECTING:
            if not websocket:
                # A websocket session counts each attempt as it starts it; polling has no
                # session to start, so an outage of failed polls counts once, as it ends.
                self._reconnects += 1
            symbols = self.symbols
            self._events.record(self.exchange_id, EventKind.RECONNECT, symbols,
                                f"{how}; {len(symbols)} symbols subscribed")
            logger.info("%s: %s (%d symbols)", self.exchange_id, how, len(symbols))

    # -- websocket --------------------------------------------------------------------------

    async def _run_websocket(self) -> None:
        """Run websocket sessions until auto mode should fall back to REST polling."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_symbols()
            session = _Session(loop)
            self._session = session
            error: BaseException | None = None
            try:
                error = await self._run_session(session)
                self._session = None  # nothing new joins a session that has ended
                self._events.record(self.exchange_id, EventKind.DISCONNECT, self.symbols,
                                    self._describe(error))
                self._failed(error, "websocket disconnected", websocket=True)
            finally:
                self._session = None
                session.fail(ConnectionError("session ended"))
                # A silent server will not answer a close handshake either: do not wait.
                await self._teardown(session, 0.1 if isinstance(error, _Stale) else CLOSE_TIMEOUT)
            if self._policy.should_fall_back():
                return
            await asyncio.sleep(self._policy.next_delay())
            self._reconnects += 1

    async def _run_session(self, session: _Session) -> BaseException:
        self._ensure_tap()
        self._last_frame = time.monotonic()
        async with self._lock:
            for group in self._pack(self.symbols):
                self._start_watcher(session, group)
        watchdog = asyncio.get_running_loop().create_task(self._watchdog(session))
        try:
            return await session.ended
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    def _start_watcher(self, session: _Session, group: tuple[str, ...]) -> None:
        if session.ended.done():
            return  # torn down, or about to be: the next session subscribes the group
        task = asyncio.get_running_loop().create_task(
            self._watch(group), name=f"flight-md-{self.exchange_id}-watch")
        session.watchers[group] = task

        def done(finished: asyncio.Task[None]) -> None:
            if session.watchers.get(group) is finished:
                del session.watchers[group]
            if not finished.cancelled() and finished.exception() is not None:
                session.fail(finished.exception())  # type: ignore[arg-type]

        task.add_done_callback(done)

    async def _watch(self, group: tuple[str, ...]) -> None:
        """Keep one group subscribed; every call also surfaces connection errors.

        ccxt keeps its per-symbol futures pending between calls, and rejects them when the
        connection fails, so an error that happens while the watcher waits to re-arm is
        raised by the next call (within :data:`REARM_INTERVAL_S`).
        """
        while True:
            self._ensure_tap()
            try:
                await self._call(self._ws_method, group)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # we are being cancelled
                # ccxt cancelled the future under us: its websocket was closed.
                raise ConnectionError("the websocket was closed under the subscription") from None
            await asyncio.sleep(REARM_INTERVAL_S)

    async def _call(self, method: str, group: Sequence[str]) -> None:
        """Call a venue's ``watch``/``unwatch`` method for a group of symbols.

        A per-symbol method (Coinbase ``watch_ticker``) is called once per symbol; all calls
        are awaited (never cancelled: ccxt shares the futures they wait on), and the first
        error is raised.
        """
        call = getattr(self._exchange, method)
        params = dict(self._methods.params)  # ccxt may write into params: a fresh dict each call
        if not self._methods.per_symbol:
            await call(list(group), params)
            return
        results = await asyncio.gather(*(call(symbol, dict(params)) for symbol in group),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _ensure_tap(self) -> None:
        cache = getattr(self._exchange, self._cache, None)
        if type(cache) is _Tap and cache.sink is self._sink:
            return
        setattr(self._exchange, self._cache, _Tap(self._sink, cache or {}))

    async def _watchdog(self, session: _Session) -> None:
        interval = self._policy.watchdog_interval
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            symbols = self.symbols
            if not symbols or not session.watchers:
                self._last_frame = now  # nothing is expected to arrive
                continue
            silent = now - self._last_frame
            if self._policy.is_stale(silent):
                detail = (f"no message for {silent:.1f} s "
                          f"(heartbeat interval {self.heartbeat_interval:g} s); reconnecting")
                self._events.record(self.exchange_id, EventKind.STALE, symbols, detail)
                self._set_state(ConnectionState.RECONNECTING)
                logger.warning("%s: stale: %s", self.exchange_id, detail)
                session.fail(_Stale(f"stale: no message for {silent:.1f} s"))
                return

    def _session_good(self, session: _Session) -> None:
        session.good = True
        self._recovered("websocket reconnected", websocket=True)

    async def _teardown(self, session: _Session, timeout: float = CLOSE_TIMEOUT) -> None:
        watchers = list(session.watchers.values())
        session.watchers.clear()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await self._close_ws_clients(timeout)

    async def _close_ws_clients(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every ccxt websocket now; one that is still connecting closes when it is up."""
        clients = list((getattr(self._exchange, "clients", None) or {}).values())
        if not clients:
            return
        self._exchange.clients.clear()
        for client in clients:
            client.flight_md_closing = True
            connected = client.connected
            if client.connection is None and connected is not None and not connected.done():
                connected.add_done_callback(lambda _f, c=client: self._close_later(c))
        tasks = [asyncio.ensure_future(client.close()) for client in clients]
        try:
            await asyncio.wait(tasks, timeout=timeout)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()  # aiohttp drops the connection when its close is cancelled
            await asyncio.gather(*tasks, return_exceptions=True)

    def _close_later(self, client: Any) -> None:
        future = asyncio.ensure_future(client.close())
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    # -- REST -------------------------------------------------------------------------------

    async def _run_rest(self) -> None:
        """Poll until auto mode should go back to the websocket."""
        can_probe = self.mode is Mode.AUTO and self._ws_supported
        probe_at = time.monotonic() + self.ws_probe_interval
        while True:
            await self._wait_for_symbols()
            symbols = self.symbols
            try:
                tickers = await self._poll(symbols)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - every failed poll backs off alike
                self._events.record(self.exchange_id, EventKind.ERROR, symbols,
                                    f"poll failed: {self._describe(error)}")
                self._failed(error, "poll failed", websocket=False)
                await asyncio.sleep(self._policy.next_delay(self._retry_after(error)))
                continue
            self._recovered("polling again", websocket=False)
            receive_ms = now_ms()
            for symbol in symbols:
                ticker = tickers.get(symbol)
                state = self._symbols.get(symbol)
                if ticker is None or state is None or not state.subscribed:
                    continue
                key = fingerprint(ticker)
                if key == state.polled:
                    continue  # unchanged since the last poll
                state.polled = key
                self._ingest(symbol, state, ticker, receive_ms)
            if can_probe and time.monotonic() >= probe_at:
                if await self._probe():
                    return
                probe_at = time.monotonic() + self.ws_probe_interval
            await asyncio.sleep(self.poll_interval)

    async def _poll(self, symbols: Sequence[str]) -> dict[str, Any]:
        method = self._rest_method
        out: dict[str, Any] = {}
        if method == "fetch_ticker":
            for symbol in symbols:
                out[symbol] = await self._exchange.fetch_ticker(symbol)
            return out
        fetch = getattr(self._exchange, str(method))
        for group in self._pack(symbols):
            result = await fetch(list(group))
            if isinstance(result, Mapping):
                out.update(result)
        return out

    def _retry_after(self, error: BaseException) -> float:
        if not isinstance(error, ccxt_async.DDoSProtection):
            return 0.0
        return retry_after_seconds(getattr(self._exchange, "last_response_headers", None),
                                   self.max_reconnect_delay)

    async def _probe(self) -> bool:
        """Whether the websocket delivers again (its ticks are not stored: REST is active)."""
        symbol = self.symbols[0]
        try:
            await asyncio.wait_for(self._call(self._ws_method, (symbol,)),
                                   min(PROBE_TIMEOUT, self.heartbeat_interval))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure means "not yet"
            logger.info("%s: websocket probe failed (%s); still polling", self.exchange_id,
                        self._describe(error))
            return False
        finally:
            await self._close_ws_clients()
        return True

    # -- status -----------------------------------------------------------------------------

    def status(self) -> IngestionStatus:
        """Counters of the stream and of each symbol it has subscribed."""
        now = time.monotonic()
        exchange = ExchangeStatus(
            exchange=self.exchange_id, state=self._state.value, mode=self._active_mode.value,
            channel=self.channel.value, reconnects=self._reconnects, symbols=self.symbols,
            bad_frames={str(reason): count for reason, count in self._bad_frames.items()},
            callback_errors=self._callback_errors,
            last_error=self._last_error, last_error_ms=self._last_error_ms,
            clock_skew=self._skew.summary(now_ms()))
        symbols = tuple(
            SymbolStatus(
                exchange=self.exchange_id, symbol=symbol, subscribed=state.subscribed,
                received=state.received, dropped=state.dropped,
                stale=state.subscribed and self._policy.is_stale(now - (
                    state.last_mono if state.last_mono is not None and state.last_mono > state.since
                    else state.since)),
                last_message_ms=state.last_ms)
            for symbol, state in self._symbols.items())
        return IngestionStatus((exchange,), symbols)

    # -- helpers ----------------------------------------------------------------------------

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            logger.debug("%s: %s -> %s", self.exchange_id, self._state.value, state.value)
            self._state = state

    def _note_error(self, error: BaseException) -> str:
        """Remember ``error`` as the current outage's (status ``last_error``); its text."""
        reason = self._describe(error)
        self._last_error, self._last_error_ms = reason, now_ms()
        return reason

    def _describe(self, error: BaseException) -> str:
        """A one-line, secret-free description of an error."""
        text = str(error).strip().replace("\n", " ")
        if not isinstance(error, _Stale):
            text = f"{type(error).__name__}: {text}" if text else type(error).__name__
        if len(text) > MAX_ERROR_CHARS:
            text = text[:MAX_ERROR_CHARS - 3] + "..."
        return self._redact(text)

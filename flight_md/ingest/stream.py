"""One exchange's live market data: ccxt.pro websockets, or REST polling, into the buffer.

:class:`MarketDataStream` owns one ccxt exchange instance per channel and runs on one asyncio
loop.

The stream is a facade over its parts, each in its own module:

- :mod:`flight_md.ingest.ccxt_compat`: every ccxt internal relied on (the ticker-cache tap
  that sees every update, the frame guard, the client registry), checked against the
  installed ccxt when the stream starts;
- :mod:`flight_md.ingest.session`: websocket sessions (watchers, watchdog, reconnects,
  unsubscribing, closing connections);
- :mod:`flight_md.ingest.poller`: REST polling, ``Retry-After``, websocket probes;
- :mod:`flight_md.ingest.fanout`: the tick path into the buffer and out to callbacks;
- the venue's fast decoders (:mod:`flight_md.core.decode`, ``decoder="fast"``, the default):
  ``TEXT`` frames of the hot channels decoded by flight_md straight into rows, delivered to
  the same counting, storing and callback paths the cache tap feeds (``_Decoded``);
- :mod:`flight_md.ingest.trades`: the trade path (every trade once, gaps, backfill);
- :mod:`flight_md.ingest.books`: the book capture (the top N levels after every frame);
- :mod:`flight_md.ingest.state`: connection state, last error, symbols and their groups;
- :mod:`flight_md.ingest.policy`: every reconnect decision, pure.

One stream, one or more channels
    A channel engine carries one :class:`~flight_md.normalize.Channel` with its own ccxt
    instance and writes into that channel's buffer (``Store.buffer(channel)``): ``ticker`` and
    ``bidask`` store ticks, ``trades`` every trade ccxt parses (``watch_trades_for_symbols``;
    REST ``fetch_trades``), ``book`` the top ``book_depth`` levels after every update
    (``watch_order_book_for_symbols`` at the venue's depth :meth:`Venue.book_limit
    <flight_md.venues.base.Venue.book_limit>`; websocket only). :class:`MarketDataStream` is
    one engine (``channel=``) or several (``channels=[...]``, the same options, one shared
    :class:`~flight_md.buffer.Store` and event log), and passes every call to each. Callbacks
    receive each channel's value objects: :class:`~flight_md.schema.MarketTick`,
    :class:`~flight_md.normalize.Trade` or :class:`~flight_md.normalize.BookTop`.

Gaps are visible
    Connect, disconnect, reconnect, stale, subscribe, unsubscribe, mode and failed events
    go to the :class:`~flight_md.events.EventLog` with the symbols and the reason.

ccxt that breaks an assumption fails loudly
    :meth:`MarketDataStream.connect` and :meth:`~MarketDataStream.start` first run
    :func:`flight_md.ingest.ccxt_compat.check`; if the installed ccxt breaks an assumption
    the stream raises :class:`~flight_md.errors.StartupError`, records an ``error`` event,
    and stays ``FAILED`` with the reason as ``status().last_error``.

Secrets (``api_key``, ``api_secret``) are handed to ccxt and kept nowhere else on the
stream but in the redactor that scrubs them from every error text the stream logs, records
or reports; ccxt is given a logger of ours whose records (request headers at DEBUG carry
the API key) are scrubbed the same way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self

import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro

from flight_md.buffer import DEFAULT_BUFFER_SIZE, MarketDataBuffer, Store
from flight_md.config import STREAM_DEFAULTS as _DEFAULTS
from flight_md.control import ExchangeStatus, IngestionStatus, SymbolStatus
from flight_md.core.channels import DEFAULT_BOOK_DEPTH
from flight_md.core.decode import DecoderContext, DecoderFactory, DecoderKind, FrameDecoder
from flight_md.errors import InvalidArgument, StartupError, Unavailable
from flight_md.events import EventKind, EventLog
from flight_md.ingest import ccxt_compat
from flight_md.ingest.exchange import RedactingFilter, build_exchange, channel_support, redactor
from flight_md.ingest.fanout import Callback, Fanout
from flight_md.ingest.policy import GiveUp, PolicySettings, ReconnectPolicy
from flight_md.ingest.poller import Poller
from flight_md.ingest.session import WebsocketRunner
from flight_md.ingest.state import (
    ConnectionState,
    Health,
    Mode,
    Subscriptions,
    check_listed,
    check_symbols,
    preview,
)
from flight_md.ingest.supervisor import Supervisor
from flight_md.ingest.trades import TradeFanout
from flight_md.normalize import TICKER_LIKE, BookTop, Channel, DropReason, TradeFields
from flight_md.schema import now_ms
from flight_md.venues import VENUES, venue

__all__ = [
    "Callback",
    "ConnectionState",
    "MarketDataStream",
    "Mode",
    "channels_of",
]

logger = logging.getLogger(__name__)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class _ChannelStream:
    """One channel of one exchange: the engine under :class:`MarketDataStream`.

    Takes :class:`MarketDataStream`'s arguments (one ``channel``, a ``buffer`` of it); owns its
    ccxt instance, sessions, poller and fanout.
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
        book_depth: int = DEFAULT_BOOK_DEPTH,
        decoder: DecoderKind | str = DecoderKind.FAST,
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
        try:
            self.decoder_asked = DecoderKind(decoder)
        except ValueError:
            raise InvalidArgument(f"unknown decoder {decoder!r}; expected one of: "
                                  f"{', '.join(DecoderKind)}") from None
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
        self._buffer = self._buffer_for(buffer, buffer_size, book_depth)
        self.book_depth = self._buffer.book_depth if self.channel is Channel.BOOK else book_depth
        self._events = events if events is not None else EventLog()
        self._redact = redactor((api_key, api_secret))
        # ccxt logs request headers (the API key among them) at DEBUG: give it a logger of
        # our own whose records are redacted.
        self._ccxt_logger = logging.getLogger(f"{__name__}.ccxt.{exchange_id}")
        self._log_filter = RedactingFilter(self._redact) if (api_key or api_secret) else None
        self._exchange = build_exchange(self.venue, testnet=testnet, api_key=api_key,
                                        api_secret=api_secret, url=url, urls=urls,
                                        ccxt_options=ccxt_options, logger=self._ccxt_logger)
        self._exchange_closed = False
        pro = exchange_id in ccxt_pro.exchanges
        methods, self._ws_supported, self._rest_method = channel_support(
            self._exchange, self.venue, self.channel, self.mode)
        self._methods = methods
        active = Mode.WEBSOCKET if (self._ws_supported and self.mode is not Mode.REST) \
            else Mode.REST
        # Every reconnect decision (backoff, give-up, fallback, staleness) is the pure policy's.
        self._policy = ReconnectPolicy(
            PolicySettings(reconnect_delay=self.reconnect_delay,
                           max_reconnect_delay=self.max_reconnect_delay,
                           max_reconnect_attempts=max_reconnect_attempts,
                           rest_fallback_after=rest_fallback_after,
                           heartbeat_interval=self.heartbeat_interval),
            can_fall_back=self.mode is Mode.AUTO and self._rest_method is not None)
        self._subs = Subscriptions(self._exchange, self.venue.symbols_per_message)
        self._health = Health(exchange_id, self._events, self._policy, self._redact,
                              lambda: self._subs.symbols)
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._fanout: Fanout
        if self.channel is Channel.TRADES:
            self._fanout = TradeFanout(exchange_id, self.venue, self._buffer, self._background,
                                       self._events, self._exchange, self._subs.subscribed)
        else:
            self._fanout = Fanout(exchange_id, self.channel, self.venue.raw_numeric_fields,
                                  self._buffer, self._background)
        self._book: Any = None
        self._websocket: WebsocketRunner | None = None
        if pro:
            watch_kwargs: dict[str, Any] = {}
            if self.channel is Channel.BOOK:
                watch_kwargs["limit"] = self.venue.book_limit(self.book_depth)
            self._websocket = WebsocketRunner(
                self._exchange, methods, self._health, self._subs, self._fanout,
                self._background, self.heartbeat_interval, self.channel.value,
                watch_kwargs=watch_kwargs)
            ccxt_compat.attach(self._exchange, frame_error=self._websocket.on_frame_error,
                               closed=self._websocket.on_closed,
                               orphan=self._websocket.close_later)
        factory = self.venue.decoders.get(self.channel)
        if factory is not None and self.decoder_asked is DecoderKind.FAST:
            changed = ccxt_compat.changed_replicas()
            if changed:  # ccxt's parse is still right; a decoder copying old code may not be
                logger.warning("%s: the installed ccxt changed %s, which the fast decoders "
                               "copy; ccxt parses the %s frames", self.exchange_id,
                               ", ".join(changed), self.channel.value)
                factory = None
        self.decoder = DecoderKind.FAST if (
            factory is not None and self._websocket is not None
            and self.decoder_asked is DecoderKind.FAST) else DecoderKind.CCXT
        if self.channel is Channel.BOOK and self._websocket is not None:
            self._attach_book(self._websocket, factory if self.decoder is DecoderKind.FAST else None)
        elif self.decoder is DecoderKind.FAST and self._websocket is not None and factory is not None:
            ccxt_compat.attach_decoder(self._exchange, _Decoded(
                factory, self._exchange, self.venue.raw_numeric_fields, self._fanout,
                self._subs, self._websocket))
        self._poller: Poller | None = None
        if self._rest_method is not None:
            self._poller = Poller(
                self._exchange, self._rest_method, self._health, self._subs, self._fanout,
                self._websocket if self.mode is Mode.AUTO and self._ws_supported else None,
                poll_interval=self.poll_interval, ws_probe_interval=self.ws_probe_interval,
                heartbeat_interval=self.heartbeat_interval,
                max_reconnect_delay=self.max_reconnect_delay)
        self._supervisor = Supervisor(self._health, self._subs, self._websocket, self._poller,
                                      active)

    def _buffer_for(self, buffer: MarketDataBuffer | None, buffer_size: int,
                    book_depth: int) -> MarketDataBuffer:
        """The given buffer if it holds the stream's channel, else a new one of it."""
        channel = self.channel
        if buffer is None:
            try:
                return MarketDataBuffer(buffer_size, channel=channel.value, book_depth=book_depth)
            except ValueError as error:
                raise InvalidArgument(str(error)) from None
        held = Channel(buffer.channel)
        if held is not channel and not (held in TICKER_LIKE and channel in TICKER_LIKE):
            raise InvalidArgument(f"a {channel} stream needs a {channel} buffer, got a "
                                  f"{held} buffer (Store.buffer({channel.value!r}))")
        return buffer

    def _attach_book(self, websocket: WebsocketRunner, factory: DecoderFactory | None) -> None:
        """Install the book capture (the book helper's) into the guarded exchange's frames,
        and with the venue's book decoder (``factory``: the fast path) the hook that hands it
        the book frames ccxt then never sees."""
        from flight_md.ingest.books import BookCapture  # the book channel only

        sink = _BookSink(self.exchange_id, self._buffer, self._fanout, self._subs)
        capture = BookCapture(
            self.venue, self._exchange, sink, self._events, self.book_depth,
            subscribed=lambda symbol: self._subs.subscribed(symbol) is not None,
            resync=websocket.resync, keep=factory is not None)
        self._book = capture
        frames = _BookFrames(capture, websocket, self._fanout)
        ccxt_compat.attach_book(self._exchange, frames)
        if factory is not None:
            ccxt_compat.attach_decoder(self._exchange, _BookDecoded(
                factory, self._exchange, self.venue.raw_numeric_fields, frames, websocket))

    # -- public properties ------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The connection state."""
        return self._health.state

    @property
    def active_mode(self) -> Mode:
        """What runs now: :attr:`Mode.WEBSOCKET` or :attr:`Mode.REST`."""
        return self._supervisor.active

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
        return self._subs.symbols

    def __repr__(self) -> str:
        return (f"MarketDataStream(exchange={self.exchange_id!r}, channel={self.channel.value!r}, "
                f"mode={self.mode.value!r}, active={self._supervisor.active.value!r}, "
                f"state={self._health.state.value!r}, symbols={len(self.symbols)})")

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Load the exchange's markets and start streaming (idempotent).

        Raises:
            Unavailable: The exchange cannot be reached; the stream stays disconnected.
            StartupError: The installed ccxt breaks an assumption of
                :mod:`flight_md.ingest.ccxt_compat`; the stream is ``FAILED``.
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
            StartupError: As for :meth:`connect`.
        """
        wanted = check_symbols(symbols, "subscribe") if symbols else []
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
            self._health.set_state(ConnectionState.RECONNECTING)
            self._task = asyncio.get_running_loop().create_task(
                self._connect_later(wanted, on_invalid), name=f"flight-md-{self.exchange_id}")
            return
        self._markets_loaded()
        self._start_supervisor()
        if wanted:
            await self.subscribe(wanted)

    def _start_supervisor(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._supervisor.run(), name=f"flight-md-{self.exchange_id}")

    async def _first_load(self) -> str | None:
        """Begin a connection and load the markets once: ``None`` when they loaded, else the
        (recorded) reason. Cancelled, it leaves the stream disconnected."""
        self._begin()
        try:
            ccxt_compat.check(self._exchange, self._methods, websocket=self._ws_supported,
                              logger=self._ccxt_logger)
        except StartupError as error:
            await self._incompatible(error)
            raise
        try:
            await self._exchange.load_markets()
        except asyncio.CancelledError:
            await self._abandon()
            raise
        except Exception as error:  # noqa: BLE001 - whatever ccxt raised, the exchange is unreachable
            return self._markets_failed(error)
        return None

    async def _incompatible(self, error: StartupError) -> None:
        """The installed ccxt breaks an assumption: fail visibly (event, status), release ccxt."""
        reason = str(error)
        self._health.note_text(reason)
        self._events.record(self.exchange_id, EventKind.ERROR, (), reason)
        logger.error("%s: %s", self.exchange_id, reason)
        await self._close_exchange()
        self._health.set_state(ConnectionState.FAILED)

    async def _abandon(self) -> None:
        """Give up connecting: release ccxt's session, stay disconnected."""
        await self._close_exchange()
        self._health.set_state(ConnectionState.DISCONNECTED)

    def _begin(self) -> None:
        self._policy.reset()
        self._health.set_state(ConnectionState.CONNECTING)
        if self._log_filter is not None and self._log_filter not in self._ccxt_logger.filters:
            self._ccxt_logger.addFilter(self._log_filter)
        ccxt_compat.reopen(self._exchange)  # close() marks the instance closed: reopen it
        self._exchange_closed = False

    def _markets_failed(self, error: BaseException) -> str:
        reason = self._health.note_error(error)
        self._events.record(self.exchange_id, EventKind.ERROR, (),
                            f"cannot load markets: {reason}")
        logger.warning("%s: cannot load markets: %s", self.exchange_id, reason)
        return reason

    def _markets_loaded(self) -> None:
        self._health.set_state(ConnectionState.CONNECTED)
        self._events.record(self.exchange_id, EventKind.CONNECT, self.symbols,
                            f"{len(self._exchange.markets)} markets loaded; "
                            f"mode {self._supervisor.active.value}, channel {self.channel.value}",
                            channel=self.channel.value)
        logger.info("%s: connected (%d markets; %s, %s)", self.exchange_id,
                    len(self._exchange.markets), self._supervisor.active.value, self.channel.value)
        self._fanout.start_workers()

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
            self._health.set_state(ConnectionState.FAILED)
            self._events.record(self.exchange_id, EventKind.FAILED, wanted,
                                f"{give_up} loading markets; last error: {self._health.last_error}")
            logger.error("%s: %s loading markets", self.exchange_id, give_up)
            return
        self._policy.reset()
        self._markets_loaded()
        if wanted:
            try:
                await self.subscribe(wanted)
            except InvalidArgument as error:
                self._health.note_text(str(error))
                self._health.set_state(ConnectionState.FAILED)
                self._events.record(self.exchange_id, EventKind.FAILED, wanted, str(error))
                if on_invalid is None:
                    logger.error("%s: %s", self.exchange_id, error)
                else:
                    on_invalid(error)
                return
        await self._supervisor.run()

    async def disconnect(self) -> None:
        """Stop streaming and release every connection (idempotent)."""
        task, self._task = self._task, None
        was = self._health.state
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._fanout.stop_workers()
        for future in list(self._background):
            future.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._close_exchange()
        if was is not ConnectionState.DISCONNECTED:
            self._events.record(self.exchange_id, EventKind.DISCONNECT, self.symbols,
                                "closed by the user", channel=self.channel.value)
            logger.info("%s: disconnected", self.exchange_id)
        self._health.set_state(ConnectionState.DISCONNECTED)
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
            if self._websocket is not None:
                await self._websocket.close_clients()
            await self._exchange.close()
        except Exception as error:  # noqa: BLE001 - closing must not mask what the caller is doing
            logger.warning("%s: error while closing ccxt: %s", self.exchange_id,
                           self._describe(error))

    # -- subscriptions ----------------------------------------------------------------------

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
        wanted = check_symbols(symbols, "subscribe")
        markets = self._exchange.markets
        if self._task is None:
            raise Unavailable(f"{self.exchange_id} stream is not connected; call connect() first")
        if not markets:
            raise Unavailable(f"{self.exchange_id} is not reachable yet ({self._health.last_error}); "
                              "retrying: subscribe again once it is connected")
        if self._health.state is ConnectionState.FAILED:
            raise Unavailable(f"{self.exchange_id} stream has failed ({self._health.last_error}); "
                              "call connect() to restart it")
        check_listed(wanted, markets, self.exchange_id, self.venue.alias_of)
        async with self._subs.lock:
            new = self._subs.add(wanted)
            if not new:
                return ()
            self._events.record(self.exchange_id, EventKind.SUBSCRIBE, new,
                                f"subscribed over {self._supervisor.active.value}",
                                channel=self.channel.value)
            logger.info("%s: subscribed %s", self.exchange_id, preview(new))
            if self._websocket is not None:
                self._websocket.add(new)
            self._subs.changed.set()
        return tuple(new)

    async def unsubscribe(self, symbols: Sequence[str]) -> tuple[str, ...]:
        """Stop streaming ``symbols``; their stored ticks stay in the buffer.

        Returns:
            The symbols unsubscribed.

        Raises:
            InvalidArgument: A symbol that is not subscribed, or no symbols.
        """
        wanted = check_symbols(symbols, "unsubscribe")
        async with self._subs.lock:
            current = self.symbols
            missing = [s for s in wanted if s not in current]
            if missing:
                raise InvalidArgument(f"symbol {missing[0]!r} is not subscribed on "
                                      f"{self.exchange_id}; subscribed: {preview(current)}")
            for symbol in wanted:
                self._subs.states[symbol].subscribed = False
            if isinstance(self._fanout, TradeFanout):
                self._fanout.unsubscribed(wanted)
            detail = f"unsubscribed over {self._supervisor.active.value}"
            if self._websocket is not None:
                detail += await self._websocket.remove(set(wanted))
            self._events.record(self.exchange_id, EventKind.UNSUBSCRIBE, wanted, detail,
                                channel=self.channel.value)
            logger.info("%s: unsubscribed %s", self.exchange_id, preview(wanted))
            self._subs.changed.set()
        return tuple(wanted)

    # -- callbacks --------------------------------------------------------------------------

    def add_callback(self, callback: Callback) -> None:
        """:meth:`MarketDataStream.add_callback` on this channel (``callback`` is checked there)."""
        subscriber = self._fanout.add(callback)
        if self._task is not None:
            self._fanout.start_worker(subscriber)

    def remove_callback(self, callback: Callback) -> bool:
        """Stop calling ``callback`` here; whether it was registered."""
        return self._fanout.remove(callback)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> IngestionStatus:
        """Counters of the stream and of each symbol it has subscribed."""
        now = time.monotonic()
        exchange = ExchangeStatus(
            exchange=self.exchange_id, state=self._health.state.value, mode=self._supervisor.active.value,
            channel=self.channel.value, reconnects=self._health.reconnects, symbols=self.symbols,
            bad_frames={str(reason): count for reason, count in self._fanout.bad_frames.items()},
            callback_errors=self._fanout.callback_errors,
            last_error=self._health.last_error, last_error_ms=self._health.last_error_ms,
            clock_skew=self._fanout.skew.summary(now_ms()), counters=self.counters(),
            decoder=self.decoder.value)
        symbols = tuple(
            SymbolStatus(
                exchange=self.exchange_id, symbol=symbol, subscribed=state.subscribed,
                received=state.received, dropped=state.dropped,
                stale=state.subscribed and self._policy.is_stale(now - (
                    state.last_mono if state.last_mono is not None and state.last_mono > state.since
                    else state.since)),
                last_message_ms=state.last_ms, channel=self.channel.value)
            for symbol, state in self._subs.states.items())
        return IngestionStatus((exchange,), symbols)

    def counters(self) -> dict[str, int]:
        """The channel's own counts: a trades stream's
        :data:`~flight_md.ingest.trades.TRADE_COUNTERS`, a book stream's
        :data:`~flight_md.ingest.books.COUNTERS`; empty for ticker and bidask."""
        if isinstance(self._fanout, TradeFanout):
            return dict(self._fanout.counters)
        if self._book is not None:
            return dict(self._book.counters)
        return {}

    # -- helpers ----------------------------------------------------------------------------

    def _describe(self, error: BaseException) -> str:
        """A one-line, secret-free description of an error."""
        return self._health.describe(error)


def channels_of(channel: Channel | str | None,
                channels: Sequence[Channel | str] | None) -> tuple[Channel, ...]:
    """The channels a stream carries, from ``channel=`` and ``channels=`` (either, or both when
    they agree: ``channels`` is ``[channel]``); neither is the default ``ticker``.

    Raises:
        InvalidArgument: An unknown channel, ``channels`` that is not a non-empty list of
            distinct channel names, or ``channel`` and ``channels`` that disagree.
    """
    expected = ", ".join(Channel)
    if channels is None:
        if channel is None:
            return (Channel(_DEFAULTS["channel"]),)
        try:
            return (Channel(channel),)
        except ValueError:
            raise InvalidArgument(f"unknown channel {channel!r}; expected one of: "
                                  f"{expected}") from None
    if isinstance(channels, str) or not isinstance(channels, Sequence) or not channels:
        raise InvalidArgument(f"channels must be a non-empty list of channel names "
                              f"({expected}), got {channels!r}")
    found: list[Channel] = []
    for name in channels:
        try:
            parsed = Channel(name)
        except ValueError:
            raise InvalidArgument(f"unknown channel {name!r} in channels; expected some of: "
                                  f"{expected}") from None
        if parsed in found:
            raise InvalidArgument(f"channel {parsed.value!r} is listed twice in channels")
        found.append(parsed)
    if channel is not None and [c.value for c in found] != [channel]:
        raise InvalidArgument(f"channel={channel!r} and channels={list(channels)!r} disagree; "
                              "pass channels= alone")
    return tuple(found)


_STATE_RANK: Final = (ConnectionState.FAILED, ConnectionState.DOWN, ConnectionState.RECONNECTING,
                      ConnectionState.CONNECTING, ConnectionState.DISCONNECTED,
                      ConnectionState.CONNECTED)
"""A several-channel stream's state is its channels' first in this order: the one that most
needs attention (a connected stream whose trades channel failed is failed)."""


class MarketDataStream:
    """Live market data of one exchange, on one or more channels, into a
    :class:`~flight_md.buffer.Store`.

    One channel (``channel=``, the default ``ticker``) is one ccxt exchange instance and its
    websocket sessions; ``channels=["ticker", "trades", "book"]`` runs one of those per channel,
    with the same options, into one shared store and event log, and every method below acts on
    every channel::

        async with MarketDataStream("binance", channels=["ticker", "trades", "book"]) as stream:
            stream.add_callback(on_update)        # MarketTick, Trade and BookTop values
            await stream.subscribe(["BTC/USDT"])  # every channel
            trades = stream.store.buffer("trades").get_latest_sync("BTC/USDT", 100)

    Args:
        exchange_id: ccxt exchange id, e.g. ``"binance"``.
        testnet: Use the exchange's sandbox (``set_sandbox_mode(True)``).
        api_key: Passed to ccxt only; never logged, stored on the stream or reported.
        api_secret: Passed to ccxt only, likewise.
        buffer_size: Rows kept per symbol and channel when the stream creates its own store.
        heartbeat_interval: Seconds of silence after which a subscribed stream is stale
            (and reconnected), and a symbol is reported stale.
        reconnect_delay: First reconnect delay, seconds; doubled per failed attempt.
        max_reconnect_delay: Cap of the reconnect delay, seconds.
        buffer: Store the first channel here (shared with other streams): a buffer of that
            channel (a tick buffer for ticker and bidask). Without ``store``, the stream's store
            is one around it (:meth:`Store.of <flight_md.buffer.Store.of>`).
        events: Record connection events here instead of a new log.
        channel: The one channel: ``"ticker"`` (full 24h ticker, ``watch_tickers``),
            ``"bidask"`` (real-time best bid/ask, ``watch_bids_asks``), ``"trades"`` (every
            trade) or ``"book"`` (the top ``book_depth`` levels after every update).
        channels: Several of those, distinct; the first is :attr:`channel` and
            :attr:`buffer`'s. With ``channel`` too, only as ``channels=[channel]``.
        store: Every channel's buffer (``store.buffer(channel)``) instead of a new
            ``Store(buffer_size, book_depth=book_depth)``; its ``book_depth`` wins.
        book_depth: Levels a side a ``book`` channel stores (the buffer's or store's depth
            when one is given).
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
        decoder: ``"fast"``: a channel whose venue has a fast decoder
            (:mod:`flight_md.core.decode`) has its websocket frames parsed by it, straight
            into rows, and ccxt does everything else; ``"ccxt"``: ccxt parses every frame.
            Each channel's ``status()`` says which it uses (``decoder``).

    Raises:
        InvalidArgument: Unknown exchange, bad channel(s), mode or interval, a mode the
            exchange does not support in ccxt for a channel, a testnet the exchange does not
            have, or a ``buffer`` that is not the store's or not of the first channel.
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
        channel: Channel | str | None = None,
        channels: Sequence[Channel | str] | None = None,
        store: Store | None = None,
        mode: Mode | str = _DEFAULTS["mode"],
        poll_interval: float = _DEFAULTS["poll_interval"],
        url: str | None = None,
        urls: Mapping[str, Any] | None = None,
        max_reconnect_attempts: int | None = None,
        ccxt_options: Mapping[str, Any] | None = None,
        rest_fallback_after: int = _DEFAULTS["rest_fallback_after"],
        ws_probe_interval: float = _DEFAULTS["ws_probe_interval"],
        book_depth: int = DEFAULT_BOOK_DEPTH,
        decoder: DecoderKind | str = DecoderKind.FAST,
    ) -> None:
        wanted = channels_of(channel, channels)
        if store is not None and buffer is not None and store.get(wanted[0].value) is not buffer:
            raise InvalidArgument(f"pass store= or buffer=, not both (or the store's own "
                                  f"{wanted[0]} buffer)")
        if store is None:
            try:
                store = Store.of(buffer) if buffer is not None \
                    else Store(buffer_size, book_depth=book_depth)
            except ValueError as error:
                raise InvalidArgument(str(error)) from None
        events = events if events is not None else EventLog()
        parts = []
        for index, each in enumerate(wanted):
            if index == 0 and buffer is not None:
                into = buffer  # the engine says if it is of the wrong channel
            else:
                try:
                    into = store.buffer(each.value)
                except ValueError as error:
                    raise InvalidArgument(str(error)) from None
            parts.append(_ChannelStream(
                exchange_id, testnet, api_key, api_secret, buffer_size, heartbeat_interval,
                reconnect_delay, max_reconnect_delay, buffer=into, events=events, channel=each,
                mode=mode, poll_interval=poll_interval, url=url, urls=urls,
                max_reconnect_attempts=max_reconnect_attempts, ccxt_options=ccxt_options,
                rest_fallback_after=rest_fallback_after, ws_probe_interval=ws_probe_interval,
                book_depth=store.book_depth, decoder=decoder))
        self._adopt(tuple(parts), store)

    @classmethod
    def _of(cls, parts: tuple[_ChannelStream, ...], store: Store) -> MarketDataStream:
        """A stream over existing channel engines (the manager's per-channel views)."""
        stream = cls.__new__(cls)
        stream._adopt(parts, store)
        return stream

    def _adopt(self, parts: tuple[_ChannelStream, ...], store: Store) -> None:
        self._parts = parts
        self._store = store
        first = parts[0]
        # The options are the same on every channel: the first's are the stream's.
        self.exchange_id = first.exchange_id
        self.venue = first.venue
        self.channel = first.channel
        self.channels = tuple(part.channel for part in parts)
        self.mode = first.mode
        self.testnet = first.testnet
        self.heartbeat_interval = first.heartbeat_interval
        self.reconnect_delay = first.reconnect_delay
        self.max_reconnect_delay = first.max_reconnect_delay
        self.poll_interval = first.poll_interval
        self.ws_probe_interval = first.ws_probe_interval
        self.max_reconnect_attempts = first.max_reconnect_attempts
        self.rest_fallback_after = first.rest_fallback_after
        self.book_depth = first.book_depth
        self.decoder = first.decoder_asked

    def parts(self) -> tuple[MarketDataStream, ...]:
        """One single-channel stream per channel, sharing this stream's connections: what
        :meth:`MarketDataManager.add_stream <flight_md.ingest.manager.MarketDataManager.add_stream>`
        registers. Disconnecting one stops that channel here too."""
        if len(self._parts) == 1:
            return (self,)
        return tuple(MarketDataStream._of((part,), self._store) for part in self._parts)

    # -- public properties ------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The connection state; with several channels, the one most in need of attention
        (failed, then reconnecting, connecting, disconnected; connected only if all are)."""
        states = {part.state for part in self._parts}
        if len(states) == 1:
            return states.pop()
        return next(state for state in _STATE_RANK if state in states)

    @property
    def active_mode(self) -> Mode:
        """What the first channel runs now: :attr:`Mode.WEBSOCKET` or :attr:`Mode.REST`."""
        return self._parts[0].active_mode

    @property
    def buffer(self) -> MarketDataBuffer:
        """Where the first channel is stored (``store.buffer(stream.channel)``)."""
        return self._parts[0].buffer

    @property
    def store(self) -> Store:
        """Every channel's buffer: ``stream.store.buffer("trades")``."""
        return self._store

    @property
    def events(self) -> EventLog:
        """Where connection events are recorded (one log for every channel)."""
        return self._parts[0].events

    @property
    def exchange(self) -> Any:
        """The first channel's ccxt exchange instance (owned by the stream; do not close it);
        each channel has its own."""
        return self._parts[0].exchange

    @property
    def symbols(self) -> tuple[str, ...]:
        """Subscribed symbols (on any channel), in subscription order."""
        if len(self._parts) == 1:
            return self._parts[0].symbols
        return tuple(dict.fromkeys(s for part in self._parts for s in part.symbols))

    def __repr__(self) -> str:
        if len(self._parts) == 1:
            return repr(self._parts[0])
        return (f"MarketDataStream(exchange={self.exchange_id!r}, "
                f"channels={[c.value for c in self.channels]!r}, mode={self.mode.value!r}, "
                f"state={self.state.value!r}, symbols={len(self.symbols)})")

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Load the exchange's markets and start streaming every channel (idempotent).

        Raises:
            Unavailable: The exchange cannot be reached; every channel stays disconnected.
            StartupError: The installed ccxt breaks an assumption of
                :mod:`flight_md.ingest.ccxt_compat`; that channel is ``FAILED``, the others
                are disconnected.

        With several channels, they connect concurrently; if one fails, the others are
        disconnected and the first channel's error (in channel order) is raised.
        """
        if len(self._parts) == 1:
            await self._parts[0].connect()
            return
        await self._all(part.connect() for part in self._parts)

    async def _all(self, calls: Iterable[Coroutine[Any, Any, None]]) -> None:
        """Run every channel's ``calls`` at once (each loads its markets: concurrently, connecting
        costs about one load); if one raises, stop the others and raise the first, in channel
        order."""
        try:
            results = await asyncio.gather(*calls, return_exceptions=True)
        except BaseException:
            await self._disconnect_healthy()
            raise
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            await self._disconnect_healthy()
            raise errors[0]

    async def _disconnect_healthy(self) -> None:
        # A channel that failed keeps FAILED and its reason for status(); the rest are stopped.
        await asyncio.gather(*(part.disconnect() for part in self._parts
                               if part.state is not ConnectionState.FAILED),
                             return_exceptions=True)

    async def start(self, symbols: Sequence[str] = (), *,
                    on_invalid: Callable[[InvalidArgument], None] | None = None) -> None:
        """Connect and subscribe ``symbols`` on every channel, and if the exchange cannot be
        reached, keep trying.

        What a daemon wants (``flight-md serve``): where :meth:`connect` raises
        :class:`~flight_md.errors.Unavailable`, this returns with the stream ``RECONNECTING``
        (``last_error`` says why) and loads the markets in the background with the reconnect
        backoff; once they load, ``symbols`` are subscribed and streaming starts. Idempotent
        like :meth:`connect`.

        Args:
            symbols: Symbols to subscribe once connected.
            on_invalid: Called (on the loop) if, once the markets load in the background, a
                symbol turns out not to be listed; the stream is then ``FAILED``. A symbol found
                missing right away is raised instead. Called once, however many channels find it.

        Raises:
            InvalidArgument: No symbols, a symbol that is not a string, or (when the markets
                load at once) a symbol the exchange does not list.
            Unavailable: ``max_reconnect_attempts=0`` and the exchange cannot be reached.
            StartupError: As for :meth:`connect`.

        With several channels, as for :meth:`connect`: concurrently, and all or none.
        """
        if len(self._parts) == 1:
            await self._parts[0].start(symbols, on_invalid=on_invalid)
            return
        once = None if on_invalid is None else _once(on_invalid)
        await self._all(part.start(symbols, on_invalid=once) for part in self._parts)

    async def disconnect(self) -> None:
        """Stop streaming every channel and release every connection (idempotent)."""
        if len(self._parts) == 1:
            await self._parts[0].disconnect()
            return
        results = await asyncio.gather(*(part.disconnect() for part in self._parts),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.disconnect()

    # -- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, symbols: Sequence[str]) -> tuple[str, ...]:
        """Start streaming ``symbols`` on every channel (those already subscribed on a channel
        are left as they are there).

        Args:
            symbols: Unified ccxt symbols the exchange lists, e.g. ``["BTC/USDT"]``.

        Returns:
            The symbols newly subscribed on some channel.

        Raises:
            InvalidArgument: A symbol the exchange does not list (the message suggests
                close matches), or no symbols; no channel subscribes it.
            Unavailable: The stream is not connected, or has failed; with several channels,
                the channels before the one that raised keep what they subscribed.
        """
        new: dict[str, None] = {}
        for part in self._parts:
            new.update(dict.fromkeys(await part.subscribe(symbols)))
        return tuple(new)

    async def unsubscribe(self, symbols: Sequence[str]) -> tuple[str, ...]:
        """Stop streaming ``symbols`` on every channel that has them; what they stored stays
        in the store.

        Returns:
            The symbols unsubscribed.

        Raises:
            InvalidArgument: A symbol that no channel has subscribed, or no symbols.
        """
        if len(self._parts) == 1:
            return await self._parts[0].unsubscribe(symbols)
        wanted = check_symbols(symbols, "unsubscribe")
        current = self.symbols
        missing = [s for s in wanted if s not in current]
        if missing:
            raise InvalidArgument(f"symbol {missing[0]!r} is not subscribed on "
                                  f"{self.exchange_id}; subscribed: {preview(current)}")
        for part in self._parts:
            held = [s for s in wanted if s in part.symbols]
            if held:
                await part.unsubscribe(held)
        return tuple(wanted)

    # -- callbacks --------------------------------------------------------------------------

    def add_callback(self, callback: Callback) -> None:
        """Call ``callback(update)`` for every stored update of every channel: a
        :class:`~flight_md.schema.MarketTick` (ticker, bidask), a
        :class:`~flight_md.normalize.Trade` (trades) or a
        :class:`~flight_md.normalize.BookTop` (book).

        A plain function runs inline; a coroutine function is awaited in order by a task
        of its own per channel (its backlog grows if it is slower than the feed; the
        channels' orders are not merged). An exception from a callback is logged and counted
        in ``callback_errors``; streaming goes on.

        Raises:
            InvalidArgument: ``callback`` is not callable.
        """
        if not callable(callback):
            raise InvalidArgument(f"callback must be callable, got {callback!r}")
        for part in self._parts:
            part.add_callback(callback)

    def remove_callback(self, callback: Callback) -> None:
        """Stop calling ``callback`` on every channel (its queued updates are dropped).

        Raises:
            InvalidArgument: The callback was not added.
        """
        removed = [part.remove_callback(callback) for part in self._parts]
        if not any(removed):
            raise InvalidArgument(f"callback {callback!r} is not registered")

    # -- status -----------------------------------------------------------------------------

    def status(self) -> IngestionStatus:
        """Counters of each channel and of each symbol it has subscribed: one
        :class:`~flight_md.control.ExchangeStatus` per channel (its ``channel`` names it)."""
        if len(self._parts) == 1:
            return self._parts[0].status()
        parts = [part.status() for part in self._parts]
        return IngestionStatus(tuple(e for p in parts for e in p.exchanges),
                               tuple(s for p in parts for s in p.symbols))

    def counters(self) -> dict[str, int]:
        """The channel's own counts: a trades stream's
        :data:`~flight_md.ingest.trades.TRADE_COUNTERS`, a book stream's
        :data:`~flight_md.ingest.books.COUNTERS`; empty for ticker and bidask. With several
        channels, every channel's, named ``"<channel>.<counter>"`` (``"trades.gaps"``)."""
        if len(self._parts) == 1:
            return self._parts[0].counters()
        return {f"{part.channel.value}.{name}": count
                for part in self._parts for name, count in part.counters().items()}

    def _describe(self, error: BaseException) -> str:
        """A one-line, secret-free description of an error."""
        return self._parts[0]._describe(error)


def _once(callback: Callable[[InvalidArgument], None]) -> Callable[[InvalidArgument], None]:
    """``callback`` that runs on the first call only (every channel finds the same bad symbol)."""
    called = False

    def call(error: InvalidArgument) -> None:
        nonlocal called
        if not called:
            called = True
            callback(error)

    return call


class _BookSink:
    """Where the book capture stores: the buffer, then the stream's callbacks and counts."""

    __slots__ = ("_buffer", "_exchange_id", "_fanout", "_subs")

    def __init__(self, exchange_id: str, buffer: MarketDataBuffer, fanout: Fanout,
                 subscriptions: Subscriptions) -> None:
        self._exchange_id = exchange_id
        self._buffer = buffer
        self._fanout = fanout
        self._subs = subscriptions

    def append_book(self, exchange: str, symbol: str, timestamp: int, bids: Any, asks: Any,
                    nonce: int | None, receive_timestamp: int) -> None:
        self._buffer.append_book(exchange, symbol, timestamp, bids, asks, nonce,
                                 receive_timestamp)
        state = self._subs.subscribed(symbol)
        if state is not None:
            state.received += 1
            state.last_ms = receive_timestamp
            state.last_mono = time.monotonic()
        fanout = self._fanout
        if fanout.subscribers:
            depth = self._buffer.book_depth
            fanout.dispatch(BookTop(
                symbol, exchange, timestamp,
                tuple((float(p), float(a)) for p, a, *_ in bids[:depth]),
                tuple((float(p), float(a)) for p, a, *_ in asks[:depth]), nonce,
                receive_timestamp))


class _BookFrames:
    """The book observer ccxt's frames go through (``exchange.flight_md_book``): the capture,
    plus what every stream needs from a frame (the watchdog fed, a reconnect confirmed).

    A capture that raises is logged, never raised into ccxt's handler."""

    __slots__ = ("_capture", "_fanout", "_websocket")

    def __init__(self, capture: Any, websocket: WebsocketRunner, fanout: Fanout) -> None:
        self._capture = capture
        self._websocket = websocket
        self._fanout = fanout

    def before(self, client: Any, message: Any) -> None:
        self._fanout.last_update = time.monotonic()
        try:
            self._capture.before(client, message)
        except Exception:
            logger.exception("book capture failed before a frame")

    def after(self, client: Any, message: Any, error: BaseException | None) -> None:
        try:
            self._capture.after(client, message, error)
        except Exception:
            logger.exception("book capture failed after a frame")
        if error is None:
            self._websocket.frame_ok()

    def connection_lost(self, client: Any) -> None:
        try:
            self._capture.connection_lost(client)
        except Exception:
            logger.exception("book capture failed on a lost connection")

    def claim(self, client: Any, frame: Mapping[str, Any], receive_ms: int) -> bool:
        """A book frame of the fast path: :meth:`BookCapture.claim
        <flight_md.ingest.books.BookCapture.claim>` with what :meth:`before` and
        :meth:`after` do for every frame."""
        self._fanout.last_update = time.monotonic()
        try:
            claimed = bool(self._capture.claim(client, frame, receive_ms))
        except Exception:
            # Claimed all the same: the verifier may have applied part of it, and ccxt's path
            # would verify it a second time.
            logger.exception("book capture failed on a decoded frame")
            return True
        if claimed:
            self._websocket.frame_ok()
        return claimed


class _BookDecoded:
    """A book stream's fast-decoder hook (``exchange.flight_md_decode``): each connection's
    venue book decoder, whose :meth:`DecodeSink.book <flight_md.core.decode.DecodeSink.book>`
    frames go to the capture (:meth:`_BookFrames.claim`) as that connection's."""

    __slots__ = ("_exchange", "_factory", "_frames", "_raw_fields", "_websocket")

    def __init__(self, factory: DecoderFactory, exchange: Any, raw_fields: frozenset[str],
                 frames: _BookFrames, websocket: WebsocketRunner) -> None:
        self._factory = factory
        self._exchange = exchange
        self._raw_fields = raw_fields
        self._frames = frames
        self._websocket = websocket

    @property
    def enabled(self) -> bool:
        return self._websocket.delivering

    def sink_at(self, receive_ms: int) -> Any:
        return None  # each connection's decoder is its own sink (_BookConnection)

    def decoder(self, client: Any) -> FrameDecoder | None:
        exchange = self._exchange
        inner = self._factory(DecoderContext(
            url=str(client.url), markets_by_id=exchange.markets_by_id or {},
            options=exchange.options or {}, raw_fields=self._raw_fields))
        return None if inner is None else _BookConnection(inner, client, self._frames)


class _BookConnection:
    """One connection's book decoder and the sink it delivers to (that connection's capture)."""

    __slots__ = ("_client", "_frames", "_inner", "_receive_ms")

    def __init__(self, inner: FrameDecoder, client: Any, frames: _BookFrames) -> None:
        self._inner = inner
        self._client = client
        self._frames = frames
        self._receive_ms = 0

    def decode(self, frame: str | bytes, receive_ms: int, sink: Any) -> bool:
        self._receive_ms = receive_ms
        return self._inner.decode(frame, receive_ms, self)

    def reset(self) -> None:
        self._inner.reset()

    # -- the sink: a book decoder delivers nothing but book frames --------------------------

    def book(self, frame: Mapping[str, Any]) -> bool:
        return self._frames.claim(self._client, frame, self._receive_ms)

    def tick(self, symbol: str, row: Sequence[float], stamped: bool,
             key: str | None = None) -> None:
        raise TypeError("a book decoder delivers book frames only")

    def trade(self, fields: TradeFields, stamped: bool = True, span: int = 1) -> None:
        raise TypeError("a book decoder delivers book frames only")

    def drop(self, symbol: str | None, reason: DropReason) -> None:
        raise TypeError("a book decoder delivers book frames only")


class _Decoded:
    """A stream's fast-decoder hook (``exchange.flight_md_decode``) and the sink its decoders
    deliver to: the same paths the cache tap feeds (:meth:`WebsocketRunner.on_update
    <flight_md.ingest.session.WebsocketRunner.on_update>`): only subscribed symbols are
    stored, an update naming no symbol is counted, a good update confirms a reconnect.

    Runs inside the frame guard, on the stream's loop; never raises into ccxt's receive loop
    (the guard logs a decoder that does and lets ccxt parse the frame)."""

    __slots__ = ("_exchange", "_factory", "_fanout", "_raw_fields", "_receive_ms", "_subs",
                 "_trades", "_websocket")

    def __init__(self, factory: DecoderFactory, exchange: Any, raw_fields: frozenset[str],
                 fanout: Fanout, subscriptions: Subscriptions, websocket: WebsocketRunner) -> None:
        self._factory = factory
        self._exchange = exchange
        self._raw_fields = raw_fields
        self._fanout = fanout
        self._trades = fanout if isinstance(fanout, TradeFanout) else None
        self._subs = subscriptions
        self._websocket = websocket
        self._receive_ms = 0

    # -- the hook -----------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._websocket.delivering

    def sink_at(self, receive_ms: int) -> _Decoded:
        self._receive_ms = receive_ms
        return self

    def decoder(self, client: Any) -> FrameDecoder | None:
        exchange = self._exchange
        return self._factory(DecoderContext(
            url=str(client.url), markets_by_id=exchange.markets_by_id or {},
            options=exchange.options or {}, raw_fields=self._raw_fields))

    # -- the sink -----------------------------------------------------------------------------

    def tick(self, symbol: str, row: Sequence[float], stamped: bool,
             key: str | None = None) -> None:
        state = self._subs.subscribed(symbol if key is None else key)
        if state is None:
            return  # unsubscribed: the exchange may still be sending it
        self._fanout.ingest_row(symbol, state, tuple(row), stamped)
        self._websocket.frame_ok()

    def trade(self, fields: TradeFields, stamped: bool = True, span: int = 1) -> None:
        trades = self._trades
        state = self._subs.subscribed(fields[0])
        if state is None or trades is None:
            return
        trades.ingest_fields(fields[0], state, fields, self._receive_ms, stamped, span)
        self._websocket.frame_ok()

    def book(self, frame: Mapping[str, Any]) -> bool:
        return False  # not a book stream: ccxt applies the frame

    def drop(self, symbol: str | None, reason: DropReason) -> None:
        if not symbol:
            self._fanout.unnamed_drop(reason)
            return
        state = self._subs.subscribed(symbol)
        if state is not None:
            self._fanout.drop(symbol, state, reason, self._receive_ms)

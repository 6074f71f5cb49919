"""A stream's websocket side: sessions of watchers and a watchdog, ended and torn down whole.

Reconnecting (cryptofeed's connection handler)
    ccxt.pro neither backs off nor resubscribes after an error. A websocket *session* runs
    one watcher per subscription group (symbols of one market type, at most the venue's
    ``symbols_per_message`` per subscribe message; some venues open one connection per
    group) and a watchdog. The first error or a silence longer than ``heartbeat_interval``
    ends the session: every ccxt websocket is closed, the stream waits ``reconnect_delay``
    doubled per failed attempt up to ``max_reconnect_delay`` with jitter (reset after a good
    message), and a new session resubscribes every symbol. ``CancelledError`` always
    propagates. After ``max_reconnect_attempts`` failed attempts (default: never) the state
    becomes ``FAILED``. Every one of those decisions is the pure
    :class:`~flight_md.ingest.policy.ReconnectPolicy`'s.

Where the ticks come from
    Not from the watchers: ccxt stores every update it parses in the cache the
    :class:`~flight_md.ingest.ccxt_compat.Tap` replaces (trades: every trade it appends to a
    cache of the :class:`~flight_md.ingest.ccxt_compat.TradeTap`), and the tap calls
    :meth:`WebsocketRunner.on_update`. Books are captured per frame by the stream's book
    observer, which calls :meth:`WebsocketRunner.frame_ok` for a frame ccxt handled and
    :meth:`WebsocketRunner.resync` for a book that must be rebuilt (its group is unsubscribed
    and subscribed again, or without a ccxt unsubscribe the session ends: either way each
    book starts again from a new snapshot). A watcher keeps its group subscribed and surfaces
    connection errors; a failing or closing connection also ends the session at once through
    the guarded exchange's ``closed`` hook (:mod:`flight_md.ingest.ccxt_compat`).

Unsubscribing
    The exchange is asked to drop the whole group the symbol was subscribed in, and the
    rest of the group is subscribed again (a gap of one round trip for those symbols, noted
    in the ``unsubscribe`` event); a connection left without subscriptions is closed. Where
    ccxt cannot unsubscribe (the venue's ``unwatch`` is ``None``), the session is restarted.
    Updates for unsubscribed symbols that are still in flight are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from flight_md.events import EventKind
from flight_md.ingest import ccxt_compat
from flight_md.ingest.fanout import Fanout
from flight_md.ingest.state import ConnectionState, Health, Stale, Subscriptions
from flight_md.schema import now_ms
from flight_md.venues.base import ChannelMethods

__all__ = ["CLOSE_TIMEOUT", "REARM_INTERVAL_S", "UNWATCH_TIMEOUT", "Session", "WebsocketRunner"]

# The stream's parts log as the stream: one logger to configure for a stream's story.
logger = logging.getLogger("flight_md.ingest.stream")

REARM_INTERVAL_S: Final = 0.02
"""A watcher re-arms its ``watch_*`` call at most this often. Ticks never depend on it (the
tap sees every update ccxt parses); the call only keeps the group subscribed and surfaces
connection errors. Re-arming on every update cost O(group size) per update: ccxt races one
future per symbol of the group, ~20 % of the ingestion thread at 200 symbols."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds to wait for a websocket close handshake before dropping the connection."""
UNWATCH_TIMEOUT: Final = 10.0


class Session:
    """One websocket session: the group watchers, and how it ended."""

    __slots__ = ("ended", "good", "watchers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.watchers: dict[tuple[str, ...], asyncio.Task[None]] = {}
        self.ended: asyncio.Future[BaseException] = loop.create_future()
        self.good = False

    def fail(self, error: BaseException) -> None:
        """End the session with ``error`` (the first reason wins)."""
        if not self.ended.done():
            self.ended.set_result(error)


class WebsocketRunner:
    """Websocket sessions of one stream, one after the other.

    Args:
        exchange: The stream's guarded ccxt.pro exchange.
        methods: The channel's ccxt methods.
        health: The stream's state and reconnect policy.
        subscriptions: The stream's symbols.
        fanout: Where updates go.
        background: The stream's set of futures to cancel on disconnect.
        heartbeat_interval: Seconds of silence that make a session stale.
        channel: The channel's name, for messages.
        watch_kwargs: Keyword arguments of every ``watch`` call besides ``params`` (a book's
            ``limit``).

    Attributes:
        delivering: Whether updates are stored (the websocket is the stream's active mode);
            while the stream polls, a probe's updates are not.
        session: The running session, if any.
    """

    __slots__ = ("_background", "_channel", "_exchange", "_fanout", "_health", "_methods",
                 "_resyncing", "_subs", "_watch_kwargs", "delivering", "heartbeat_interval",
                 "session")

    def __init__(self, exchange: Any, methods: ChannelMethods, health: Health,
                 subscriptions: Subscriptions, fanout: Fanout,
                 background: set[asyncio.Future[Any]], heartbeat_interval: float,
                 channel: str, *, watch_kwargs: Mapping[str, Any] = MappingProxyType({})) -> None:
        self._exchange = exchange
        self._watch_kwargs = dict(watch_kwargs)
        self._resyncing: set[str] = set()
        self._channel = channel
        self._methods = methods
        self._health = health
        self._subs = subscriptions
        self._fanout = fanout
        self._background = background
        self.heartbeat_interval = heartbeat_interval
        self.delivering = True
        self.session: Session | None = None

    @property
    def watch_method(self) -> str:
        """The ccxt method that subscribes the channel."""
        return self._methods.watch

    async def run(self) -> None:
        """Run websocket sessions until auto mode should fall back to REST polling."""
        health = self._health
        loop = asyncio.get_running_loop()
        while True:
            await self._subs.wait()
            session = Session(loop)
            self.session = session
            error: BaseException | None = None
            try:
                error = await self._run_session(session)
                self.session = None  # nothing new joins a session that has ended
                health.events.record(health.exchange_id, EventKind.DISCONNECT,
                                     self._subs.symbols, health.describe(error))
                health.failed(error, "websocket disconnected", websocket=True)
            finally:
                self.session = None
                session.fail(ConnectionError("session ended"))
                # A silent server will not answer a close handshake either: do not wait.
                await self._teardown(session, 0.1 if isinstance(error, Stale) else CLOSE_TIMEOUT)
            if health.policy.should_fall_back():
                return
            await asyncio.sleep(health.policy.next_delay())
            health.reconnects += 1

    async def _run_session(self, session: Session) -> BaseException:
        self.ensure_tap()
        self._fanout.last_update = time.monotonic()
        async with self._subs.lock:
            for group in self._subs.pack(self._subs.symbols):
                self._start_watcher(session, group)
        watchdog = asyncio.get_running_loop().create_task(self._watchdog(session))
        try:
            return await session.ended
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    # -- subscriptions ------------------------------------------------------------------------

    def add(self, symbols: Sequence[str]) -> None:
        """Subscribe newly added ``symbols`` in the running session (under the lock)."""
        session = self.session
        if session is not None and not session.ended.done():
            for group in self._subs.pack(symbols):
                self._start_watcher(session, group)

    async def remove(self, removed: set[str]) -> str:
        """Drop ``removed`` from the running session (under the lock); regroup what shared
        their subscriptions. Returns what happened, for the ``unsubscribe`` event."""
        session = self.session
        if session is None or session.ended.done():
            return ""
        resubscribed: list[str] = []
        for group in [g for g in session.watchers if removed.intersection(g)]:
            task = session.watchers.pop(group)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            try:
                unwatch = self._methods.unwatch
                if unwatch is None:
                    raise ConnectionError(f"ccxt cannot unsubscribe {self._health.exchange_id} "
                                          f"{self._channel}")
                await asyncio.wait_for(self.call(unwatch, group), UNWATCH_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure: resubscribe from scratch
                # The exchange cannot unsubscribe in place (or did not answer): a new session
                # subscribes only what is still wanted.
                reason = self._health.describe(error)
                session.fail(ConnectionError(f"resubscribing after unsubscribe ({reason})"))
                return f"; reconnecting to unsubscribe ({reason})"
            ccxt_compat.close_idle_clients(self._exchange, self.close_later)
            rest = [s for s in group if s not in removed]
            resubscribed.extend(rest)
            for regrouped in self._subs.pack(rest):
                self._start_watcher(session, regrouped)
        if resubscribed:
            return f"; resubscribed {len(resubscribed)} symbols that shared its subscription"
        return ""

    # -- watchers -----------------------------------------------------------------------------

    def _start_watcher(self, session: Session, group: tuple[str, ...]) -> None:
        if session.ended.done():
            return  # torn down, or about to be: the next session subscribes the group
        task = asyncio.get_running_loop().create_task(
            self._watch(group), name=f"flight-md-{self._health.exchange_id}-watch")
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
            self.ensure_tap()
            try:
                await self.call(self._methods.watch, group)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # we are being cancelled
                # ccxt cancelled the future under us: its websocket was closed.
                raise ConnectionError("the websocket was closed under the subscription") from None
            await asyncio.sleep(REARM_INTERVAL_S)

    async def call(self, method: str, group: Sequence[str]) -> None:
        """Call a venue's ``watch``/``unwatch`` method for a group of symbols.

        A per-symbol method (Coinbase ``watch_ticker``) is called once per symbol; all calls
        are awaited (never cancelled: ccxt shares the futures they wait on), and the first
        error is raised.
        """
        call = getattr(self._exchange, method)
        params = dict(self._methods.params)  # ccxt may write into params: a fresh dict each call
        # By keyword: watch_trades_for_symbols(symbols, since, limit, params) is not
        # watch_tickers(symbols, params).
        extra = self._watch_kwargs if method == self._methods.watch else {}
        if not self._methods.per_symbol:
            await call(list(group), **extra, params=params)
            return
        results = await asyncio.gather(*(call(symbol, **extra, params=dict(params))
                                         for symbol in group), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def ensure_tap(self) -> None:
        """Install the cache tap, again if ccxt replaced the cache (``clean_ws_data``)."""
        ccxt_compat.install_tap(self._exchange, self._methods.cache, self.on_update)

    async def _watchdog(self, session: Session) -> None:
        health = self._health
        interval = health.policy.watchdog_interval
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            symbols = self._subs.symbols
            if not symbols or not session.watchers:
                self._fanout.last_update = now  # nothing is expected to arrive
                continue
            silent = now - self._fanout.last_update
            if health.policy.is_stale(silent):
                detail = (f"no message for {silent:.1f} s "
                          f"(heartbeat interval {self.heartbeat_interval:g} s); reconnecting")
                health.events.record(health.exchange_id, EventKind.STALE, symbols, detail)
                health.set_state(ConnectionState.RECONNECTING)
                logger.warning("%s: stale: %s", health.exchange_id, detail)
                session.fail(Stale(f"stale: no message for {silent:.1f} s"))
                return

    # -- what ccxt reports --------------------------------------------------------------------

    def on_update(self, symbol: str, ticker: Any) -> None:
        """The tap's sink: ccxt has just parsed one update (runs inside ccxt's handler)."""
        if not self.delivering:
            return  # a REST-mode probe
        if not isinstance(symbol, str) or not symbol:
            self._fanout.nameless()
            return
        state = self._subs.subscribed(symbol)
        if state is None:
            return  # unsubscribed: the exchange may still be sending it
        try:
            good = self._fanout.ingest(symbol, state, ticker, now_ms())
        except Exception:  # never raise into ccxt's handler
            logger.exception("%s %s: ingesting an update failed", self._health.exchange_id, symbol)
            return
        session = self.session
        if good and session is not None and not session.good:
            session.good = True
            self._health.recovered("websocket reconnected", websocket=True)

    def frame_ok(self) -> None:
        """A frame ccxt handled without error (book streams, whose updates no tap reports):
        the session delivers."""
        session = self.session
        if session is not None and not session.good and self.delivering:
            session.good = True
            self._health.recovered("websocket reconnected", websocket=True)

    def resync(self, symbol: str) -> None:
        """Rebuild ``symbol``'s book from a new snapshot (ccxt asks for one only when it
        subscribes; see :mod:`flight_md.ingest.ccxt_compat`, ``book``): its subscription group
        is unsubscribed and subscribed again where ccxt can unsubscribe, else the session ends
        and the next one subscribes everything afresh. Called from inside ccxt's handler: it
        only schedules the work."""
        session = self.session
        if session is None or session.ended.done() or symbol in self._resyncing:
            return
        if self._methods.unwatch is None:
            session.fail(ConnectionError(f"resynchronising the {symbol} book"))
            return
        self._resyncing.add(symbol)
        task = asyncio.get_running_loop().create_task(
            self._resubscribe(session, symbol), name=f"flight-md-{self._health.exchange_id}-resync")
        self._background.add(task)

        def done(finished: asyncio.Future[Any]) -> None:
            self._background.discard(finished)
            self._resyncing.discard(symbol)

        task.add_done_callback(done)

    async def _resubscribe(self, session: Session, symbol: str) -> None:
        """Unsubscribe the group holding ``symbol`` and subscribe it again (see :meth:`resync`)."""
        async with self._subs.lock:
            group = next((g for g in session.watchers if symbol in g), None)
            if group is None or session.ended.done():
                return  # unsubscribed, or the session is going: the next one starts afresh
            task = session.watchers.pop(group)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            try:
                await asyncio.wait_for(self.call(self._methods.unwatch or "", group),
                                       UNWATCH_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure: resubscribe from scratch
                session.fail(ConnectionError(f"resynchronising the {symbol} book "
                                             f"({self._health.describe(error)})"))
                return
            ccxt_compat.close_idle_clients(self._exchange, self.close_later)
            wanted = tuple(s for s in group if self._subs.subscribed(s) is not None)
            if wanted:
                self._start_watcher(session, wanted)

    def on_closed(self, error: Any) -> None:
        """ccxt saw the current websocket fail or close: end the session (as a watcher that
        was waiting on it would have; watchers wait between calls, see REARM_INTERVAL_S)."""
        session = self.session
        if session is not None:
            session.fail(error if isinstance(error, BaseException) else
                         ConnectionError("the websocket was closed by the exchange"))

    def on_frame_error(self, error: BaseException) -> None:
        """A frame ccxt could not decode or parse (called by the frame guard)."""
        self._fanout.frame_error(error, self._health.describe(error))

    # -- closing ------------------------------------------------------------------------------

    async def _teardown(self, session: Session, timeout: float = CLOSE_TIMEOUT) -> None:
        watchers = list(session.watchers.values())
        session.watchers.clear()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await self.close_clients(timeout)

    async def close_clients(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every ccxt websocket now; one that is still connecting closes when it is up."""
        await ccxt_compat.close_clients(self._exchange, timeout, self.close_later)

    def close_later(self, client: Any) -> None:
        """Close a ccxt websocket client in the background (cancelled on disconnect)."""
        future = asyncio.ensure_future(client.close())
        self._background.add(future)
        future.add_done_callback(self._background.discard)

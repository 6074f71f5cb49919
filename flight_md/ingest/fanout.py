"""The tick path of one stream: a parsed update into the buffer, and out to the callbacks.

:meth:`Fanout.ingest` is called for every update, from inside ccxt's message handler (the
websocket tap) or from the poller (:meth:`Fanout.ingest_row` for a row a fast decoder of
:mod:`flight_md.core.decode` made from the frame itself, counted the same way): it counts the update against its symbol, normalises it
(:func:`flight_md.normalize.to_row`), stores the row in the
:class:`~flight_md.buffer.MarketDataBuffer` and hands a :class:`~flight_md.schema.MarketTick`
to every callback. A bad update is dropped and counted by reason, never raised.

Callbacks
    A plain function runs inline, on the tick path; a coroutine function is awaited in order
    by a worker task of its own (:class:`Subscriber`), whose queue grows if it is slower
    than the feed. An exception from a callback is logged and counted in
    ``callback_errors``; streaming goes on.

Everything here runs on the stream's loop.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeAlias

from flight_md.buffer import MarketDataBuffer
from flight_md.ingest.skew import SkewWindow
from flight_md.ingest.state import SymbolState
from flight_md.normalize import BookTop, Channel, DropReason, Row, Trade, row_to_tick, to_row
from flight_md.schema import MarketTick

__all__ = ["DRAIN_TIMEOUT", "Callback", "Fanout", "Subscriber", "Update"]

# The stream's parts log as the stream: one logger to configure for a stream's story.
logger = logging.getLogger("flight_md.ingest.stream")

Update: TypeAlias = MarketTick | Trade | BookTop
"""What callbacks receive: a tick (ticker, bidask), a trade (trades) or a book top (book)."""
Callback: TypeAlias = Callable[[Any], Awaitable[None] | None]
"""A consumer of a stream's :data:`Update` values: a plain function, or a coroutine function
(awaited in order)."""

DRAIN_TIMEOUT: Final = 2.0
"""Seconds a stopping worker may take to deliver what is queued for its callback."""


class Subscriber:
    """A registered callback and, for a coroutine function, its in-order delivery queue."""

    __slots__ = ("fn", "is_async", "queue", "task")

    def __init__(self, fn: Callback) -> None:
        self.fn = fn
        call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
        self.queue: asyncio.Queue[Update] | None = None
        self.task: asyncio.Task[None] | None = None


def log_bad(count: int, message: str, *args: Any) -> None:
    """Log the 1st, 2nd, 4th, 8th, ... bad update at WARNING: a flood cannot flood the log."""
    level = logging.WARNING if count & (count - 1) == 0 else logging.DEBUG
    logger.log(level, message, *args)


class Fanout:
    """Stores each update of one stream and delivers it to the stream's callbacks.

    Args:
        exchange_id: The stream's exchange (the buffer's key, and in every log line).
        channel: The stream's channel.
        raw_fields: The venue's raw numeric fields (:func:`flight_md.normalize.to_row`).
        buffer: Where rows are stored.
        background: The stream's set of futures to cancel on disconnect (awaitables a
            sync-looking callback returned are kept there).

    Attributes:
        bad_frames: Dropped updates and frames, by :class:`~flight_md.normalize.DropReason`.
        callback_errors: Exceptions raised by callbacks.
        last_update: ``time.monotonic()`` of the last update or frame, good or bad (the
            watchdog's measure of silence).
        skew: Exchange timestamps against receive times.
    """

    __slots__ = ("_background", "_buffer", "_channel", "_exchange_id", "_raw_fields",
                 "bad_frames", "callback_errors", "last_update", "skew", "subscribers")

    def __init__(self, exchange_id: str, channel: Channel, raw_fields: Any,
                 buffer: MarketDataBuffer, background: set[asyncio.Future[Any]]) -> None:
        self._exchange_id = exchange_id
        self._channel = channel
        self._raw_fields = raw_fields
        self._buffer = buffer
        self._background = background
        self.subscribers: list[Subscriber] = []
        self.bad_frames: Counter[str] = Counter()
        self.callback_errors = 0
        self.last_update = time.monotonic()
        self.skew = SkewWindow()

    # -- the tick path --------------------------------------------------------------------

    def ingest(self, symbol: str, state: SymbolState, ticker: Any, receive_ms: int) -> bool:
        """Count, normalise, store and deliver one update; whether it was good."""
        mono = time.monotonic()
        state.received += 1
        state.last_ms = receive_ms
        state.last_mono = mono
        self.last_update = mono
        made = to_row(ticker, exchange=self._exchange_id, channel=self._channel,
                      receive_ms=receive_ms, raw_fields=self._raw_fields)
        if isinstance(made, DropReason):
            state.dropped += 1
            count = self.bad_frames[made] = self.bad_frames[made] + 1
            log_bad(count, "%s %s: dropped a bad update (%s; %d so far)",
                    self._exchange_id, symbol, made, count)
            return False
        # The row is valid by construction (normalize checked every value): it is stored
        # without a MarketTick round trip, which is built only for callbacks.
        row = made[1]
        self._buffer.append_row(self._exchange_id, made[0], row)
        if ticker.get("timestamp") is not None:  # else the row's timestamp is receive_ms
            self.skew.add(receive_ms, int(row[0]))
        if self.subscribers:
            self.dispatch(row_to_tick(made[0], made[1], self._exchange_id))
        return True

    def ingest_row(self, symbol: str, state: SymbolState, row: Row, stamped: bool) -> None:
        """Count, store and deliver one row a fast decoder made (:mod:`flight_md.core.decode`):
        :meth:`ingest` after :func:`~flight_md.normalize.to_row`, which the decoder did;
        ``row[-1]`` is the receive time, ``stamped`` whether the exchange sent a timestamp."""
        mono = time.monotonic()
        receive_ms = int(row[-1])
        state.received += 1
        state.last_ms = receive_ms
        state.last_mono = mono
        self.last_update = mono
        self._buffer.append_row(self._exchange_id, symbol, row)
        if stamped:
            self.skew.add(receive_ms, int(row[0]))
        if self.subscribers:
            self.dispatch(row_to_tick(symbol, row, self._exchange_id))

    def drop(self, symbol: str, state: SymbolState, reason: DropReason, receive_ms: int) -> None:
        """Count an update a fast decoder found bad, as :meth:`ingest` counts one."""
        mono = time.monotonic()
        state.received += 1
        state.last_ms = receive_ms
        state.last_mono = mono
        self.last_update = mono
        state.dropped += 1
        count = self.bad_frames[reason] = self.bad_frames[reason] + 1
        log_bad(count, "%s %s: dropped a bad update (%s; %d so far)",
                self._exchange_id, symbol, reason, count)

    def unnamed_drop(self, reason: DropReason) -> None:
        """Count a bad update or frame that names no symbol (a decoder's ``drop(None, ...)``)."""
        if reason is DropReason.MISSING_SYMBOL:
            self.nameless()
            return
        self.last_update = time.monotonic()
        count = self.bad_frames[reason] = self.bad_frames[reason] + 1
        log_bad(count, "%s: dropped a bad frame (%s; %d so far)", self._exchange_id, reason, count)

    def nameless(self) -> None:
        """Count an update ccxt stored under no symbol (the frame named none, or one the
        markets do not list): it can belong to no subscription, but it is not silently lost."""
        self.last_update = time.monotonic()
        reason = DropReason.MISSING_SYMBOL
        count = self.bad_frames[reason] = self.bad_frames[reason] + 1
        log_bad(count, "%s: dropped an update without a symbol (%d so far)", self._exchange_id,
                count)

    def frame_error(self, error: BaseException, described: str) -> None:
        """Count a frame ccxt could not decode or parse (``described``: its safe text)."""
        reason = DropReason.MALFORMED_FRAME if isinstance(error, json.JSONDecodeError) \
            else DropReason.UNPARSEABLE_FRAME
        self.last_update = time.monotonic()
        count = self.bad_frames[reason] = self.bad_frames[reason] + 1
        log_bad(count, "%s: dropped a bad frame (%s: %s; %d so far)", self._exchange_id,
                reason, described, count)

    def dispatch(self, tick: Update) -> None:
        """Hand ``tick`` (any :data:`Update`) to every callback: inline, or to its worker's queue."""
        for subscriber in self.subscribers:
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
                self.callback_errors += 1
                logger.exception("%s %s: callback %r raised", self._exchange_id, tick.symbol,
                                 subscriber.fn)

    def _awaited_callback_done(self, future: asyncio.Future[Any]) -> None:
        self._background.discard(future)
        if not future.cancelled() and future.exception() is not None:
            self.callback_errors += 1
            logger.error("%s: callback raised", self._exchange_id, exc_info=future.exception())

    # -- subscribers ------------------------------------------------------------------------

    def add(self, callback: Callback) -> Subscriber:
        """Register ``callback`` (its worker is started by :meth:`start_worker`)."""
        subscriber = Subscriber(callback)
        self.subscribers.append(subscriber)
        return subscriber

    def remove(self, callback: Callback) -> bool:
        """Forget ``callback`` and drop its queue; whether it was registered."""
        for subscriber in self.subscribers:
            if subscriber.fn == callback:
                self.subscribers.remove(subscriber)
                if subscriber.task is not None:
                    subscriber.task.cancel()
                return True
        return False

    def start_workers(self) -> None:
        """Start the worker of every coroutine callback that has none running."""
        for subscriber in self.subscribers:
            self.start_worker(subscriber)

    def start_worker(self, subscriber: Subscriber) -> None:
        """Start ``subscriber``'s worker, if it is a coroutine callback without a running one."""
        if not subscriber.is_async or (subscriber.task is not None and not subscriber.task.done()):
            return
        if subscriber.queue is None:
            subscriber.queue = asyncio.Queue()
        subscriber.task = asyncio.get_running_loop().create_task(
            self._deliver(subscriber), name=f"flight-md-{self._exchange_id}-callback")

    async def _deliver(self, subscriber: Subscriber) -> None:
        queue = subscriber.queue
        assert queue is not None
        while True:
            tick = await queue.get()
            try:
                await subscriber.fn(tick)  # type: ignore[misc]
            except asyncio.CancelledError:
                raise
            except Exception:
                self.callback_errors += 1
                logger.exception("%s %s: callback %r raised", self._exchange_id, tick.symbol,
                                 subscriber.fn)
            finally:
                queue.task_done()

    async def stop_workers(self) -> None:
        """Stop every worker after it delivered its queue (briefly: :data:`DRAIN_TIMEOUT`)."""
        tasks: list[asyncio.Task[None]] = []
        for subscriber in self.subscribers:
            if subscriber.task is None:
                continue
            if subscriber.queue is not None and not subscriber.task.done():
                try:  # deliver what is queued, briefly
                    await asyncio.wait_for(subscriber.queue.join(), DRAIN_TIMEOUT)
                except TimeoutError:
                    logger.warning("%s: dropping %d ticks queued for callback %r",
                                   self._exchange_id, subscriber.queue.qsize(), subscriber.fn)
            subscriber.task.cancel()
            tasks.append(subscriber.task)
            subscriber.task = None
            subscriber.queue = None
        await asyncio.gather(*tasks, return_exceptions=True)

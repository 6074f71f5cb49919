"""Live tails: an iterator (and an async iterator) over a ``follow=true`` stream.

A :class:`LiveTail` reads the Flight stream on a background thread into a small bounded
queue, so the thread that iterates never sits inside a blocking C++ read: ``close()`` from any
thread, Ctrl-C and task cancellation all take effect within ~100 ms, even on a quiet symbol.
The queue is bounded, so a consumer that cannot keep up pushes back on the server, which ends
the stream with :class:`~flight_md_client.SlowConsumer` rather than dropping ticks silently.

How a tail ends (``tail.end_reason`` afterwards):

========================  ===============================  =================================
what happened             iteration                        ``end_reason``
========================  ===============================  =================================
``close()`` (any thread)  stops (``StopIteration``)        ``TailEnd.CLOSED``
client ``close()``        stops                            ``TailEnd.CLOSED``
server shut down          stops                            ``TailEnd.SERVER_CLOSED``
                          (the server ends the stream with
                          UNAVAILABLE + ``server_shutdown``;
                          a plain end of stream, from older
                          servers, counts the same)
Ctrl-C while waiting      stream closed, then              ``TailEnd.INTERRUPTED``
                          ``KeyboardInterrupt`` re-raised
connection lost           raises ``ConnectionFailed``      ``TailEnd.ERROR``
reader too slow           raises ``SlowConsumer``          ``TailEnd.ERROR``
========================  ===============================  =================================
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from enum import StrEnum
from typing import Final, Self

import pyarrow as pa
from pyarrow import flight

from flight_md_client.errors import FlightMdClientError, ServerShuttingDown, translate

__all__ = ["LiveTail", "TailEnd"]

QUEUE_BATCHES: Final = 64
"""Record batches buffered between the reader thread and the consumer."""
POLL_S: Final = 0.1
"""How often a waiting consumer or a blocked reader thread checks for close()."""
JOIN_S: Final = 2.0


class TailEnd(StrEnum):
    """Why a live tail stopped."""

    CLOSED = "closed"
    SERVER_CLOSED = "server_closed"
    INTERRUPTED = "interrupted"
    ERROR = "error"


class _End:
    """The queue's last item: why the stream ended, and the error to raise if any."""

    __slots__ = ("error", "reason")

    def __init__(self, reason: TailEnd, error: FlightMdClientError | None = None) -> None:
        self.reason = reason
        self.error = error


class _Channel:
    """What the reader thread shares with the consumer (never the LiveTail itself, so that an
    abandoned tail is garbage-collected and its ``__del__`` stops the thread)."""

    __slots__ = ("closing", "queue", "waker")

    def __init__(self) -> None:
        self.queue: queue.Queue[pa.RecordBatch | _End] = queue.Queue(QUEUE_BATCHES)
        self.closing = threading.Event()
        self.waker: Callable[[], None] | None = None

    def wake(self) -> None:
        waker = self.waker
        if waker is not None:
            waker()

    def put(self, item: pa.RecordBatch | _End) -> bool:
        """Block until there is room (backpressure) or the tail closes."""
        while not self.closing.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
            except queue.Full:
                continue
            self.wake()
            return True
        return False


def _pump(reader: flight.FlightStreamReader, channel: _Channel, location: str) -> None:
    """The reader thread: Flight stream -> queue, then one :class:`_End`."""
    try:
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                reason = TailEnd.CLOSED if channel.closing.is_set() else TailEnd.SERVER_CLOSED
                channel.put(_End(reason))
                return
            if chunk.data is not None and chunk.data.num_rows and not channel.put(chunk.data):
                return
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the consumer
        if channel.closing.is_set():
            return
        error = (exc if isinstance(exc, FlightMdClientError)
                 else translate(exc, location, streaming=True))
        if isinstance(error, ServerShuttingDown):  # the server's end of a tail: not an error
            channel.put(_End(TailEnd.SERVER_CLOSED))
            return
        channel.put(_End(TailEnd.ERROR, error))


class LiveTail:
    """Record batches of one symbol as the server appends them (see the module docstring).

    Made by :meth:`MarketDataClient.tail <flight_md_client.MarketDataClient.tail>`. Iterate it,
    use it as a context manager, and call :meth:`close` from any thread to stop it.

    Attributes:
        schema: The stream's Arrow schema.
        symbol: The symbol followed.
        rows: Rows delivered so far.
        end_reason: Why the tail stopped, or ``None`` while it runs.
    """

    def __init__(self, reader: flight.FlightStreamReader, symbol: str, location: str,
                 on_close: Callable[[LiveTail], None] | None = None) -> None:
        self._reader = reader
        self.schema: pa.Schema = reader.schema
        self.symbol = symbol
        self.rows = 0
        self.end_reason: TailEnd | None = None
        self._on_close = on_close
        self._channel = _Channel()
        self._thread = threading.Thread(target=_pump, args=(reader, self._channel, location),
                                        name=f"flight-md-tail {symbol}", daemon=True)
        self._thread.start()

    # -- consuming -------------------------------------------------------------------------

    def _take(self, item: pa.RecordBatch | _End) -> pa.RecordBatch:
        if isinstance(item, _End):
            self._stop(item.reason)
            if item.error is not None:
                raise item.error
            raise StopIteration
        self.rows += item.num_rows
        return item

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self

    def __next__(self) -> pa.RecordBatch:
        channel = self._channel
        try:
            while True:
                if channel.closing.is_set():
                    self._stop(TailEnd.CLOSED)
                    raise StopIteration
                try:
                    item = channel.queue.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                return self._take(item)
        except KeyboardInterrupt:
            self._stop(TailEnd.INTERRUPTED)
            raise

    async def _aiter(self) -> AsyncIterator[pa.RecordBatch]:
        """Batches for an asyncio consumer: the event loop is never blocked."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def waker() -> None:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        channel = self._channel
        channel.waker = waker
        try:
            while True:
                ready.clear()
                if channel.closing.is_set():
                    self._stop(TailEnd.CLOSED)
                    return
                try:
                    item = channel.queue.get_nowait()
                except queue.Empty:
                    await ready.wait()
                    continue
                try:
                    batch = self._take(item)
                except StopIteration:
                    return
                yield batch
        finally:
            channel.waker = None

    def read_all(self, max_rows: int | None = None) -> pa.Table:
        """Collect batches into one table until the tail ends or ``max_rows`` rows arrived."""
        batches = []
        count = 0
        for batch in self:
            batches.append(batch)
            count += batch.num_rows
            if max_rows is not None and count >= max_rows:
                break
        table = pa.Table.from_batches(batches, schema=self.schema)
        return table if max_rows is None else table.slice(0, max_rows)

    # -- stopping --------------------------------------------------------------------------

    def _stop(self, reason: TailEnd, wait: bool = True) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        channel = self._channel
        if not channel.closing.is_set():
            channel.closing.set()
            with contextlib.suppress(Exception):  # a finished stream may refuse to cancel
                self._reader.cancel()
            channel.wake()
            if self._on_close is not None:
                self._on_close(self)
        if wait and self._thread is not threading.current_thread():
            self._thread.join(JOIN_S)

    def close(self, wait: bool = True) -> None:
        """Stop the stream (idempotent, safe from any thread).

        Args:
            wait: Wait (up to 2 s) for the reader thread to finish.
        """
        self._stop(TailEnd.CLOSED, wait)

    @property
    def closed(self) -> bool:
        """Whether the tail has stopped."""
        return self._channel.closing.is_set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # never raise from a finalizer
            self._stop(TailEnd.CLOSED, wait=False)

    def __repr__(self) -> str:
        state = self.end_reason.value if self.end_reason else "open"
        return f"<LiveTail {self.symbol!r} rows={self.rows} {state}>"


async def aiterate(tail: LiveTail) -> AsyncIterator[pa.RecordBatch]:
    """Async iteration over ``tail`` that closes it however the consumer stops."""
    try:
        async for batch in tail._aiter():
            yield batch
    finally:
        tail.close(wait=False)

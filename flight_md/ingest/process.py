"""Ingestion in a child process: ccxt parses there; rows land in this process's buffer.

Why: CPython runs one thread of a process at a time. In one process, the ingestion thread
(ccxt parsing every frame) holds the GIL most of the time under load, and every Flight
handler waits for it: at 5,000 msg/s a ``latest=100`` DoGet took several times as long as
on an idle server (BENCHMARKS.md). With :class:`IngestionProcess` the child runs the
:class:`~flight_md.ingest.manager.MarketDataManager` (streams, reconnects, heartbeats,
REST fallback, all as in-process) and sends each parsed row to the parent, which only
appends rows to its :class:`~flight_md.buffer.MarketDataBuffer` (about a microsecond each)
and answers Flight calls. The buffer, the event log and every read stay in the parent:
tickets, live tails and actions behave exactly as with :class:`IngestionThread`.

Protocol: one duplex :func:`multiprocessing.Pipe`, pickled tuples.

* parent -> child: ``("call", id, name, args)`` with ``name`` one of ``add_stream``,
  ``subscribe``, ``unsubscribe``, ``status``, ``stop``.
* child -> parent: ``("rows", [(exchange, symbol, row), ...])``, ``("event", Event)`` and
  ``("reply", id, error, value)`` (``error`` is ``None`` or ``(class name, message)`` of a
  :mod:`flight_md.errors` class; other exceptions arrive as ``Unavailable`` naming only their
  type, so no exchange message, which could quote a credential, crosses).

Rows are sent in batches: the first row of a batch schedules a flush at the end of the
current event-loop iteration, so a quiet stream sends each tick at once and a busy one
sends what one read of the socket produced. Rows and events leave in the order they
happened. If the parent dies, the child sees the pipe close and exits; if the child dies,
the parent records an ``error`` event, logs it, and control calls fail with UNAVAILABLE.
Callbacks (``add_callback``) are not available here: they would run in the child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Final, Self

from flight_md import errors
from flight_md.buffer import MarketDataBuffer
from flight_md.control import IngestionStatus
from flight_md.errors import FlightMdError, Unavailable
from flight_md.events import Event, EventKind, EventLog
from flight_md.schema import MarketTick

__all__ = ["IngestionProcess", "ProcessControl"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 60.0
"""Seconds the child may take to start (a fresh interpreter importing ccxt)."""
DEFAULT_CONTROL_TIMEOUT: Final = 10.0
FLUSH_INTERVAL_S: Final = 0.001
"""Rows are sent at most this often: a tick after a quiet spell goes at once, a busy stream's
rows go together (each message wakes the parent's reader and takes its GIL once)."""

_Send = Callable[[tuple[Any, ...]], None]


# -- the child ------------------------------------------------------------------------------


class _ForwardingBuffer(MarketDataBuffer):
    """The child's buffer: keeps nothing, batches rows to the parent (loop thread only)."""

    def __init__(self, send: _Send) -> None:
        super().__init__(1)
        self._send = send
        self._rows: list[tuple[str, str, Sequence[float]]] = []
        self._last_flush = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None

    def append_row(self, exchange: str, symbol: str, row: Sequence[float]) -> None:
        rows = self._rows
        rows.append((exchange, symbol, row))
        if len(rows) == 1:
            loop = self.loop
            assert loop is not None
            # At the end of this loop iteration (rows parsed from one socket read go
            # together), and no sooner than FLUSH_INTERVAL_S after the previous batch.
            wait = self._last_flush + FLUSH_INTERVAL_S - loop.time()
            if wait > 0:
                loop.call_later(wait, self.flush)
            else:
                loop.call_soon(self.flush)

    def append(self, tick: MarketTick) -> None:  # pragma: no cover - streams use append_row
        from flight_md.buffer import _row

        self.append_row(tick.exchange, tick.symbol, _row(tick))

    def flush(self) -> None:
        if self._rows:
            rows, self._rows = self._rows, []
            if self.loop is not None and not self.loop.is_closed():
                self._last_flush = self.loop.time()
            self._send(("rows", rows))


class _ForwardingEvents(EventLog):
    """The child's event log: sends each event to the parent, after the rows before it."""

    def __init__(self, send: _Send, rows: _ForwardingBuffer) -> None:
        super().__init__(capacity=1)
        self._send = send
        self._rows = rows

    def record(self, exchange: str, kind: EventKind, symbols: Sequence[str] = (),
               detail: str = "", *, timestamp: int | None = None) -> Event:
        event = super().record(exchange, kind, symbols, detail, timestamp=timestamp)
        self._rows.flush()
        self._send(("event", event))
        return event


def _child_main(conn: Connection, log_level: int) -> None:  # pragma: no cover - child process
    """The child: an :class:`IngestionThread` plus a loop answering the parent's calls."""
    from flight_md.ingest.manager import IngestionThread

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s[ingest]: %(message)s")
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    buffer = _ForwardingBuffer(send)
    events = _ForwardingEvents(send, buffer)
    ingestion = IngestionThread(buffer, events, name="flight-md-ingest").start()
    buffer.loop = ingestion.loop
    control = ingestion.control(DEFAULT_CONTROL_TIMEOUT)
    pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="flight-md-call")

    def serve(call_id: int, name: str, args: tuple[Any, ...]) -> None:
        try:
            if name == "add_stream":
                exchange, symbols, timeout, kwargs = args
                ingestion.add_stream(exchange, symbols, timeout, **kwargs)
                value: Any = None
            elif name == "subscribe":
                value = control.subscribe(*args)
            elif name == "unsubscribe":
                value = control.unsubscribe(*args)
            elif name == "status":
                value = control.status()
            else:
                raise errors.UnknownAction(f"unknown ingestion call {name!r}")
        except FlightMdError as error:
            send(("reply", call_id, (type(error).__name__, str(error)), None))
        except Exception as error:  # noqa: BLE001 - answered, never raised into the pipe loop
            logger.warning("ingestion call %s failed: %s", name, type(error).__name__)
            send(("reply", call_id, ("Unavailable", f"{name} failed: {type(error).__name__}"),
                  None))
        else:
            send(("reply", call_id, None, value))

    send(("ready",))
    stop_id: int | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        _, call_id, name, args = message
        if name == "stop":
            stop_id = call_id
            break
        pool.submit(serve, call_id, name, args)
    pool.shutdown(wait=True, cancel_futures=True)
    ingestion.stop()
    if stop_id is not None:
        try:
            buffer.flush()  # the loop has stopped: nothing else touches the rows now
            send(("reply", stop_id, None, None))
        except (OSError, ValueError):
            pass
    conn.close()


# -- the parent -----------------------------------------------------------------------------


class IngestionProcess:
    """Ingestion in a child process, filling this process's buffer and event log.

    It has the surface of :class:`~flight_md.ingest.manager.IngestionThread` that a server
    needs (``start``, ``add_stream``, ``control``, ``stop``); see the module docstring.

    Args:
        buffer: Where rows go (this process).
        events: Where the child's events go.
        name: The child's process name.
    """

    def __init__(self, buffer: MarketDataBuffer | None = None, events: EventLog | None = None,
                 *, name: str = "flight-md-ingest") -> None:
        self.buffer = buffer if buffer is not None else MarketDataBuffer()
        self.events = events if events is not None else EventLog()
        self.name = name
        self._process: Any = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._calls: dict[int, concurrent.futures.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self._started = False
        self._stopping = False
        self.exitcode: int | None = None
        """The child's exit code once it has ended."""

    @property
    def pid(self) -> int | None:
        """The child's process id (after :meth:`start`)."""
        return None if self._process is None else self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the child runs and its pipe is open."""
        return (self._process is not None and self._process.is_alive()
                and self._reader is not None and self._reader.is_alive())

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        """Start the child and wait until it is ready (idempotent).

        Raises:
            Unavailable: It did not come up within ``timeout`` seconds.
        """
        if self._process is not None:
            return self
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=True)
        process = context.Process(target=_child_main, name=self.name, daemon=True,
                                  args=(child, logging.getLogger().getEffectiveLevel()))
        process.start()
        child.close()
        self._process, self._conn = process, parent
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-reader",
                                        daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout):
            self.stop(1.0)
            raise Unavailable(f"the ingestion process did not start within {timeout:g} s")
        if not self._started:
            process.join(2.0)
            code = process.exitcode
            self.stop(1.0)
            raise Unavailable(f"the ingestion process exited while starting (exit code {code}); "
                              "a script that starts one must guard its entry point with "
                              "if __name__ == '__main__' (multiprocessing spawns it)")
        return self

    def _read(self) -> None:
        """The reader thread: rows into the buffer, events into the log, replies to callers."""
        conn = self._conn
        assert conn is not None
        append_row = self.buffer.append_row
        try:
            while True:
                message = conn.recv()
                kind = message[0]
                if kind == "rows":
                    for exchange, symbol, row in message[1]:
                        append_row(exchange, symbol, row)
                elif kind == "event":
                    event: Event = message[1]
                    self.events.record(event.exchange, event.kind, event.symbols, event.detail,
                                       timestamp=event.timestamp)
                elif kind == "reply":
                    _, call_id, error, value = message
                    future = self._calls.pop(call_id, None)
                    if future is not None and not future.done():
                        if error is None:
                            future.set_result(value)
                        else:
                            cls = getattr(errors, error[0], Unavailable)
                            if not (isinstance(cls, type) and issubclass(cls, FlightMdError)):
                                cls = Unavailable
                            future.set_exception(cls(error[1]))
                elif kind == "ready":
                    self._started = True
                    self._ready.set()
        except (EOFError, OSError):
            pass
        finally:
            self._ended()

    def _ended(self) -> None:
        self._ready.set()
        process = self._process
        if process is not None:
            process.join(2.0)
            self.exitcode = process.exitcode
        for future in list(self._calls.values()):
            if not future.done():
                future.set_exception(Unavailable("the ingestion process has stopped"))
        self._calls.clear()
        if not self._stopping and self._started:
            detail = f"ingestion process exited unexpectedly (exit code {self.exitcode})"
            logger.error("%s; no new ticks will arrive", detail)
            self.events.record("*", EventKind.FAILED, (), detail)

    def call(self, name: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        """Ask the child to run ``name`` and wait up to ``timeout`` seconds for the answer.

        Raises:
            FlightMdError: What the child raised (``Unavailable`` for anything not a
                flight_md error, and when the child is gone or too slow).
        """
        conn = self._conn
        if conn is None or not self.alive:
            raise Unavailable(f"ingestion is not running; cannot {name}")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        call_id = next(self._ids)
        self._calls[call_id] = future
        try:
            with self._send_lock:
                conn.send(("call", call_id, name, args))
        except (OSError, ValueError):
            self._calls.pop(call_id, None)
            raise Unavailable(f"ingestion is not running; cannot {name}") from None
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            self._calls.pop(call_id, None)
            raise Unavailable(f"ingestion did not answer within {timeout:g} s ({name}); "
                              "the exchange may be slow or unreachable") from None

    def add_stream(self, exchange_id: str, symbols: Sequence[str] = (),
                   timeout: float | None = 30.0, **stream_kwargs: Any) -> None:
        """Start a stream in the child (``MarketDataManager.add_stream``); blocks until
        connected."""
        wait = None if timeout is None else timeout + 5.0
        self.call("add_stream", (exchange_id, list(symbols), timeout, stream_kwargs), wait)

    def control(self, timeout: float = DEFAULT_CONTROL_TIMEOUT) -> ProcessControl:
        """The :class:`~flight_md.control.IngestionControl` for the Flight service."""
        return ProcessControl(self, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the streams and the child; bounded by ``timeout`` (idempotent)."""
        process, conn = self._process, self._conn
        if process is None or conn is None:
            return
        self._stopping = True
        try:
            if self.alive:
                self.call("stop", (), timeout)
        except FlightMdError as error:
            logger.warning("ingestion process did not stop cleanly: %s", error)
        process.join(timeout)
        if process.is_alive():
            logger.warning("ingestion process still running after %g s; terminating it", timeout)
            process.terminate()
            process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
        conn.close()
        if self._reader is not None:
            self._reader.join(timeout)
        self.exitcode = process.exitcode
        self._process = self._conn = self._reader = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _names(symbols: Sequence[str]) -> list[str] | str:
    return symbols if isinstance(symbols, str) else list(symbols)


class ProcessControl:
    """:class:`~flight_md.control.IngestionControl` over an :class:`IngestionProcess`."""

    def __init__(self, process: IngestionProcess, timeout: float = DEFAULT_CONTROL_TIMEOUT) -> None:
        self.process = process
        self.timeout = timeout

    def subscribe(self, exchange: str | None, symbols: Sequence[str]) -> dict[str, Any]:
        """Start streaming ``symbols``; returns ``{"exchange": id, "subscribed": [...]}``."""
        result: dict[str, Any] = self.process.call("subscribe", (exchange, _names(symbols)),
                                                   self.timeout)
        return result

    def unsubscribe(self, exchange: str | None, symbols: Sequence[str]) -> dict[str, Any]:
        """Stop streaming ``symbols``; returns ``{"exchange": id, "unsubscribed": [...]}``."""
        result: dict[str, Any] = self.process.call("unsubscribe", (exchange, _names(symbols)),
                                                   self.timeout)
        return result

    def status(self) -> IngestionStatus:
        """A consistent snapshot of every stream (taken in the child)."""
        result: IngestionStatus = self.process.call("status", (), self.timeout)
        return result

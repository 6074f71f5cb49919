"""Ingestion in a child process: ccxt parses there; rows land in this process's buffer.

Why: CPython runs one thread of a process at a time. In one process, the ingestion thread
(ccxt parsing every frame) holds the GIL most of the time under load, and every Flight
handler waits for it: at 5,000 msg/s a ``latest=100`` DoGet took several times as long as
on an idle server (BENCHMARKS.md). With :class:`IngestionProcess` the child runs the
:class:`~flight_md.ingest.manager.MarketDataManager` (streams, reconnects, heartbeats,
REST fallback, all as in-process, every channel) and hands its rows to the parent in columnar
runs, which the parent appends to its :class:`~flight_md.buffer.Store` a ring at a time (no
work per row) while it answers Flight calls. The buffers, the event log and every read stay
in the parent: tickets, live tails and actions behave exactly as with
:class:`IngestionThread`.

Protocol: one duplex :func:`multiprocessing.Pipe`, pickled tuples.

* parent -> child: ``("call", id, name, args)`` with ``name`` one of ``add_stream``,
  ``subscribe``, ``unsubscribe``, ``status``, ``markets``, ``stop`` and ``arrow``
  (``(channel, on)``: whether the channel's messages carry the Arrow form, below; nobody
  waits for its answer). ``markets`` answers a tuple of
  :class:`~flight_md.control.MarketInfo`, filtered by symbol glob in the child (all of
  Binance spot's 1,700 are some 125 KB pickled).
* child -> parent: ``("batch", parts)`` (the hand-off, below: ``parts`` a list of
  ``(channel, header, named, floats, ids, ipc)``), ``("event", Event)``,
  ``("fatal", exchange, message)`` (a configured symbol the exchange turned out not to list) and
  ``("reply", id, error, value)`` (``error`` is ``None`` or ``(class name, message)`` of a
  :mod:`flight_md.errors` class; other exceptions arrive as ``Unavailable`` naming only their
  type, so no exchange message, which could quote a credential, crosses).

Hand-off: the first row after a flush schedules the next at the end of the current event-loop
iteration (and no sooner than :data:`FLUSH_INTERVAL_S` after the previous one), so a
quiet stream sends each tick at once and a busy one what one read of the socket produced. A
flush sends one message, a part per channel with rows (each message costs the parent a
thread wake-up, measured at ~120 us of CPU beyond the work on its rows when messages come a
few hundred a second): every ring's rows sorted by ring; ``header``
is ``[ring, rows, ring, rows, ...]`` with ring numbers the child assigns (``named`` lists
``(ring, exchange, symbol)`` for rings new in this message); ``floats`` the rows in the
ring's pending layout (float64, :mod:`flight_md.core.channels`), ``ids`` the trade ids (else
``None``) and ``ipc`` the same rows as one Arrow record batch in the channel's stored
schema, built in the child (``RecordBatch.serialize``) while the parent tails the channel
(else ``None``: building it costs the child more than the rows' floats, and only live
readers use it). The parent copies each ring's floats into the ring in one call (a memcpy;
the ring seals them into Arrow ``SEAL_ROWS`` at a time, vectorised) and, for a ring read
live (a tail, or a reader since its last seal), keeps the zero-copy slice of the child's
batch beside them, which readers slice instead of converting rows under the ring's lock
(:class:`~flight_md.buffer.HandOff`). Both forms because splitting the batch into per-ring
Arrow slices for every ring costs more than the rows it saves at a few rows per ring per
message (measured in the parent at 15 rows a message over 20 rings: ~17 us a row with an
Arrow slice and append per ring, ~5 us with the copy, against ~6 us of the row-by-row path). Rows and events
leave in the order they happened: the outbox is the child's event-loop thread's alone (every
row is gathered there, with no lock), and an event is sent from there after a flush of the
rows before it (one recorded on another thread is handed to the loop, its caller waiting).

An ingestion node (:mod:`flight_md.bus.ingest`) reuses the child's outbox, store and event
log in its own process: given a ``sink``, a flush hands each ring's rows to it as one Arrow
batch in the stored schema (:meth:`_ForwardingBuffer.drain_batches`: one ``spec.seal`` per
channel, sliced per ring) instead of sending the pickled message, and its events go to the
``send`` it was given.

If the parent dies, the child sees the pipe close and exits; if the child dies, the parent
records a ``failed`` event, starts a new child after a backoff and gives it every stream and
symbol (:class:`IngestionProcess`, "Supervision").
Callbacks (``add_callback``) are not available here: they would run in the child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import signal
import struct
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Final, Self

import pyarrow as pa

from flight_md import errors
from flight_md.buffer import HandOff, MarketDataBuffer, Store
from flight_md.control import ExchangeStatus, IngestionStatus, MarketInfo, SymbolStatus
from flight_md.errors import FlightMdError, Unavailable
from flight_md.events import Event, EventKind, EventLog
from flight_md.ingest.policy import PolicySettings, ReconnectPolicy
from flight_md.schema import MarketTick, now_ms

__all__ = ["IngestionProcess", "ProcessControl"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 60.0
"""Seconds the child may take to start (a fresh interpreter importing ccxt)."""
DEFAULT_CONTROL_TIMEOUT: Final = 10.0
RESTART_DELAY_S: Final = 0.5
"""First wait before a dead child is started again; doubled per failed restart."""
RESTART_MAX_DELAY_S: Final = 30.0
FLUSH_INTERVAL_S: Final = 0.001
"""Rows are sent at most this often: a tick after a quiet spell goes at once, a busy stream's
rows go together (each message wakes the parent's reader and takes its GIL once)."""

_Send = Callable[[tuple[Any, ...]], None]
RingSink = Callable[[str, str, str, "pa.RecordBatch"], None]
"""Takes one ring's rows of one flush: ``(channel, exchange, symbol, batch)``, the batch in
the channel's stored schema (an ingestion node's publisher, :mod:`flight_md.bus.ingest`)."""


# -- the child ------------------------------------------------------------------------------


class _Outbox:
    """What the child has not sent yet, by channel; one hand-off message a flush.

    The loop thread's alone, so that the per-row path takes no lock (every stream, and so
    every ``_ForwardingBuffer`` append, runs on the loop): the first row after a flush
    schedules the next flush; an event flushes it before the event is sent, and an event
    recorded on another thread is handed to the loop (:meth:`on_loop`), so rows and events
    leave in the order they happened.
    """

    def __init__(self, send: _Send, *, sink: RingSink | None = None,
                 interval: float = FLUSH_INTERVAL_S, sink_rate: float | None = None,
                 max_interval: float = 0.05) -> None:
        self.send = send
        self.sink = sink
        """If set, a flush hands each ring's rows to it as one Arrow batch
        (:meth:`_ForwardingBuffer.drain_batches`) instead of sending a hand-off message."""
        self.interval = interval
        """Seconds between flushes at least (:data:`FLUSH_INTERVAL_S` by default)."""
        self.sink_rate = sink_rate
        """With a sink: the batches a second it should get at most, so that a flush of ``n``
        rings waits ``n / sink_rate`` seconds (from ``interval`` to ``max_interval``) before
        the next; ``None``: ``interval``."""
        self.max_interval = max_interval
        self._gap = interval
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scheduled = False
        self.buffers: dict[str, _ForwardingBuffer] = {}
        self.arrow: frozenset[str] = frozenset()
        """Channels whose messages carry the Arrow form too: the parent tails them (replaced
        whole by the call thread, read by the loop)."""
        self._last_flush = 0.0
        self._ring_ids: dict[tuple[str, str, str], int] = {}

    def schedule(self) -> None:
        """Flush at the end of this loop iteration (rows parsed from one socket read go
        together), and no sooner than ``interval`` after the previous flush (with a
        ``sink_rate``: the gap the previous flush's size asks for)."""
        self.scheduled = True
        loop = self.loop
        assert loop is not None
        wait = self._last_flush + self._gap - loop.time()
        if wait > 0:
            loop.call_later(wait, self.flush)
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send every gathered row: one message, a part per channel that has rows (the loop
        thread, or any thread once the loop has stopped)."""
        self.scheduled = False
        sink = self.sink
        if sink is not None:
            drained = [(b.channel, b.drain_batches()) for b in self.buffers.values()]
            count = sum(len(rings) for _, rings in drained)
            if count:
                self._flushed()
                if self.sink_rate is not None:
                    self._gap = min(max(count / self.sink_rate, self.interval),
                                    self.max_interval)
            for channel, rings in drained:
                for exchange, symbol, batch in rings:
                    sink(channel, exchange, symbol, batch)
            return
        arrow = self.arrow
        parts = [m for b in self.buffers.values() if (m := b.drain(self._ring_ids,
                                                                     b.channel in arrow))]
        if not parts:
            return
        self._flushed()
        self.send(("batch", parts))

    def _flushed(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self._last_flush = self.loop.time()

    def on_loop(self, action: Callable[[], None]) -> None:
        """Run ``action`` (a flush and a send) on the loop thread and return once it ran:
        there it cannot interleave with the rows the loop gathers. Off the loop, it waits
        for the loop (so that a reply sent after it follows it); with the loop stopped, it
        runs here (no rows are gathered any more)."""
        loop = self.loop
        if loop is None or not loop.is_running():
            action()
            return
        try:
            if asyncio.get_running_loop() is loop:
                action()
                return
        except RuntimeError:
            pass  # another thread, with no loop of its own
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                action()
            finally:
                done.set_result(None)

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed meanwhile
            action()
            return
        try:
            done.result(DEFAULT_CONTROL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            logger.warning("the ingestion loop did not take an event in %.0f s",
                           DEFAULT_CONTROL_TIMEOUT)


class _ForwardingBuffer(MarketDataBuffer):
    """The child's buffer of one channel: keeps nothing, gathers rows per ring for the
    outbox, which sends them as one hand-off message (:meth:`drain`).

    Each row is packed into its float64 bytes as it comes (``struct``: a third of the cost
    of extending an ``array`` from a row tuple, measured), so that a drain joins bytes."""

    def __init__(self, outbox: _Outbox, channel: str, book_depth: int) -> None:
        super().__init__(1, channel=channel, book_depth=book_depth)
        self._outbox = outbox
        self._pack = struct.Struct(f"={self.spec.width}d").pack
        self._rows: dict[tuple[str, str], list[bytes]] = {}
        self._ids: dict[tuple[str, str], list[str | None]] = {}

    def append_row(self, exchange: str, symbol: str, row: Sequence[float]) -> None:
        rows = self._rows.get((exchange, symbol))
        if rows is None:
            rows = self._rows[exchange, symbol] = []
        rows.append(self._pack(*row))
        if not self._outbox.scheduled:
            self._outbox.schedule()

    def append_trade_row(self, exchange: str, symbol: str, row: Sequence[float],
                         trade_id: str | None) -> None:
        rows = self._rows.get((exchange, symbol))
        if rows is None:
            rows = self._rows[exchange, symbol] = []
            self._ids[exchange, symbol] = []
        rows.append(self._pack(*row))
        self._ids[exchange, symbol].append(trade_id)
        if not self._outbox.scheduled:
            self._outbox.schedule()

    def append_book(self, exchange: str, symbol: str, timestamp: int,
                    bids: Sequence[Sequence[float]], asks: Sequence[Sequence[float]],
                    nonce: int | None, receive_timestamp: int) -> None:
        self.append_row(exchange, symbol, self._book_row(exchange, symbol, timestamp, bids,
                                                         asks, nonce, receive_timestamp))

    def append(self, tick: MarketTick) -> None:  # pragma: no cover - streams use append_row
        from flight_md.buffer import _row

        self.append_row(tick.exchange, tick.symbol, _row(tick))

    def drain(self, ring_ids: dict[tuple[str, str, str], int],
              arrow: bool) -> tuple[Any, ...] | None:
        """The hand-off message's part of every row gathered since the last drain, or ``None``
        (the outbox's thread): see the module docstring, "Hand-off". ``arrow``: with the
        rows' Arrow batch as well."""
        if not self._rows:
            return None
        gathered, self._rows = self._rows, {}
        ids, self._ids = self._ids, {}
        spec, channel = self.spec, self.channel
        header: list[int] = []
        named: list[tuple[int, str, str]] = []
        all_ids: list[str | None] = []
        parts: list[bytes] = []
        has_ids = spec.has_ids
        for key, rows in gathered.items():
            ring = ring_ids.get((channel, *key))
            if ring is None:
                ring = ring_ids[channel, *key] = len(ring_ids)
                named.append((ring, *key))
            header += (ring, len(rows))
            parts += rows
            if has_ids:
                all_ids += ids[key]
        floats = b"".join(parts)
        ipc = None
        if arrow:
            flat = array("d")
            flat.frombytes(floats)
            ipc = spec.seal(flat, len(parts), all_ids).serialize().to_pybytes()
        return (channel, header, named, floats, all_ids if has_ids else None, ipc)

    def drain_batches(self) -> list[tuple[str, str, pa.RecordBatch]]:
        """Every row gathered since the last drain as ``(exchange, symbol, batch)`` a ring
        (the outbox's thread): the channel's rows sealed into one Arrow batch in its stored
        schema (one ``spec.seal``, vectorised) and sliced per ring (zero copy), so that the
        cost per flush is one conversion, not one a ring."""
        if not self._rows:
            return []
        gathered, self._rows = self._rows, {}
        ids, self._ids = self._ids, {}
        spec = self.spec
        has_ids = spec.has_ids
        counts: list[tuple[str, str, int]] = []
        parts: list[bytes] = []
        all_ids: list[str | None] = []
        for (exchange, symbol), rows in gathered.items():
            counts.append((exchange, symbol, len(rows)))
            parts += rows
            if has_ids:
                all_ids += ids[exchange, symbol]
        flat = array("d")
        flat.frombytes(b"".join(parts))
        batch = spec.seal(flat, len(parts), all_ids)
        if len(counts) == 1:
            return [(counts[0][0], counts[0][1], batch)]
        out = []
        first = 0
        for exchange, symbol, count in counts:
            out.append((exchange, symbol, batch.slice(first, count)))
            first += count
        return out


class _ForwardingStore(Store):
    """The child's store: a :class:`_ForwardingBuffer` per channel (none shared, so that the
    parent's store decides where each channel goes)."""

    def __init__(self, outbox: _Outbox, book_depth: int) -> None:
        super().__init__(1, book_depth=book_depth)
        self._outbox = outbox

    def buffer(self, channel: str) -> MarketDataBuffer:
        found = self._outbox.buffers.get(channel)
        if found is None:
            found = _ForwardingBuffer(self._outbox, channel, self.book_depth)
            self._outbox.buffers = {**self._outbox.buffers, channel: found}
        return found

    def get(self, channel: str) -> MarketDataBuffer | None:
        return self._outbox.buffers.get(channel)


class _ForwardingEvents(EventLog):
    """The child's event log: sends each event to the parent, after the rows before it."""

    def __init__(self, send: _Send, outbox: _Outbox) -> None:
        super().__init__(capacity=1)
        self._send = send
        self._outbox = outbox

    def record(self, exchange: str, kind: EventKind, symbols: Sequence[str] = (),
               detail: str = "", *, timestamp: int | None = None, channel: str = "") -> Event:
        event = super().record(exchange, kind, symbols, detail, timestamp=timestamp,
                               channel=channel)
        outbox = self._outbox

        def send() -> None:  # on the loop: no row can slip in between the rows and the event
            outbox.flush()
            self._send(("event", event))

        outbox.on_loop(send)
        return event


def _child_main(conn: Connection, log_level: int,
                book_depth: int) -> None:  # pragma: no cover - child process
    """The child: an :class:`IngestionThread` plus a loop answering the parent's calls."""
    from flight_md.ingest.manager import IngestionThread

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s[ingest]: %(message)s")
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    outbox = _Outbox(send)
    events = _ForwardingEvents(send, outbox)
    ingestion = IngestionThread(events=events, store=_ForwardingStore(outbox, book_depth),
                                name="flight-md-ingest",
                                on_fatal=lambda exchange, error: send(("fatal", exchange,
                                                                        str(error)))).start()
    outbox.loop = ingestion.loop
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
            elif name == "markets":
                value = control.markets(*args)
            elif name == "arrow":  # the parent tails a channel now (or no longer)
                channel, on = args
                outbox.arrow = outbox.arrow | {channel} if on else outbox.arrow - {channel}
                value = None
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
            outbox.flush()  # the loop has stopped: these are the last rows
            send(("reply", stop_id, None, None))
        except (OSError, ValueError):
            pass
    conn.close()


# -- the parent -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Child:
    """One generation of the child process, with its pipe and the parent's reader thread."""

    process: Any
    conn: Connection
    reader: threading.Thread | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    discarded: bool = False
    """Killed by the parent itself (a restart that failed): its end is not a crash."""
    good: bool = False
    """It has sent rows: the restart backoff starts over."""
    last_status: IngestionStatus | None = None
    arrow: dict[str, bool] = field(default_factory=dict)
    """Channels this child was asked to send in Arrow form too."""
    rings: dict[int, Callable[[HandOff, int, int], None]] = field(default_factory=dict)
    """The child's ring numbers (its hand-off headers name rings by them): the ring's
    appender."""


@dataclass(slots=True)
class _Wanted:
    """A stream the server asked for, as it is now: what a restarted child is given."""

    symbols: list[str]
    timeout: float | None
    kwargs: dict[str, Any]


class IngestionProcess:
    """Ingestion in a child process, filling this process's buffer and event log.

    It has the surface of :class:`~flight_md.ingest.manager.IngestionThread` that a server
    needs (``start``, ``add_stream``, ``control``, ``stop``); see the module docstring.

    Supervision: if the child dies (``kill -9``, a crash), a ``failed`` event (exchange
    ``*``) is recorded and the child is started again after a backoff
    (:data:`RESTART_DELAY_S` doubling to :data:`RESTART_MAX_DELAY_S`, with jitter, reset
    once a restarted child sends ticks), with every stream and every symbol subscribed at
    that moment (run-time ``subscribe``/``unsubscribe`` included); then a ``restarted`` event
    is recorded. Meanwhile ``status`` answers from what the parent knows, each exchange in
    state ``down`` with the reason in ``last_error``; ``subscribe``/``unsubscribe`` answer
    ``Unavailable``. Counters continue across restarts: a symbol's ``received`` never drops
    below what this process has stored for it.

    Args:
        buffer: Where rows go (this process).
        events: Where the child's events go.
        name: The child's process name.
        on_fatal: Called (on a reader thread) with ``(exchange_id, error)`` when a stream
            finds, once its markets load, a symbol the exchange does not list.
    """

    def __init__(self, buffer: MarketDataBuffer | None = None, events: EventLog | None = None,
                 *, name: str = "flight-md-ingest",
                 on_fatal: Callable[[str, errors.InvalidArgument], None] | None = None,
                 store: Store | None = None) -> None:
        if store is not None and buffer is not None and store.get(buffer.channel) is not buffer:
            raise ValueError(f"the {buffer.channel} buffer given is not the store's")
        if store is None:
            store = Store.of(buffer if buffer is not None else MarketDataBuffer())
        self.store = store
        """Every channel's buffer: rows of each channel go to ``store.buffer(channel)``."""
        self.buffer = buffer if buffer is not None else store.buffer("ticker")
        """The tick buffer."""
        self.events = events if events is not None else EventLog()
        self.name = name
        self.on_fatal = on_fatal
        self._child: _Child | None = None
        self._send_lock = threading.Lock()
        self._reap_lock = threading.Lock()  # join/is_alive from two threads race on waitpid
        self._lifecycle = threading.RLock()
        self._calls: dict[int, concurrent.futures.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._stopping = False
        self._stop_event = threading.Event()
        self._restarter: threading.Thread | None = None
        self._policy = ReconnectPolicy(PolicySettings(reconnect_delay=RESTART_DELAY_S,
                                                      max_reconnect_delay=RESTART_MAX_DELAY_S))
        self._wanted: dict[str, _Wanted] = {}
        self._down: str | None = None
        self._down_ms: int | None = None
        self._base_symbols: dict[tuple[str, str, str | None], tuple[int, int]] = {}
        """(received, dropped) of earlier children by (exchange, symbol, channel)."""
        self._base_exchanges: dict[str, tuple[int, Counter[str], int]] = {}
        self._last_seen: dict[str, IngestionStatus] = {}
        self.restarts = 0
        """Times the child was started again after dying."""
        self.exitcode: int | None = None
        """The exit code of the child that ended last."""

    @property
    def pid(self) -> int | None:
        """The current child's process id (after :meth:`start`)."""
        child = self._child
        return None if child is None else int(child.process.pid)

    @property
    def alive(self) -> bool:
        """Whether the child runs and its pipe is open."""
        child = self._child
        return (child is not None and self._is_alive(child.process)
                and child.reader is not None and child.reader.is_alive())

    @property
    def down(self) -> str | None:
        """Why ingestion is not running while it is being restarted, else ``None``."""
        return self._down

    def _is_alive(self, process: Any) -> bool:
        with self._reap_lock:
            return bool(process.is_alive())

    def _join(self, process: Any, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:  # short slices: another thread may need the lock meanwhile
            with self._reap_lock:
                process.join(min(0.05, max(deadline - time.monotonic(), 0.0)))
                if not process.is_alive():
                    return
            if time.monotonic() >= deadline:
                return

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        """Start the child and wait until it is ready (idempotent).

        Raises:
            Unavailable: It did not come up within ``timeout`` seconds.
        """
        with self._lifecycle:
            if self._child is not None:
                return self
            self._stopping = False
            self._stop_event.clear()
            self._spawn(timeout)
        return self

    def _spawn(self, timeout: float) -> _Child:
        context = multiprocessing.get_context("spawn")
        parent, child_end = context.Pipe(duplex=True)
        process = context.Process(target=_child_main, name=self.name, daemon=True,
                                  args=(child_end, logging.getLogger().getEffectiveLevel(),
                                        self.store.book_depth))
        process.start()
        child_end.close()
        child = _Child(process, parent)
        self._child = child
        child.reader = threading.Thread(target=self._read, args=(child,),
                                        name=f"{self.name}-reader", daemon=True)
        child.reader.start()
        if not child.ready.wait(timeout):
            self._discard(child)
            raise Unavailable(f"the ingestion process did not start within {timeout:g} s")
        if not child.started:
            self._join(process, 2.0)
            code = process.exitcode
            self._discard(child)
            raise Unavailable(f"the ingestion process exited while starting (exit code {code}); "
                              "a script that starts one must guard its entry point with "
                              "if __name__ == '__main__' (multiprocessing spawns it)")
        return child

    def _discard(self, child: _Child) -> None:
        """End a child the parent gave up on (its end is not reported as a crash)."""
        child.discarded = True
        if self._is_alive(child.process):
            child.process.kill()
        self._join(child.process, 2.0)
        child.conn.close()
        if child.reader is not None and child.reader is not threading.current_thread():
            child.reader.join(2.0)
        self.exitcode = child.process.exitcode
        if self._child is child:
            self._child = None

    def _read(self, child: _Child) -> None:
        """A reader thread: rows into the buffer, events into the log, replies to callers."""
        conn = child.conn
        rings = child.rings
        try:
            while True:
                message = conn.recv()
                kind = message[0]
                if kind == "batch":
                    for channel, header, named, floats, ids, ipc in message[1]:
                        buffer = self.store.buffer(channel)
                        for ring, exchange, symbol in named:
                            rings[ring] = buffer.run_appender(exchange, symbol)
                        run = HandOff(floats, ids, ipc, buffer.spec)
                        tailed = buffer.tails > 0
                        if child.arrow.get(channel, False) is not tailed:
                            child.arrow[channel] = tailed
                            self._tell(child, "arrow", (channel, tailed))
                        first = 0
                        for i in range(0, len(header), 2):  # per ring, not per row
                            rows = header[i + 1]
                            rings[header[i]](run, first, rows)
                            first += rows
                    if not child.good:
                        child.good = True
                        self._policy.good(websocket=False)
                elif kind == "event":
                    event: Event = message[1]
                    self.events.record(event.exchange, event.kind, event.symbols, event.detail,
                                       timestamp=event.timestamp, channel=event.channel)
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
                elif kind == "fatal":
                    _, exchange, text = message
                    if self.on_fatal is not None:
                        self.on_fatal(exchange, errors.InvalidArgument(text))
                elif kind == "ready":
                    child.started = True
                    child.ready.set()
        except (EOFError, OSError):
            pass
        finally:
            self._ended(child)

    def _ended(self, child: _Child) -> None:
        child.ready.set()
        crashed = False
        with self._lifecycle:
            if not (self._stopping or child.discarded or not child.started
                    or self._child is not child):
                crashed = True  # stop() or _discard() reap the others
                # Down (with every row it sent counted) before any caller hears of it, so that
                # status answers without the child, and consistently.
                self._carry_counters(child)
                self._down, self._down_ms = "ingestion process exited unexpectedly", now_ms()
        for future in list(self._calls.values()):
            if not future.done():
                future.set_exception(Unavailable("the ingestion process has stopped"))
        self._calls.clear()
        if not crashed:
            return
        self._join(child.process, 2.0)
        self.exitcode = child.process.exitcode
        detail = f"ingestion process exited unexpectedly (exit code {self.exitcode})"
        with self._lifecycle:
            self._down = detail
            child.conn.close()
            if self._child is child:
                self._child = None
            symbols = [s for wanted in self._wanted.values() for s in wanted.symbols]
            self.events.record("*", EventKind.FAILED, symbols, f"{detail}; restarting it")
            logger.error("%s; restarting it", detail)
            if not self._stopping and (self._restarter is None or not self._restarter.is_alive()):
                self._restarter = threading.Thread(target=self._restart, args=(detail,),
                                                   name=f"{self.name}-restart", daemon=True)
                self._restarter.start()

    def _carry_counters(self, child: _Child) -> None:
        """Fold a dead child's counters into the bases its successor's are added to."""
        seen = child.last_status
        received = {(s.exchange, s.symbol, s.channel): (s.received, s.dropped)
                    for s in (seen.symbols if seen is not None else ())}
        for exchange_id, wanted in list(self._wanted.items()):
            for channel in _channels(wanted.kwargs):
                buffer = self.store.get(channel)
                for stats in buffer.stats(exchange_id) if buffer is not None else ():
                    key: tuple[str, str, str | None] = (exchange_id, stats.symbol, channel)
                    base, base_dropped = self._base_symbols.get(key, (0, 0))
                    got, dropped = received.pop(key, (0, 0))
                    # What this process stored from every child so far is a floor of what
                    # they received.
                    self._base_symbols[key] = (max(base + got, stats.appended),
                                               base_dropped + dropped)
        for key, (got, dropped) in received.items():
            base, base_dropped = self._base_symbols.get(key, (0, 0))
            self._base_symbols[key] = (base + got, base_dropped + dropped)
        for exchange in seen.exchanges if seen is not None else ():
            reconnects, bad, callback_errors = self._base_exchanges.get(
                exchange.exchange, (0, Counter(), 0))
            self._base_exchanges[exchange.exchange] = (
                reconnects + exchange.reconnects, bad + Counter(exchange.bad_frames),
                callback_errors + exchange.callback_errors)
        if seen is not None:
            self._last_seen["*"] = seen

    def _restart(self, detail: str) -> None:
        """The restarter thread: start a new child after a backoff, give it every stream."""
        while not self._stop_event.is_set():
            self._policy.failed(websocket=False)  # never gives up: no attempt limit
            delay = self._policy.next_delay()
            self._down = f"{detail}; restarting in {delay:.1f} s (attempt {self._policy.failures})"
            logger.warning("ingestion process: restarting in %.1f s (attempt %d)", delay,
                           self._policy.failures)
            if self._stop_event.wait(delay):
                return
            try:
                if self._stopping:
                    return
                child = self._spawn(START_TIMEOUT_S)
                if self._stopping:
                    self._discard(child)
                    return
                for exchange, wanted in list(self._wanted.items()):
                    wait = None if wanted.timeout is None else wanted.timeout + 5.0
                    self._call(child, "add_stream", (exchange, list(wanted.symbols),
                                                     wanted.timeout, wanted.kwargs), wait)
            except FlightMdError as error:
                detail = f"restarting the ingestion process failed: {error}"
                logger.error("%s", detail)
                failed = self._child
                if failed is not None:
                    self._discard(failed)
                self._down = detail
                continue
            with self._lifecycle:
                if self._child is not child:
                    continue  # it died while being given its streams: _ended noted it
                self.restarts += 1
                self._down = self._down_ms = None
            symbols = [s for wanted in self._wanted.values() for s in wanted.symbols]
            self.events.record("*", EventKind.RESTARTED, symbols,
                               f"ingestion process restarted (pid {child.process.pid}); "
                               f"{len(symbols)} symbols subscribed again on "
                               f"{', '.join(self._wanted) or 'no exchange'}")
            logger.warning("ingestion process restarted (pid %s); %d symbols subscribed again",
                           child.process.pid, len(symbols))
            return

    def call(self, name: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        """Ask the child to run ``name`` and wait up to ``timeout`` seconds for the answer.

        Raises:
            FlightMdError: What the child raised (``Unavailable`` for anything not a
                flight_md error, and when the child is gone, restarting or too slow).
        """
        down = self._down
        if down is not None:
            raise Unavailable(f"ingestion is restarting ({down}); cannot {name} now, "
                              "try again shortly")
        child = self._child
        if child is None or not self.alive:
            raise Unavailable(f"ingestion is not running; cannot {name}")
        return self._call(child, name, args, timeout)

    def _call(self, child: _Child, name: str, args: tuple[Any, ...],
              timeout: float | None) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        call_id = next(self._ids)
        self._calls[call_id] = future
        try:
            with self._send_lock:
                child.conn.send(("call", call_id, name, args))
        except (OSError, ValueError):
            self._calls.pop(call_id, None)
            raise Unavailable(f"ingestion is not running; cannot {name}") from None
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            self._calls.pop(call_id, None)
            raise Unavailable(f"ingestion did not answer within {timeout:g} s ({name}); "
                              "the exchange may be slow or unreachable") from None

    def _tell(self, child: _Child, name: str, args: tuple[Any, ...]) -> None:
        """A call whose answer nobody waits for (the reader thread must not block)."""
        try:
            with self._send_lock:
                child.conn.send(("call", next(self._ids), name, args))
        except (OSError, ValueError):
            pass  # the child is gone: the reader sees its pipe close

    def add_stream(self, exchange_id: str, symbols: Sequence[str] = (),
                   timeout: float | None = 30.0, **stream_kwargs: Any) -> None:
        """Start a stream in the child (``MarketDataManager.add_stream``, any channel or
        ``channels=``); blocks until connected. Its rows go to ``store.buffer(channel)``. A
        restarted child is given it again, with the symbols subscribed then."""
        wait = None if timeout is None else timeout + 5.0
        self.call("add_stream", (exchange_id, list(symbols), timeout, stream_kwargs), wait)
        self._wanted[exchange_id] = _Wanted(list(dict.fromkeys(symbols)), timeout,
                                            dict(stream_kwargs))

    def subscribe(self, exchange: str | None, symbols: Sequence[str],
                  timeout: float | None) -> dict[str, Any]:
        """``subscribe`` in the child; what it subscribed is given to a restarted child too."""
        result: dict[str, Any] = self.call("subscribe", (exchange, _names(symbols)), timeout)
        wanted = self._wanted.get(result["exchange"])
        if wanted is not None:
            wanted.symbols.extend(s for s in result["subscribed"] if s not in wanted.symbols)
        return result

    def unsubscribe(self, exchange: str | None, symbols: Sequence[str],
                    timeout: float | None) -> dict[str, Any]:
        """``unsubscribe`` in the child; a restarted child does not subscribe those again."""
        result: dict[str, Any] = self.call("unsubscribe", (exchange, _names(symbols)), timeout)
        wanted = self._wanted.get(result["exchange"])
        if wanted is not None:
            gone = set(result["unsubscribed"])
            wanted.symbols[:] = [s for s in wanted.symbols if s not in gone]
        return result

    def status(self, timeout: float | None) -> IngestionStatus:
        """Every stream's status: from the child, or while it is being restarted, from what
        the parent knows (state ``down``); counters include those of earlier children.

        Raises:
            Unavailable: Ingestion was stopped (or never started), or the child is too slow.
        """
        if self._down is None:
            child = self._child
            if child is None or not self.alive:
                raise Unavailable("ingestion is not running; cannot status")
            try:
                status: IngestionStatus = self._call(child, "status", (), timeout)
            except Unavailable:
                if self._down is None:
                    raise
            else:
                child.last_status = status
                return self._with_bases(status)
        return self._down_status()

    def markets(self, exchange: str | None, pattern: str | None,
                timeout: float | None) -> tuple[MarketInfo, ...]:
        """Every stream's loaded markets (whose symbol ``pattern`` matches), from the child.

        Raises:
            Unavailable: The child is gone, being restarted or too slow.
            UnknownExchange: No stream runs for ``exchange``.
        """
        markets: tuple[MarketInfo, ...] = self.call("markets", (exchange, pattern), timeout)
        return markets

    def _with_bases(self, status: IngestionStatus) -> IngestionStatus:
        if not self._base_symbols and not self._base_exchanges:
            return status
        exchanges = []
        for ex in status.exchanges:
            reconnects, bad, callback_errors = self._base_exchanges.get(ex.exchange,
                                                                        (0, Counter(), 0))
            exchanges.append(replace(ex, reconnects=ex.reconnects + reconnects,
                                     bad_frames=dict(bad + Counter(ex.bad_frames)),
                                     callback_errors=ex.callback_errors + callback_errors))
        symbols = []
        for sym in status.symbols:
            received, dropped = self._base_symbols.get((sym.exchange, sym.symbol, sym.channel),
                                                       (0, 0))
            symbols.append(replace(sym, received=sym.received + received,
                                   dropped=sym.dropped + dropped))
        return IngestionStatus(tuple(exchanges), tuple(symbols))

    def _down_status(self) -> IngestionStatus:
        seen = self._last_seen.get("*")
        known = {e.exchange: e for e in (seen.exchanges if seen is not None else ())}
        last_ms = {(s.exchange, s.symbol, s.channel): s.last_message_ms
                   for s in (seen.symbols if seen is not None else ())}
        reason, since = self._down, self._down_ms
        exchanges, symbols = [], []
        for exchange, wanted in list(self._wanted.items()):
            previous = known.get(exchange)
            reconnects, bad, callback_errors = self._base_exchanges.get(exchange,
                                                                        (0, Counter(), 0))
            exchanges.append(ExchangeStatus(
                exchange=exchange, state="down",
                mode=previous.mode if previous is not None else "websocket",
                channel=previous.channel if previous is not None
                else str(wanted.kwargs.get("channel", "ticker")),
                reconnects=reconnects, symbols=tuple(wanted.symbols), bad_frames=dict(bad),
                callback_errors=callback_errors, last_error=reason, last_error_ms=since))
            for channel in _channels(wanted.kwargs):
                for symbol in wanted.symbols:
                    key = (exchange, symbol, channel)
                    received, dropped = self._base_symbols.get(key, (0, 0))
                    symbols.append(SymbolStatus(exchange, symbol, True, received, dropped, True,
                                                last_ms.get(key), channel))
        return IngestionStatus(tuple(exchanges), tuple(symbols))

    def control(self, timeout: float = DEFAULT_CONTROL_TIMEOUT) -> ProcessControl:
        """The :class:`~flight_md.control.IngestionControl` for the Flight service."""
        return ProcessControl(self, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising, then the streams and the child; bounded by ``timeout`` in all
        (then the child is terminated, then killed; idempotent)."""
        began = time.monotonic()
        deadline = began + timeout

        def left() -> float:
            return max(deadline - time.monotonic(), 0.0)

        with self._lifecycle:
            self._stopping = True
            self._stop_event.set()
            restarter, self._restarter = self._restarter, None
        if restarter is not None and restarter is not threading.current_thread():
            restarter.join(left())
        with self._lifecycle:
            child, self._child = self._child, None
            self._down = self._down_ms = None
        if child is None:
            return
        try:
            if self._is_alive(child.process) and child.reader is not None \
                    and child.reader.is_alive():
                self._call(child, "stop", (), left())
        except FlightMdError as error:
            logger.warning("ingestion process did not stop cleanly: %s", error)
        self._join(child.process, left())
        if self._is_alive(child.process):
            logger.warning("ingestion process still running %.2f s after it was asked to stop "
                           "(limit %g s); terminating it", time.monotonic() - began, timeout)
            child.process.terminate()
            self._join(child.process, 2.0)
            if self._is_alive(child.process):
                child.process.kill()
                self._join(child.process, 2.0)
        child.conn.close()
        if child.reader is not None:
            child.reader.join(max(left(), 1.0))
        self.exitcode = child.process.exitcode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _channels(stream_kwargs: dict[str, Any]) -> list[str]:
    """The channels a stream's ``add_stream`` keywords ask for."""
    channels = stream_kwargs.get("channels")
    if channels:
        return [str(c) for c in channels]
    return [str(stream_kwargs.get("channel", "ticker"))]


def _names(symbols: Sequence[str]) -> list[str] | str:
    return symbols if isinstance(symbols, str) else list(symbols)


class ProcessControl:
    """:class:`~flight_md.control.IngestionControl` over an :class:`IngestionProcess`."""

    def __init__(self, process: IngestionProcess, timeout: float = DEFAULT_CONTROL_TIMEOUT) -> None:
        self.process = process
        self.timeout = timeout

    def subscribe(self, exchange: str | None, symbols: Sequence[str]) -> dict[str, Any]:
        """Start streaming ``symbols``; returns ``{"exchange": id, "subscribed": [...]}``."""
        return self.process.subscribe(exchange, symbols, self.timeout)

    def unsubscribe(self, exchange: str | None, symbols: Sequence[str]) -> dict[str, Any]:
        """Stop streaming ``symbols``; returns ``{"exchange": id, "unsubscribed": [...]}``."""
        return self.process.unsubscribe(exchange, symbols, self.timeout)

    def status(self) -> IngestionStatus:
        """A consistent snapshot of every stream (taken in the child; while the child is being
        restarted, each exchange ``down``)."""
        return self.process.status(self.timeout)

    def markets(self, exchange: str | None, pattern: str | None = None,
                ) -> tuple[MarketInfo, ...]:
        """Every stream's loaded markets (read in the child; filtered there, so only the
        matching ones cross the pipe)."""
        return self.process.markets(exchange, pattern, self.timeout)

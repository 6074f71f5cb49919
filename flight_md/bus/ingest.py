"""An ingestion node: exchange streams in, bus messages out, no Flight port (``flight-md ingest``).

:class:`IngestNode` runs an :class:`~flight_md.ingest.manager.IngestionThread` (every
stream, reconnect, heartbeat, REST fallback and channel as a server runs them) whose store
keeps nothing: it forwards rows as the ingestion child process does
(:mod:`flight_md.ingest.process`: ``_Outbox``, ``_ForwardingStore``, ``_ForwardingEvents``),
except that each flush hands every ring's rows, as one Arrow batch a ring (one ``spec.seal``
a channel, sliced), to the :class:`~flight_md.bus.publisher.Publisher` instead of a pipe. The
flush runs on the ingestion loop, and so does the publisher (its sends, acks and backlog),
the control responder and the node's registry record: one loop, no lock on the row path.
Events (connects, reconnects, gaps, book resyncs, stale streams...) are published on
``mdev.<exchange>`` after the rows before them (:mod:`flight_md.bus.message`, "Events").

Two NATS connections: the publisher's own (nats-py buffers nothing while the server is away:
every unacked message is in the publisher's bounded backlog) and one for control
(:class:`~flight_md.bus.control.ControlResponder`) and the registry
(:class:`~flight_md.bus.registry.Registry`), dialled in the background until the bus answers,
so that a node started before its bus is an outage like any other.

Run-time subscriptions: a node has no data dir, so what ``subscribe`` and ``unsubscribe``
changed is kept in the JetStream KV bucket :data:`SUBSCRIPTIONS_BUCKET` (key: the node name,
value: ``{exchange: {"added": [...], "removed": [...]}}`` relative to the configured symbols,
as a serving node's data dir keeps it), written after each change that succeeded, read when
the control connection is up (before the node answers control requests) and repeated then,
for the exchanges still configured (as ``flight-md serve`` repeats its own; the streams record
the subscribe and unsubscribe events as for any change).

Stopping: the streams first (their last rows and events are flushed), then the publisher
gets up to :data:`FLUSH_TIMEOUT_S` to have every kept message acked; what is still unacked
then is lost with the process, counted in one log line. Last, the tasks ccxt spawned that
outlived the streams' close (a book snapshot waiting for its throttler, the throttler's
looper) are cancelled and awaited on the loop: ccxt's ``close()`` leaves them, and a loop
closed with them pending logs "Task was destroyed but it is pending" for each.

Threads: the ingestion loop's, the demo emulators' (one each), and the caller's:
:meth:`IngestNode.status` from any thread other than the loop hands its work to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any, Final, Self

import pyarrow as pa

from flight_md.bus.backlog import DEFAULT_LIMITS, BacklogLimits
from flight_md.bus.connection import BUS_ERRORS, BusUnavailable, connect
from flight_md.bus.consumer import validate_node_name
from flight_md.bus.control import ControlResponder, status_to_json
from flight_md.bus.message import new_producer_id
from flight_md.bus.options import BusOptions
from flight_md.bus.publisher import Publisher, PublisherStats
from flight_md.bus.subjects import PREFIX, InvalidSubject, encode_token
from flight_md.config import DEMO_SYMBOLS, DEMO_VENUE, ServerConfig, StreamConfig
from flight_md.control import IngestionControl, IngestionStatus, MarketInfo
from flight_md.errors import ConfigError, FlightMdError, InvalidArgument, StartupError
from flight_md.events import Event
from flight_md.schema import now_ms

__all__ = ["FLUSH_INTERVAL_S", "FLUSH_TIMEOUT_S", "MAX_FLUSH_INTERVAL_S", "MESSAGES_PER_S",
           "SUBSCRIPTIONS_BUCKET", "IngestNode", "default_node_name", "note_subscription",
           "publisher_json", "run_ingest_node"]

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_S: Final = 0.001
"""An ingestion node flushes its rows at most this often, and then only as often as
:data:`MESSAGES_PER_S` allows: every flush makes a bus message a ring, each costing the
publisher and every serving node more than its rows (a publish, an ack, a decode, a ledger
check), so a flush of ``n`` rings waits ``n / MESSAGES_PER_S`` seconds (up to
:data:`MAX_FLUSH_INTERVAL_S`) before the next. A quiet stream's tick leaves at once (the first
row after a quiet spell schedules the flush at the end of the loop iteration); a busy one's
rows go together. Profiled at 3,000 bid/ask rows/s over 20 symbols (this node's process, the
machine shared) with fixed intervals: 5 ms made 1.1 rows a message and ~150 us of CPU a row,
20 ms 3.2 rows and ~90 us, 50 ms 7.7 and ~60 us; the bus hop's freshness (a consumer in the
same process) at 1,000 rows/s: p50 6.6 ms with 5 ms, 19 ms with 20 ms."""
MESSAGES_PER_S: Final = 1000.0
"""The bus messages a second an ingestion node aims at most for (see :data:`FLUSH_INTERVAL_S`)."""
MAX_FLUSH_INTERVAL_S: Final = 0.05
"""The longest a row waits for its flush (many rings: each message then holds more rows)."""
FLUSH_TIMEOUT_S: Final = 5.0
"""At stop, how long the publisher may take to have its backlog acked."""
START_TIMEOUT_S: Final = 30.0
CONTROL_TIMEOUT_S: Final = 10.0
CONTROL_RETRY_MAX_S: Final = 5.0
GAPS_SHOWN: Final = 10
"""Runs of dropped messages listed in the status (the newest; all are counted)."""
SUBSCRIPTIONS_BUCKET: Final = "flight_md_subscriptions"
"""The KV bucket of the ingestion nodes' run-time subscriptions (see the module docstring)."""
KV_TIMEOUT_S: Final = 5.0
LEFTOVER_TIMEOUT_S: Final = 2.0
"""At stop, how long the tasks ccxt left behind get to end once cancelled."""

Subscriptions = dict[str, dict[str, list[str]]]
_PUT_ERRORS: tuple[type[BaseException], ...] = (*BUS_ERRORS, RuntimeError, FlightMdError)
"""A record's put from a thread: the bus's errors, a closed loop, a stopped node."""


def note_subscription(changes: Subscriptions, exchange: str, symbols: Sequence[str],
                      subscribed: bool) -> None:
    """Record in ``changes`` a run-time subscribe (or unsubscribe) of ``symbols``, relative
    to the configured symbols: a symbol added then removed (or removed then added) is back
    as configured and listed in neither (as a serving node's data dir records it)."""
    change = changes.setdefault(exchange, {"added": [], "removed": []})
    add, remove = ("added", "removed") if subscribed else ("removed", "added")
    for symbol in symbols:
        if symbol in change[remove]:
            change[remove].remove(symbol)
        elif symbol not in change[add]:
            change[add].append(symbol)
    if not change["added"] and not change["removed"]:
        del changes[exchange]


def _subscriptions_from(data: bytes | None) -> Subscriptions:
    """The changes a KV value holds (``{}`` for none or an unreadable one, logged)."""
    if not data:
        return {}
    try:
        found = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        logger.warning("ignoring an unreadable record in %s: %s", SUBSCRIPTIONS_BUCKET, exc)
        return {}
    out: Subscriptions = {}
    if isinstance(found, dict):
        for exchange, change in found.items():
            if isinstance(change, dict):
                out[str(exchange)] = {k: [str(s) for s in change.get(k) or () if isinstance(s, str)]
                                      for k in ("added", "removed")}
    return out


def default_node_name(streams: Sequence[StreamConfig], demo: Sequence[str] = ()) -> str:
    """``<short host>-ingest-<8 hex>`` of what the node streams: stable across restarts, and
    two ingestion nodes of one host with different streams differ."""
    short = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:26] or "node"
    key = ";".join([*(f"{s.exchange}:{s.channel}:{','.join(s.symbols)}" for s in streams),
                    *(f"demo:{venue}" for venue in demo)])
    return f"{short}-ingest-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def publisher_json(stats: PublisherStats, options: BusOptions) -> dict[str, Any]:
    """The publisher's counts as the status shows them (no secret: the display URL)."""
    backlog = stats.backlog
    return {
        "url": options.display_url, "stream": options.stream, "producer": stats.producer,
        "connected": stats.connected, "published": backlog.added, "acked": backlog.acked,
        "backlog_messages": backlog.queued, "backlog_bytes": backlog.queued_bytes,
        "backlog_peak": backlog.peak, "backlog_peak_bytes": backlog.peak_bytes,
        "buffered": backlog.buffered, "dropped": backlog.dropped,
        "dropped_bytes": backlog.dropped_bytes, "dropped_runs": len(backlog.gaps),
        "gaps": [{"first": g.first, "last": g.last, "count": g.count, "bytes": g.bytes}
                 for g in backlog.gaps[-GAPS_SHOWN:]],
        "disconnects": stats.disconnects, "resent": stats.resent,
    }


def _demo_symbols(venue_id: str) -> tuple[str, ...]:
    from flight_md.venues import VENUES

    return DEMO_SYMBOLS if venue_id == DEMO_VENUE else VENUES[venue_id].demo_symbols


class IngestNode:
    """Ingestion only: streams every ring's rows and every event to the bus.

    Args:
        streams: The exchange streams (as ``flight-md serve`` takes them).
        options: The bus.
        node: This node's name (:func:`~flight_md.bus.consumer.validate_node_name`); its
            producer id is ``new_producer_id(node)`` at each start.
        demo: Venues to emulate on loopback and stream from, as ``serve --demo`` does (the
            same symbols, rate and channels).
        limits: The publisher's backlog while the bus is away.
        book_depth: Levels a side of the ``book`` channel.
        flush_interval: See :data:`FLUSH_INTERVAL_S`.
        messages_per_s: See :data:`MESSAGES_PER_S`; ``None``: every ``flush_interval``.
        control_timeout: Seconds a control call waits for the ingestion loop.
        emulator_options: Extra keyword arguments for each demo ``Emulator`` (tests: its
            rate, seed).

    Raises:
        ConfigError: nothing to stream, or a bad node name.
    """

    def __init__(self, streams: Sequence[StreamConfig], options: BusOptions, *, node: str,
                 demo: Sequence[str] = (), limits: BacklogLimits = DEFAULT_LIMITS,
                 book_depth: int = 10, flush_interval: float = FLUSH_INTERVAL_S,
                 messages_per_s: float | None = MESSAGES_PER_S,
                 control_timeout: float = CONTROL_TIMEOUT_S,
                 emulator_options: Mapping[str, Any] | None = None) -> None:
        try:
            self.node = validate_node_name(node)
        except InvalidSubject as exc:
            raise ConfigError(str(exc)) from None
        if not streams and not demo:
            raise ConfigError("an ingestion node needs something to stream: --exchange ID "
                              "--symbols ..., streams in --config, or --demo")
        self.configured = tuple(streams)
        self.options = options
        self.demo = tuple(demo)
        self.limits = limits
        self.book_depth = book_depth
        self.flush_interval = flush_interval
        self.messages_per_s = messages_per_s
        self.control_timeout = control_timeout
        self._emulator_options = dict(emulator_options or {})
        self.producer: str | None = None
        """This incarnation's producer id (after :meth:`start`)."""
        self.emulators: dict[str, Any] = {}
        """The demo's emulators by venue id (after :meth:`start`)."""
        self.streams: tuple[StreamConfig, ...] = ()
        """What runs (the demo's streams pointed at their emulators) (after :meth:`start`)."""
        self.fatal: FlightMdError | None = None
        """A configured symbol the exchange turned out not to list (found once its markets
        loaded): :func:`run_ingest_node` exits 2 with it."""
        self.started_ms: int | None = None
        self.unpublished = 0
        """Rows and events that could not be handed to the publisher (it was closed)."""
        self._ingestion: Any = None
        self._outbox: Any = None
        self._publisher: Publisher | None = None
        self._control_task: asyncio.Task[None] | None = None
        self._control_client: Any = None
        self._responder: ControlResponder | None = None
        self._registry: Any = None
        self.subscriptions: Subscriptions = {}
        """What run-time ``subscribe``/``unsubscribe`` changed (kept in
        :data:`SUBSCRIPTIONS_BUCKET`, read back at start)."""
        self._subscriptions_lock = threading.Lock()
        self._subscriptions_kv: Any = None
        self._streams_started = threading.Event()

    def __repr__(self) -> str:
        return (f"IngestNode(node={self.node!r}, producer={self.producer!r}, "
                f"bus={self.options.display_url!r})")

    @classmethod
    def from_config(cls, config: ServerConfig, **kwargs: Any) -> IngestNode:
        """The node ``config`` describes: its streams, demo, bus, node name, backlog limits
        and book depth (``kwargs``: the other arguments).

        Raises:
            ConfigError: nothing to stream, or a bad node name.
        """
        options = getattr(config, "bus", None) or BusOptions()
        node = getattr(config, "node_name", None) or default_node_name(config.streams,
                                                                       config.demo)
        limits_of = getattr(config, "backlog_limits", None)
        limits = limits_of() if callable(limits_of) else DEFAULT_LIMITS
        return cls(config.streams, options, node=node, demo=config.demo, limits=limits,
                   book_depth=config.book_depth, **kwargs)

    @property
    def exchanges(self) -> tuple[str, ...]:
        """The exchanges this node streams (each answers ``mdctl.<exchange>.*``)."""
        return tuple(dict.fromkeys([*(s.exchange for s in self.configured), *self.demo]))

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise BusUnavailable(f"ingestion node {self.node!r} is not started")
        return self._publisher

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The ingestion loop (after :meth:`start`): the publisher's and the responder's."""
        if self._ingestion is None:
            raise BusUnavailable(f"ingestion node {self.node!r} is not started")
        loop: asyncio.AbstractEventLoop = self._ingestion.loop
        return loop

    # -- start ------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        """Start publishing, the demo emulators, every stream and the control responder.

        Raises:
            ConfigError: unusable TLS files, or a bad stream argument.
            StartupError: a demo emulator or a stream could not start.
        """
        if self._ingestion is not None:
            return self
        self.options.tls_context()  # unusable TLS files: now, not in the background
        try:
            self._start(timeout)
        except BaseException:
            self.stop(2.0)
            raise
        return self

    def _start(self, timeout: float) -> None:
        from flight_md.ingest.manager import IngestionThread
        from flight_md.ingest.process import _ForwardingEvents, _ForwardingStore, _Outbox

        self.producer = new_producer_id(self.node)
        self.started_ms = now_ms()
        self._streams_started.clear()
        outbox = self._outbox = _Outbox(self._send, sink=self._publish_rows,
                                        interval=self.flush_interval,
                                        sink_rate=self.messages_per_s,
                                        max_interval=max(MAX_FLUSH_INTERVAL_S,
                                                         self.flush_interval))
        events = _ForwardingEvents(self._send, outbox)
        ingestion = self._ingestion = IngestionThread(
            events=events, store=_ForwardingStore(outbox, self.book_depth),
            name="flight-md-ingest", on_fatal=self._on_fatal).start()
        outbox.loop = ingestion.loop
        ingestion.run(self._start_bus(), timeout)
        self._start_demo()
        for stream in self.streams:
            channels = ({"channel": None, "channels": list(stream.channels)}
                        if len(stream.channels) > 1 else {})
            try:
                ingestion.add_stream(stream.exchange, list(stream.symbols), timeout,
                                     keep_retrying=True, **{**stream.stream_kwargs(), **channels})
            except InvalidArgument as exc:
                raise ConfigError(f"{stream.exchange}: {exc}") from None
            except FlightMdError as exc:
                raise StartupError(f"cannot start the {stream.exchange} stream: {exc}") from None
        self._streams_started.set()  # the run-time subscriptions may be repeated now

    def _start_demo(self) -> None:
        from flight_md.app import DEMO_CHANNELS, DEMO_RATE
        from flight_md.emulator.thread import EmulatorThread

        demo_streams = []
        for venue_id in self.demo:
            options = {"exchange": venue_id, "symbols": _demo_symbols(venue_id),
                       "rate": DEMO_RATE, "seed": 7, **self._emulator_options}
            emulator = self.emulators[venue_id] = EmulatorThread(**options)
            try:
                emulator.start()
            except (OSError, RuntimeError, ValueError) as exc:
                raise StartupError(f"cannot start the {venue_id} demo emulator: "
                                   f"{type(exc).__name__}: {exc}") from None
            logger.info("demo: exchange emulator (%s protocol) at %s", venue_id, emulator.url)
            demo_streams.append(StreamConfig(
                venue_id, _demo_symbols(venue_id), channel=DEMO_CHANNELS, mode="websocket",
                url=emulator.url, heartbeat_interval=10.0, reconnect_delay=0.5,
                max_reconnect_delay=5.0))
        self.streams = (*self.configured, *demo_streams)

    async def _start_bus(self) -> None:
        assert self.producer is not None
        publisher = self._publisher = Publisher(self.options, self.producer, limits=self.limits)
        await publisher.start()
        self._control_task = asyncio.get_running_loop().create_task(
            self._start_control(), name=f"bus-control-{self.node}")

    async def _start_control(self) -> None:
        """Dial the control connection until the bus answers, then answer control requests
        and keep the registry record."""
        delay = self.options.reconnect_wait_s
        while True:
            try:
                client = await connect(self.options, name=f"flight-md-{self.node}-control")
                break
            except BusUnavailable as exc:
                logger.log(logging.WARNING if delay == self.options.reconnect_wait_s
                           else logging.DEBUG, "ingestion node %s: control: %s (retrying)",
                           self.node, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONTROL_RETRY_MAX_S)
        self._control_client = client
        await self._restore_subscriptions(client)  # before any change can be answered
        inner = self._ingestion.control(self.control_timeout)
        self._responder = await ControlResponder(
            client, self.node, "ingest", status=self.status_async,
            control=_RecordingControl(self, inner), exchanges=self.exchanges).start()
        if self.subscriptions:
            await asyncio.get_running_loop().run_in_executor(
                None, self._repeat_subscriptions, inner)
        try:
            from flight_md.bus.registry import Registry, node_record
        except ImportError:  # pragma: no cover - the registry is optional
            return
        exchanges = self.exchanges
        record = node_record("ingest", exchanges=exchanges,
                             subjects=[f"{PREFIX}.*.{encode_token(e)}.>" for e in exchanges])
        registry = Registry(client, self.node, record)
        try:
            self._registry = await registry.start()
        except BusUnavailable as exc:
            logger.warning("ingestion node %s: no registry record: %s", self.node, exc)

    # -- run-time subscriptions ------------------------------------------------------------

    async def _restore_subscriptions(self, client: Any) -> None:
        """Open :data:`SUBSCRIPTIONS_BUCKET` (creating it) and read this node's record. A bus
        that refuses the bucket costs only the repeat (logged): the node streams anyway."""
        import nats.js.errors as js_errors
        from nats.js import api

        js = client.jetstream()
        try:
            try:
                kv = await asyncio.wait_for(js.key_value(SUBSCRIPTIONS_BUCKET), KV_TIMEOUT_S)
            except js_errors.BucketNotFoundError:
                config = api.KeyValueConfig(
                    bucket=SUBSCRIPTIONS_BUCKET, history=1, storage=api.StorageType.FILE,
                    description="flight_md ingestion nodes' run-time subscriptions (issue 16)")
                try:
                    kv = await asyncio.wait_for(js.create_key_value(config), KV_TIMEOUT_S)
                except js_errors.BadRequestError:  # another node created it meanwhile
                    kv = await asyncio.wait_for(js.key_value(SUBSCRIPTIONS_BUCKET), KV_TIMEOUT_S)
            try:
                entry = await asyncio.wait_for(kv.get(self.node), KV_TIMEOUT_S)
                value = entry.value
            except js_errors.KeyNotFoundError:
                value = None
        except BUS_ERRORS as exc:
            logger.warning("ingestion node %s: run-time subscriptions are not kept (%s %s: %s)",
                           self.node, SUBSCRIPTIONS_BUCKET, type(exc).__name__, exc)
            return
        self._subscriptions_kv = kv
        with self._subscriptions_lock:
            self.subscriptions = _subscriptions_from(value)

    def _repeat_subscriptions(self, control: IngestionControl) -> None:
        """Repeat what ``subscribe``/``unsubscribe`` changed before the restart, once the
        streams were added (a thread of the loop's executor: the control blocks)."""
        if not self._streams_started.wait(START_TIMEOUT_S):
            logger.warning("ingestion node %s: the streams did not start; run-time "
                           "subscriptions not repeated", self.node)
            return
        streamed = {stream.exchange for stream in self.streams}
        with self._subscriptions_lock:
            changes = {e: {k: list(v) for k, v in c.items()} for e, c in self.subscriptions.items()}
        for exchange, change in changes.items():
            if exchange not in streamed:
                logger.warning("ingestion node %s: not repeating the run-time subscriptions "
                               "of %s: it is not configured now", self.node, exchange)
                continue
            done: list[str] = []
            for sign, symbols, method in (("+", change["added"], control.subscribe),
                                          ("-", change["removed"], control.unsubscribe)):
                if not symbols:
                    continue
                try:
                    method(exchange, symbols)
                    done += [f"{sign}{symbol}" for symbol in symbols]
                except FlightMdError as exc:
                    logger.warning("ingestion node %s: cannot repeat the run-time %s of %s "
                                   "%s: %s", self.node, method.__name__, exchange,
                                   ", ".join(symbols), exc)
            if done:
                logger.info("ingestion node %s: repeated the run-time subscriptions of %s: %s",
                            self.node, exchange, ", ".join(done))

    def _note(self, exchange: str, symbols: Sequence[str], subscribed: bool) -> None:
        """Record a change that succeeded and write this node's record (a thread of the
        loop's executor: the put runs on the loop, this thread waits for it)."""
        if not symbols:
            return
        with self._subscriptions_lock:
            note_subscription(self.subscriptions, exchange, symbols, subscribed)
            value = json.dumps(self.subscriptions, sort_keys=True,
                               separators=(",", ":")).encode()
            kv, ingestion = self._subscriptions_kv, self._ingestion
            if kv is None or ingestion is None:
                logger.warning("ingestion node %s: the run-time %s of %s is not kept (no %s)",
                               self.node, "subscribe" if subscribed else "unsubscribe",
                               exchange, SUBSCRIPTIONS_BUCKET)
                return
            try:  # under the lock: two changes at once are written in their order
                asyncio.run_coroutine_threadsafe(
                    asyncio.wait_for(kv.put(self.node, value), KV_TIMEOUT_S),
                    ingestion.loop).result(KV_TIMEOUT_S + 1.0)
            except _PUT_ERRORS as exc:
                logger.warning("ingestion node %s: the run-time change of %s is not kept in "
                               "%s (%s); the next one writes it", self.node, exchange,
                               SUBSCRIPTIONS_BUCKET, type(exc).__name__)

    # -- the row path (the ingestion loop) --------------------------------------------------

    def _publish_rows(self, channel: str, exchange: str, symbol: str,
                      batch: pa.RecordBatch) -> None:
        publisher = self._publisher
        if publisher is None:
            self.unpublished += 1
            return
        try:
            publisher.publish(channel, exchange, symbol, batch)
        except FlightMdError as exc:  # closed, or a batch the bus refuses (a bug)
            self.unpublished += 1
            logger.debug("ingestion node %s: not published (%s %s %s): %s", self.node,
                         channel, exchange, symbol, exc)

    def _send(self, message: tuple[Any, ...]) -> None:
        """What ``_ForwardingEvents`` sends: ``("event", Event)``, on the loop (after the rows
        before it were flushed) while it runs."""
        if message[0] != "event":
            return
        event: Event = message[1]
        publisher = self._publisher
        if publisher is None or not self._on_loop():
            self.unpublished += 1
            return
        try:
            publisher.publish_event(event)
        except FlightMdError as exc:
            self.unpublished += 1
            logger.debug("ingestion node %s: event not published: %s", self.node, exc)

    def _on_loop(self) -> bool:
        ingestion = self._ingestion
        if ingestion is None:
            return False
        try:
            return asyncio.get_running_loop() is ingestion.loop
        except (RuntimeError, FlightMdError):
            return False

    def _on_fatal(self, exchange: str, error: FlightMdError) -> None:
        if self.fatal is None:
            self.fatal = error

    # -- status -----------------------------------------------------------------------------

    async def status_async(self) -> dict[str, Any]:
        """:meth:`status`, on the ingestion loop."""
        ingestion = self._ingestion
        status = ingestion.manager.status() if ingestion is not None else None
        publisher = self._publisher
        return {
            "node": self.node, "role": "ingest", "producer": self.producer,
            "exchanges": list(self.exchanges), "started_ms": self.started_ms,
            "bus": publisher_json(publisher.stats(), self.options) if publisher else None,
            "control": self._responder is not None, "unpublished": self.unpublished,
            "demo": {venue: emulator.url for venue, emulator in self.emulators.items()},
            "ingestion": status_to_json(status) if status is not None else None,
        }

    def status(self, timeout: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
        """The node's status, JSON-ready: its ingestion status (``"ingestion"``: exchanges
        and symbols), the publisher's counts (``"bus"``: published, acked, backlog messages
        and bytes, dropped and the dropped runs, disconnects, resent, connected), node,
        role, producer, exchanges. Any thread but the loop's (there: :meth:`status_async`).

        Raises:
            Unavailable: the node is not running, or its loop did not answer in time.
        """
        ingestion = self._ingestion
        if ingestion is None:
            raise BusUnavailable(f"ingestion node {self.node!r} is not running")
        if self._on_loop():
            raise RuntimeError("IngestNode.status() must not be called from its loop; "
                               "await status_async()")
        result: dict[str, Any] = ingestion.run(self.status_async(), timeout)
        return result

    # -- stop -------------------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the streams, then flush the publisher (up to :data:`FLUSH_TIMEOUT_S`, within
        ``timeout``), the control responder, the registry record, the emulators and the loop
        (idempotent)."""
        ingestion, self._ingestion = self._ingestion, None
        deadline = time.monotonic() + timeout
        if ingestion is not None:
            self._ingestion = ingestion  # status and the loop stay reachable while stopping
            try:
                with contextlib.suppress(FlightMdError):
                    ingestion.run(ingestion.manager.shutdown(), max(timeout / 2, 0.5))
                for emulator in self.emulators.values():
                    with contextlib.suppress(Exception):
                        emulator.stop()
                left = max(deadline - time.monotonic(), 0.5)
                with contextlib.suppress(FlightMdError):
                    ingestion.run(self._stop_bus(min(FLUSH_TIMEOUT_S, left)), left + 3.0)
                with contextlib.suppress(FlightMdError):
                    ingestion.run(_cancel_leftovers(), LEFTOVER_TIMEOUT_S + 1.0)
            finally:
                self._ingestion = None
                ingestion.stop(max(deadline - time.monotonic(), 1.0))
        else:
            for emulator in self.emulators.values():
                with contextlib.suppress(Exception):
                    emulator.stop()
        self.emulators = {}

    async def _stop_bus(self, flush_timeout: float) -> None:
        if self._outbox is not None:
            self._outbox.flush()  # the streams' last rows
        task, self._control_task = self._control_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        registry, self._registry = self._registry, None
        if registry is not None:
            with contextlib.suppress(FlightMdError):
                await registry.stop()
        responder, self._responder = self._responder, None
        if responder is not None:
            await responder.stop()
        client, self._control_client = self._control_client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)
        publisher = self._publisher
        if publisher is None:
            return
        with contextlib.suppress(TimeoutError):
            await publisher.flush(flush_timeout)
        await publisher.close(timeout=0.5)
        backlog = publisher.stats().backlog
        if backlog.queued:
            logger.warning("ingestion node %s: %d bus messages (%d bytes) were not acked within "
                           "%g s and are lost; %d acked in all", self.node, backlog.queued,
                           backlog.queued_bytes, flush_timeout, backlog.acked)
        else:
            logger.info("ingestion node %s: every bus message acked (%d)", self.node,
                        backlog.acked)

    def run_forever(self, stop: threading.Event | None = None) -> None:
        """Block until ``stop`` is set (or forever), or a configured symbol turns out not
        to exist (:attr:`fatal`)."""
        stop = stop if stop is not None else threading.Event()
        while not stop.wait(0.2):
            if self.fatal is not None:
                return

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def _cancel_leftovers() -> None:
    """Cancel and await every task still on the loop but this one: after the streams and
    the bus stopped, only what ccxt spawned and its ``close()`` left (see the module
    docstring). The thread path of ``flight-md serve`` is not seen to leave them: its demo
    emulators run on the ingestion loop and their stop, awaited there after the streams',
    keeps the loop running while the throttler's sleep and the snapshot end (which fails
    on the closed session); here the emulators run on their own threads and nothing ran
    on the loop after the bus stopped, so it closed with them pending."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=LEFTOVER_TIMEOUT_S)


class _RecordingControl:
    """The ingestion control an ingestion node answers with: each ``subscribe`` or
    ``unsubscribe`` that succeeded is recorded in :data:`SUBSCRIPTIONS_BUCKET` before its
    answer leaves (so the asker knows it survives a restart)."""

    def __init__(self, node: IngestNode, inner: IngestionControl) -> None:
        self.node = node
        self.inner = inner

    def subscribe(self, exchange: str | None, symbols: Sequence[str],
                  channels: Sequence[str] | None = None) -> dict[str, Any]:
        return self._change(True, exchange, symbols, channels)

    def unsubscribe(self, exchange: str | None, symbols: Sequence[str],
                    channels: Sequence[str] | None = None) -> dict[str, Any]:
        return self._change(False, exchange, symbols, channels)

    def _change(self, subscribed: bool, exchange: str | None, symbols: Sequence[str],
                channels: Sequence[str] | None) -> dict[str, Any]:
        method: Any = self.inner.subscribe if subscribed else self.inner.unsubscribe
        answer: dict[str, Any] = (method(exchange, symbols) if channels is None
                                  else method(exchange, symbols, channels))
        changed = answer.get("subscribed" if subscribed else "unsubscribed") or []
        self.node._note(str(answer.get("exchange") or exchange), [str(s) for s in changed],
                        subscribed)
        return answer

    def status(self) -> IngestionStatus:
        return self.inner.status()

    def markets(self, exchange: str | None, pattern: str | None = None,
                ) -> tuple[MarketInfo, ...]:
        return self.inner.markets(exchange, pattern)


def run_ingest_node(config: ServerConfig, *, shutdown_timeout: float = 10.0) -> int:
    """``flight-md ingest``: start the node, log what it streams and where it publishes, run
    until SIGTERM or SIGINT, then stop (streams first, then the publisher's backlog, bounded:
    the whole stop within ``shutdown_timeout`` seconds, the flush within
    :data:`FLUSH_TIMEOUT_S` of it).

    Returns:
        The exit code: 0, or 2 when a configured symbol turned out not to exist.

    Raises:
        ConfigError, StartupError: the node cannot start (the CLI prints the one line).
    """
    node = IngestNode.from_config(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.start()
        for stream in node.streams:
            logger.info("streaming %s (%s): %s", stream.exchange, ", ".join(stream.channels),
                        ", ".join(stream.symbols) or "no symbols yet")
        logger.info("publishing to %s as %s", node.options.display_url, node.producer)
        # The ready line, as `flight-md serve` prints its own: scripts wait for it.
        print(f"flight-md ingesting as {node.node} into {node.options.display_url} "
              f"(producer {node.producer}; {', '.join(node.exchanges)})", flush=True)
        node.run_forever(stop)
    finally:
        node.stop(shutdown_timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if node.fatal is not None:
        logger.error("%s", node.fatal)
        return 2
    return 0

"""The serving node's side of the bus: the stream into this node's rings and event log, each
message once, across restarts too.

:class:`ServeBus` runs one asyncio loop on a thread of its own (``flight-md-bus``) with one
NATS connection, on which two durable consumers (:class:`~flight_md.bus.consumer.Consumer`)
read the stream: ``flight-md-<node>`` takes the data subjects (``md.>`` or the node's
``--bus-subjects``) and appends each message's batch to its ring
(:meth:`flight_md.buffer.MarketDataBuffer.append_batch`); ``flight-md-<node>-events`` takes
the ingestion nodes' events (``mdev.>``) and records each in the event log as it was sent.
Other parts of the node that talk to the bus (the control client and responder, the node
registry) run on the same loop and connection: :attr:`ServeBus.loop`, :attr:`ServeBus.client`.

Exactly once, with persistence (a data dir): both consumers share the node's bus ledger
(:class:`flight_md.persist.store.BusLedger`, restored by
:meth:`~flight_md.persist.store.Persistence.open` before this starts). A message's rows (or
event) and its ledger entry are written under the ledger's lock, which the journal's feed
takes too, so one group commit holds both or neither; the message is acked only once that
commit is written (deferred acks: the journal hands the acks back, this loop sends them). So
after ``kill -9`` the journal holds exactly the messages the restored ledger names: the
server redelivers every unacked message, the ledger skips those stored (duplicates) and the
rest are stored. The messages the killed incarnation held unacked would come again only after
the ack wait (30 s): at start the durable consumer is created again from its ack floor, so
they come at once. A message waiting longer than half the ack wait (a journal that cannot write)
is told "in progress" so that the server does not redeliver it meanwhile.

Without persistence (memory only) nothing survives a restart: both durable consumers are
deleted and created again at start, so the node re-reads the stream's retention window into
its empty rings; messages are acked as soon as they are stored. With persistence but an empty
ledger (a new data dir under an old node name) the same happens.

Gaps (a producer's messages that never reached the stream, e.g. its backlog overflowed while
the bus was away) become ``gap`` events in ``@events`` (:meth:`ServeBus.status` counts them).
Lag (:meth:`Consumer.lag`) is refreshed in the background at most once a second (while the
node is behind, the per-subject figures every :data:`PROBE_INTERVAL_S`);
:meth:`ServeBus.status` returns the cached value and never waits for the bus. A subject that
falls more than ``lag_threshold`` messages behind, and later catches up, is recorded once
each way in ``@events`` (kind ``lag``).

Ledger pruning (:meth:`flight_md.bus.ledger.Ledger.prune`): every ``prune_interval_s``
(:data:`PRUNE_INTERVAL_S`) the loop reads the stream's first and last sequence and both
consumers' ack floors. Producers whose highest handled stream sequence is below the first
sequence of the check before are dropped, if by now each consumer has acked everything up to
that check's last sequence (or has nothing pending at all): every message the stream held
then is handled, so none of those producers' messages is left in the stream to deliver, not
even to a consumer created again. Changes go into the journal like every ledger change.

Subscriptions: at start a persisting node takes what the restored ``subscribe`` and
``unsubscribe`` events say is subscribed (:meth:`flight_md.events.EventLog.resume_subscriptions`):
the ingestion nodes sent those events once, to the incarnation that stored them, and a
restarted node reads on after them.

Threads: the bus loop's thread does all bus I/O and writes the rings (under the ring locks and
the ledger's lock); :meth:`ServeBus.start`, :meth:`ServeBus.stop` and :meth:`ServeBus.status`
are called from any other thread; the journal's committing thread hands acks back through
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Coroutine, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from flight_md.buffer import Store
from flight_md.bus.connection import BUS_ERRORS, BusUnavailable, bus_error, connect, ensure_stream
from flight_md.bus.consumer import ACK_WAIT_S, MAX_PROBES, Consumer, ConsumerLag, durable_name
from flight_md.bus.ledger import Gap, Ledger
from flight_md.bus.message import (
    ALL_EVENTS,
    EVENTS_PREFIX,
    BusMessage,
    EventMessage,
    InvalidMessage,
    decode_event,
)
from flight_md.bus.options import BusOptions
from flight_md.bus.subjects import (
    ALL_SUBJECTS,
    InvalidSubject,
    decode_token,
    parse_subject,
    validate_filter,
)
from flight_md.errors import Unavailable
from flight_md.events import EventKind, EventLog

if TYPE_CHECKING:
    from flight_md.persist.store import Persistence

__all__ = ["LAG_EVENT_MESSAGES", "LAG_REFRESH_S", "PRUNE_INTERVAL_S", "ServeBus",
           "events_durable_name"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

LAG_REFRESH_S: Final = 1.0
"""The cached lag is refreshed at most this often."""
PROBE_INTERVAL_S: Final = 5.0
"""While behind, per-subject lag is measured this often (the total every :data:`LAG_REFRESH_S`)."""
LAG_EVENT_MESSAGES: Final = 1_000
"""A subject this many messages behind is recorded in ``@events`` (and again once caught up)."""
DEFERRED_MAX_ACK_PENDING: Final = 16_384
"""Messages delivered and not acked the server allows a persisting node: acks wait for a
journal commit (~0.2-0.4 s), during which a fast stream delivers thousands."""
LAG_SHOWN: Final = 200
"""Subjects ``status`` lists by name (the most behind first)."""
GAPS_SHOWN: Final = 10
PRUNE_INTERVAL_S: Final = 300.0
"""The ledger is checked for producers to prune this often (two checks: one to note the
stream's range, the next to prune against it)."""


def events_durable_name(node: str) -> str:
    """The durable consumer of serving node ``node``'s events."""
    return f"{durable_name(node)}-events"


def _events_filter(text: str) -> str:
    if text != ALL_EVENTS and not text.startswith(f"{EVENTS_PREFIX}."):
        raise InvalidSubject(f"event subject filter {text!r} must start with "
                             f"{EVENTS_PREFIX + '.'!r}")
    return text


class ServeBus:
    """The serving node's bus consumers (see the module docstring).

    Args:
        options: The bus.
        node: This node's name (names its durable consumers).
        store: The rings the data goes into.
        events: The event log the ingestion nodes' events (and the gaps) go into.
        persistence: The node's persistence, opened (its bus ledger restored); ``None`` for a
            memory-only node.
        subjects: The data subject filters this node holds.
        lag_threshold: See :data:`LAG_EVENT_MESSAGES`.
        ack_wait_s: The server redelivers a message not acked within this.
        prune_interval_s: See :data:`PRUNE_INTERVAL_S`.
    """

    def __init__(self, options: BusOptions, *, node: str, store: Store, events: EventLog,
                 persistence: Persistence | None, subjects: Sequence[str] = (ALL_SUBJECTS,),
                 lag_threshold: int = LAG_EVENT_MESSAGES,
                 ack_wait_s: float = ACK_WAIT_S,
                 prune_interval_s: float = PRUNE_INTERVAL_S) -> None:
        self.options = options
        self.node = node
        self.durable = durable_name(node)  # validates the name
        self.events_durable = events_durable_name(node)
        self.store = store
        self.events = events
        self.persistence = persistence
        if not subjects:
            raise InvalidSubject("a serving node needs at least one subject filter")
        # Checked now, on the caller's thread: a bad filter is a start-up error.
        self.subjects = tuple(validate_filter(s) for s in subjects)
        self.lag_threshold = lag_threshold
        self.ack_wait_s = ack_wait_s
        self.prune_interval_s = prune_interval_s
        self._ledger = Ledger()
        self._guard: AbstractContextManager[Any] = contextlib.nullcontext()
        self._prune_mark: tuple[int, int] | None = None  # (first, last) stream seq at a check
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._data: Consumer | None = None
        self._events_consumer: Consumer | None = None
        self._events_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._to_ack: deque[Msg] = deque()
        self._ack_wake: asyncio.Event | None = None
        # Settled messages in order with the time of their batch, until acked (keep-alive).
        self._outstanding: deque[tuple[float, Msg]] = deque()
        self._bus_settle: Any = None  # the persistence's BusLedger.settle
        self._ack_lost: set[int] = set()  # id() of outstanding messages whose ack was lost
        self._counts: Counter[str] = Counter()
        self._lag: ConsumerLag | None = None
        self._lag_at: float | None = None
        self._lag_error: str | None = None
        self._behind: set[str] = set()
        self._stopping = False

    def __repr__(self) -> str:
        return (f"ServeBus(node={self.node!r}, subjects={self.subjects!r}, "
                f"bus={self.options.display_url!r})")

    # -- what other parts of the node share --------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The bus loop (running from :meth:`start` to :meth:`stop`).

        Raises:
            Unavailable: not started.
        """
        if self._loop is None:
            raise Unavailable(f"the bus of node {self.node!r} is not started")
        return self._loop

    @property
    def client(self) -> Client:
        """The node's one NATS connection (use it on :attr:`loop` only).

        Raises:
            Unavailable: not started.
        """
        if self._client is None:
            raise Unavailable(f"the bus of node {self.node!r} is not started")
        return self._client

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the bus loop, from any other thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def persistent(self) -> bool:
        return self.persistence is not None

    # -- start and stop ----------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> Self:
        """Connect, create or bind both durable consumers and start reading.

        Raises:
            BusUnavailable: the bus cannot be reached, or refused (the message names no
                secret); nothing keeps running then.
        """
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="flight-md-bus", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        self._loop = loop
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout)
        except BaseException as exc:
            self.stop(timeout=5.0)
            if isinstance(exc, concurrent.futures.TimeoutError | TimeoutError):
                raise BusUnavailable(f"the bus ({self.options.display_url}) did not answer "
                                     f"within {timeout:g} s") from None
            raise
        return self

    async def _start(self) -> None:
        self._ack_wake = asyncio.Event()
        self._client = await connect(self.options, name=f"flight-md-{self.node}",
                                     on_disconnect=self._disconnected,
                                     on_reconnect=self._reconnected)
        js = self._client.jetstream()
        try:
            await js.stream_info(self.options.stream)
        except nats.js.errors.NotFoundError:
            # No ingestion node has created it yet: create it, so that the start order of
            # the nodes does not matter (an ingestion node updates it to its own limits).
            await ensure_stream(js, self.options)
        except BUS_ERRORS as exc:
            raise bus_error(self.options, f"cannot read the bus stream {self.options.stream!r}",
                            exc) from None
        persistence = self.persistence
        if persistence is not None:
            shared = persistence.bus_ledger
            ledger = shared.ledger
            guard: Any = shared.lock
            settle: Any = self._settle
            shared.on_durable = self._durable
            self._bus_settle = shared.settle
        else:
            ledger, guard, settle = Ledger(), None, None
        self._ledger = ledger
        self._guard = guard if guard is not None else contextlib.nullcontext()
        if persistence is not None:
            # Before the events come: what the earlier incarnations stored is subscribed.
            self.events.resume_subscriptions()
        # Nothing of an earlier run to resume from: read the retention window again.
        fresh = persistence is None or len(ledger) == 0
        max_ack = DEFERRED_MAX_ACK_PENDING if persistence is not None else 1024
        self._data = Consumer(self.options, self.node, self._store_batch, ledger=ledger,
                              subjects=self.subjects, on_gap=self._gap,
                              ack_wait_s=self.ack_wait_s, client=self._client, guard=guard,
                              settle=settle, fresh=fresh, redeliver_now=persistence is not None,
                              max_ack_pending=max_ack)
        await self._data.start()
        events = Consumer(self.options, self.node, self._store_event, ledger=ledger,
                          subjects=(ALL_EVENTS,), on_gap=self._gap, ack_wait_s=self.ack_wait_s,
                          client=self._client, durable=self.events_durable, decoder=decode_event,
                          validate=_events_filter, guard=guard, settle=settle, fresh=fresh,
                          redeliver_now=persistence is not None, max_ack_pending=max_ack)
        try:
            await events.start()
            self._events_consumer = events
        except BusUnavailable as exc:
            # A stream made before events travelled on it (no mdev.> subject): the data
            # still flows; an ingestion node of this version adds the subject.
            self._events_error = str(exc)
            logger.warning("bus node %s reads no events: %s", self.node, exc)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._acker(), name="bus-acks"),
                       loop.create_task(self._watch_lag(), name="bus-lag"),
                       loop.create_task(self._prune_loop(), name="bus-ledger-prune")]
        if persistence is not None:
            self._tasks.append(loop.create_task(self._keep_alive(), name="bus-in-progress"))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, send the acks the journal allows by now, disconnect and end the
        loop. Messages not acked are delivered again to the next run (the ledger skips those
        stored). Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._stop(timeout), loop)
            with contextlib.suppress(Exception):
                future.result(timeout + 2.0)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout + 2.0)
        self._loop = self._thread = None

    async def _stop(self, timeout: float) -> None:
        self._stopping = True
        for consumer in (self._data, self._events_consumer):
            if consumer is not None:
                await consumer.close(timeout=timeout / 2)
        persistence = self.persistence
        if persistence is not None:
            journal = persistence.journal
            if journal is not None:
                # What is stored now becomes durable now, and its acks are sent below.
                with contextlib.suppress(Exception):
                    await asyncio.get_running_loop().run_in_executor(None, journal.commit)
            await asyncio.sleep(0)  # the acks the commit handed back (call_soon_threadsafe)
            persistence.bus_ledger.on_durable = None
        await self._send_acks()
        tasks, self._tasks = self._tasks, []
        # Cancelled in bounded rounds: Python 3.11's wait_for (in nats-py's calls and the lag
        # and prune checks) can swallow a cancel that arrives as its awaitable completes; the
        # loops also end on _stopping.
        for _ in range(10):
            pending = [task for task in tasks if not task.done()]
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.2)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a task's own error is not logged as unhandled
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*BUS_ERRORS):
                await asyncio.wait_for(client.close(), timeout / 2)

    # -- the bus loop: storing ---------------------------------------------------------------

    def _store_batch(self, message: BusMessage) -> None:
        try:
            self.store.buffer(message.channel).append_batch(message.exchange, message.symbol,
                                                            message.batch)
        except ValueError as exc:  # another book depth than this node's, say
            raise InvalidMessage(f"bus message on {message.subject!r} does not fit this "
                                 f"node's rings: {exc}") from None
        self._counts["rows"] += message.batch.num_rows

    def _store_event(self, message: EventMessage) -> None:
        event = message.event
        self.events.record(event.exchange, event.kind, event.symbols, event.detail,
                           timestamp=event.timestamp, channel=event.channel)

    def _gap(self, gap: Gap) -> None:
        symbols: tuple[str, ...] = ()
        try:
            if gap.subject.startswith(f"{EVENTS_PREFIX}."):
                exchange = decode_token(gap.subject.split(".", 1)[1])
            else:
                ring = parse_subject(gap.subject)
                exchange, symbols = ring.exchange, (ring.symbol,)
        except InvalidSubject:
            exchange = "*"
        self.events.record(exchange, EventKind.GAP, symbols,
                           f"bus: producer {gap.producer} lost messages "
                           f"#{gap.after + 1}..#{gap.through} on {gap.subject}")

    # -- deferred acks -----------------------------------------------------------------------

    def _settle(self, msg: Msg) -> None:
        """(Bus loop, ledger lock held.) ``msg`` is acked once the journal holds it."""
        self._outstanding.append((time.monotonic(), msg))
        self._bus_settle(msg)

    def _durable(self, tokens: list[object]) -> None:
        """(The journal's committing thread.) These messages' commit is written."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(self._queue_acks, tokens)

    def _queue_acks(self, tokens: list[object]) -> None:
        for token in tokens:
            assert isinstance(token, Msg)
            self._to_ack.append(token)
        if self._ack_wake is not None:
            self._ack_wake.set()

    async def _acker(self) -> None:
        assert self._ack_wake is not None
        while not self._stopping:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            await self._send_acks()

    async def _send_acks(self) -> None:
        to_ack, acked, lost = self._to_ack, 0, 0
        while to_ack:
            msg = to_ack.popleft()
            try:
                await msg.ack()
            except BUS_ERRORS:
                # Lost with the connection: the server delivers it again, the ledger skips it
                # (and the keep-alive leaves it alone).
                lost += 1
                self._ack_lost.add(id(msg))
            else:
                acked += 1
        self._counts["acked"] += acked
        self._counts["acks_lost"] += lost
        # Acks are sent in settle order (one journal's commits): drop what is acked (nats-py
        # marks a message acked) or lost.
        outstanding = self._outstanding
        while outstanding and self._sent(outstanding[0][1]):
            outstanding.popleft()

    def _sent(self, msg: Msg) -> bool:
        if msg._ackd:
            return True
        if self._ack_lost:
            lost = id(msg) in self._ack_lost
            self._ack_lost.discard(id(msg))
            return lost
        return False

    async def _keep_alive(self) -> None:
        """Tell the server "in progress" for messages whose commit has waited half the ack
        wait (a journal that cannot write): not redelivered, not forgotten either."""
        while not self._stopping:
            await asyncio.sleep(self.ack_wait_s / 4)
            old = time.monotonic() - self.ack_wait_s / 2
            outstanding = self._outstanding
            touched = []
            while outstanding and outstanding[0][0] <= old:  # settled in order
                _, msg = outstanding.popleft()
                if not self._sent(msg):
                    touched.append(msg)
            for msg in touched:
                with contextlib.suppress(*BUS_ERRORS):
                    await msg.in_progress()
            now = time.monotonic()
            # Told now: due again in half the ack wait, the youngest (the rest stay in order).
            outstanding.extend((now, msg) for msg in touched if not msg._ackd)

    # -- the connection and the lag ----------------------------------------------------------

    async def _disconnected(self) -> None:
        if self._stopping:
            return
        self._counts["disconnects"] += 1
        self.events.record("*", EventKind.DISCONNECT, (),
                           f"bus: lost the connection to {self.options.display_url}")

    async def _reconnected(self) -> None:
        self.events.record("*", EventKind.RECONNECT, (),
                           f"bus: connected again to {self.options.display_url}")

    async def _watch_lag(self) -> None:
        probed = 0.0
        while not self._stopping:
            started = time.monotonic()
            consumer = self._data
            if consumer is not None and self._client is not None and self._client.is_connected:
                # A subject's probe is a consumer created on the server, which counts its
                # messages: costly while far behind (20,000 messages on 200 subjects: ~30 %
                # slower with 64 probes a second, measured), so they run every few seconds.
                probes = MAX_PROBES if started - probed >= PROBE_INTERVAL_S else 0
                if probes:
                    probed = started
                try:
                    lag = await asyncio.wait_for(consumer.lag(probes), 10.0)
                except (BusUnavailable, TimeoutError) as exc:
                    self._lag_error = str(exc)
                else:
                    self._lag, self._lag_at, self._lag_error = lag, time.monotonic(), None
                    self._lag_events(lag)
            await asyncio.sleep(max(LAG_REFRESH_S - (time.monotonic() - started), 0.05))

    def _lag_events(self, lag: ConsumerLag) -> None:
        for subject, behind in lag.subjects.items():
            if behind > self.lag_threshold and subject not in self._behind:
                self._behind.add(subject)
                self._lag_event(subject, f"bus: {subject} is {behind} messages behind")
            elif behind == 0 and subject in self._behind:
                self._behind.discard(subject)
                self._lag_event(subject, f"bus: {subject} caught up")

    def _lag_event(self, subject: str, detail: str) -> None:
        symbols: tuple[str, ...]
        try:
            ring = parse_subject(subject)
            exchange, symbols = ring.exchange, (ring.symbol,)
        except InvalidSubject:
            exchange, symbols = "*", ()
        self.events.record(exchange, EventKind.LAG, symbols, detail)

    # -- ledger pruning ----------------------------------------------------------------------

    async def _prune_loop(self) -> None:
        while not self._stopping:
            client = self._client
            if client is not None and client.is_connected:
                try:
                    await asyncio.wait_for(self._prune_check(), 10.0)
                except BUS_ERRORS as exc:
                    self._prune_failed(exc)
                except TimeoutError as exc:
                    self._prune_failed(exc)
            await asyncio.sleep(self.prune_interval_s)

    def _prune_failed(self, exc: BaseException) -> None:
        # The next check tries again; the mark stays as it was (still safe).
        logger.info("bus node %s: ledger prune check failed: %s", self.node,
                    self.options.redact(f"{type(exc).__name__}: {exc}"))

    async def _prune_check(self) -> None:
        """One check (see the module docstring, "Ledger pruning")."""
        assert self._client is not None
        js = self._client.jetstream()
        stream = self.options.stream
        state = (await js.stream_info(stream)).state
        first, last = state.first_seq or 0, state.last_seq or 0
        mark = self._prune_mark
        if mark is not None:
            caught_up = True
            for consumer in (self._data, self._events_consumer):
                if consumer is None:
                    continue
                info = await js.consumer_info(stream, consumer.durable)
                floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
                idle = not info.num_pending and not info.num_ack_pending
                if not idle and (floor or 0) < mark[1]:
                    caught_up = False
            if caught_up and mark[0] > 1:
                with self._guard:
                    pruned = self._ledger.prune(mark[0])
                if pruned:
                    self._counts["pruned_producers"] += len(pruned)
                    logger.info("bus node %s: ledger pruned %d producers none of whose "
                                "messages the stream holds (before #%d)", self.node,
                                len(pruned), mark[0])
        with self._guard:
            # Entries restored from a ledger of before pruning: handled at or below this.
            self._ledger.bound(last)
            if self.persistence is None:
                self._ledger.take_changes()  # no journal takes them: do not keep them
        self._prune_mark = (first, last)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The node's bus status, from memory (the lag as last refreshed, ``lag_age_s`` ago):
        node, durable consumers, subjects, connected, messages stored, duplicates, invalid,
        gaps (count and the last few), events, acks waiting for the journal, the ledger
        (entries, producers pruned), lag."""
        data = self._data.stats() if self._data is not None else None
        events = self._events_consumer.stats() if self._events_consumer is not None else None
        client = self._client
        lag = self._lag
        gaps = list(data.gaps if data else ()) + list(events.gaps if events else ())
        waiting = (self.persistence.bus_ledger.waiting if self.persistence is not None else 0)
        by_lag = sorted(lag.subjects.items(), key=lambda kv: (-kv[1], kv[0])) if lag else []
        failed = next((c.failed for c in (self._data, self._events_consumer)
                       if c is not None and c.failed is not None), None)
        return {
            "node": self.node,
            "durable": self.durable,
            "events_durable": self.events_durable if self._events_consumer else None,
            "subjects": list(self.subjects),
            "persistent": self.persistence is not None,
            "connected": bool(client is not None and client.is_connected),
            "disconnects": self._counts["disconnects"],
            "stored": data.stored if data else 0,
            "rows": self._counts["rows"],
            "duplicates": data.duplicates if data else 0,
            "invalid": data.invalid if data else 0,
            "gaps": {"count": (data.gap_count if data else 0) + (events.gap_count if events
                                                                  else 0),
                     "last": [{"producer": g.producer, "subject": g.subject,
                               "after": g.after, "through": g.through}
                              for g in gaps[-GAPS_SHOWN:]]},
            "events": {"stored": events.stored if events else 0,
                       "duplicates": events.duplicates if events else 0,
                       "invalid": events.invalid if events else 0,
                       "error": self._events_error},
            "ack_pending": waiting,
            "acked": self._counts["acked"],
            "ledger": {"entries": len(self._ledger),
                       "pruned_producers": self._counts["pruned_producers"]},
            "recreated": bool(self._data is not None and self._data.recreated),
            "failed": (self.options.redact(f"{type(failed).__name__}: {failed}")
                       if failed is not None else None),
            "lag": {
                "pending": lag.pending if lag else None,
                "server_ack_pending": lag.ack_pending if lag else None,
                "behind": sorted(self._behind),
                "subjects": dict(by_lag[:LAG_SHOWN]),
                "subjects_total": len(by_lag),
                "age_s": (round(time.monotonic() - self._lag_at, 3)
                          if self._lag_at is not None else None),
                "error": self._lag_error,
            },
        }

"""The serving node's side of the bus: a durable consumer that stores each batch once.

A serving node has a stable name (``--node-name``); its durable JetStream consumer is named
from it (:func:`durable_name`), so that a restarted node resumes where the server last saw it
ack, and two nodes each read the whole stream. The consumer pulls messages in stream order,
decodes each (:func:`flight_md.bus.message.decode`), asks the :class:`~flight_md.bus.ledger.Ledger`
whether it is new, hands a new one to the store callback, records it in the ledger, and only
then acks it. A message the callback did not store (it raised) is not acked: the consumer
stops and the server delivers it again to the next run. A duplicate (at or below the last
stored sequence of its producer on its subject: a redelivery after a lost ack, or a
re-publish outside the server's duplicate window) is acked and not stored; one whose headers
name a stored sequence is known without decoding its batch (a restarted node's catch-up
reads thousands of them). A message that is
not one :func:`~flight_md.bus.message.encode` makes is terminated (never redelivered) and
counted.

Deferred acks (``settle``): a node that persists must not let the server forget a message
before the journal holds its rows (:class:`flight_md.persist.store.BusLedger`). Given
``settle``, the consumer calls it with each message (stored or duplicate) instead of acking,
inside ``guard`` (the lock the journal's feed takes) together with the store callback and
the ledger entry; the caller acks later, once the commit holding them is written.

Start: the durable consumer is created if missing (``redeliver_now``: or again from its ack
floor, when an incarnation that died left messages unacked); if it exists with other subject filters
(a changed ``--bus-subjects``), or ``fresh`` is asked (a memory-only node: nothing of an
earlier run survives, so it re-reads the stream's retention window), it is deleted and
created again, delivering everything the stream holds: the ledger makes the re-read of
what this node already stored duplicates.

Lag (:meth:`Consumer.lag`): the consumer's pending count, and per subject the messages in
the stream after the last one this node stored: zero for every subject when nothing is
pending and every delivered message is handled (one API call, and one per filter for the
subject list); otherwise a short-lived
consumer's ``num_pending`` per subject, two API calls a subject, at most ``max_probes``
subjects a call (round robin; the others keep their last value): for ``status``, not a
per-tick path.

Threads: none of its own; the callback runs on the consumer's loop and may be a coroutine
function (``async def``, awaited; not with ``guard``: a lock is not held across an await). A
plain callback is called as is (the per-message path then makes no coroutine of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Final

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

from flight_md.bus.connection import BUS_ERRORS, BusUnavailable, bus_error, connect
from flight_md.bus.ledger import Gap, Ledger, Sequenced, Verdict
from flight_md.bus.message import HEADER_PRODUCER, HEADER_SEQ, decode
from flight_md.bus.options import BusOptions
from flight_md.bus.subjects import ALL_SUBJECTS, InvalidSubject, validate_filter

__all__ = ["Consumer", "ConsumerLag", "ConsumerStats", "durable_name", "validate_node_name"]

logger = logging.getLogger(__name__)

FETCH_BATCH: Final = 256
FETCH_WAIT_S: Final = 0.5
"""A pull waits this long for messages before asking again (and seeing a close)."""
ACK_WAIT_S: Final = 30.0
"""The server redelivers a message not acked within this."""
MAX_GAPS_KEPT: Final = 100
"""Gaps :meth:`Consumer.stats` lists (the newest; all are counted)."""
MAX_PROBES: Final = 16
"""Subjects whose lag one :meth:`Consumer.lag` call measures while the consumer is behind."""
_NODE: Final = re.compile(r"[A-Za-z0-9_-]{1,48}")

StoreCallback = Callable[[Any], Awaitable[None] | None]
GapCallback = Callable[[Gap], None]
Decoder = Callable[[str, "dict[str, str] | None", bytes], Sequenced]


_ACK: Final = "ack"
_TERM: Final = "term"


def _stream_seq(msg: Msg) -> int:
    """``msg``'s stream sequence, read from its reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``)
    without nats-py's full metadata (a dataclass, a datetime: a tenth of a message's cost on
    this path); the other forms of the reply subject go through nats-py."""
    reply = msg.reply
    if reply:
        tokens = reply.split(".", 6)
        if len(tokens) == 7 and tokens[0] == "$JS" and tokens[1] == "ACK" and \
                tokens[6].count(".") == 2:
            return int(tokens[5])
    return msg.metadata.sequence.stream


def validate_node_name(name: str) -> str:
    """``name`` if it is a valid node name: 1 to 48 of ``A-Z a-z 0-9 _ -``.

    Raises:
        InvalidSubject: it is not.
    """
    if not isinstance(name, str) or not _NODE.fullmatch(name):
        raise InvalidSubject(f"node name {name!r} must be 1 to 48 of A-Z a-z 0-9 _ -")
    return name


def durable_name(node: str) -> str:
    """The durable consumer of serving node ``node``."""
    return f"flight-md-{validate_node_name(node)}"


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    """How far behind the stream a consumer is: ``pending`` messages not yet delivered to it,
    ``ack_pending`` delivered but not acked, and per subject the messages after the last one
    it stored."""

    pending: int
    ack_pending: int
    subjects: dict[str, int]


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """What a consumer did: messages ``stored``, ``duplicates`` skipped, ``invalid`` ones
    terminated, and the ``gaps`` it found (the last :data:`MAX_GAPS_KEPT`, oldest first;
    ``gap_count`` of them in all)."""

    stored: int
    duplicates: int
    invalid: int
    gaps: tuple[Gap, ...]
    gap_count: int = 0


class Consumer:
    """Reads the bus stream into a store, each batch once.

    Args:
        options: The bus.
        node: This serving node's name (names its durable consumer).
        store: Called with each new message; it stores the rows (and, to be exactly-once
            across restarts, the ledger entry with them: :mod:`flight_md.bus.ledger`). A
            message it refuses with :class:`~flight_md.bus.subjects.InvalidSubject` is
            counted invalid and terminated; any other error stops the consumer.
        ledger: What this node stored before (restored from its own persistence).
        subjects: Subject filters (:func:`~flight_md.bus.subjects.validate_filter`); every
            subject by default.
        on_gap: Called with each gap found (after the message that revealed it is stored,
            inside ``guard``).
        ack_wait_s: The server redelivers a message not acked within this (a node that died
            holding it); set when the durable consumer is created.
        client: A connection to use (kept open by :meth:`close`); by default the consumer
            connects on its own.
        durable: The durable consumer's name (default :func:`durable_name` of ``node``).
        decoder: Reads a delivered message (default :func:`~flight_md.bus.message.decode`;
            events: :func:`~flight_md.bus.message.decode_event`).
        validate: Checks each subject filter (default
            :func:`~flight_md.bus.subjects.validate_filter`).
        guard: Held around the store callback, the ledger entry and ``settle`` (see the
            module docstring, "Deferred acks").
        settle: Called with each handled message instead of acking it.
        fresh: Delete the durable consumer at start and read the stream from its start.
        redeliver_now: If the durable consumer has messages delivered and not acked at
            start (a node that died holding them), create it again from its ack floor so
            that they come again now rather than after ``ack_wait_s``: for a caller whose
            ledger skips what it stored (a persisting node).
        max_ack_pending: Messages delivered and not acked the server allows at once.
    """

    def __init__(self, options: BusOptions, node: str, store: StoreCallback, *,
                 ledger: Ledger | None = None, subjects: Sequence[str] = (ALL_SUBJECTS,),
                 on_gap: GapCallback | None = None, ack_wait_s: float = ACK_WAIT_S,
                 client: Client | None = None, durable: str | None = None,
                 decoder: Decoder = decode, validate: Callable[[str], str] = validate_filter,
                 guard: AbstractContextManager[Any] | None = None,
                 settle: Callable[[Msg], None] | None = None, fresh: bool = False,
                 redeliver_now: bool = False, max_ack_pending: int = 4 * FETCH_BATCH) -> None:
        self.options = options
        self.node = validate_node_name(node)
        self.durable = durable if durable is not None else durable_name(node)
        if not subjects:
            raise InvalidSubject("a consumer needs at least one subject filter")
        self.subjects = tuple(validate(s) for s in subjects)
        self.ledger = ledger if ledger is not None else Ledger()
        self._store = store
        self._async_store = inspect.iscoroutinefunction(store) or inspect.iscoroutinefunction(
            type(store).__call__)
        self.ack_wait_s = ack_wait_s
        self._on_gap = on_gap
        self._own_client = client is None
        self._decode = decoder
        self._guard: AbstractContextManager[Any] = guard if guard is not None else nullcontext()
        self._settle = settle
        self.fresh = fresh
        self.redeliver_now = redeliver_now
        self.max_ack_pending = max_ack_pending
        self.recreated = False
        """Whether :meth:`start` deleted an existing durable consumer (``fresh`` or changed
        filters) and created it again."""
        self._probe_at = 0
        self._subject_lag: dict[str, int] = {}
        self._client: Client | None = client
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._counts: Counter[str] = Counter()
        self._gaps: list[Gap] = []
        self._last_stream_seq: dict[str, int] = {}
        self._handled_through = 0  # the newest stream sequence handled (stored or not)
        self._stopping = False
        self._failed: BaseException | None = None

    def __repr__(self) -> str:
        return (f"Consumer(node={self.node!r}, subjects={self.subjects!r}, "
                f"bus={self.options.display_url!r})")

    async def start(self) -> None:
        """Connect, create or bind the durable consumer, and start reading.

        Raises:
            BusUnavailable: the bus is away, or has no such stream.
        """
        if self._client is None:
            self._client = await connect(self.options, name=f"flight-md-{self.node}")
        self._js = self._client.jetstream()
        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
        )
        if len(self.subjects) == 1:
            config.filter_subject = self.subjects[0]
        else:
            config.filter_subjects = list(self.subjects)
        try:
            await self._prepare(self._js, config)
            self._sub = await self._js.pull_subscribe_bind(durable=self.durable,
                                                           stream=self.options.stream)
        except BUS_ERRORS as exc:
            await self.close()
            raise bus_error(self.options, f"cannot read the bus stream {self.options.stream!r}",
                            exc) from None
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name=f"bus-consume-{self.node}")
        self._task.add_done_callback(self._done)

    async def _prepare(self, js: JetStreamContext, config: api.ConsumerConfig) -> None:
        """Create the durable consumer, first deleting one with other filters (or any, if
        ``fresh``)."""
        stream = self.options.stream
        try:
            info = await js.consumer_info(stream, self.durable)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            existing = info.config.filter_subjects or (
                [info.config.filter_subject] if info.config.filter_subject else [])
            same = sorted(existing) == sorted(self.subjects)
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            if not self.fresh and same and self.redeliver_now and info.num_ack_pending:
                # An earlier incarnation died holding these: the server would redeliver them
                # after ack_wait only. From the ack floor on, now (the ledger skips those
                # stored).
                await js.delete_consumer(stream, self.durable)
                self.recreated = True
                if floor:
                    config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
                    config.opt_start_seq = floor + 1
                await js.add_consumer(stream, config)
                return
            if not self.fresh and same:
                return
            if not self.fresh:
                logger.info("bus consumer %s: subject filters changed from %s to %s; reading "
                            "the stream again (the ledger skips what is stored)", self.node,
                            existing, list(self.subjects))
            await js.delete_consumer(stream, self.durable)
            self.recreated = True
        await js.add_consumer(stream, config)

    @property
    def failed(self) -> BaseException | None:
        """What stopped the reading task (the store callback's error), if it stopped."""
        return self._failed

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            self._failed = error
            logger.error("bus consumer %s stopped: %s", self.node,
                         self.options.redact(f"{type(error).__name__}: {error}"))

    def stats(self) -> ConsumerStats:
        """Counts so far."""
        return ConsumerStats(self._counts["stored"], self._counts["duplicates"],
                             self._counts["invalid"], tuple(self._gaps), self._counts["gaps"])

    async def _run(self) -> None:
        sub = self._sub
        assert sub is not None
        take = None if self._async_store else self._take
        while not self._stopping:
            try:
                messages = await sub.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
            except TimeoutError:
                continue
            except BUS_ERRORS as exc:
                # nats-py reconnects by itself; the next pull goes to the server again.
                logger.warning("bus consumer %s: %s", self.node,
                               bus_error(self.options, "pull failed", exc))
                await asyncio.sleep(self.options.reconnect_wait_s)
                continue
            for index, msg in enumerate(messages):
                if self._stopping:
                    await self._give_back(messages[index:])
                    return
                try:
                    if take is None:
                        await self._handle(msg)
                    else:
                        # A plain store: one call, no coroutine a message; only an ack
                        # (no deferred acks) or a terminate awaits.
                        action = take(msg)
                        if action is _ACK:
                            await msg.ack()
                        elif action is _TERM:
                            await msg.term()
                except BaseException:
                    # Not stored: delivered again at once (not after ack_wait) to the next run.
                    await self._give_back(messages[index:])
                    raise

    async def _give_back(self, messages: Sequence[Msg]) -> None:
        with contextlib.suppress(*BUS_ERRORS):
            for msg in messages:
                await msg.nak()

    def _decoded(self, msg: Msg) -> Sequenced | None:
        try:
            return self._decode(msg.subject, msg.headers, msg.data)
        except InvalidSubject as exc:  # InvalidMessage included
            self._invalid(msg, exc)
            return None

    def _invalid(self, msg: Msg, exc: InvalidSubject) -> None:
        self._counts["invalid"] += 1
        logger.warning("bus consumer %s: dropped a message: %s", self.node, exc)
        self._handled_through = max(self._handled_through, _stream_seq(msg))

    def _take(self, msg: Msg) -> object:
        """Handle ``msg`` with a plain (not async) store; what is left to send: :data:`_ACK`,
        :data:`_TERM` or ``None`` (settled: acked later by the caller of ``settle``)."""
        stream_seq = _stream_seq(msg)
        if (producer := self._known_duplicate(msg)) is not None:
            with self._guard:
                self._duplicate(producer, stream_seq)
                self._settled(msg)
            self._handled(msg, stream_seq)
            return _ACK if self._settle is None else None
        message = self._decoded(msg)
        if message is None:
            return _TERM
        verdict, gap = self.ledger.check(message)
        with self._guard:
            if verdict is Verdict.STORE:
                try:
                    self._store(message)
                except InvalidSubject as exc:  # the store refused it as it is (never stored)
                    self._invalid(msg, exc)
                    return _TERM
            self._record(msg, message, verdict, gap, stream_seq)
        self._handled(msg, stream_seq)
        return _ACK if self._settle is None else None

    def _record(self, msg: Msg, message: Sequenced, verdict: Verdict, gap: Gap | None,
                stream_seq: int) -> None:
        """Note a message the store took (or a duplicate) in the ledger and the counts, and
        settle it (under the guard, with the rows it stored)."""
        if verdict is Verdict.STORE:
            self.ledger.stored(message, stream_seq)
            self._counts["stored"] += 1
            if gap is not None:
                self._found(gap)
        else:
            self._duplicate(message.producer, stream_seq)
        self._settled(msg)

    def _settled(self, msg: Msg) -> None:
        if self._settle is not None:
            self._settle(msg)

    def _handled(self, msg: Msg, stream_seq: int) -> None:
        self._last_stream_seq[msg.subject] = stream_seq
        self._handled_through = max(self._handled_through, stream_seq)

    def _known_duplicate(self, msg: Msg) -> str | None:
        """The producer of ``msg`` if its headers name a sequence the ledger has stored on
        its subject: a redelivery (the catch-up after a restart, a re-read after a changed
        filter), skipped without decoding its batch. Anything else (headers missing or
        malformed included) goes through the full decode."""
        headers = msg.headers
        if not headers:
            return None
        producer, seq = headers.get(HEADER_PRODUCER), headers.get(HEADER_SEQ)
        if producer is None or seq is None or not (seq.isascii() and seq.isdigit()):
            return None
        return producer if 0 < int(seq) <= self.ledger.last(producer, msg.subject) else None

    def _duplicate(self, producer: str, stream_seq: int) -> None:
        self.ledger.seen(producer, stream_seq)
        self._counts["duplicates"] += 1

    def _found(self, gap: Gap) -> None:
        self._gaps.append(gap)
        del self._gaps[:-MAX_GAPS_KEPT]
        self._counts["gaps"] += 1
        logger.warning("bus consumer %s: producer %s lost messages on %s after #%d up to #%d",
                       self.node, gap.producer, gap.subject, gap.after, gap.through)
        if self._on_gap is not None:
            self._on_gap(gap)

    async def _handle(self, msg: Msg) -> None:
        """Handle ``msg`` with a store that may be a coroutine (no ``guard`` then)."""
        message = self._decoded(msg)
        if message is None:
            await msg.term()
            return
        stream_seq = _stream_seq(msg)
        verdict, gap = self.ledger.check(message)
        with self._guard:
            if verdict is Verdict.STORE:
                try:
                    done = self._store(message)
                    if inspect.isawaitable(done):
                        await done
                except InvalidSubject as exc:  # the store refused it as it is (never stored)
                    self._invalid(msg, exc)
                    await msg.term()
                    return
            self._record(msg, message, verdict, gap, stream_seq)
        self._handled(msg, stream_seq)
        if self._settle is None:
            await msg.ack()

    async def lag(self, probes: int = MAX_PROBES) -> ConsumerLag:
        """How far behind it is (see the module docstring): while behind, ``probes``
        subjects are measured (0: the counts and the last per-subject values only).

        Raises:
            BusUnavailable: the bus is away.
        """
        js = self._js
        if js is None:
            raise BusUnavailable(f"the bus consumer {self.node!r} is not started")
        stream = self.options.stream
        try:
            info = await js.consumer_info(stream, self.durable)
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            names: list[str] = []
            for subject_filter in self.subjects:
                found = await js.stream_info(stream, subjects_filter=subject_filter)
                names += sorted(found.state.subjects or {})
            delivered = info.delivered.stream_seq if info.delivered is not None else 0
            if not info.num_pending and (delivered or 0) <= self._handled_through:
                # Everything delivered, and handled here: no subject is behind.
                self._subject_lag = dict.fromkeys(names, 0)
                return ConsumerLag(0, info.num_ack_pending or 0, dict(self._subject_lag))
            known = {name: self._subject_lag.get(name, 0) for name in names}
            at = self._probe_at % len(names) if names else 0
            chosen = (names[at:] + names[:at])[:probes]
            self._probe_at = at + len(chosen)
            for subject in chosen:
                start = max(floor, self._last_stream_seq.get(subject, 0)) + 1
                probe = await js.add_consumer(stream, api.ConsumerConfig(
                    filter_subject=subject, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=start, ack_policy=api.AckPolicy.NONE, mem_storage=True,
                    inactive_threshold=5.0))
                known[subject] = probe.num_pending or 0
                with contextlib.suppress(*BUS_ERRORS):
                    await js.delete_consumer(stream, probe.name or "")
            self._subject_lag = known
            subjects = dict(known)
        except BUS_ERRORS as exc:
            raise bus_error(self.options, "cannot read the consumer's lag", exc) from None
        return ConsumerLag(info.num_pending or 0, info.num_ack_pending or 0, subjects)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop reading and disconnect; the durable consumer stays on the server. The message
        being stored is finished and acked, the rest of the pulled ones are given back (nak:
        redelivered at once to the next run); after ``timeout`` seconds the reading is
        cancelled wherever it is."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                await asyncio.wait({task})
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(*BUS_ERRORS):
                await sub.unsubscribe()
        client, self._client = self._client, None
        if client is not None and self._own_client:
            with contextlib.suppress(*BUS_ERRORS):
                await client.close()

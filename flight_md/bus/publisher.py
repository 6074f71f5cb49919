"""The ingestion node's side of the bus: every ring's batches into JetStream, in order, acked.

:meth:`Publisher.publish` is called on the publisher's event loop (the ingestion loop, where
the hand-off gathers rows) and never waits: it numbers the message and puts it in the
:class:`~flight_md.bus.backlog.Backlog`. One task sends the backlog oldest first, up to
:data:`WINDOW` publishes in flight on the one connection (which keeps their order in the
stream), and takes the acks in that order. When an ack fails or times out, or the connection is
lost, everything from the oldest unacked message on is sent again, in order, with the same
``Nats-Msg-Id``: the server drops the copies of those it had stored (within the stream's
duplicate window). So messages reach the stream in the order they were published, including
after an outage. The one order it cannot keep: a server that stored message k+1 but not k
(on one connection, in order: a cluster's leader change at most); k then lands after k+1 and
serving nodes take it for a duplicate (:mod:`flight_md.bus.ledger`).

While the server is away (not reachable at start, or lost later: nats-py reconnects by
itself) the backlog grows up to its limits; beyond them messages are dropped, counted and
recorded as runs of sequence numbers (:attr:`Publisher.stats`), which serving nodes see as
gaps. When the connection is back, the sender resumes from the head.

Threads: none of its own; every method but :meth:`stats` must be called on the loop that
:meth:`start` ran on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from flight_md.bus.backlog import DEFAULT_LIMITS, Backlog, BacklogLimits, BacklogStats, Pending
from flight_md.bus.connection import BUS_ERRORS, BusUnavailable, bus_error, connect, ensure_stream
from flight_md.bus.message import (
    HEADER_PRODUCER,
    HEADER_SCHEMA,
    SCHEMA_VERSION,
    check_batch,
    event_payload,
    event_subject,
    payload_of,
    ring_headers,
    sequenced,
    validate_producer,
)
from flight_md.bus.options import BusOptions
from flight_md.bus.subjects import subject_for
from flight_md.errors import ConfigError
from flight_md.events import Event

__all__ = ["Publisher", "PublisherStats"]

logger = logging.getLogger(__name__)

ACK_TIMEOUT_S: Final = 2.0
"""How long the oldest publish in flight waits for its ack before the window is sent again."""
WINDOW: Final = 64
"""Publishes in flight at once: one at a time made ~830 batches/s (a round trip each), a window
~3,700 (measured on loopback, this machine under load)."""
RETRY_MIN_S: Final = 0.02
RETRY_MAX_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """The publisher's counts: its backlog's (:class:`BacklogStats`), whether it is connected
    now, how often the connection was lost, and how many publishes were sent again."""

    producer: str
    connected: bool
    disconnects: int
    resent: int
    backlog: BacklogStats


class Publisher:
    """Publishes one producer's batches to the bus stream.

    Args:
        options: The bus (URL, credentials, stream and its limits).
        producer: This producer's id, one per incarnation
            (:func:`~flight_md.bus.message.new_producer_id`).
        limits: The backlog's bounds while the bus is away.
        ack_timeout_s: See :data:`ACK_TIMEOUT_S`.
        window: See :data:`WINDOW`; 1 sends one message at a time.
    """

    def __init__(self, options: BusOptions, producer: str, *,
                 limits: BacklogLimits = DEFAULT_LIMITS,
                 ack_timeout_s: float = ACK_TIMEOUT_S, window: int = WINDOW) -> None:
        self.options = options
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"bus publish window must be a positive integer, got {window!r}")
        self.window = window
        self.producer = validate_producer(producer)
        self.ack_timeout_s = ack_timeout_s
        self._backlog = Backlog(limits)
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stream_ready = False
        self._disconnects = 0
        self._resent = 0
        self._closed = False
        self._rings: dict[tuple[str, str, str], tuple[str, dict[str, str]]] = {}

    def __repr__(self) -> str:
        return f"Publisher(producer={self.producer!r}, bus={self.options.display_url!r})"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def start(self) -> None:
        """Start sending (the first dial happens in the background: a bus that is not up yet
        is an outage like any other, and messages published meanwhile wait in the backlog).

        Raises:
            ConfigError: the TLS files cannot be used (checked now, not in the background).
        """
        self.options.tls_context()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name=f"bus-publish-{self.producer}")

    def publish(self, channel: str, exchange: str, symbol: str, batch: pa.RecordBatch) -> int | None:
        """Queue one ring's rows; returns its sequence number, or ``None`` if the backlog was
        full and it was dropped (counted in :attr:`stats`).

        Raises:
            InvalidMessage: an unknown channel, or a batch not in the channel's stored schema
                or empty (see :func:`flight_md.bus.message.encode`); nothing is numbered then.
        """
        if self._closed:
            raise BusUnavailable(f"the bus publisher {self.producer!r} is closed")
        ring = self._rings.get((channel, exchange, symbol))
        if ring is None:
            # Once per ring: its subject and constant headers (an unknown channel or an empty
            # name raises here, before anything is kept).
            ring = (subject_for(channel, exchange, symbol),
                    {**ring_headers(channel, exchange, symbol), HEADER_PRODUCER: self.producer})
            self._rings[channel, exchange, symbol] = ring
        subject, base = ring
        # Checked once (encode's own check is skipped), and before a number is taken, so that
        # a bad batch leaves no hole in the sequence.
        check_batch(channel, exchange, symbol, batch)
        payload = payload_of(channel, batch)
        producer = self.producer

        def build(seq: int, prev: int) -> tuple[dict[str, str], bytes]:
            return sequenced(base, producer, seq, prev), payload

        return self._keep(subject, build)

    def publish_event(self, event: Event) -> int | None:
        """Queue one event on ``mdev.<exchange>`` (see :mod:`flight_md.bus.message`, "Events"):
        numbered, kept, sent and counted like the batches, in order with them; returns its
        sequence number, or ``None`` if the backlog was full.

        Raises:
            InvalidMessage: the event names no exchange.
        """
        if self._closed:
            raise BusUnavailable(f"the bus publisher {self.producer!r} is closed")
        subject = event_subject(event.exchange)
        payload = event_payload(event)
        producer = self.producer
        base = {HEADER_PRODUCER: producer, HEADER_SCHEMA: str(SCHEMA_VERSION)}

        def build(seq: int, prev: int) -> tuple[dict[str, str], bytes]:
            return sequenced(base, producer, seq, prev, f"{producer}:e{seq}"), payload

        return self._keep(subject, build)

    def _keep(self, subject: str, build: Callable[[int, int], tuple[dict[str, str], bytes]],
              ) -> int | None:
        kept = self._backlog.add(subject, build, online=self.connected)
        if kept is not None:
            if self._idle.is_set():
                self._idle.clear()
            if not self._wake.is_set():
                self._wake.set()
            return kept.seq
        return None

    async def flush(self, timeout: float) -> None:
        """Wait until every kept message is acked.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    def stats(self) -> PublisherStats:
        """Counts so far (any thread: a snapshot of numbers)."""
        return PublisherStats(self.producer, self.connected, self._disconnects, self._resent,
                              self._backlog.stats())

    async def close(self, timeout: float = 5.0) -> None:
        """Send what the backlog holds (if the bus is up) for up to ``timeout`` seconds, then
        disconnect; what is left unsent is counted in :attr:`stats` as queued."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                if self.connected:
                    await self.flush(timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*BUS_ERRORS):
                await client.close()

    # -- the sender ---------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                if self._client is None:
                    self._client = await connect(self.options, name=f"flight-md-{self.producer}",
                                                 on_disconnect=self._on_disconnect,
                                                 on_reconnect=self._on_reconnect)
                    self._js = self._client.jetstream(timeout=self.ack_timeout_s)
                if not self._stream_ready:
                    assert self._js is not None
                    await ensure_stream(self._js, self.options)
                    self._stream_ready = True
                await self._send_all()
                if delay > RETRY_MIN_S:
                    logger.info("bus publisher %s: sending again", self.producer)
                delay = RETRY_MIN_S
                self._wake.clear()
                if not self._backlog.head():
                    self._idle.set()
                    await self._wake.wait()
            except BusUnavailable as exc:
                # Once an outage (then quiet: the retries of one outage are one event).
                logger.log(logging.WARNING if delay == RETRY_MIN_S else logging.DEBUG,
                           "bus publisher %s: %s; %d messages wait (retrying)", self.producer,
                           exc, len(self._backlog))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _send_all(self) -> None:
        """Send the backlog with up to ``window`` publishes in flight, taking acks in order."""
        js = self._js
        assert js is not None
        flight: deque[tuple[Pending, asyncio.Future[Any]]] = deque()
        try:
            while True:
                while len(flight) < self.window and \
                        (pending := self._backlog.peek(len(flight))) is not None:
                    if not self.connected:
                        raise BusUnavailable(f"the bus is unreachable ({self.options.display_url})")
                    flight.append((pending, await self._send(js, pending)))
                if not flight:
                    return
                pending, ack = flight[0]
                if not ack.done():
                    try:
                        await asyncio.wait_for(ack, self.ack_timeout_s)
                    except BUS_ERRORS as exc:
                        raise self._failed(pending, exc) from None
                # Every ack that came with it too (one read of the socket holds many): the
                # window is then refilled in one go, and nats-py writes those publishes in one
                # send (refilled an ack at a time, it made a send, ~200 us of a busy machine's
                # CPU, per message: profiled).
                while flight and (done := flight[0])[1].done():
                    try:
                        done[1].result()
                    except BUS_ERRORS as exc:
                        raise self._failed(done[0], exc) from None
                    flight.popleft()
                    self._backlog.acked(done[0].seq)
        finally:
            # What was in flight is sent again from the oldest unacked: with the same message
            # ids, so that the server drops the copies of those it had stored.
            self._resent += len(flight)
            for _, ack in flight:
                ack.cancel()

    async def _send(self, js: JetStreamContext, pending: Pending) -> asyncio.Future[Any]:
        try:
            # A copy: nats-py adds its own headers to the dict it is given.
            return await js.publish_async(pending.subject, pending.payload,
                                          headers=dict(pending.headers))
        except BUS_ERRORS as exc:
            raise self._failed(pending, exc) from None

    def _failed(self, pending: Pending, exc: BaseException) -> BusUnavailable:
        # The stream may have been lost with the server's storage: create it again.
        self._stream_ready = False
        return bus_error(self.options, f"publish of {pending.subject} #{pending.seq} failed", exc)

    async def _on_disconnect(self) -> None:
        if self._closed:
            return
        self._disconnects += 1
        logger.warning("bus publisher %s: disconnected from %s", self.producer,
                       self.options.display_url)

    async def _on_reconnect(self) -> None:
        logger.info("bus publisher %s: reconnected to %s", self.producer, self.options.display_url)
        self._wake.set()

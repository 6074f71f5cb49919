"""The publisher's backlog: messages not yet acked by JetStream, bounded, in order.

Every message the ingestion node hands to the bus gets its sequence number here
(:meth:`Backlog.add`), whether or not it can be kept: so a message that had to be dropped
leaves a hole in the numbers that serving nodes see (:mod:`flight_md.bus.ledger`). The
backlog holds messages until the server acks them (:meth:`Backlog.acked`), oldest first; while
the server is unreachable it grows up to :class:`BacklogLimits` (bytes and messages), and a
message beyond them is dropped (the newest, so that what is kept stays one run in order)
and counted. A run of dropped messages is one :class:`DroppedRun`: the first and last
sequence number dropped, closed when a message fits again.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from flight_md.errors import ConfigError

__all__ = ["DEFAULT_LIMITS", "Backlog", "BacklogLimits", "BacklogStats", "DroppedRun", "Pending"]


@dataclass(frozen=True, slots=True)
class BacklogLimits:
    """How much the backlog holds at most: ``max_bytes`` of payload and ``max_messages``."""

    max_bytes: int = 64 * 1024 * 1024
    max_messages: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_messages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"bus backlog {name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS: Final = BacklogLimits()


@dataclass(frozen=True, slots=True)
class Pending:
    """One message waiting for its ack: what :func:`flight_md.bus.message.encode` made."""

    seq: int
    subject: str
    headers: dict[str, str]
    payload: bytes


@dataclass(frozen=True, slots=True)
class DroppedRun:
    """Messages ``first`` to ``last`` (sequence numbers) were dropped: ``count`` of them,
    ``bytes`` of payload (the numbers between belong to no other message: all were dropped)."""

    first: int
    last: int
    count: int
    bytes: int


@dataclass(frozen=True, slots=True)
class BacklogStats:
    """What the backlog holds and did: ``queued`` messages (``queued_bytes``) now, the peak
    since start, ``buffered`` (added while the bus was down), ``acked`` and ``dropped``
    (messages and bytes), and every run of dropped messages (``gaps``, the open one last)."""

    queued: int
    queued_bytes: int
    peak: int
    peak_bytes: int
    added: int
    buffered: int
    acked: int
    dropped: int
    dropped_bytes: int
    gaps: tuple[DroppedRun, ...]


class Backlog:
    """Messages waiting for their ack, oldest first; the publisher's loop owns it (not
    thread-safe)."""

    def __init__(self, limits: BacklogLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._queue: deque[Pending] = deque()
        self._bytes = 0
        self._next = 1
        self._prev: dict[str, int] = {}
        self._peak = self._peak_bytes = 0
        self._added = self._buffered = self._acked = 0
        self._dropped = self._dropped_bytes = 0
        self._gaps: list[DroppedRun] = []
        self._open: DroppedRun | None = None

    def add(self, subject: str, build: Callable[[int, int], tuple[dict[str, str], bytes]], *,
            online: bool = True) -> Pending | None:
        """Number the next message on ``subject`` and keep it, or drop it if it does not fit.

        ``build(seq, prev)`` makes its headers and payload from its sequence number and that of
        the previous message on the subject. ``online``: whether the bus is up now (a message
        added while it is down counts as buffered). Returns the kept message, or ``None`` if it
        was dropped.
        """
        seq, self._next = self._next, self._next + 1
        prev = self._prev.get(subject, 0)
        self._prev[subject] = seq
        headers, payload = build(seq, prev)
        size = len(payload)
        self._added += 1
        if not online:
            self._buffered += 1
        limits = self.limits
        if self._bytes + size > limits.max_bytes or len(self._queue) >= limits.max_messages:
            self._drop(seq, size)
            return None
        if self._open is not None:
            self._gaps.append(self._open)
            self._open = None
        pending = Pending(seq, subject, headers, payload)
        self._queue.append(pending)
        self._bytes += size
        self._peak = max(self._peak, len(self._queue))
        self._peak_bytes = max(self._peak_bytes, self._bytes)
        return pending

    def _drop(self, seq: int, size: int) -> None:
        self._dropped += 1
        self._dropped_bytes += size
        run = self._open
        if run is None:
            self._open = DroppedRun(seq, seq, 1, size)
        else:
            self._open = DroppedRun(run.first, seq, run.count + 1, run.bytes + size)

    def head(self) -> Pending | None:
        """The oldest message not yet acked."""
        return self._queue[0] if self._queue else None

    def peek(self, index: int) -> Pending | None:
        """The ``index``-th oldest message not yet acked (0: the head), or ``None``."""
        return self._queue[index] if index < len(self._queue) else None

    def acked(self, seq: int) -> None:
        """The server acked message ``seq``, the head: forget it.

        Raises:
            ValueError: ``seq`` is not the head's (acks are taken in order).
        """
        if not self._queue or self._queue[0].seq != seq:
            raise ValueError(f"ack of {seq!r} is not of the oldest message "
                             f"{self._queue[0].seq if self._queue else None!r}")
        done = self._queue.popleft()
        self._bytes -= len(done.payload)
        self._acked += 1

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def next_seq(self) -> int:
        """The sequence number the next message gets."""
        return self._next

    def stats(self) -> BacklogStats:
        """What it holds and did so far."""
        gaps = (*self._gaps, *(() if self._open is None else (self._open,)))
        return BacklogStats(len(self._queue), self._bytes, self._peak, self._peak_bytes,
                            self._added, self._buffered, self._acked, self._dropped,
                            self._dropped_bytes, gaps)

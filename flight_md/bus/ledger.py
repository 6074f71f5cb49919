"""Exactly-once into the store: which bus messages a serving node has stored, and the gaps.

JetStream delivers at least once: a message whose ack was lost (the node died between storing
and acking, or the ack timed out) comes again, and a producer that re-published after a lost
ack may have put two copies in the stream outside the duplicate window. :class:`Ledger`
keeps, per ``(producer, subject)``, the sequence number of the last message stored, and says
for each message whether to store it: a message at or below that number is a duplicate
(:attr:`Verdict.DUPLICATE`; ack it, store nothing).

Gaps: each message names the producer's previous message on its subject (``prev``, see
:mod:`flight_md.bus.message`). Where that is newer than the last one stored, the messages in
between were lost (the producer's backlog overflowed, or retention removed them before this
node read them): :class:`Gap` says which. A node that first hears of a ``(producer,
subject)`` mid-way (a new replica catching up from the retention window) records no gap: it
never had the start.

The caller persists the ledger with the rows it stores (:meth:`Ledger.snapshot`,
:meth:`Ledger.restore`): saved together, atomically (the same journal record, or the same
checkpoint), a restart neither stores a message twice nor skips one. Saved apart, a crash in
between either re-stores (ledger older than the rows) or loses (rows older than the ledger)
what came between. :meth:`Ledger.take_changes` gives the entries changed since it was last
called, so that each journal commit carries only those (a serving node's journal: a
few entries a commit, not every producer's every subject).

Events (:class:`~flight_md.bus.message.EventMessage`) are numbered like batches and kept in
the same ledger: their subjects (``mdev.<exchange>``) never meet a ring's.

Pruning: a producer id is one ingestion incarnation, so every restart of an ingestion node
adds an entry per subject it publishes; kept forever, the ledger (and ``bus-ledger.json``)
would grow without bound. The ledger therefore also keeps, per producer, the highest stream
sequence of any message of it this node handled (stored or found a duplicate; the key
``(producer, "@stream")``, :data:`STREAM_KEY`). A producer whose highest handled stream
sequence is below the stream's first sequence has no message left in the stream that this
node handled; if the node has also handled everything the stream held at that time (the
caller checks: :meth:`flight_md.bus.serve.ServeBus` compares the consumers' ack floors with
the stream's last sequence of the check before), no message of that producer can be
delivered to it again (the server never delivers below the first sequence, not even to a
consumer created again), and :meth:`Ledger.prune` drops its entries. What is left is a
producer still alive re-publishing, after a lost ack, a message older than the stream's
whole retention: the copy would be stored once more.

A pruned entry is journalled as its sequence negated (a tombstone: "gone as of this
sequence"), which an older reader ignores (it keeps the higher of positive sequences); the
entries merge in any order: an entry whose highest positive sequence is at most its highest
tombstone is gone.

This module is pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from flight_md.bus.message import InvalidMessage, validate_producer

__all__ = ["STREAM_KEY", "Gap", "Ledger", "Sequenced", "Verdict", "apply_changes"]


STREAM_KEY: Final = "@stream"
"""The subject under which an entry holds its producer's highest handled stream sequence (no
real subject starts with ``@``)."""


def apply_changes(target: dict[tuple[str, str], int],
                  changes: Mapping[tuple[str, str], int]) -> None:
    """Merge ledger changes (a positive sequence raises an entry, a negative one is a
    tombstone removing an entry at most that high) into ``target``, in place."""
    for key, seq in changes.items():
        current = target.get(key, 0)
        if seq > 0:
            if seq > current:
                target[key] = seq
        elif current and current <= -seq:
            del target[key]


class Sequenced(Protocol):
    """What the ledger reads of a message: a :class:`~flight_md.bus.message.BusMessage` or an
    :class:`~flight_md.bus.message.EventMessage`."""

    @property
    def producer(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def prev(self) -> int: ...

    @property
    def subject(self) -> str: ...


class Verdict(enum.StrEnum):
    """What to do with a delivered message."""

    STORE = "store"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of ``producer`` on ``subject`` after sequence ``after`` up to and including
    ``through`` never reached this node (at least ``through`` itself; the numbers between
    may belong to its other subjects)."""

    producer: str
    subject: str
    after: int
    through: int


class Ledger:
    """The last stored sequence number per ``(producer, subject)`` and the highest handled
    stream sequence per producer; not thread-safe (the consumer's loop owns it)."""

    __slots__ = ("_changed", "_last", "_stream")

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}
        self._stream: dict[str, int] = {}  # producer -> highest stream sequence handled
        self._changed: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._last)

    def check(self, message: Sequenced) -> tuple[Verdict, Gap | None]:
        """Whether to store ``message``, and the gap it reveals, if any (nothing changes
        until :meth:`stored`)."""
        key = (message.producer, message.subject)
        last = self._last.get(key)
        if last is None:
            return Verdict.STORE, None
        if message.seq <= last:
            return Verdict.DUPLICATE, None
        if message.prev > last:
            return Verdict.STORE, Gap(message.producer, message.subject, last, message.prev)
        return Verdict.STORE, None

    def stored(self, message: Sequenced, stream_seq: int = 0) -> None:
        """Record that ``message`` (at ``stream_seq`` in the stream, if known) is stored."""
        producer = message.producer
        key = (producer, message.subject)
        if message.seq > self._last.get(key, 0):
            self._last[key] = self._changed[key] = message.seq
        if stream_seq > self._stream.get(producer, 0):
            self._stream[producer] = self._changed[producer, STREAM_KEY] = stream_seq

    def seen(self, producer: str, stream_seq: int) -> None:
        """Record that a message of ``producer`` at ``stream_seq`` was handled without being
        stored (a duplicate): a copy still in the stream keeps the producer from pruning."""
        if stream_seq > self._stream.get(producer, 0):
            self._stream[producer] = self._changed[producer, STREAM_KEY] = stream_seq

    def take_changes(self) -> dict[tuple[str, str], int]:
        """The entries changed since the last call: ``{(producer, subject): seq}``, with
        ``(producer, STREAM_KEY)`` for the handled stream sequence and a negative ``seq`` for
        an entry pruned (what a journal commit carries besides the rows of those messages)."""
        changed, self._changed = self._changed, {}
        return changed

    def merge(self, entries: Mapping[tuple[str, str], int]) -> None:
        """Take ``entries`` (``(producer, subject) -> seq``, e.g. journalled changes replayed
        in any order; see :func:`apply_changes`) where they are newer than what the ledger
        has."""
        stream = {(p, STREAM_KEY): seq for p, seq in self._stream.items()}
        apply_changes(self._last, {k: v for k, v in entries.items() if k[1] != STREAM_KEY})
        apply_changes(stream, {k: v for k, v in entries.items() if k[1] == STREAM_KEY})
        self._stream = {p: seq for (p, _), seq in stream.items()}

    def last(self, producer: str, subject: str | None = None) -> int:
        """The last stored sequence number of ``producer`` (on ``subject``, or on any): 0 if none."""
        if subject is not None:
            return self._last.get((producer, subject), 0)
        return max((seq for (p, _), seq in self._last.items() if p == producer), default=0)

    def producers(self) -> set[str]:
        """The producers with entries."""
        return {p for p, _ in self._last} | set(self._stream)

    def stream_seq(self, producer: str) -> int | None:
        """The highest stream sequence of ``producer`` handled, ``None`` if unknown (an entry
        restored from a ledger of before pruning)."""
        return self._stream.get(producer)

    def bound(self, last_stream_seq: int) -> list[str]:
        """Give every producer whose handled stream sequence is unknown ``last_stream_seq``
        (the stream's last sequence now: no message handled before can be later), so that it
        can be pruned once the stream has moved past it; the producers bounded."""
        bounded = sorted({p for p, _ in self._last} - set(self._stream))
        if last_stream_seq > 0:
            for producer in bounded:
                self._stream[producer] = self._changed[producer, STREAM_KEY] = last_stream_seq
        return bounded if last_stream_seq > 0 else []

    def prune(self, first_stream_seq: int) -> list[str]:
        """Drop every producer whose highest handled stream sequence is below
        ``first_stream_seq`` (the caller checks that everything the stream held is handled:
        see the module docstring); the producers dropped, sorted. Their tombstones are in
        the next :meth:`take_changes`."""
        gone = {p for p, seq in self._stream.items() if seq < first_stream_seq}
        if not gone:
            return []
        for key in [k for k in self._last if k[0] in gone]:
            self._changed[key] = -self._last.pop(key)
        for producer in gone:
            self._changed[producer, STREAM_KEY] = -self._stream.pop(producer)
        return sorted(gone)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """The ledger as JSON-ready data: ``{producer: {subject: seq, STREAM_KEY: stream
        seq}}``."""
        out: dict[str, dict[str, int]] = {}
        for (producer, subject), seq in self._last.items():
            out.setdefault(producer, {})[subject] = seq
        for producer, seq in self._stream.items():
            out.setdefault(producer, {})[STREAM_KEY] = seq
        return out

    @classmethod
    def restore(cls, data: Mapping[str, Mapping[str, int]]) -> Ledger:
        """The ledger :meth:`snapshot` made ``data`` of (one without :data:`STREAM_KEY`, as
        written before pruning, too).

        Raises:
            InvalidMessage: ``data`` is not such a snapshot.
        """
        ledger = cls()
        for producer, subjects in data.items():
            validate_producer(producer)
            for subject, seq in subjects.items():
                if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
                    raise InvalidMessage(f"ledger sequence of {producer!r} on {subject!r} must be "
                                         f"an integer >= 1, got {seq!r}")
                if subject == STREAM_KEY:
                    ledger._stream[producer] = seq
                else:
                    ledger._last[producer, subject] = seq
        return ledger

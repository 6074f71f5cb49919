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

This module is pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from flight_md.bus.message import InvalidMessage, validate_producer

__all__ = ["Gap", "Ledger", "Sequenced", "Verdict"]


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
    """The last stored sequence number per ``(producer, subject)``; not thread-safe (the
    consumer's loop owns it)."""

    __slots__ = ("_changed", "_last")

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}
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

    def stored(self, message: Sequenced) -> None:
        """Record that ``message`` is stored."""
        key = (message.producer, message.subject)
        if message.seq > self._last.get(key, 0):
            self._last[key] = self._changed[key] = message.seq

    def take_changes(self) -> dict[tuple[str, str], int]:
        """The entries :meth:`stored` changed since the last call: ``{(producer, subject):
        seq}`` (what a journal commit carries besides the rows of those messages)."""
        changed, self._changed = self._changed, {}
        return changed

    def merge(self, entries: Mapping[tuple[str, str], int]) -> None:
        """Take ``entries`` (``(producer, subject) -> seq``, e.g. journalled changes replayed
        in any order) where they are newer than what the ledger has."""
        for key, seq in entries.items():
            if seq > self._last.get(key, 0):
                self._last[key] = seq

    def last(self, producer: str, subject: str | None = None) -> int:
        """The last stored sequence number of ``producer`` (on ``subject``, or on any): 0 if none."""
        if subject is not None:
            return self._last.get((producer, subject), 0)
        return max((seq for (p, _), seq in self._last.items() if p == producer), default=0)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """The ledger as JSON-ready data: ``{producer: {subject: seq}}``."""
        out: dict[str, dict[str, int]] = {}
        for (producer, subject), seq in self._last.items():
            out.setdefault(producer, {})[subject] = seq
        return out

    @classmethod
    def restore(cls, data: Mapping[str, Mapping[str, int]]) -> Ledger:
        """The ledger :meth:`snapshot` made ``data`` of.

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
                ledger._last[producer, subject] = seq
        return ledger

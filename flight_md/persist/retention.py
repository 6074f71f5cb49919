"""Retention: whole old date partitions of the history removed by age and by total size.

Two limits, both applied on every pass (:func:`apply_retention`), oldest partition first:

* ``--retention`` (:attr:`RetentionPolicy.max_age`, default :data:`DEFAULT_RETENTION`, 30 days;
  :data:`DEMO_RETENTION`, 1 day, with ``--demo``): a partition goes once its whole UTC day is
  older than ``now - max_age``, so a partition is never cut in half and rows stay at least
  ``max_age`` old before they go.
* ``--max-history-bytes`` (:attr:`RetentionPolicy.max_bytes`, default
  :data:`DEFAULT_MAX_HISTORY_BYTES`, 20 GB): while the history (channel data and events) holds
  more, the oldest partitions go, whatever their age; today's included, so the limit holds even
  when one day alone exceeds it.

"Oldest" is the partition's date: a partition a clock jump put in the future goes last by size
and never by age; one put in the past goes first. Quarantined files are not counted (they are
evidence, kept until removed by hand). A scan reading a removed partition keeps its open files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from typing import Final

import pyarrow.fs as pafs

from flight_md.persist.history import DAY_MS, HistoryRoot, InvalidHistoryData, Partition, SeriesKey
from flight_md.schema import now_ms

__all__ = [
    "DEFAULT_MAX_HISTORY_BYTES",
    "DEFAULT_RETENTION",
    "DEMO_RETENTION",
    "RemovalReason",
    "RemovedPartition",
    "RetentionPolicy",
    "RetentionResult",
    "apply_retention",
]

DEFAULT_RETENTION: Final = timedelta(days=30)
"""How long history is kept (``--retention``)."""
DEMO_RETENTION: Final = timedelta(days=1)
"""How long ``--demo`` keeps its history."""
DEFAULT_MAX_HISTORY_BYTES: Final = 20 * 10**9
"""Most bytes the history may hold (``--max-history-bytes``): 20 GB, well within a laptop's disk."""

_EPOCH: Final = date(1970, 1, 1)


class RemovalReason(StrEnum):
    """Why a partition was removed."""

    AGE = "age"
    BYTES = "bytes"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """The two retention limits; ``None`` switches one off.

    Raises:
        InvalidHistoryData: A limit is not positive.
    """

    max_age: timedelta | None = DEFAULT_RETENTION
    max_bytes: int | None = DEFAULT_MAX_HISTORY_BYTES

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise InvalidHistoryData(f"invalid retention {self.max_age!s}: a positive duration")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise InvalidHistoryData(f"invalid max history bytes {self.max_bytes!r}: a positive number")


@dataclass(frozen=True, slots=True)
class RemovedPartition:
    """One removed partition.

    Attributes:
        key: Its series, or ``None`` for the events history.
    """

    path: str
    key: SeriesKey | None
    day: date
    rows: int
    bytes: int
    reason: RemovalReason


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What a retention pass removed and what the history holds afterwards."""

    removed: tuple[RemovedPartition, ...]
    kept_bytes: int
    kept_partitions: int

    @property
    def removed_bytes(self) -> int:
        """Bytes freed."""
        return sum(p.bytes for p in self.removed)

    @property
    def removed_rows(self) -> int:
        """Rows removed."""
        return sum(p.rows for p in self.removed)


def _day_end_ms(day: date) -> int:
    return ((day - _EPOCH).days + 1) * DAY_MS


def apply_retention(root: HistoryRoot | str | os.PathLike[str] | pafs.FileSystem,
                    policy: RetentionPolicy | None = None, *, now: int | None = None) -> RetentionResult:
    """Remove the partitions ``policy`` no longer keeps, oldest first.

    Args:
        root: The history root (see :class:`~flight_md.persist.history.HistoryRoot`).
        policy: The limits (both defaults when ``None``).
        now: Wall-clock time, Unix ms (now when ``None``).
    """
    policy = policy or RetentionPolicy()
    history = HistoryRoot.of(root)
    now = now_ms() if now is None else now
    partitions = history.partitions()  # oldest day first
    removed: list[RemovedPartition] = []
    kept: list[Partition] = []
    cutoff = None if policy.max_age is None else now - policy.max_age // timedelta(milliseconds=1)
    for part in partitions:
        if cutoff is not None and _day_end_ms(part.day) <= cutoff:
            history.remove_partition(part)
            removed.append(_removed(part, RemovalReason.AGE))
        else:
            kept.append(part)
    total = sum(p.bytes for p in kept)
    if policy.max_bytes is not None:
        while kept and total > policy.max_bytes:
            part = kept.pop(0)
            history.remove_partition(part)
            removed.append(_removed(part, RemovalReason.BYTES))
            total -= part.bytes
    return RetentionResult(removed=tuple(removed), kept_bytes=total, kept_partitions=len(kept))


def _removed(part: Partition, reason: RemovalReason) -> RemovedPartition:
    return RemovedPartition(path=part.path, key=part.key, day=part.day, rows=part.rows, bytes=part.bytes,
                            reason=reason)

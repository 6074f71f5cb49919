"""What the server gives the SQL engine: :class:`TableSource`, the seam between the two.

The server implements it over its rings, its Parquet history and its event log
(:class:`flight_md.sql.store_source.StoreTableSource` does, over a
:class:`~flight_md.buffer.Store`); the engine (:mod:`flight_md.sql.engine`) calls it on a Flight
thread at the start of every query that names a table and registers what it returns with
DuckDB, zero-copy. Nothing else of the server is visible to SQL.

The contract, per channel (``ticker``, ``bidask``, ``trades``, ``book``, ...):

* :meth:`~TableSource.schema` is the channel's public Arrow schema (``exchange`` and ``symbol``
  included). The SQL table ``<channel>`` has exactly these columns, in this order.
* :meth:`~TableSource.ring_snapshot` is an immutable snapshot of every ring of the channel,
  all ``(exchange, symbol)`` together, in that schema (:attr:`RingSnapshot.table`), **and**,
  taken at the same instant, where each ring takes over from the history
  (:attr:`RingSnapshot.seams`, :data:`SEAMS_SCHEMA`): exactly one row per ``(exchange,
  symbol)`` whose ring holds rows, ``before_sequence`` being the sequence number of the first
  row the table holds for it. With persistence the table holds, per key, every row from the
  first row the history does not hold on (``MarketDataBuffer.seam_rows``: rows evicted but
  kept for the history included) and ``before_sequence`` is that row's sequence; without,
  ``seams`` is ``None``. Both come from one call because they must agree: a seam taken before
  or after the snapshot leaves a gap or a duplicate where the ring moved in between.
* :meth:`~TableSource.history_dataset` is a ``pyarrow.dataset`` over the channel's Parquet
  history (hive: ``exchange=/symbol=/date=``, the files holding every public column plus
  ``sequence``), or ``None`` (memory only). SQL filters on ``exchange`` and ``symbol`` prune its
  directories, filters on ``timestamp`` its row groups (pyarrow's pushdown). The dataset may
  hold rows the ring holds too: the seams remove them.

So ``<channel>`` = the snapshot's rows UNION ALL, per key, the history rows with
``sequence < before_sequence`` (all of them for keys without a seam): no duplicate and no gap.

:meth:`~TableSource.events` is the event log (``flight_md.schema.EVENT_SCHEMA``) and
:meth:`~TableSource.status_table` one row per ``(exchange, symbol, channel)`` with the status
counters, or ``None`` when the server has none to give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import pyarrow as pa

if TYPE_CHECKING:
    import pyarrow.dataset as ds

__all__ = ["SEAMS_SCHEMA", "KeyFilter", "RingSnapshot", "TableSource"]

SEAMS_SCHEMA: Final = pa.schema([
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("before_sequence", pa.int64(), nullable=False),
])
"""The schema of :attr:`RingSnapshot.seams`."""


@dataclass(frozen=True, slots=True)
class KeyFilter:
    """The rings a query can read: those whose exchange is in ``exchanges`` and whose symbol
    is in ``symbols`` (``None``: any). Found by :func:`flight_md.sql.prune.ring_filters` only
    where the statement itself guarantees it never reads other rings' rows.
    """

    exchanges: frozenset[str] | None = None
    symbols: frozenset[str] | None = None

    def matches(self, exchange: str, symbol: str) -> bool:
        """Whether the ring of ``(exchange, symbol)`` is one a query can read."""
        return (self.exchanges is None or exchange in self.exchanges) \
            and (self.symbols is None or symbol in self.symbols)


@dataclass(frozen=True, slots=True)
class RingSnapshot:
    """Every ring of one channel at one instant (see the module docstring).

    Attributes:
        table: The rows, in the channel's public schema (a reader is read whole: a query may
            scan a table twice).
        seams: Per ``(exchange, symbol)``, the sequence number of the table's first row for it
            (:data:`SEAMS_SCHEMA`), or ``None`` when there is no history to meet.
    """

    table: pa.Table | pa.RecordBatchReader
    seams: pa.Table | None = None


class TableSource(Protocol):
    """The server's data, as the SQL engine sees it (see the module docstring for the contract).

    Every method is called on a Flight thread, for every query that names the table; each must
    be cheap (snapshots, not copies) and thread-safe.
    """

    def channels(self) -> Sequence[str]:
        """The channels served as SQL tables, e.g. ``["ticker", "bidask", "trades", "book"]``."""
        ...

    def schema(self, channel: str) -> pa.Schema:
        """The public Arrow schema of ``channel``."""
        ...

    def ring_snapshot(self, channel: str, keys: KeyFilter | None = None) -> RingSnapshot:
        """A zero-copy snapshot of every ring of ``channel`` (only those ``keys`` matches, when
        given) and where each meets the history (seams of other rings may be left out)."""
        ...

    def history_dataset(self, channel: str) -> ds.Dataset | None:
        """The Parquet history of ``channel`` as a dataset, or ``None`` without persistence."""
        ...

    def events(self) -> pa.Table:
        """The event log."""
        ...

    def status_table(self) -> pa.Table | None:
        """One row per series with its status counters, or ``None``."""
        ...

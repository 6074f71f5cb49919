"""What the server gives the SQL engine: :class:`TableSource`, the seam between the two.

The server implements it over its rings, its Parquet history and its event log; the engine
(:mod:`flight_md.sql.engine`) calls it on a Flight thread at the start of every query and
registers what it returns with DuckDB, zero-copy. Nothing else of the server is visible to SQL.

The contract, per channel (``ticker``, ``bidask``, ``trades``, ``book``, ...):

* :meth:`~TableSource.schema` is the channel's public Arrow schema (``exchange`` and ``symbol``
  included). The SQL table ``<channel>`` has exactly these columns, in this order.
* :meth:`~TableSource.ring_tables` is an immutable snapshot of every ring of the channel, all
  ``(exchange, symbol)`` together, in that schema: for each key, **every row from the first
  row the history does not hold** (with persistence: the ring's ``history_seq`` on, the rows
  evicted but held for the history included, as ``MarketDataBuffer.seam_rows`` gives them).
* :meth:`~TableSource.history_dataset` is a ``pyarrow.dataset`` over the channel's Parquet
  history (hive: ``exchange=/symbol=/date=``, the files holding every public column plus
  ``sequence``), or ``None`` (memory only). SQL filters on ``exchange`` and ``symbol`` prune its
  directories, filters on ``timestamp`` its row groups (pyarrow's pushdown).
* :meth:`~TableSource.history_seams` says where, per key, the ring takes over: exactly one
  row per ``(exchange, symbol)`` whose ring holds rows (a second row would double that key's
  history), ``before_sequence`` being the sequence number of
  the ring's first row (:data:`SEAMS_SCHEMA`). History rows of that key with
  ``sequence >= before_sequence`` are left out (the ring has them); keys without a row are read
  wholly from the history. ``None``: no history (or no overlap to remove).

So ``<channel>`` = ring rows UNION ALL history rows below each key's seam: no duplicate, no
gap, as long as the snapshot and the seams are taken together (one call each, same instant or
seams first: a seam older than the snapshot only drops history rows the ring still has).

:meth:`~TableSource.events` is the event log (``flight_md.schema.EVENT_SCHEMA``) and
:meth:`~TableSource.status_table` one row per ``(exchange, symbol, channel)`` with the status
counters, or ``None`` when the server has none to give.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

import pyarrow as pa

if TYPE_CHECKING:
    import pyarrow.dataset as ds

__all__ = ["SEAMS_SCHEMA", "TableSource"]

SEAMS_SCHEMA: Final = pa.schema([
    pa.field("exchange", pa.string(), nullable=False),
    pa.field("symbol", pa.string(), nullable=False),
    pa.field("before_sequence", pa.int64(), nullable=False),
])
"""The schema of :meth:`TableSource.history_seams`."""


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

    def ring_tables(self, channel: str) -> pa.Table | pa.RecordBatchReader:
        """A zero-copy snapshot of every ring of ``channel`` (every exchange and symbol)."""
        ...

    def history_dataset(self, channel: str) -> ds.Dataset | None:
        """The Parquet history of ``channel`` as a dataset, or ``None`` without persistence."""
        ...

    def history_seams(self, channel: str) -> pa.Table | None:
        """Per ``(exchange, symbol)``, the first sequence number the ring holds
        (:data:`SEAMS_SCHEMA`), or ``None``."""
        ...

    def events(self) -> pa.Table:
        """The event log."""
        ...

    def status_table(self) -> pa.Table | None:
        """One row per series with its status counters, or ``None``."""
        ...

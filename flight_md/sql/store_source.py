"""The server's :class:`~flight_md.sql.source.TableSource`: a :class:`~flight_md.buffer.Store`,
its Parquet history and the event log.

* ``ring_snapshot(channel, keys)``: for every ring of the channel's buffer (that ``keys``
  matches, when given),
  :meth:`~flight_md.buffer.MarketDataBuffer.seam_rows` (under that ring's lock: its rows from
  the first one the history does not hold, and that row's sequence number), assembled in the
  public schema without copying (the ring's immutable batches plus constant ``exchange`` and
  ``symbol`` columns) and concatenated (zero-copy: chunks side by side).
* ``history_dataset(channel)``: a ``pyarrow.dataset`` over the files of
  ``ROOT/history/channel=<channel>/`` on the history's filesystem (local or an object store),
  each fragment guaranteeing its ``exchange``, ``symbol`` and timestamp range (from its path
  and its name: :func:`history_dataset`), so filters on those prune files unopened; ``.``-
  and ``_``-prefixed names are skipped, so temporary files and compaction markers are never
  read (a compaction's sources may be seen beside its
  target for the instant between its rename and its deletes, as any external reader sees them:
  :mod:`flight_md.persist.history`).
* ``events()``: the whole in-memory event log; ``status_table()``: what ``status`` returns.

Threads: called on Flight threads; everything it reads is guarded by the rings' own locks or
immutable.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from flight_md import errors
from flight_md.sql.source import SEAMS_SCHEMA, KeyFilter, RingSnapshot

if TYPE_CHECKING:
    from flight_md.buffer import Store
    from flight_md.events import EventLog
    from flight_md.persist.history import HistoryRoot

__all__ = ["StoreTableSource", "history_dataset"]

_FILE_RE: Final = re.compile(r"^(-?\d+)_(-?\d+)_\d+_[0-9a-f]+\.parquet$")
"""The history's file names: ``<min_ts>_<max_ts>_<rows>_<token>.parquet``."""
SEQUENCE: Final = "sequence"


def history_dataset(fs: pafs.FileSystem, path: str, schema: pa.Schema) -> ds.Dataset | None:
    """The Parquet files under ``path`` (one channel's hive tree) as a dataset whose fragments
    each carry what their path and name guarantee: ``exchange``, ``symbol`` and the file's
    timestamp range.

    pyarrow skips a fragment whose guarantee contradicts the scan's filter without opening it,
    so ``WHERE symbol = 'BTC/USDT' AND timestamp >= ...`` opens neither other symbols' files
    nor that symbol's files of other days and hours. Names starting with ``.`` or ``_``
    (temporary files, compaction markers) are skipped, as pyarrow's own discovery does.
    ``None`` when there is no such directory or no file in it.
    """
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    paths, guarantees = [], []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(path):].strip("/").split("/")
        if any(part.startswith((".", "_")) for part in relative) \
                or not relative[-1].endswith(".parquet"):
            continue
        keys = dict(part.split("=", 1) for part in relative[:-1] if "=" in part)
        guarantee = ds.scalar(True)
        if "exchange" in keys:
            guarantee = guarantee & (ds.field("exchange") == urllib.parse.unquote(keys["exchange"]))
        if "symbol" in keys:
            guarantee = guarantee & (ds.field("symbol") == urllib.parse.unquote(keys["symbol"]))
        bounds = _FILE_RE.match(relative[-1])
        if bounds is not None:
            guarantee = guarantee & (ds.field("timestamp") >= int(bounds[1])) \
                & (ds.field("timestamp") <= int(bounds[2]))
        paths.append(info.path)
        guarantees.append(guarantee)
    if not paths:
        return None
    full = schema if SEQUENCE in schema.names else schema.append(pa.field(SEQUENCE, pa.int64()))
    return ds.FileSystemDataset.from_paths(paths, schema=full, format=ds.ParquetFileFormat(),
                                           filesystem=fs, partitions=guarantees)


class StoreTableSource:
    """A :class:`~flight_md.sql.source.TableSource` over the server's store.

    Args:
        store: Every channel's buffer.
        events: The event log (``events`` table).
        history: The Parquet history's root (``Persistence.root``), or ``None``: memory only.
        status: Returns the ``status`` table (one row per series), or ``None``: no such table.
    """

    def __init__(self, store: Store, events: EventLog, *, history: HistoryRoot | None = None,
                 status: Callable[[], pa.Table | None] | None = None) -> None:
        self.store = store
        self.event_log = events
        self.history = history
        self._status = status

    def channels(self) -> Sequence[str]:
        return self.store.channels()

    def schema(self, channel: str) -> pa.Schema:
        schema: pa.Schema = self.store.buffer(channel).schema
        return schema

    def ring_snapshot(self, channel: str, keys: KeyFilter | None = None) -> RingSnapshot:
        buffer = self.store.get(channel)
        schema = self.schema(channel)
        if buffer is None:
            return RingSnapshot(schema.empty_table())
        tables, seams = [], []
        series = buffer.keys()  # every (exchange, symbol) with a ring
        for exchange, symbol in series:
            if keys is not None and not keys.matches(exchange, symbol):
                continue
            try:
                ring, first_seq, batches = buffer.seam_rows(symbol, exchange, None, None)
            except errors.NotFound:  # cleared since keys() listed it
                continue
            tables.append(ring.table(batches, None))
            if first_seq is not None:
                seams.append({"exchange": exchange, "symbol": symbol, "before_sequence": first_seq})
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        return RingSnapshot(table, pa.Table.from_pylist(seams, schema=SEAMS_SCHEMA)
                            if seams else None)

    def history_dataset(self, channel: str) -> ds.Dataset | None:
        if self.history is None:
            return None
        return history_dataset(self.history.fs, self.history.path(f"history/channel={channel}"),
                               self.schema(channel))

    def events(self) -> pa.Table:
        return self.event_log.to_table()

    def status_table(self) -> pa.Table | None:
        return self._status() if self._status is not None else None

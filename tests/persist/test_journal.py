"""The write-ahead journal: group commits of any channel's batches and of events, what each
fsync mode reports as durable, rotation, sealing, and the bounds it keeps under a failing disk.

Everything is real files in ``tmp_path``; the journal's reader is :func:`recover`.
"""

from __future__ import annotations

import ast
import errno
import itertools
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flight_md import persist
from flight_md.errors import InvalidArgument, Unavailable
from flight_md.events import Event, EventKind
from flight_md.persist.datadir import DataDir
from flight_md.persist.journal import EVENTS_KEY, KEY_COLUMN, FsyncMode, Journal, JournalKey, segment_seqs
from flight_md.persist.recovery import events_from_table, open_journal, read_segment, recover
from flight_md.schema import NUMERIC_SCHEMA
from tests.support import ChildProcess, until

TRADE_SCHEMA = pa.schema([pa.field("timestamp", pa.int64(), nullable=False), ("id", pa.string()),
                          ("side", pa.dictionary(pa.int8(), pa.string())), ("amount", pa.float64())])
"""A second channel's schema, nothing like the ticker's ten numbers."""
SIDES = pa.array(["buy", "sell"])


def ticks(start: int, n: int) -> pa.RecordBatch:
    """``n`` rows of :data:`NUMERIC_SCHEMA` whose ``timestamp`` counts from ``start``."""
    ts = pa.array(np.arange(start, start + n, dtype=np.int64))
    floats = [pa.array(np.arange(start, start + n, dtype=np.float64))] * 8
    return pa.RecordBatch.from_arrays([ts, *floats, ts], schema=NUMERIC_SCHEMA)


def trades(start: int, n: int) -> pa.RecordBatch:
    """``n`` rows of :data:`TRADE_SCHEMA`: ``timestamp`` counts from ``start``, ``id`` is ``t<ts>``."""
    ts = pa.array(np.arange(start, start + n, dtype=np.int64))
    return pa.RecordBatch.from_arrays([
        ts, pc.binary_join_element_wise("t", ts.cast(pa.string()), ""),
        pa.DictionaryArray.from_arrays(pa.array(np.arange(n) % 2, pa.int8()), SIDES),
        pa.array(np.full(n, 0.5))], schema=TRADE_SCHEMA)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[DataDir]:
    with DataDir.open(tmp_path / "data") as d:
        yield d


def timestamps(table: pa.Table) -> list[int]:
    return table.column("timestamp").to_pylist()  # type: ignore[no-any-return]


def test_batches_of_every_channel_and_events_come_back_per_key_in_order(data_dir: DataDir) -> None:
    journal, first = open_journal(data_dir, commit_interval=60)
    assert (first.rows, first.last_lsn, first.segments) == (0, 0, ())
    lsns = []
    for i in range(5):
        lsns.append(journal.append("ticker", "binance", "BTC/USDT", ticks(i * 10, 10)))
        lsns.append(journal.append("ticker", "bybit", "BTC/USDT:USDT", ticks(1000 + i, 1)))
        lsns.append(journal.append("trades", "binance", "BTC/USDT", trades(i * 3, 3)))
        if i == 2:
            journal.commit()  # two commits, keys interleaved in both
    event = Event(7, "binance", EventKind.CONNECT, ("BTC/USDT",), "connected")
    lsns.append(journal.append_events([event, Event(8, "*", EventKind.CLEAR, (), "")]))
    assert lsns == list(range(1, 17))
    assert journal.commit() == 16 == journal.committed_through
    journal.close()

    again, recovery = open_journal(data_dir)
    tables = recovery.tables()
    assert list(tables) == [JournalKey("ticker", "binance", "BTC/USDT"),
                            JournalKey("ticker", "bybit", "BTC/USDT:USDT"),
                            JournalKey("trades", "binance", "BTC/USDT"), EVENTS_KEY]
    assert timestamps(tables[JournalKey("ticker", "binance", "BTC/USDT")]) == list(range(50))
    assert timestamps(tables[JournalKey("ticker", "bybit", "BTC/USDT:USDT")]) == list(range(1000, 1005))
    trade_table = tables[JournalKey("trades", "binance", "BTC/USDT")]
    assert trade_table.schema == TRADE_SCHEMA and KEY_COLUMN not in trade_table.schema.names
    assert trade_table.column("id").to_pylist() == [f"t{i}" for i in range(15)]
    assert tables[JournalKey("ticker", "binance", "BTC/USDT")].schema == NUMERIC_SCHEMA
    assert events_from_table(tables[EVENTS_KEY]) == [event, Event(8, "*", EventKind.CLEAR, (), "")]
    assert (recovery.rows, recovery.last_lsn, recovery.torn, recovery.quarantined) == (72, 16, (), ())
    # The lsn goes on where the journal left off.
    assert again.append("ticker", "binance", "BTC/USDT", ticks(50, 1)) == 17
    again.close()


def test_the_committer_commits_without_being_asked(data_dir: DataDir) -> None:
    journal, _ = open_journal(data_dir, commit_interval=0.02)
    try:
        lsn = journal.append("ticker", "binance", "BTC/USDT", ticks(0, 3))
        until(lambda: journal.committed_through == lsn, 10, "a timed commit")
        stats = journal.stats()
        assert (stats.commits, stats.committed_rows, stats.pending_rows) == (1, 3, 0)
    finally:
        journal.close()


@pytest.mark.parametrize("mode", list(FsyncMode))
def test_what_each_fsync_mode_reports_as_synced(data_dir: DataDir, mode: FsyncMode) -> None:
    journal, _ = open_journal(data_dir, fsync=mode, commit_interval=0.02 if mode is
                              FsyncMode.INTERVAL else 60)
    lsn = journal.append("ticker", "binance", "BTC/USDT", ticks(0, 1))
    assert journal.commit() == lsn
    if mode is FsyncMode.ALWAYS:
        assert journal.synced_through == lsn  # acknowledged only once fsynced
    elif mode is FsyncMode.INTERVAL:
        until(lambda: journal.synced_through == lsn, 10, "the interval's fsync")
    else:
        assert journal.synced_through == 0
    journal.close()
    assert journal.synced_through == lsn  # closing fsyncs in every mode


def test_bad_appends_and_options_are_refused(data_dir: DataDir) -> None:
    with pytest.raises(InvalidArgument, match=r"fsync mode 'sometimes' is not one of always, interval, never"):
        Journal(data_dir.journal, fsync="sometimes")
    with pytest.raises(InvalidArgument, match="commit interval 0 must be > 0"):
        Journal(data_dir.journal, commit_interval=0)
    journal, _ = open_journal(data_dir)
    journal.append("ticker", "binance", "BTC/USDT", ticks(0, 1))
    with pytest.raises(InvalidArgument, match=r"schema for 'ticker' 'binance' 'BTC/USDT' differs"):
        journal.append("ticker", "binance", "BTC/USDT", trades(0, 1))
    with pytest.raises(InvalidArgument, match="reserved by the journal"):
        journal.append("x", "binance", "BTC/USDT", pa.record_batch({KEY_COLUMN: [1]}))
    with pytest.raises(InvalidArgument, match="reserved for the event log"):
        journal.append("@events", "binance", "BTC/USDT", ticks(0, 1))
    with pytest.raises(InvalidArgument, match="channel must not be empty"):
        journal.append("", "binance", "BTC/USDT", ticks(0, 1))
    with pytest.raises(InvalidArgument, match="expected a pyarrow RecordBatch or Table"):
        journal.append("ticker", "binance", "BTC/USDT", [1, 2])  # type: ignore[arg-type]
    # A table is journalled as one append; an empty batch is no append at all.
    assert journal.append("ticker", "binance", "ETH/USDT", pa.Table.from_batches([ticks(0, 2)] * 2)) == 2
    assert journal.append("ticker", "binance", "ETH/USDT", ticks(0, 0)) == 2
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(Unavailable, match="the journal is closed"):
        journal.append("ticker", "binance", "BTC/USDT", ticks(0, 1))
    tables = recover(data_dir.journal, data_dir.quarantine).tables()
    assert timestamps(tables[JournalKey("ticker", "binance", "ETH/USDT")]) == [0, 1, 0, 1]


def test_segments_rotate_by_size_and_sealed_ones_are_deleted(data_dir: DataDir) -> None:
    journal, _ = open_journal(data_dir, commit_interval=60, segment_bytes=8192)
    for i in range(20):
        journal.append("ticker", "binance", "BTC/USDT", ticks(i * 20, 20))
        journal.commit()
    journal.rotate()
    closed = journal.closed_segments()
    assert len(closed) >= 3 and closed[-1].last_lsn == 20 and journal.rotate() is None
    assert [s.seq for s in closed] == segment_seqs(data_dir.journal)
    assert closed[0].first_lsn == 1 and all(a.last_lsn + 1 == b.first_lsn for a, b in itertools.pairwise(closed))
    # What the history writer reads: one closed segment's rows.
    second = read_segment(closed[1])
    assert timestamps(pa.concat_tables(b.table for b in second)) == \
        list(range((closed[1].first_lsn - 1) * 20, closed[1].last_lsn * 20))

    journal.append("ticker", "binance", "BTC/USDT", ticks(400, 5))
    journal.commit()
    open_seq = journal.stats().segment
    with pytest.raises(InvalidArgument, match=f"segment {open_seq} is still open"):
        journal.seal(open_seq)
    done = journal.seal(closed[1].seq)
    assert done == closed[:2] and journal.closed_segments() == closed[2:]
    assert segment_seqs(data_dir.journal)[0] == closed[2].seq
    journal.close()

    recovery = recover(data_dir.journal, data_dir.quarantine)
    assert recovery.sealed_through == closed[1].seq
    rows = timestamps(pa.concat_tables(recovery.tables().values()))
    assert rows == list(range(closed[1].last_lsn * 20, 405))  # sealed rows are the history's now


def test_an_interrupted_seal_is_finished_by_recovery(data_dir: DataDir) -> None:
    journal, _ = open_journal(data_dir, commit_interval=60, segment_bytes=4096)
    for i in range(10):
        journal.append("ticker", "binance", "BTC/USDT", ticks(i * 20, 20))
        journal.commit()
    journal.close()
    closed = journal.closed_segments()
    # A crash right after SEALED was written, before any segment was deleted.
    (data_dir.journal / "SEALED").write_text(f"{closed[1].seq}\n")
    recovery = recover(data_dir.journal, data_dir.quarantine)
    assert segment_seqs(data_dir.journal) == [s.seq for s in closed[2:]]
    assert recovery.segments[0].first_lsn == closed[2].first_lsn


def test_a_full_queue_drops_and_counts_instead_of_blocking(data_dir: DataDir) -> None:
    journal, _ = open_journal(data_dir, commit_interval=60, max_pending_rows=10)
    assert journal.append("ticker", "binance", "BTC/USDT", ticks(0, 8)) == 1
    assert journal.append("ticker", "binance", "BTC/USDT", ticks(8, 5)) == 0  # dropped
    assert journal.stats().dropped_rows == 5
    journal.commit()
    assert journal.append("ticker", "binance", "BTC/USDT", ticks(13, 5)) == 2
    journal.close()


def test_a_taken_segment_name_is_skipped(data_dir: DataDir) -> None:
    journal, _ = open_journal(data_dir, commit_interval=60)
    taken = data_dir.journal / f"{journal.stats().segment:012d}.wal"
    taken.mkdir()  # not a segment file: never written into, never read
    journal.append("ticker", "binance", "BTC/USDT", ticks(0, 3))
    journal.commit()
    journal.close()
    assert taken.is_dir() and recover(data_dir.journal, data_dir.quarantine).rows == 3


FULL_DISK = textwrap.dedent("""
    import json, os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    sys.path.insert(0, sys.argv[2])
    from test_journal import ticks
    from flight_md.persist.datadir import DataDir
    from flight_md.persist.recovery import open_journal
    fresh = sys.argv[3] == "fresh"
    journal, _ = open_journal(DataDir.open(sys.argv[1]), commit_interval=60)
    path = os.path.join(sys.argv[1], "journal", f"{journal.stats().segment:012d}.wal")
    if not fresh:
        journal.append("ticker", "binance", "BTC/USDT", ticks(0, 1000))
        journal.commit()
    size = os.path.getsize(path) if os.path.exists(path) else 0
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    # The "disk" fills up 5000 bytes into the next commit: a partial write, then EFBIG.
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 5000, hard))
    journal.append("ticker", "binance", "BTC/USDT", ticks(1000, 1000))
    try:
        journal.commit()
        failed = None
    except OSError as exc:
        failed = exc.errno
    stats = journal.stats()
    report = {"failed": failed, "size_after": os.path.getsize(path), "size": size,
              "pending": stats.pending_rows, "errors": stats.write_errors,
              "last_error": stats.last_error, "committed": stats.committed_through}
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space comes back
    report["retried"] = journal.commit()
    report["cleared"] = journal.stats().last_error is None
    journal.close()
    print(json.dumps(report), flush=True)
""")


@pytest.mark.parametrize("segment", ["fresh", "written"])
def test_a_failed_commit_keeps_its_rows_pending_and_retries(tmp_path: Path, segment: str) -> None:
    """A real short write: the child's file size limit (RLIMIT_FSIZE) stands in for a full
    disk, in a segment's first write or a later one. The torn commit is cut off, its rows stay
    pending, the retry writes them (and the segment header, if that was what failed)."""
    child = ChildProcess(["-c", FULL_DISK, str(tmp_path / "data"), str(Path(__file__).parent),
                          segment])
    child.start()
    assert child.wait(60) == 0, child.output
    report = json.loads(child.stdout[-1])
    earlier = 0 if segment == "fresh" else 1
    assert report["failed"] == errno.EFBIG and report["last_error"].startswith("OSError")
    assert report["size_after"] == report["size"]  # the partial commit was cut off
    assert (report["pending"], report["errors"], report["committed"]) == (1000, 1, earlier)
    assert report["retried"] == earlier + 1 and report["cleared"]
    with DataDir.open(tmp_path / "data") as d:
        recovery = recover(d.journal, d.quarantine)
    assert (recovery.torn, recovery.quarantined) == ((), ())
    start = 1000 if segment == "fresh" else 0
    assert timestamps(pa.concat_tables(recovery.tables().values())) == list(range(start, 2000))


def test_persist_loads_no_ccxt_and_imports_no_asyncio() -> None:
    """The journal is plain threads and files (asyncio itself may come in with the package's
    core, flight_md.buffer, but no persist module uses it)."""
    code = ("import sys, flight_md.persist.journal, flight_md.persist.recovery, "
            "flight_md.persist.datadir; print([m for m in ('ccxt', 'pyarrow.flight', 'aiohttp') "
            "if m in sys.modules])")
    child = ChildProcess(["-c", code])
    child.start()
    assert child.wait(60) == 0 and child.stdout == ["[]\n"], child.output
    for name in ("journal", "recovery", "datadir"):
        tree = ast.parse((Path(persist.__file__).parent / f"{name}.py").read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import | ast.ImportFrom)
                    for alias in (node.names if isinstance(node, ast.Import)
                                  else [ast.alias(node.module or "")])}
        assert not imported & {"asyncio", "ccxt"}, name

"""Recovery after real crashes: a child SIGKILLed mid-ingest loses nothing it reported as
committed and duplicates nothing; torn tails written for real are cut and counted; a corrupt
segment in the middle is quarantined (kept as found, its intact prefix recovered), never a
crash and never a silent skip.
"""

from __future__ import annotations

import re
import signal
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from flight_md.persist.datadir import DataDir
from flight_md.persist.journal import EVENTS_KEY, JournalKey, segment_path, segment_seqs
from flight_md.persist.recovery import events_from_table, open_journal, recover
from tests.persist.test_journal import TRADE_SCHEMA, ticks, timestamps, trades
from tests.support import ChildProcess, until

INGEST = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from test_journal import ticks, trades
    from flight_md.events import Event, EventKind
    from flight_md.persist.datadir import DataDir
    from flight_md.persist.recovery import open_journal
    journal, _ = open_journal(DataDir.open(sys.argv[1]), commit_interval=0.02,
                              segment_bytes=32 * 1024)
    print("ready", flush=True)
    reported = i = 0
    while True:  # a steady stream until SIGKILL: row i has timestamp i and lsn i
        i += 1
        if i % 3 == 2:
            lsn = journal.append("trades", "binance", "BTC/USDT", trades(i, 1))
        elif i % 100 == 0:
            lsn = journal.append_events(Event(i, "binance", EventKind.CONNECT, (), str(i)))
        else:
            lsn = journal.append("ticker", ("binance", "bybit")[i % 2], "BTC/USDT", ticks(i, 1))
        assert lsn == i, (lsn, i)
        committed = journal.committed_through
        if committed != reported:
            print(f"committed {committed}", flush=True)
            reported = committed
        if i % 20 == 0:
            time.sleep(0.0005)  # about 20k appends a second
""")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[DataDir]:
    with DataDir.open(tmp_path / "data") as d:
        yield d


def test_sigkill_mid_ingest_loses_nothing_committed_and_duplicates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    child = ChildProcess(["-c", INGEST, str(root), str(Path(__file__).parent)],
                         ready=re.compile("ready")).start()
    try:
        def acknowledged() -> list[int]:
            return [int(line.split()[1]) for line in list(child.stdout) if line.startswith("committed")]
        # Enough commits that segments rotated (32 KiB each) and the kill lands mid-stream.
        until(lambda: len(acknowledged()) >= 25, 30, "25 group commits from the child")
    finally:
        child.signal(signal.SIGKILL)
        child.wait(30)
    last_acknowledged = acknowledged()[-1]

    with DataDir.open(root) as d:  # the dead child left no lock behind
        journal, recovery = open_journal(d)
        journal.close()
    assert len(recovery.segments) >= 2
    seen: list[int] = []
    for key, table in recovery.tables().items():
        values = timestamps(table)
        assert values == sorted(values), f"{key} out of order"
        seen += values
        if key == EVENTS_KEY:
            assert [e.detail for e in events_from_table(table)] == [str(v) for v in values]
        elif key.channel == "trades":
            assert table.schema == TRADE_SCHEMA
    # Every row the child appended up to some point, each once: no duplicate, no gap, and
    # nothing the child had seen committed is missing.
    assert sorted(seen) == list(range(1, len(seen) + 1))
    assert recovery.last_lsn == len(seen) >= last_acknowledged
    assert len(recovery.torn) <= 1 and recovery.quarantined == ()


def write_two_commits(data_dir: DataDir) -> tuple[Path, int, int]:
    """A journal with commits A (rows 0..99) and B (100..199), closed cleanly; returns the
    segment and the file sizes after A and after B."""
    journal, _ = open_journal(data_dir, commit_interval=60)
    journal.append("ticker", "binance", "BTC/USDT", ticks(0, 100))
    journal.commit()
    seq = journal.stats().segment
    after_a = segment_path(data_dir.journal, seq).stat().st_size
    journal.append("ticker", "binance", "BTC/USDT", ticks(100, 100))
    journal.append("trades", "binance", "BTC/USDT", trades(100, 10))
    journal.commit()
    after_b = segment_path(data_dir.journal, seq).stat().st_size
    journal.close()
    return segment_path(data_dir.journal, seq), after_a, after_b


def half_of_b(path: Path, after_a: int, after_b: int) -> None:
    """The process died while writing commit B: only its first half reached the file."""
    with path.open("r+b") as f:
        f.truncate(after_a + (after_b - after_a) // 2)


def garbage_after_a(path: Path, after_a: int, after_b: int) -> None:
    with path.open("r+b") as f:
        f.truncate(after_a)
        f.seek(after_a)
        f.write(np.random.default_rng(1).bytes(3000))


def zeros_after_a(path: Path, after_a: int, after_b: int) -> None:
    """What a power cut can leave: the file grew, the data never landed."""
    with path.open("r+b") as f:
        f.truncate(after_a)
        f.truncate(after_a + 4096)


def b_without_its_commit(path: Path, after_a: int, after_b: int) -> None:
    """Every record of B is intact, but its COMMIT record (the last 40 bytes) never got written."""
    with path.open("r+b") as f:
        f.truncate(after_b - 40)


@pytest.mark.parametrize("tear", [half_of_b, garbage_after_a, zeros_after_a, b_without_its_commit])
def test_a_torn_tail_is_cut_and_counted(data_dir: DataDir,
                                        tear: Callable[[Path, int, int], None]) -> None:
    path, after_a, after_b = write_two_commits(data_dir)
    tear(path, after_a, after_b)
    size = path.stat().st_size
    recovery = recover(data_dir.journal, data_dir.quarantine)
    assert len(recovery.torn) == 1 and recovery.quarantined == ()
    torn = recovery.torn[0]
    assert (torn.offset, torn.bytes_cut) == (after_a, size - after_a)
    assert timestamps(recovery.tables()[JournalKey("ticker", "binance", "BTC/USDT")]) == list(range(100))
    assert recovery.last_lsn == 1 and recovery.rows == 100
    assert not any(data_dir.quarantine.rglob("*.wal"))
    # Repaired for good: the next recovery finds a clean journal with the same rows, and a
    # journal opened on it continues with lsn 2 (B was never acknowledged).
    journal, again = open_journal(data_dir)
    assert (again.torn, again.rows) == ((), 100)
    assert journal.append("ticker", "binance", "BTC/USDT", ticks(100, 1)) == 2
    journal.close()


def test_a_torn_first_write_leaves_no_segment(data_dir: DataDir) -> None:
    path, after_a, _ = write_two_commits(data_dir)
    with path.open("r+b") as f:
        f.truncate(after_a // 3)  # killed during the segment's very first write
    recovery = recover(data_dir.journal, data_dir.quarantine)
    assert recovery.rows == 0 and len(recovery.torn) == 1 and not path.exists()


def three_segments(data_dir: DataDir) -> list[Path]:
    journal, _ = open_journal(data_dir, commit_interval=60, segment_bytes=8192)
    for i in range(16):  # about 2 KB a commit: four commits a segment
        journal.append("ticker", "binance", "BTC/USDT", ticks(i * 20, 20))
        journal.commit()
    journal.close()
    seqs = segment_seqs(data_dir.journal)
    assert len(seqs) >= 3
    return [segment_path(data_dir.journal, s) for s in seqs]


def test_a_corrupt_middle_segment_is_quarantined_and_its_intact_prefix_kept(data_dir: DataDir) -> None:
    paths = three_segments(data_dir)
    middle = paths[1]
    original = middle.read_bytes()
    flipped = bytearray(original)
    flipped[len(original) - 200] ^= 0xFF  # inside the last commit's batch
    middle.write_bytes(bytes(flipped))
    before = {p: p.stat().st_size for p in paths}

    recovery = recover(data_dir.journal, data_dir.quarantine)
    assert recovery.torn == () and len(recovery.quarantined) == 1
    bad = recovery.quarantined[0]
    assert bad.segment == int(middle.stem) and "checksum mismatch" in bad.reason
    assert bad.path == data_dir.quarantine / "journal" / middle.name
    assert bad.path.read_bytes() == bytes(flipped)  # kept exactly as found
    assert bad.rows_kept > 0 and bad.bytes_lost > 0
    assert middle.stat().st_size < before[middle] and all(
        p.stat().st_size == before[p] for p in paths if p != middle)
    # Everything but the one damaged commit comes back, in order.
    got = timestamps(recovery.tables()[JournalKey("ticker", "binance", "BTC/USDT")])
    lost = set(range(320)) - set(got)
    assert got == sorted(got) and len(lost) == 20 and len(got) == recovery.rows == 300
    # Quarantined once: the repaired journal recovers clean next time.
    again = recover(data_dir.journal, data_dir.quarantine)
    assert (again.quarantined, again.rows) == ((), 300)


def test_a_middle_segment_that_is_no_segment_is_moved_aside(data_dir: DataDir) -> None:
    paths = three_segments(data_dir)
    paths[1].write_bytes(b"this is not a journal segment at all" * 10)
    recovery = recover(data_dir.journal, data_dir.quarantine)
    assert len(recovery.quarantined) == 1 and "bad magic" in recovery.quarantined[0].reason
    assert recovery.quarantined[0].rows_kept == 0 and not paths[1].exists()
    assert recovery.quarantined[0].path.exists()
    assert [s.seq for s in recovery.segments] == [int(paths[0].stem), *(int(p.stem) for p in paths[2:])]


def test_many_keys_per_commit_split_back_in_order(data_dir: DataDir) -> None:
    """200k rows over 100 symbols and two channels, interleaved in every commit (how a busy
    server journals), come back per key, each in its append order."""
    journal, _ = open_journal(data_dir, commit_interval=60, segment_bytes=1 << 20)
    symbols = [f"S{i}/USDT" for i in range(100)]
    expected: dict[JournalKey, list[int]] = {}
    n = 0
    for round_ in range(100):
        for j, symbol in enumerate(symbols):
            channel = "trades" if j % 10 == 0 else "ticker"
            batch = trades(n, 20) if channel == "trades" else ticks(n, 20)
            journal.append(channel, "binance", symbol, batch)
            expected.setdefault(JournalKey(channel, "binance", symbol), []).extend(range(n, n + 20))
            n += 20
        if round_ % 10 == 9:
            journal.commit()
    journal.close()
    recovery = recover(data_dir.journal, data_dir.quarantine)
    assert recovery.rows == n == 200_000 and len(recovery.segments) > 3
    got = {key: timestamps(table) for key, table in recovery.tables().items()}
    assert got == expected


def test_an_empty_journal_recovers_to_nothing(data_dir: DataDir) -> None:
    recovery = recover(data_dir.journal, data_dir.quarantine)
    assert (recovery.rows, recovery.last_lsn, recovery.batches, recovery.tables()) == (0, 0, (), {})

"""Trades and book tops journalled, moved into the Parquet history and recovered, like ticks.

A real :class:`~flight_md.buffer.Store` (ticker, trades and book buffers), a real data dir under
``tmp_path``; a restart is a new store and a new :class:`Persistence` over the same directory.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from flight_md.buffer import Store
from flight_md.core.channels import BOOK_SCHEMA, TRADE_SCHEMA
from flight_md.events import EventLog
from flight_md.persist.query import span
from flight_md.persist.retention import RetentionPolicy
from flight_md.persist.store import SEQUENCE, PersistConfig, Persistence
from flight_md.schema import now_ms
from flight_md.tickets import Query, Target

T0 = (now_ms() // 60_000) * 60_000 - 3_600_000
NO_RETENTION = RetentionPolicy(max_age=None, max_bytes=None)


def config(tmp_path: Path) -> PersistConfig:
    return PersistConfig(tmp_path / "data", commit_interval=0.05, seal_interval=3600.0,
                         retention=NO_RETENTION)


def fill(store: Store, first: int, n: int) -> None:
    trades, book = store.buffer("trades"), store.buffer("book")
    for i in range(first, first + n):
        trades.append_trade("okx", "BTC/USDT", T0 + i, str(i), 100.0 + i, 0.5,
                            "buy" if i % 2 else "sell", T0 + i + 3)
        if i % 10 == 0:
            book.append_book("okx", "BTC/USDT", T0 + i, [[100.0 + i, 1.0], [99.0, 2.0]],
                             [[101.0 + i, 1.5]], i, T0 + i + 3)


def test_trades_and_books_survive_a_restart_exactly_once(tmp_path: Path) -> None:
    store = Store(100, book_depth=2)
    first = Persistence(config(tmp_path), store, EventLog()).open()
    fill(store, 0, 1000)
    first.flush()  # 0..999 into the history
    fill(store, 1000, 500)  # 1000..1499 only in the journal at the restart
    first.close()

    history = tmp_path / "data" / "history"
    assert (history / "channel=trades").is_dir() and (history / "channel=book").is_dir()
    on_disk = duckdb.sql(f"""SELECT count(*) AS n, count(DISTINCT trade_id) AS ids,
        min(sequence) AS lo, max(sequence) AS hi FROM read_parquet(
        '{history}/channel=trades/**/*.parquet', hive_partitioning = true)""").fetchall()[0]
    assert on_disk == (1500, 1500, 0, 1499)  # every trade once, numbered in order

    again = Store(100, book_depth=2)
    second = Persistence(config(tmp_path), again, EventLog()).open()
    try:
        trades = again.buffer("trades").get_latest_sync("BTC/USDT", 100)
        assert trades.schema == TRADE_SCHEMA
        assert trades.column("trade_id").to_pylist() == [str(i) for i in range(1400, 1500)]
        book = again.buffer("book").get_latest_sync("BTC/USDT", 1).to_pylist()[0]
        assert book["nonce"] == 1490 and book["bids"][0] == {"price": 1590.0, "amount": 1.0}
        assert again.buffer("book").schema == BOOK_SCHEMA
        # Numbering continues; a range beyond the ring reads history then ring, no seam.
        fill(again, 1500, 10)
        query = Query(Target.TICKS, symbol="BTC/USDT", exchange="okx", start=T0,
                      channel="trades")
        spanned = span(second, again.buffer("trades"), query)
        assert spanned is not None
        table = spanned.read_all()
        assert table.column("trade_id").to_pylist() == [str(i) for i in range(1510)]
        assert table.column("side").to_pylist()[:2] == ["sell", "buy"]
        books = span(second, again.buffer("book"), Query(
            Target.TICKS, symbol="BTC/USDT", start=T0, channel="book"))
        assert books is not None
        assert books.read_all().column("nonce").to_pylist() == list(range(0, 1510, 10))
    finally:
        second.close()


@pytest.mark.parametrize("channel", ["trades", "book"])
def test_history_files_hold_the_channel_schema_and_sequence(tmp_path: Path, channel: str) -> None:
    store = Store(50)
    persistence = Persistence(config(tmp_path), store, EventLog()).open()
    fill(store, 0, 200)
    persistence.flush()
    persistence.close()
    files = sorted((tmp_path / "data" / "history" / f"channel={channel}").rglob("*.parquet"))
    assert files
    import pyarrow.parquet as pq

    schema = pq.read_schema(files[0])
    expected = (TRADE_SCHEMA if channel == "trades" else BOOK_SCHEMA).append(
        pa.field(SEQUENCE, pa.int64(), nullable=False))
    assert [f.name for f in schema] == expected.names
    assert [f.type for f in schema] == [f.type for f in expected]

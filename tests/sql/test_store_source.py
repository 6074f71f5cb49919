"""StoreTableSource's history dataset: files are pruned by what their path and name guarantee
(exchange, symbol and timestamp range), so a query never opens files it cannot need."""

from __future__ import annotations

from pathlib import Path

import pytest

from flight_md.buffer import Store
from flight_md.events import EventLog
from flight_md.persist.history import HistoryRoot
from flight_md.sql.engine import Engine, HistoryUnreadable
from flight_md.sql.store_source import StoreTableSource
from tests.sql.conftest import HISTORY_ROWS, SERIES, STEP_MS, T0, trades_of, write_history

MIDNIGHT = T0 + 120 * STEP_MS
"""The fixture's trades cross a UTC midnight 120 trades in."""


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    for exchange, symbol in SERIES:
        write_history(tmp_path / "history", "trades", trades_of(exchange, symbol, range(HISTORY_ROWS)))
    store = Store(100)
    store.buffer("trades")
    return Engine(StoreTableSource(store, EventLog(), history=HistoryRoot(tmp_path)))


def corrupt(tmp_path: Path, symbol_dir: str, day: str) -> None:
    files = list((tmp_path / "history" / "channel=trades" / "exchange=binance" / symbol_dir
                  / f"date={day}").glob("*.parquet"))
    assert files
    for path in files:
        path.write_bytes(b"not parquet" * 10)


def count(engine: Engine, where: str) -> int:
    table = engine.execute(f"SELECT count(*) AS n FROM trades WHERE {where}").read_all()
    n: int = table["n"][0].as_py()
    return n


def test_a_timestamp_filter_never_opens_files_of_other_times(engine: Engine, tmp_path: Path) -> None:
    corrupt(tmp_path, "symbol=BTC%2FUSDT", "2026-11-30")  # the day before MIDNIGHT
    where = "exchange = 'binance' AND symbol = 'BTC/USDT'"
    assert count(engine, f"{where} AND timestamp >= {MIDNIGHT}") == HISTORY_ROWS - 120
    assert count(engine, f"symbol = 'BTC/USDT' AND timestamp >= {MIDNIGHT}") == 2 * (HISTORY_ROWS - 120)
    assert count(engine, "symbol = 'ETH/USDT'") == HISTORY_ROWS
    with pytest.raises(HistoryUnreadable):
        count(engine, where)  # this one needs the corrupt file


def test_every_row_once_across_days_and_series(engine: Engine) -> None:
    assert count(engine, "true") == len(SERIES) * HISTORY_ROWS
    table = engine.execute("SELECT DISTINCT exchange, symbol FROM trades ORDER BY ALL").read_all()
    assert [tuple(r.values()) for r in table.to_pylist()] == sorted(SERIES)

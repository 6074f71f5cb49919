"""Retention on real files: whole date partitions removed by age and by total bytes, oldest first."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flight_md.persist.history import DAY_MS, HistoryReader, HistoryWriter, InvalidHistoryData
from flight_md.persist.retention import (
    DEFAULT_MAX_HISTORY_BYTES,
    DEFAULT_RETENTION,
    DEMO_RETENTION,
    RemovalReason,
    RetentionPolicy,
    apply_retention,
)
from flight_md.schema import EVENT_SCHEMA, SCHEMA

NOW = int(datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp() * 1000)
TODAY = date(2026, 11, 23)


def ticks(symbol: str, timestamps: list[int]) -> pa.Table:
    n = len(timestamps)
    cols: dict[str, pa.Array] = {"symbol": pa.array([symbol] * n), "timestamp": pa.array(timestamps, pa.int64())}
    for name in ("price", "volume", "bid", "ask", "high", "low", "open", "close"):
        cols[name] = pa.array(np.linspace(1.0, 2.0, n))
    cols["exchange"] = pa.array(["binance"] * n)
    cols["receive_timestamp"] = pa.array(timestamps, pa.int64())
    return pa.table(cols, schema=SCHEMA)


def events(timestamps: list[int]) -> pa.Table:
    n = len(timestamps)
    return pa.table({"timestamp": timestamps, "exchange": ["*"] * n, "kind": ["connect"] * n,
                     "symbols": [[]] * n, "detail": [""] * n}, schema=EVENT_SCHEMA)


def fill(root: Path, days_back: range) -> None:
    """Two symbols and the events log, 100 rows per day, ``days_back`` days before today."""
    writer = HistoryWriter(root)
    for back in days_back:
        start = NOW - back * DAY_MS - 12 * 3600_000  # midnight of that day
        stamps = [start + i * 60_000 for i in range(100)]
        writer.write("ticker", "binance", "BTC/USDT", ticks("BTC/USDT", stamps))
        writer.write("bidask", "binance", "ETH/USDT", ticks("ETH/USDT", stamps))
        writer.write_events(events(stamps))


def days_left(root: Path) -> list[str]:
    return sorted({p.name for p in root.glob("**/date=*")})


def test_defaults() -> None:
    assert DEFAULT_RETENTION == timedelta(days=30)
    assert DEMO_RETENTION == timedelta(days=1)
    assert DEFAULT_MAX_HISTORY_BYTES == 20 * 10**9
    assert RetentionPolicy() == RetentionPolicy(DEFAULT_RETENTION, DEFAULT_MAX_HISTORY_BYTES)


@pytest.mark.parametrize(("policy", "message"), [
    (lambda: RetentionPolicy(max_age=timedelta(0)), "invalid retention 0:00:00: a positive duration"),
    (lambda: RetentionPolicy(max_bytes=-1), "invalid max history bytes -1: a positive number"),
])
def test_bad_limits_are_refused(policy: object, message: str) -> None:
    with pytest.raises(InvalidHistoryData, match=message):
        policy()  # type: ignore[operator]


def test_age_removes_whole_days_older_than_the_retention(tmp_path: Path) -> None:
    fill(tmp_path, range(35))
    result = apply_retention(tmp_path, RetentionPolicy(max_age=timedelta(days=30), max_bytes=None), now=NOW)
    # 2026-10-24 ended at midnight 2026-10-25 = NOW - 29.5 days: kept; 2026-10-23 ended 30.5 days ago.
    assert days_left(tmp_path)[0] == "date=2026-10-24"
    assert len(days_left(tmp_path)) == 31
    assert {p.reason for p in result.removed} == {RemovalReason.AGE}
    assert sorted({p.day for p in result.removed}) == [TODAY - timedelta(days=d) for d in range(34, 30, -1)]
    assert len(result.removed) == 4 * 3  # two series and the events, per day
    assert {p.key.channel if p.key else "events" for p in result.removed} == {"ticker", "bidask", "events"}
    assert result.removed_rows == 12 * 100
    bounds = HistoryReader(tmp_path).bounds("ticker", "binance", "BTC/USDT")
    assert bounds is not None and bounds.oldest_ms == NOW - 30 * DAY_MS - 12 * 3600_000
    assert apply_retention(tmp_path, RetentionPolicy(max_age=timedelta(days=30), max_bytes=None),
                           now=NOW).removed == ()


def test_demo_retention_keeps_yesterday_and_today(tmp_path: Path) -> None:
    fill(tmp_path, range(4))
    apply_retention(tmp_path, RetentionPolicy(max_age=DEMO_RETENTION), now=NOW)
    assert days_left(tmp_path) == ["date=2026-11-22", "date=2026-11-23"]


def test_bytes_remove_the_oldest_partitions_first(tmp_path: Path) -> None:
    future = NOW + 400 * DAY_MS  # a clock jump: newest by date, so the last to go by size
    fill(tmp_path, range(6))
    HistoryWriter(tmp_path).write("ticker", "binance", "BTC/USDT", ticks("BTC/USDT", [future]))
    before = {p.name: sum(f.stat().st_size for f in tmp_path.glob(f"**/{p.name}/*.parquet"))
              for p in tmp_path.glob("**/date=*")}
    total = sum(before.values())
    newest_three = sum(v for k, v in before.items() if k >= "date=2026-11-21")
    result = apply_retention(tmp_path, RetentionPolicy(max_age=None, max_bytes=newest_three), now=NOW)
    assert days_left(tmp_path) == ["date=2026-11-21", "date=2026-11-22", "date=2026-11-23", "date=2027-12-28"]
    assert [p.day for p in result.removed] == sorted(p.day for p in result.removed)
    assert {p.reason for p in result.removed} == {RemovalReason.BYTES}
    assert result.kept_bytes == newest_three
    assert result.removed_bytes == total - newest_three
    # Age leaves the future partition alone; a limit below one partition removes even today's.
    assert apply_retention(tmp_path, RetentionPolicy(max_age=timedelta(days=1), max_bytes=None),
                           now=NOW).removed[0].day == date(2026, 11, 21)
    last = apply_retention(tmp_path, RetentionPolicy(max_age=None, max_bytes=1), now=NOW)
    assert [p.day for p in last.removed][-1] == date(2027, 12, 28)
    assert days_left(tmp_path) == [] and last.kept_bytes == 0
    assert HistoryReader(tmp_path).all_bounds() == []


def test_both_limits_together(tmp_path: Path) -> None:
    fill(tmp_path, range(10))
    size = sum(f.stat().st_size for f in tmp_path.glob("**/date=2026-11-23/*.parquet"))
    limit = 2 * size + size // 2  # two days and a half
    result = apply_retention(tmp_path, RetentionPolicy(max_age=timedelta(days=5), max_bytes=limit), now=NOW)
    reasons = [(p.day, p.reason) for p in result.removed]
    # 2026-11-18 ended 4.5 days before NOW: age keeps it, size does not.
    assert {d for d, r in reasons if r is RemovalReason.AGE} == {TODAY - timedelta(days=d) for d in range(6, 10)}
    assert {d for d, r in reasons if r is RemovalReason.BYTES} == {TODAY - timedelta(days=d) for d in range(2, 6)}
    # Half of 2026-11-21 goes (its partitions one by one, oldest first) until the total fits.
    assert days_left(tmp_path) == ["date=2026-11-21", "date=2026-11-22", "date=2026-11-23"]
    assert result.kept_bytes <= limit
    assert result.kept_bytes == sum(f.stat().st_size for f in tmp_path.glob("**/*.parquet"))

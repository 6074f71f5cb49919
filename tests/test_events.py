"""The event log served as ``@events``."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flight_md.events import DEFAULT_EVENT_CAPACITY, Event, EventKind, EventLog
from flight_md.schema import EVENT_SCHEMA, now_ms


def filled(n: int = 10, capacity: int = DEFAULT_EVENT_CAPACITY) -> EventLog:
    log = EventLog(capacity)
    for i in range(n):
        log.record("binance" if i % 2 else "bybit", EventKind.CONNECT, (f"S{i}",), f"event {i}",
                   timestamp=1000 + i)
    return log


def test_event_kinds() -> None:
    assert [k.value for k in EventKind] == ["connect", "disconnect", "reconnect", "stale",
                                            "failed", "restarted", "subscribe", "unsubscribe", "clear",
                                            "mode", "error", "recovered", "persist_error",
                                            "persist_resumed", "quarantined", "gap", "backfill",
                                            "book_resync", "lag"]


def test_record_returns_the_event() -> None:
    log = EventLog()
    before = now_ms()
    kind: Any = "subscribe"  # a plain string is accepted and converted
    event = log.record("binance", kind, ["BTC/USDT", "ETH/USDT"], "asked by a client")
    assert isinstance(event, Event)
    assert event.kind is EventKind.SUBSCRIBE
    assert event.symbols == ("BTC/USDT", "ETH/USDT")
    assert event.detail == "asked by a client"
    assert before <= event.timestamp <= now_ms()
    assert log.events() == [event]
    assert len(log) == 1 and log.recorded == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.detail = "x"  # type: ignore[misc]


def test_record_defaults_and_explicit_timestamp() -> None:
    log = EventLog()
    event = log.record("*", EventKind.CLEAR, timestamp=5)
    assert (event.timestamp, event.symbols, event.detail) == (5, (), "")


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        EventLog().record("binance", "exploded")  # type: ignore[arg-type]


def test_bounded_oldest_dropped_first() -> None:
    log = filled(25, capacity=10)
    assert len(log) == 10
    assert log.recorded == 25
    assert [e.timestamp for e in log.events()] == list(range(1015, 1025))


def test_filters() -> None:
    log = filled(10)
    assert [e.timestamp for e in log.events("binance")] == [1001, 1003, 1005, 1007, 1009]
    assert [e.timestamp for e in log.events(start=1003, end=1006)] == [1003, 1004, 1005]
    assert [e.timestamp for e in log.events(start=1008)] == [1008, 1009]
    assert [e.timestamp for e in log.events(end=1002)] == [1000, 1001]
    assert log.events(start=1003, end=1003) == []
    assert [e.timestamp for e in log.events(latest=3)] == [1007, 1008, 1009]
    assert log.events(latest=0) == []
    assert [e.timestamp for e in log.events("bybit", start=1002, latest=2)] == [1006, 1008]
    assert log.events("okx") == []


@pytest.mark.parametrize("latest", [10, 11, 15, 19, 20, 21, 1000])
def test_latest_above_the_count_returns_everything(latest: int) -> None:
    log = filled(10)
    assert [e.timestamp for e in log.events(latest=latest)] == list(range(1000, 1010))
    assert log.to_table(latest=latest).num_rows == 10


@given(n=st.integers(0, 30), latest=st.integers(0, 100))
def test_latest_is_the_newest_n(n: int, latest: int) -> None:
    log = filled(n)
    everything = log.events()
    assert log.events(latest=latest) == (everything[max(0, n - latest):] if latest else [])


def test_to_table() -> None:
    log = filled(4)
    log.record("okx", EventKind.STALE, timestamp=2000)
    table = log.to_table()
    assert table.schema.equals(EVENT_SCHEMA)
    assert table.to_pylist()[-1] == {"timestamp": 2000, "exchange": "okx", "kind": "stale",
                                     "symbols": [], "detail": ""}
    assert table.to_pylist()[0] == {"timestamp": 1000, "exchange": "bybit", "kind": "connect",
                                    "symbols": ["S0"], "detail": "event 0"}
    assert log.to_table("okx").num_rows == 1
    assert log.to_table(start=1001, end=1003).column("timestamp").to_pylist() == [1001, 1002]
    empty = EventLog().to_table()
    assert empty.num_rows == 0 and empty.schema.equals(EVENT_SCHEMA)


def test_concurrent_writers_and_readers() -> None:
    log = EventLog(capacity=500)
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(k: int) -> None:
        try:
            for i in range(400):
                log.record(f"ex{k}", EventKind.ERROR, (), str(i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read() -> None:
        try:
            while not stop.is_set():
                table = log.to_table(latest=50)
                assert table.num_rows <= 50
                log.events("ex1", start=0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert log.recorded == 1600
    assert len(log) == 500
    for k in range(4):  # each writer's events stay in order
        mine = [int(e.detail) for e in log.events(f"ex{k}")]
        assert mine == sorted(mine)

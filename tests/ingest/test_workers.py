"""Sharded ingestion (``ingest_workers`` / ``--ingest-workers N``, :mod:`flight_md.ingest.workers`).

The placement rule and the status merge are pure and tested on plain values; everything else
runs real parts: the emulator on a thread of this process, two spawned workers running real
ccxt.pro against it, their rows crossing into this process's buffer. One pair of workers
serves the module (each start imports ccxt in a fresh interpreter); every test reads the
state it starts from instead of assuming the previous test's.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from flight_md.buffer import MarketDataBuffer
from flight_md.config import ServerConfig, StreamConfig
from flight_md.control import ClockSkew, ExchangeStatus, IngestionStatus, SymbolStatus
from flight_md.emulator import Fault
from flight_md.emulator.thread import EmulatorThread
from flight_md.errors import ConfigError, InvalidArgument, NotFound, Unavailable
from flight_md.events import EventKind, EventLog
from flight_md.ingest.workers import IngestionWorkers, Shards, merge_status
from tests.support import until

from .support import FAST, MS

pytestmark = pytest.mark.timeout(120 * MS)

STREAMED = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT")
LATER = ("XRP/USDT", "ADA/USDT")
"""Listed by the emulator, subscribed only by the tests."""


# -- the rule and the merge (pure) -------------------------------------------------------------


def test_the_rule_spreads_each_exchange_and_all_symbols_evenly_and_deterministically() -> None:
    shards = Shards(3)
    placed = shards.place("a", [f"S{i}/USDT" for i in range(7)])
    shards.mark("a", [s for part in placed.values() for s in part], subscribed=True)
    assert {w: len(p) for w, p in placed.items()} == {0: 3, 1: 2, 2: 2}
    assert placed[0] == ["S0/USDT", "S3/USDT", "S6/USDT"]  # round the workers, in order
    # Another exchange: its own spread first, then the least-loaded workers overall.
    other = shards.place("b", ["X/USDT", "Y/USDT"])
    assert other == {1: ["X/USDT"], 2: ["Y/USDT"]}
    shards.mark("b", ["X/USDT", "Y/USDT"], subscribed=True)
    assert [shards.load(w) for w in range(3)] == [3, 3, 3]
    # The same history gives the same placement.
    again = Shards(3)
    again.place("a", [f"S{i}/USDT" for i in range(7)])
    assert all(again.owner("a", f"S{i}/USDT") == shards.owner("a", f"S{i}/USDT")
               for i in range(7))


def test_a_symbol_keeps_its_worker_and_a_refused_one_is_forgotten() -> None:
    shards = Shards(2)
    shards.mark("a", shards.place("a", ["A/USDT", "B/USDT"])[0] + ["B/USDT"], subscribed=True)
    shards.mark("a", ["A/USDT"], subscribed=False)
    assert shards.subscribed("a") == ["B/USDT"] and shards.load(0) == 0
    assert shards.place("a", ["A/USDT"]) == {0: ["A/USDT"]}  # back where it was
    shards.place("a", ["NOPE/USDT"])
    shards.forget("a", ["NOPE/USDT"])
    assert shards.owner("a", "NOPE/USDT") is None
    with pytest.raises(InvalidArgument, match="workers must be an integer >= 1, got 0"):
        Shards(0)


def _exchange(state: str, symbols: tuple[str, ...], **kwargs: Any) -> ExchangeStatus:
    return replace(ExchangeStatus("binance", state, "websocket", "ticker", 0, symbols), **kwargs)


def test_status_merges_exactly() -> None:
    shards = Shards(2)
    shards.mark("binance", [s for p in shards.place("binance", ["A/USDT", "B/USDT", "C/USDT"])
                            .values() for s in p], subscribed=True)
    worker0 = IngestionStatus(
        (_exchange("connected", ("A/USDT", "C/USDT"), reconnects=1, bad_frames={"x": 2},
                   counters={"stored": 5}, clock_skew=ClockSkew(2, 9, 100, 60000)),),
        (SymbolStatus("binance", "A/USDT", True, 10, 1, False, 1, "ticker"),
         SymbolStatus("binance", "C/USDT", True, 30, 0, False, 3, "ticker")))
    worker1 = IngestionStatus(
        (_exchange("down", ("B/USDT",), reconnects=2, bad_frames={"x": 1, "y": 1},
                   counters={"stored": 7}, last_error="exited", last_error_ms=5,
                   clock_skew=ClockSkew(4, 20, 300, 60000)),),
        (SymbolStatus("binance", "B/USDT", True, 20, 0, True, 2, None),
         # not its symbol: a worker's view of a symbol it does not own is never shown
         SymbolStatus("binance", "A/USDT", False, 0, 0, False, None, "ticker")))
    merged = merge_status([worker0, worker1], shards)
    (exchange,) = merged.exchanges
    assert exchange.state == "down" and exchange.symbols == ("A/USDT", "B/USDT", "C/USDT")
    assert (exchange.reconnects, exchange.bad_frames, exchange.counters) == (
        3, {"x": 3, "y": 1}, {"stored": 12})
    assert exchange.last_error == "worker 1: exited" and exchange.last_error_ms == 5
    assert exchange.clock_skew == ClockSkew(4, 20, 400, 60000)
    assert [(s.symbol, s.received) for s in merged.symbols] == [
        ("A/USDT", 10), ("B/USDT", 20), ("C/USDT", 30)]


def test_the_decoder_setting_reaches_the_stream_options() -> None:
    assert StreamConfig("binance").stream_kwargs()["decoder"] == "fast"
    assert StreamConfig("binance", decoder="ccxt").stream_kwargs()["decoder"] == "ccxt"
    with pytest.raises(ConfigError, match="decoder must be fast or ccxt, got 'json'"):
        StreamConfig("binance", decoder="json")


def test_the_config_validates_the_number_of_workers() -> None:
    assert ServerConfig(ingest_workers=3).workers == 3
    assert ServerConfig(ingest_workers=2).ingest_process  # implied
    assert ServerConfig(ingest_process=True).workers == 1
    assert ServerConfig().workers == 0
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ConfigError, match=r"ingest_workers must be an integer >= 1"):
            ServerConfig(ingest_workers=bad)  # type: ignore[arg-type]


# -- real workers --------------------------------------------------------------------------------


def _count(buffer: MarketDataBuffer, symbol: str) -> int:
    try:
        return buffer.count(symbol, "binance")
    except NotFound:
        return 0


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    emu = EmulatorThread(exchange="binance", symbols=STREAMED + LATER, rate=400.0, seed=0)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="module")
def workers(emulator: EmulatorThread) -> Iterator[IngestionWorkers]:
    with IngestionWorkers(2, MarketDataBuffer(), EventLog()) as ingestion:
        ingestion.add_stream("binance", STREAMED, url=emulator.url, channel="ticker",
                             mode="websocket", keep_retrying=True,
                             **{**FAST, "heartbeat_interval": 30.0})
        yield ingestion


def _worker_symbols(workers: IngestionWorkers, index: int) -> set[str]:
    """What worker ``index``'s own child streams (its status, not the merge)."""
    return {s.symbol for s in workers.workers[index].status(10).symbols if s.subscribed}


def test_streams_spread_over_two_processes_and_every_tick_is_stored_once(
        workers: IngestionWorkers, emulator: EmulatorThread) -> None:
    pids = workers.pids
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert _worker_symbols(workers, 0) == {"BTC/USDT", "SOL/USDT"}
    assert _worker_symbols(workers, 1) == {"ETH/USDT", "BNB/USDT"}
    until(lambda: all(_count(workers.buffer, s) >= 20 for s in STREAMED), 30 * MS,
          "ticks of every symbol from both workers")
    emulator.inject(Fault.STALL)
    try:
        expected = {s: emulator.sent("ticker", s) for s in STREAMED}
        until(lambda: {s: _count(workers.buffer, s) for s in STREAMED} == expected, 30 * MS,
              f"exactly the {sum(expected.values())} ticks sent to be stored")
        status = workers.status(10)
        received = {s.symbol: s.received for s in status.symbols if s.symbol in STREAMED}
        assert received == expected
    finally:
        emulator.clear_faults()


def test_subscribe_and_unsubscribe_go_to_the_owner_and_status_merges(
        workers: IngestionWorkers) -> None:
    before = {index: _worker_symbols(workers, index) for index in (0, 1)}
    loads = [len(before[0]), len(before[1])]
    answer = workers.subscribe("binance", ["XRP/USDT"], 10)
    assert answer == {"exchange": "binance", "subscribed": ["XRP/USDT"]}
    target = loads.index(min(loads))  # the less loaded (a tie: the first)
    assert _worker_symbols(workers, target) == before[target] | {"XRP/USDT"}
    assert _worker_symbols(workers, 1 - target) == before[1 - target]
    until(lambda: _count(workers.buffer, "XRP/USDT") >= 5, 30 * MS, "XRP/USDT ticks")

    # All or nothing: ADA/USDT is placed on the first worker, subscribed there, and
    # unsubscribed again when the second refuses NOPE/USDT.
    with pytest.raises(InvalidArgument, match="unknown symbol 'NOPE/USDT'"):
        workers.subscribe(None, ["NOPE/USDT", "ADA/USDT"], 10)
    assert "ADA/USDT" not in _worker_symbols(workers, 0) | _worker_symbols(workers, 1)

    assert workers.unsubscribe(None, ["XRP/USDT"], 10) == {"exchange": "binance",
                                                            "unsubscribed": ["XRP/USDT"]}
    assert _worker_symbols(workers, target) == before[target]
    with pytest.raises(InvalidArgument, match="'XRP/USDT' is not subscribed"):
        workers.unsubscribe("binance", ["XRP/USDT"], 10)

    status = workers.status(10)
    (exchange,) = status.exchanges
    assert exchange.state == "connected"
    assert sorted(exchange.symbols) == sorted(before[0] | before[1])
    names = [s.symbol for s in status.symbols]
    assert len(names) == len(set(names))  # each symbol once, from its owner
    parts = [workers.workers[i].status(10) for i in (0, 1)]
    assert exchange.reconnects == sum(p.exchanges[0].reconnects for p in parts)
    markets = {m.symbol: m.subscribed for m in workers.markets("binance", "*/USDT", 10)}
    assert {s for s, on in markets.items() if on} == before[0] | before[1]


def test_a_killed_worker_is_restarted_with_its_symbols_and_the_other_is_undisturbed(
        workers: IngestionWorkers) -> None:
    mine, others = _worker_symbols(workers, 1), _worker_symbols(workers, 0)
    survivor, victim = workers.pids
    restarts = workers.workers[1].restarts
    os.kill(victim, signal.SIGKILL)  # type: ignore[arg-type]
    until(lambda: workers.workers[1].down is not None or workers.workers[1].restarts > restarts,
          10 * MS, "the death to be noticed")
    # Meanwhile the survivor's symbols keep flowing and its child is the same process.
    counts = {s: _count(workers.buffer, s) for s in others}
    until(lambda: all(_count(workers.buffer, s) > counts[s] for s in others), 30 * MS,
          "the other worker's symbols to keep flowing")
    try:
        workers.subscribe("binance", sorted(mine)[:1], 10)
    except Unavailable:
        pass  # its owner is being restarted
    else:
        assert workers.workers[1].restarts > restarts, "a dead owner answered subscribe"
    until(lambda: workers.workers[1].restarts == restarts + 1, 60 * MS, "the restart")
    assert workers.pids[0] == survivor and workers.pids[1] not in (None, victim)
    assert workers.workers[0].restarts == 0
    counts = {s: _count(workers.buffer, s) for s in mine}
    until(lambda: all(_count(workers.buffer, s) > counts[s] for s in mine), 30 * MS,
          "the restarted worker's symbols to resume")
    assert _worker_symbols(workers, 1) == mine
    failed = [e for e in workers.events.events("*") if e.kind is EventKind.FAILED]
    restarted = [e for e in workers.events.events("*") if e.kind is EventKind.RESTARTED]
    assert set(failed[-1].symbols) == mine and set(restarted[-1].symbols) == mine
    until(lambda: workers.status(10).exchanges[0].state == "connected", 30 * MS,
          "the merged state to be connected again")

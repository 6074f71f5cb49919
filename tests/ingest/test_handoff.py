"""The ingestion process's columnar hand-off, end to end.

Real parts: the emulator on a thread of this process, a spawned child running real ccxt.pro
against it, one hand-off message per channel per flush crossing the pipe, and this
process's store, live tails and journal hand-over reading what arrived.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from flight_md.buffer import Follower, MarketDataBuffer, Store
from flight_md.emulator import Fault
from flight_md.emulator.thread import EmulatorThread
from flight_md.events import EventLog
from flight_md.ingest.process import IngestionProcess
from tests.support import until

from .support import FAST, MS, SYMBOLS

pytestmark = pytest.mark.timeout(120 * MS)

CAPACITY = 64
"""Small rings: eviction runs through hand-off messages many times over."""


def _count(buffer: MarketDataBuffer, symbol: str) -> int:
    """Rows appended to the ring of ``symbol`` (evicted ones included)."""
    return next((s.appended for s in buffer.stats("binance") if s.symbol == symbol), 0)


class _Tail:
    """A live tail read on its own thread, as a Flight handler reads one."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower
        self.tables: list[pa.Table] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self.follower.closed:
                table = self.follower.read(0.05)
                if table is not None:
                    self.tables.append(table)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error

    @property
    def rows(self) -> int:
        return sum(t.num_rows for t in self.tables)

    def stop(self) -> pa.Table:
        self.follower.close()
        self._thread.join(5 * MS)
        assert self.error is None, self.error
        return pa.concat_tables(self.tables)


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    emu = EmulatorThread(exchange="binance", symbols=SYMBOLS, rate=900.0, seed=3)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def test_every_channel_crosses_exactly_once_in_order_to_tails_and_journal(
        emulator: EmulatorThread) -> None:
    store = Store(CAPACITY)
    store.persist()
    bidask = store.buffer("bidask")
    for symbol in SYMBOLS:
        bidask.ensure("binance", symbol)
    tails = {s: _Tail(bidask.follow(s, exchange="binance")[1]) for s in SYMBOLS}
    journal: dict[str, list[dict[str, Any]]] = {s: [] for s in SYMBOLS}

    def take_journal() -> None:
        for exchange, symbol, first, batches in bidask.take_unjournalled():
            assert exchange == "binance"
            assert first == len(journal[symbol])  # every row handed over once, in order
            journal[symbol] += pa.Table.from_batches(batches).to_pylist()

    with IngestionProcess(events=EventLog(), store=store) as ingestion:
        ingestion.add_stream("binance", SYMBOLS, url=emulator.url,
                             channels=["bidask", "trades", "book"], mode="websocket",
                             **{**FAST, "heartbeat_interval": 30.0})
        trades, books = store.buffer("trades"), store.buffer("book")
        until(lambda: all(_count(bidask, s) >= 3 * CAPACITY and _count(trades, s) >= 5
                          and _count(books, s) >= 5 for s in SYMBOLS), 30,
              "ticks, trades and books to flow")
        # Twice: the exchange stops and what it wrote must all be stored, exactly (a late
        # duplicate of the first round would overshoot the second count).
        for round_ in range(2):
            emulator.inject(Fault.STALL)
            expected = {s: emulator.sent("bookTicker", s) for s in SYMBOLS}
            trades_sent = {s: emulator.sent("trade", s) for s in SYMBOLS}
            until(lambda: {s: _count(bidask, s) for s in SYMBOLS} == expected  # noqa: B023
                  and {s: _count(trades, s) for s in SYMBOLS} == trades_sent,  # noqa: B023
                  30, f"exactly what was sent to be stored (round {round_ + 1})")
            take_journal()
            if round_ == 0:
                emulator.clear_faults()
                until(lambda: all(emulator.sent("bookTicker", s) > expected[s]  # noqa: B023
                                  for s in SYMBOLS), 30, "frames after the stall")
        until(lambda: all(t.rows == expected[s] for s, t in tails.items()), 10,
              "every row to reach the tails")
    for symbol in SYMBOLS:
        tail = tails[symbol].stop()
        stored = bidask.get_latest_sync(symbol, CAPACITY, exchange="binance")
        assert stored.num_rows == CAPACITY  # evicted through many hand-off messages
        # The tail got every row once, in order: its newest are what the ring keeps, and it
        # matches, row for row, what the journal was handed.
        assert tail.num_rows == expected[symbol]
        assert tail.slice(tail.num_rows - CAPACITY).to_pylist() == stored.to_pylist()
        assert tail.drop_columns(["symbol", "exchange"]).to_pylist() == journal[symbol]
        receive = tail.column("receive_timestamp").to_pylist()
        assert receive == sorted(receive)
        ids = trades.get_latest_sync(symbol, CAPACITY, exchange="binance").column("trade_id")
        assert ids.null_count == 0 and len(set(ids.to_pylist())) == len(ids)
        book = books.get_latest_sync(symbol, 5, exchange="binance").to_pylist()
        assert all(0 < len(b["bids"]) <= 10 and b["bids"][0]["price"] < b["asks"][0]["price"]
                   for b in book)


def test_a_single_tick_of_a_quiet_stream_arrives_without_waiting_for_a_batch() -> None:
    emu = EmulatorThread(exchange="binance", symbols=["BTC/USDT"], rate=1.0, seed=1)
    emu.start()
    store = Store(CAPACITY)
    buffer = store.buffer("bidask")
    try:
        with IngestionProcess(store=store) as ingestion:
            ingestion.add_stream("binance", ["BTC/USDT"], url=emu.url, channel="bidask",
                                 mode="websocket", **{**FAST, "heartbeat_interval": 30.0})
            buffer.ensure("binance", "BTC/USDT")
            _, follower = buffer.follow("BTC/USDT", exchange="binance")
            before = emu.sent("bookTicker", "BTC/USDT")
            # One tick a second: a hand-off that waited for a batch to fill would
            # miss this deadline; one that sends at the end of the loop iteration meets it.
            table = until(lambda: follower.read(0.2), 10, "the quiet stream's next tick")
            assert emu.sent("bookTicker", "BTC/USDT") - before <= table.num_rows + 1
    finally:
        emu.stop()


def test_an_event_recorded_off_the_loop_follows_the_rows_before_it() -> None:
    """The child's outbox takes no lock per row: it is the loop thread's alone, and an
    event recorded on another thread is flushed and sent on the loop, its caller waiting
    (a reply sent after it still follows it); with the loop stopped it is sent at once."""
    from flight_md.events import EventKind
    from flight_md.ingest.process import _ForwardingEvents, _ForwardingStore, _Outbox

    sent: list[tuple[Any, ...]] = []
    outbox = _Outbox(sent.append)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    outbox.loop = loop
    buffer = _ForwardingStore(outbox, 10).buffer("bidask")
    events = _ForwardingEvents(sent.append, outbox)
    row = (1_700_000_000_000, *[1.0] * (buffer.spec.width - 2), 1_700_000_000_001)
    try:
        appended = threading.Event()

        def append() -> None:
            buffer.append_row("binance", "BTC/USDT", row)
            appended.set()

        loop.call_soon_threadsafe(append)
        assert appended.wait(5 * MS)
        events.record("binance", EventKind.STALE, ("BTC/USDT",), "quiet")  # this thread
        # Both sent before record returned, the row first (its flush had not run yet, or
        # ran before the event's).
        assert [m[0] for m in sent] == ["batch", "event"]
        (channel, header, named, floats, _, _), = sent[0][1]
        assert (channel, header, named) == ("bidask", [0, 1], [(0, "binance", "BTC/USDT")])
        assert list(memoryview(floats).cast("d")) == [float(v) for v in row]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5 * MS)
        loop.close()
    events.record("binance", EventKind.STALE, ("BTC/USDT",), "after the loop")
    assert [m[0] for m in sent] == ["batch", "event", "event"]

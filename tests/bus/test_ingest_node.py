"""The ingestion node against a real nats-server and real ccxt.pro on the emulator: every ring's
rows reach a serving node's consumer exactly once and in order, events travel on ``mdev.>``,
and a bus outage is buffered (bounded, counted) and drained."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pyarrow as pa
import pytest
from nats.js import api

from flight_md.buffer import Store
from flight_md.bus.backlog import BacklogLimits
from flight_md.bus.connection import STREAM_SUBJECTS, connect, ensure_stream
from flight_md.bus.consumer import Consumer
from flight_md.bus.ingest import IngestNode
from flight_md.bus.ledger import Gap
from flight_md.bus.message import ALL_EVENTS, BusMessage, EventMessage, decode_event
from flight_md.bus.options import BusOptions, StreamLimits
from flight_md.bus.subjects import ALL_SUBJECTS
from flight_md.config import StreamConfig
from flight_md.emulator import Fault
from flight_md.emulator.thread import EmulatorThread
from flight_md.events import EventKind
from tests.bus.nats_support import NatsServer, nats_server
from tests.support import MS, until

__all__ = ["BusLoop", "Received", "nats_server", "options_for", "stream_to"]

pytestmark = pytest.mark.timeout(90 * MS)

T = TypeVar("T")
SYMBOLS = ("BTC/USDT", "ETH/USDT")
EMULATED = (*SYMBOLS, "SOL/USDT")
"""The emulator lists one symbol more than the node streams: control subscribes it."""
WIRE = {"ticker": "ticker", "trades": "trade", "bidask": "bookTicker"}
"""The emulator's Binance channel of each of our channels (one frame, one row)."""


def options_for(server: NatsServer) -> BusOptions:
    return BusOptions(url=server.url, reconnect_wait_s=0.1, connect_timeout_s=1.0,
                      limits=StreamLimits(max_age_s=600))


def stream_to(emulator: EmulatorThread, channel: str, symbols: tuple[str, ...] = SYMBOLS,
              ) -> StreamConfig:
    return StreamConfig("binance", symbols, channel=channel, mode="websocket", url=emulator.url,
                        heartbeat_interval=30.0, reconnect_delay=0.05, max_reconnect_delay=0.4)


class BusLoop:
    """An asyncio loop on a thread of its own: a serving node's bus side, for sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout * MS)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5 * MS)
        self.loop.close()


class Received:
    """A serving node's store as the consumer fills it, and the gaps it found."""

    def __init__(self) -> None:
        self.store = Store(100_000)
        self.messages = 0
        self.gaps: list[Gap] = []

    def __call__(self, message: BusMessage) -> None:
        self.store.buffer(message.channel).append_batch(message.exchange, message.symbol,
                                                        message.batch)
        self.messages += 1

    def count(self, channel: str, symbol: str) -> int:
        buffer = self.store.get(channel)
        stats = buffer.stats("binance") if buffer is not None else []
        return next((s.appended for s in stats if s.symbol == symbol), 0)

    def rows(self, channel: str, symbol: str) -> pa.Table:
        buffer = self.store.buffer(channel)
        return buffer.get_latest_sync(symbol, 100_000, exchange="binance")


@pytest.fixture
def bus_loop() -> Iterator[BusLoop]:
    loop = BusLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    emu = EmulatorThread(exchange="binance", symbols=EMULATED, rate=300.0, seed=5)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def consumer_of(server: NatsServer, bus_loop: BusLoop, received: Received,
                node: str = "serve-a") -> Consumer:
    consumer = Consumer(options_for(server), node, received, subjects=[ALL_SUBJECTS],
                        on_gap=received.gaps.append)
    bus_loop.run(consumer.start())
    return consumer


def events_of(server: NatsServer, bus_loop: BusLoop, count: int) -> list[EventMessage]:
    """The first ``count`` (at least) event messages in the stream, decoded."""

    async def read() -> list[EventMessage]:
        client = await nats.connect(server.url)
        try:
            sub = await client.jetstream().pull_subscribe(ALL_EVENTS, stream="MD")
            found: list[EventMessage] = []
            while len(found) < count:
                for msg in await sub.fetch(count, timeout=5 * MS):
                    found.append(decode_event(msg.subject, msg.headers, msg.data))
            return found
        finally:
            await client.close()

    return bus_loop.run(read())


def bus_stats(node: IngestNode) -> dict[str, Any]:
    bus: dict[str, Any] = node.status()["bus"]
    return bus


def test_a_demo_node_publishes_every_ring_exactly_once_in_order(
        nats_server: NatsServer, bus_loop: BusLoop) -> None:
    node = IngestNode([], options_for(nats_server), node="ing-demo", demo=("binance",),
                      emulator_options={"rate": 300.0, "seed": 3}).start()
    received = Received()
    consumer = consumer_of(nats_server, bus_loop, received)
    try:
        emulator = node.emulators["binance"]
        symbols = next(s.symbols for s in node.streams)
        until(lambda: all(received.count(c, s) >= 5 for c in ("ticker", "trades", "book")
                          for s in symbols), 30, "every channel of every symbol to arrive")
        emulator.inject(Fault.STALL)  # the exchange stops: what it wrote must all arrive
        expected = {(c, s): emulator.sent(WIRE[c], s) for c in ("ticker", "trades")
                    for s in symbols}
        until(lambda: {key: received.count(*key) for key in expected} == expected, 30,
              "exactly what the emulator sent")
        status = node.status()
        until(lambda: bus_stats(node)["acked"] == bus_stats(node)["published"], 10,
              "every publish acked")
    finally:
        bus_loop.run(consumer.close())
        node.stop()
    stats = consumer.stats()
    assert stats.duplicates == 0 and stats.invalid == 0 and stats.gaps == ()
    assert status["node"] == "ing-demo" and status["role"] == "ingest"
    assert status["producer"].startswith("ing-demo-")
    assert {e["channel"] for e in status["ingestion"]["exchanges"]} == {"ticker", "trades", "book"}
    for symbol in symbols:
        trades = received.rows("trades", symbol)
        ids = trades.column("trade_id").to_pylist()
        assert len(set(ids)) == len(ids) and None not in ids  # each trade once
        for channel in ("ticker", "trades", "book"):
            receive = received.rows(channel, symbol).column("receive_timestamp").to_pylist()
            assert receive == sorted(receive), (channel, symbol)  # in order
        book = received.rows("book", symbol).to_pylist()
        assert all(b["bids"][0]["price"] < b["asks"][0]["price"] for b in book)
    # Events on mdev.<exchange>, numbered from the producer's one sequence.
    events = events_of(nats_server, bus_loop, 3)
    assert {m.producer for m in events} == {status["producer"]}
    assert {m.event.exchange for m in events} == {"binance"}
    assert EventKind.SUBSCRIBE in {m.event.kind for m in events}
    seqs = [m.seq for m in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_bus_outage_is_buffered_counted_and_drained(
        nats_server: NatsServer, bus_loop: BusLoop, emulator: EmulatorThread) -> None:
    node = IngestNode([stream_to(emulator, "trades,bidask")], options_for(nats_server),
                      node="ing-outage").start()
    try:
        until(lambda: bus_stats(node)["acked"] >= 10, 30, "trades to be published")
        nats_server.kill()
        until(lambda: not bus_stats(node)["connected"], 10, "the node to see the outage")
        held = until(lambda: (s := bus_stats(node))["backlog_messages"] >= 20 and s, 20,
                     "the backlog to grow")
        assert held["buffered"] > 0 and held["dropped"] == 0
        nats_server.restart()
        until(lambda: (s := bus_stats(node))["connected"] and s["backlog_messages"] == 0, 30,
              "the backlog to drain")
        emulator.inject(Fault.STALL)
        expected = {(c, s): emulator.sent(WIRE[c], s) for c in ("trades", "bidask")
                    for s in SYMBOLS}
        received = Received()
        consumer = consumer_of(nats_server, bus_loop, received)
        try:
            until(lambda: {key: received.count(*key) for key in expected} == expected, 30,
                  "every trade and bid/ask sent, through the outage")
        finally:
            bus_loop.run(consumer.close())
        after = bus_stats(node)
    finally:
        node.stop()
    assert after["disconnects"] >= 1 and after["dropped"] == 0 and after["dropped_runs"] == 0
    assert consumer.stats().gaps == () and consumer.stats().duplicates == 0
    for symbol in SYMBOLS:
        ids = received.rows("trades", symbol).column("trade_id").to_pylist()
        assert len(set(ids)) == len(ids) == expected["trades", symbol]
        receive = received.rows("bidask", symbol).column("receive_timestamp").to_pylist()
        assert receive == sorted(receive)


def test_a_tiny_backlog_overflows_and_the_dropped_run_is_counted(
        nats_server: NatsServer, bus_loop: BusLoop, emulator: EmulatorThread) -> None:
    node = IngestNode([stream_to(emulator, "trades", ("BTC/USDT",))], options_for(nats_server),
                      node="ing-tiny", limits=BacklogLimits(max_messages=5)).start()
    try:
        until(lambda: bus_stats(node)["acked"] >= 5, 30, "trades to be published")
        nats_server.stop()
        until(lambda: bus_stats(node)["dropped"] >= 10, 20, "the backlog to overflow")
        nats_server.restart()
        until(lambda: (s := bus_stats(node))["connected"] and s["backlog_messages"] == 0, 30,
              "the backlog to drain")
        received = Received()
        consumer = consumer_of(nats_server, bus_loop, received)
        try:
            until(lambda: received.gaps, 30, "the consumer to find the gap")
        finally:
            bus_loop.run(consumer.close())
        stats = bus_stats(node)
    finally:
        node.stop()
    assert stats["dropped_runs"] >= 1 and stats["gaps"][0]["count"] >= 10
    assert stats["dropped"] == sum(g["count"] for g in stats["gaps"])
    first, gap = stats["gaps"][0], received.gaps[0]
    assert (gap.producer, gap.subject) == (node.producer, "md.trades.binance.BTC/USDT")
    assert gap.after < first["first"] <= first["last"] <= gap.through


def test_the_stream_gains_the_event_subjects(nats_server: NatsServer, bus_loop: BusLoop) -> None:
    """A stream an earlier version made with md.> alone is updated to take events too."""
    options = options_for(nats_server)

    async def run() -> list[str]:
        client = await connect(options, name="test")
        try:
            js = client.jetstream()
            await js.add_stream(api.StreamConfig(name=options.stream, subjects=[ALL_SUBJECTS]))
            info = await ensure_stream(js, options)
            return list(info.config.subjects or [])
        finally:
            await client.close()

    assert bus_loop.run(run()) == list(STREAM_SUBJECTS) == [ALL_SUBJECTS, ALL_EVENTS]


def test_a_node_needs_something_to_stream(tmp_path: Path) -> None:
    from flight_md.errors import ConfigError

    with pytest.raises(ConfigError, match="needs something to stream"):
        IngestNode([], BusOptions(), node="ing-empty")
    with pytest.raises(ConfigError, match="node name"):
        IngestNode([StreamConfig("binance", ("BTC/USDT",))], BusOptions(), node="bad name!")



def test_from_config_takes_the_streams_demo_bus_node_and_backlog() -> None:
    from dataclasses import fields

    from flight_md.config import ServerConfig

    bus = BusOptions(url="nats://127.0.0.1:4333", stream="MD2")
    stream = StreamConfig("okx", ("BTC/USDT",), channel="trades")
    values: dict[str, Any] = {"streams": (stream,), "book_depth": 5}
    names = {f.name for f in fields(ServerConfig)}
    if "bus" in names:  # the bus settings of ServerConfig (issue 16)
        values.update(bus=bus, node_name="ing-cfg", bus_backlog_messages=7)
    node = IngestNode.from_config(ServerConfig(**values))
    assert node.configured == (stream,) and node.demo == ()
    assert node.exchanges == ("okx",) and node.book_depth == 5
    assert IngestNode.from_config(ServerConfig(demo=("binance",))).exchanges == ("binance",)
    if "bus" in names:
        assert (node.options, node.node, node.limits.max_messages) == (bus, "ing-cfg", 7)
    again = IngestNode.from_config(ServerConfig(streams=(stream,)))
    assert again.node == IngestNode.from_config(ServerConfig(streams=(stream,))).node
    assert again.node != IngestNode.from_config(ServerConfig(demo=("binance",))).node


@pytest.mark.parametrize("after", [0.3, 1.0])
def test_stop_leaves_no_task_of_ccxt_pending(nats_server: NatsServer, emulator: EmulatorThread,
                                             after: float) -> None:
    """Stopped while ccxt fetches the books' snapshots (its throttler waiting): ccxt's close
    leaves those tasks and the throttler's looper, and a loop closed with them pending logs
    "Task was destroyed but it is pending" for each; the node's stop ends them first."""
    node = IngestNode([stream_to(emulator, "book", EMULATED)], options_for(nats_server),
                      node="ing-stop").start()
    loop = node.loop
    threading.Event().wait(after)
    node.stop()
    assert [task.get_coro() for task in asyncio.all_tasks(loop)] == []

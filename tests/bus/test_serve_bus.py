"""The serving node's bus side (ServeBus) against a real nats-server, with real persistence in
temporary data dirs and real processes for the kills: each published batch ends in its ring
exactly once, across a SIGKILL and restart too; a memory-only node re-reads the retention
window; a changed filter; gaps and the ingestion nodes' events in ``@events``, each once."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import nats
import pyarrow as pa
import pytest
import pytest_asyncio

from flight_md.buffer import Store
from flight_md.bus.ledger import STREAM_KEY
from flight_md.bus.message import (
    HEADER_MSG_ID,
    BusMessage,
    EventMessage,
    encode,
    encode_event,
)
from flight_md.bus.options import BusOptions, StreamLimits
from flight_md.bus.publisher import Publisher
from flight_md.bus.serve import ServeBus
from flight_md.bus.subjects import subject_for
from flight_md.events import Event, EventKind, EventLog
from flight_md.persist.journal import LEDGER_KEY
from flight_md.persist.store import LEDGER_FILE, PersistConfig, Persistence
from flight_md.schema import now_ms
from tests.bus.nats_support import NatsServer, nats_server, trades_batch
from tests.support import MS, ChildProcess, async_until, until

__all__ = ["nats_server"]

TIMEOUT = 20.0
RINGS = (("binance", "BTC/USDT"), ("binance", "ETH/USDT"), ("okx", "BTC/USDT"))
BUFFER_ROWS = 200_000


def options_for(server: NatsServer) -> BusOptions:
    return BusOptions(url=server.url, reconnect_wait_s=0.1, connect_timeout_s=1.0,
                      limits=StreamLimits(max_age_s=600))


class Sent:
    """What the test published, per ring, in order: the batches and their row count."""

    def __init__(self) -> None:
        self.batches: dict[tuple[str, str], list[pa.RecordBatch]] = {ring: [] for ring in RINGS}
        self.messages = 0
        self._stamp = now_ms() - 3_600_000  # recent: the history's retention keeps it

    def publish(self, publisher: Publisher, ring: tuple[str, str], rows: int) -> None:
        batch = trades_batch(rows, self._stamp)
        self._stamp += 1_000
        assert publisher.publish("trades", ring[0], ring[1], batch) is not None
        self.batches[ring].append(batch)
        self.messages += 1

    def rows(self, ring: tuple[str, str]) -> int:
        return sum(b.num_rows for b in self.batches[ring])

    def table(self, ring: tuple[str, str]) -> pa.Table:
        return pa.Table.from_batches(self.batches[ring])


def ring_table(store: Store, ring: tuple[str, str]) -> pa.Table:
    buffer = store.buffer("trades")
    table = buffer.get_latest_sync(ring[1], BUFFER_ROWS, exchange=ring[0])
    return table.select(buffer.stored_schema.names).cast(buffer.stored_schema)


def assert_rings_hold_exactly(store: Store, sent: Sent) -> None:
    for ring in RINGS:
        got, want = ring_table(store, ring), sent.table(ring)
        assert got.num_rows == want.num_rows, ring
        assert got.equals(want.cast(got.schema)), ring  # row by row, in order


def appended(store: Store, ring: tuple[str, str]) -> int:
    stats = [s for s in store.buffer("trades").stats() if (s.exchange, s.symbol) == ring]
    return stats[0].appended if stats else 0


@pytest_asyncio.fixture
async def publisher(nats_server: NatsServer) -> AsyncIterator[Publisher]:
    pub = Publisher(options_for(nats_server), "ingest-a-1", ack_timeout_s=0.5)
    await pub.start()
    await async_until(lambda: pub.connected, TIMEOUT, "the publisher to connect")
    try:
        yield pub
    finally:
        await pub.close(timeout=1)


class Node:
    """A ServeBus and its persistence (``data_dir`` or memory only), started and stopped in
    the test's process."""

    def __init__(self, server: NatsServer, name: str, data_dir: Path | None,
                 subjects: tuple[str, ...] = ("md.>",), options: BusOptions | None = None,
                 prune_interval_s: float = 300.0, commit_interval: float = 0.05,
                 ack_wait_s: float = 30.0) -> None:
        self.store = Store(BUFFER_ROWS)
        self.events = EventLog()
        self.persistence = None
        if data_dir is not None:
            self.persistence = Persistence(PersistConfig(data_dir,
                                                         commit_interval=commit_interval,
                                                         seal_interval=3600.0),
                                           self.store, self.events).open().start()
        self.bus = ServeBus(options or options_for(server), node=name, store=self.store,
                            events=self.events, persistence=self.persistence, subjects=subjects,
                            prune_interval_s=prune_interval_s, ack_wait_s=ack_wait_s)

    async def start(self) -> Node:
        await asyncio.to_thread(self.bus.start)
        return self

    async def stop(self) -> None:
        await asyncio.to_thread(self.bus.stop)
        if self.persistence is not None:
            await asyncio.to_thread(self.persistence.close)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Nodes a test starts (append them): stopped after it, whatever happened."""
    started: list[Node] = []
    yield started
    for node in started:
        node.bus.stop()
        if node.persistence is not None:
            node.persistence.close()


async def start_node(nodes: list[Node], *args: object, **kwargs: object) -> Node:
    node = Node(*args, **kwargs)  # type: ignore[arg-type]
    nodes.append(node)
    return await node.start()


@pytest.mark.asyncio
async def test_each_batch_reaches_its_ring_once_and_is_acked_after_the_journal_commit(
        nats_server: NatsServer, publisher: Publisher, tmp_path: Path, nodes: list[Node]) -> None:
    sent = Sent()
    for i in range(60):
        sent.publish(publisher, RINGS[i % 3], 5 + i % 16)
    await publisher.flush(TIMEOUT * MS)
    node = await start_node(nodes, nats_server, "serve-a", tmp_path / "a")
    await async_until(lambda: all(appended(node.store, r) == sent.rows(r) for r in RINGS),
                      TIMEOUT, "every row in the rings")
    await async_until(lambda: node.bus.status()["acked"] == 60, TIMEOUT, "every ack sent")
    assert_rings_hold_exactly(node.store, sent)
    status = node.bus.status()
    assert (status["stored"], status["duplicates"], status["invalid"]) == (60, 0, 0)
    assert status["rows"] == sum(sent.rows(r) for r in RINGS)
    assert status["connected"] and status["persistent"] and status["ack_pending"] == 0
    assert status["node"] == "serve-a" and status["durable"] == "flight-md-serve-a"
    assert status["events_durable"] == "flight-md-serve-a-events"
    lag = await async_until(lambda: (lag := node.bus.status()["lag"])["pending"] == 0
                            and set(lag["subjects"].values()) == {0} and lag, TIMEOUT, "no lag")
    assert set(lag["subjects"]) == {subject_for("trades", *r) for r in RINGS}
    assert lag["behind"] == [] and lag["error"] is None
    # The ledger is journalled under its reserved key, which reaches neither a ring nor the
    # history; a move into the history saves it to its file.
    persistence = node.persistence
    assert persistence is not None and persistence.root is not None
    await asyncio.to_thread(persistence.flush)
    assert node.store.channels() == ["trades"]
    assert {(k.channel, k.exchange, k.symbol) for k in persistence.root.series()} == {
        ("trades", *r) for r in RINGS}
    assert LEDGER_KEY.channel not in {k.channel for k in persistence.root.series()}
    saved = json.loads((tmp_path / "a" / LEDGER_FILE).read_text())
    # The last stored message per subject, and the producer's highest handled stream sequence.
    assert saved == {"ingest-a-1": {**{subject_for("trades", *r): 57 + RINGS.index(r) + 1
                                       for r in RINGS}, STREAM_KEY: 60}}


def serve_node(server: NatsServer, node: str, data_dir: Path | str,
               *subjects: str) -> ChildProcess:
    return ChildProcess(["-m", "tests.bus.serve_node", server.url, node, str(data_dir),
                         *subjects], ready=re.compile(r"^ready")).start()


def alive(child: ChildProcess) -> bool:
    return child.proc is not None and child.proc.poll() is None


def stored_or_dead(child: ChildProcess, count: int) -> bool:
    return progress(child)[1] >= count or not alive(child)


def progress(child: ChildProcess) -> tuple[dict[str, int], int, int]:
    """The child's last report: rows per ring, messages stored, duplicates."""
    for line in reversed(child.stdout):
        if line.startswith("rings "):
            head, _, tail = line[len("rings "):].rpartition(" stored ")
            stored, _, duplicates = tail.partition(" duplicates ")
            return json.loads(head), int(stored), int(duplicates)
    return {}, 0, 0


@pytest.mark.asyncio
async def test_a_serving_node_killed_mid_stream_and_restarted_loses_and_duplicates_nothing(
        nats_server: NatsServer, publisher: Publisher, tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    sent = Sent()
    total = 900
    done = asyncio.Event()

    async def produce() -> None:
        for i in range(total):
            sent.publish(publisher, RINGS[i % 3], 5 + i % 16)
            if i % 10 == 9:  # ~100 messages a second: the stream outlasts two kills
                await asyncio.sleep(0.1)
        await publisher.flush(TIMEOUT * MS)
        done.set()

    producing = asyncio.get_running_loop().create_task(produce())
    children: list[ChildProcess] = []
    try:
        # Killed twice mid-stream (with messages stored but not acked, and rows journalled
        # or not), then left to catch up.
        for kill_at in (150, 450):
            child = await asyncio.to_thread(serve_node, nats_server, "serve-k", data_dir)
            children.append(child)
            await async_until(partial(stored_or_dead, child, kill_at), TIMEOUT,
                              f"{kill_at} stored")
            assert alive(child), child.output
            assert not done.is_set(), "the stream ended before the kill: publish more"
            child.signal(signal.SIGKILL)
            await asyncio.to_thread(child.wait, 10)
        await asyncio.wait_for(producing, TIMEOUT * MS)
        child = await asyncio.to_thread(serve_node, nats_server, "serve-k", data_dir)
        children.append(child)
        want = {f"trades {e} {s}": sent.rows((e, s)) for e, s in RINGS}
        try:
            await async_until(lambda: progress(child)[0] == want or not alive(child),
                              TIMEOUT, "the restarted node to catch up")
        except AssertionError:
            raise AssertionError(f"{progress(child)} != {want}: {child.output[-3000:]}") from None
        assert progress(child)[0] == want, child.output
        assert child.stop() == 0, child.output
    finally:
        producing.cancel()
        for c in children:
            c.kill()
    # What the node persisted, read back by a persistence of the test's own: every published
    # row once, in order, per ring.
    store = Store(BUFFER_ROWS)
    persistence = Persistence(PersistConfig(data_dir), store, EventLog()).open()
    try:
        assert_rings_hold_exactly(store, sent)
        assert (data_dir / LEDGER_FILE).exists()
        saved = json.loads((data_dir / LEDGER_FILE).read_text())["ingest-a-1"]
        assert saved.pop(STREAM_KEY) >= total
        assert saved == {subject_for("trades", *r): max(
            seq for seq in range(1, total + 1) if RINGS[(seq - 1) % 3] == r) for r in RINGS}
    finally:
        persistence.close()


@pytest.mark.asyncio
async def test_a_memory_only_node_rereads_the_retention_window_after_a_restart(
        nats_server: NatsServer, publisher: Publisher, nodes: list[Node]) -> None:
    sent = Sent()
    for i in range(30):
        sent.publish(publisher, RINGS[i % 3], 7)
    await publisher.flush(TIMEOUT * MS)
    first = await start_node(nodes, nats_server, "serve-m", None)
    await async_until(lambda: all(appended(first.store, r) == sent.rows(r) for r in RINGS),
                      TIMEOUT, "every row in the rings")
    await first.stop()
    nodes.remove(first)
    for i in range(6):
        sent.publish(publisher, RINGS[i % 3], 3)
    await publisher.flush(TIMEOUT * MS)
    # Nothing survived in memory: the new incarnation reads the whole window, each once.
    second = await start_node(nodes, nats_server, "serve-m", None)
    await async_until(lambda: all(appended(second.store, r) == sent.rows(r) for r in RINGS),
                      TIMEOUT, "every row in the new rings")
    assert second.bus.status()["recreated"]
    assert_rings_hold_exactly(second.store, sent)
    assert second.bus.status()["stored"] == 36 and second.bus.status()["duplicates"] == 0


@pytest.mark.asyncio
async def test_a_changed_filter_reads_the_new_subjects_and_stores_nothing_twice(
        nats_server: NatsServer, publisher: Publisher, tmp_path: Path, nodes: list[Node]) -> None:
    sent = Sent()
    for i in range(30):
        sent.publish(publisher, RINGS[i % 3], 4)
    await publisher.flush(TIMEOUT * MS)
    first = await start_node(nodes, nats_server, "serve-f", tmp_path / "f",
                             subjects=("md.trades.binance.>",))
    binance = [r for r in RINGS if r[0] == "binance"]
    await async_until(lambda: all(appended(first.store, r) == sent.rows(r) for r in binance),
                      TIMEOUT, "the binance rows")
    await async_until(lambda: first.bus.status()["acked"] == 20, TIMEOUT, "their acks")
    assert appended(first.store, ("okx", "BTC/USDT")) == 0
    await first.stop()  # clean: the ledger goes to its file with the history
    nodes.remove(first)
    second = await start_node(nodes, nats_server, "serve-f", tmp_path / "f", subjects=("md.>",))
    await async_until(lambda: all(appended(second.store, r) == sent.rows(r) for r in RINGS),
                      TIMEOUT, "every ring")
    await async_until(lambda: second.bus.status()["duplicates"] == 20, TIMEOUT,
                      "the binance messages read again, as duplicates")
    status = second.bus.status()
    assert status["recreated"] and status["stored"] == 10
    assert_rings_hold_exactly(second.store, sent)


async def publish_raw(server: NatsServer, messages: list[tuple[str, dict[str, str], bytes]]) -> None:
    client = await nats.connect(server.url)
    try:
        js = client.jetstream()
        for subject, headers, payload in messages:
            await js.publish(subject, payload, headers=headers)
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_a_producer_that_lost_messages_shows_as_a_gap_in_events(
        nats_server: NatsServer, publisher: Publisher, nodes: list[Node]) -> None:
    await publisher.flush(TIMEOUT * MS)  # the stream exists
    node = await start_node(nodes, nats_server, "serve-g", None)
    # Producer p-1 sent #1 and #2, lost #3 and #4 (its backlog overflowed), then sent #5.
    raw = [encode(BusMessage("p-1", seq, prev, "trades", "binance", "BTC/USDT",
                             trades_batch(3, 1_700_000_000_000 + seq * 10)))
           for seq, prev in ((1, 0), (2, 1), (5, 4))]
    await publish_raw(nats_server, raw)
    await async_until(lambda: node.bus.status()["stored"] == 3, TIMEOUT, "three messages")
    gaps = [e for e in node.events.events() if e.kind is EventKind.GAP]
    assert [(e.exchange, e.symbols, e.detail) for e in gaps] == [
        ("binance", ("BTC/USDT",),
         "bus: producer p-1 lost messages #3..#4 on md.trades.binance.BTC/USDT")]
    status = node.bus.status()
    assert status["gaps"]["count"] == 1
    assert status["gaps"]["last"] == [{"producer": "p-1", "subject": "md.trades.binance.BTC/USDT",
                                       "after": 2, "through": 4}]
    assert appended(node.store, ("binance", "BTC/USDT")) == 9


@pytest.mark.asyncio
async def test_the_ingestion_nodes_events_are_recorded_once_across_a_restart(
        nats_server: NatsServer, publisher: Publisher, tmp_path: Path, nodes: list[Node]) -> None:
    await publisher.flush(TIMEOUT * MS)
    sent = [Event(now_ms() - 60_000 + i, "binance", EventKind.RECONNECT, ("BTC/USDT",),
                  f"reconnect {i}", "trades") for i in range(3)]
    raw = [encode_event(EventMessage("ing-1", i + 1, i, e)) for i, e in enumerate(sent)]
    # The second event twice in the stream (a re-publish outside the duplicate window).
    copy = (raw[1][0], {k: v for k, v in raw[1][1].items() if k != HEADER_MSG_ID}, raw[1][2])
    await publish_raw(nats_server, [raw[0], raw[1], copy, raw[2]])

    def received(node: Node) -> list[Event]:
        return [e for e in node.events.events() if e.kind is EventKind.RECONNECT
                and e.detail.startswith("reconnect ")]

    first = await start_node(nodes, nats_server, "serve-e", tmp_path / "e")
    await async_until(lambda: len(received(first)) == 3
                      and first.bus.status()["events"]["duplicates"] == 1, TIMEOUT,
                      "three events and the copy")
    # Verbatim: the ingestion node's timestamp, kind, symbols, detail, channel.
    assert received(first) == sent
    await async_until(lambda: first.bus.status()["ack_pending"] == 0, TIMEOUT, "the acks")
    await first.stop()
    nodes.remove(first)
    second = await start_node(nodes, nats_server, "serve-e", tmp_path / "e")
    # The events come back from the node's own history, not again from the bus.
    until(lambda: second.bus.status()["lag"]["pending"] == 0, TIMEOUT, "the events consumer")
    await asyncio.sleep(0.3 * MS)
    assert [(e.timestamp, e.detail) for e in received(second)] == [
        (e.timestamp, e.detail) for e in sent]
    assert second.bus.status()["events"]["stored"] == 0


def test_a_bus_away_at_start_is_one_clear_error_naming_no_secret(tmp_path: Path) -> None:
    from flight_md.bus.connection import BusUnavailable
    from tests.bus.nats_support import free_port

    options = BusOptions(url=f"nats://127.0.0.1:{free_port()}", user="reader",
                         password="s3cret-pw", reconnect_wait_s=0.1, connect_timeout_s=0.5)
    bus = ServeBus(options, node="serve-x", store=Store(), events=EventLog(), persistence=None)
    with pytest.raises(BusUnavailable) as caught:
        bus.start(10 * MS)
    assert "s3cret-pw" not in str(caught.value) and "s3cret-pw" not in repr(bus)
    assert "cannot connect to the bus" in str(caught.value)
    bus.stop()  # idempotent after a failed start
    assert bus.status()["connected"] is False


@pytest.mark.asyncio
async def test_a_producer_gone_from_the_stream_is_pruned_persisted_and_never_stored_twice(
        nats_server: NatsServer, tmp_path: Path, nodes: list[Node]) -> None:
    # A stream of at most 30 messages: an old ingestion incarnation's messages age out.
    limited = BusOptions(url=nats_server.url, reconnect_wait_s=0.1, connect_timeout_s=1.0,
                         limits=StreamLimits(max_age_s=600, max_msgs=30))
    sent = Sent()

    async def publish(producer: str, count: int) -> None:
        pub = Publisher(limited, producer, ack_timeout_s=0.5)
        await pub.start()
        try:
            for i in range(count):
                sent.publish(pub, RINGS[i % 3], 3)
            await pub.flush(TIMEOUT * MS)
        finally:
            await pub.close(timeout=1)

    await publish("ingest-old-1", 10)  # stream 1..10
    node = await start_node(nodes, nats_server, "serve-p", tmp_path / "p", options=limited,
                            prune_interval_s=0.1)
    ledger = node.bus._ledger
    await async_until(lambda: node.bus.status()["acked"] == 10, TIMEOUT, "the old messages")
    assert ledger.producers() == {"ingest-old-1"}
    await publish("ingest-new-1", 25)  # 1..5 gone, 6..10 of the old producer still there
    await async_until(lambda: node.bus.status()["acked"] == 35, TIMEOUT, "the new messages")
    await asyncio.sleep(0.5 * MS)  # several checks
    assert node.bus.status()["ledger"]["pruned_producers"] == 0
    assert ledger.producers() == {"ingest-old-1", "ingest-new-1"}
    await publish("ingest-new-2", 12)  # first sequence 18: nothing of the old one is left
    await async_until(lambda: node.bus.status()["ledger"]["pruned_producers"] == 1, TIMEOUT,
                      "the old producer pruned")
    assert ledger.producers() == {"ingest-new-1", "ingest-new-2"}
    await async_until(lambda: node.bus.status()["ack_pending"] == 0, TIMEOUT, "the acks")
    await asyncio.sleep(0.2 * MS)  # a commit after the prune: its tombstones are journalled
    # The journal alone (a copy of the live data dir: a crash now) restores it pruned.
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "p", crashed)
    copy = Persistence(PersistConfig(crashed), Store(BUFFER_ROWS), EventLog()).open()
    try:
        assert copy.bus_ledger.ledger.producers() == {"ingest-new-1", "ingest-new-2"}
    finally:
        copy.close()
    await node.stop()  # the history move saves the file: without the pruned producer
    nodes.remove(node)
    saved = json.loads((tmp_path / "p" / LEDGER_FILE).read_text())
    assert set(saved) == {"ingest-new-1", "ingest-new-2"}
    # Read the whole stream again (a changed filter recreates the durable consumer): what it
    # still holds is all stored already, so nothing is stored twice.
    again = await start_node(nodes, nats_server, "serve-p", tmp_path / "p", options=limited,
                             subjects=("md.trades.>",), prune_interval_s=0.1)
    await async_until(lambda: again.bus.status()["duplicates"] == 30, TIMEOUT,
                      "the stream read again")
    await asyncio.sleep(0.3 * MS)
    status = again.bus.status()
    assert status["recreated"] and status["stored"] == 0 and status["duplicates"] == 30
    assert_rings_hold_exactly(again.store, sent)


@pytest.mark.asyncio
async def test_a_restarted_node_knows_what_the_ingestion_nodes_subscribed(
        nats_server: NatsServer, publisher: Publisher, tmp_path: Path, nodes: list[Node]) -> None:
    await publisher.flush(TIMEOUT * MS)
    at = now_ms() - 60_000
    sent = [Event(at, "binance", EventKind.SUBSCRIBE, ("BTC/USDT", "ETH/USDT"), "s", "trades"),
            Event(at + 1, "binance", EventKind.UNSUBSCRIBE, ("ETH/USDT",), "u", "trades"),
            Event(at + 2, "okx", EventKind.SUBSCRIBE, ("BTC/USDT",), "s", "ticker")]
    await publish_raw(nats_server, [encode_event(EventMessage("ing-s", i + 1, i, e))
                                    for i, e in enumerate(sent)])
    wanted = [("binance", "BTC/USDT"), ("okx", "BTC/USDT")]
    first = await start_node(nodes, nats_server, "serve-s", tmp_path / "s")
    await async_until(lambda: first.events.subscribed() == wanted, TIMEOUT, "the subscriptions")
    await async_until(lambda: first.bus.status()["ack_pending"] == 0
                      and first.bus.status()["events"]["stored"] == 3, TIMEOUT, "the acks")
    await first.stop()
    nodes.remove(first)
    # The events are not delivered again; the node takes what its restored ones say.
    second = await start_node(nodes, nats_server, "serve-s", tmp_path / "s")
    assert second.events.subscribed() == wanted
    assert second.events.subscribers("BTC/USDT") == ["binance", "okx"]
    assert second.events.subscribed_channels("binance", "ETH/USDT") == []
    # A live event replaces what the restored ones said of that symbol there.
    await publish_raw(nats_server, [encode_event(EventMessage("ing-s", 4, 3, Event(
        now_ms(), "binance", EventKind.UNSUBSCRIBE, ("BTC/USDT",), "u", "trades")))])
    await async_until(lambda: second.events.subscribed() == [("okx", "BTC/USDT")], TIMEOUT,
                      "the live unsubscribe")
    assert second.bus.status()["events"]["stored"] == 1


@pytest.mark.asyncio
async def test_messages_waiting_longer_than_the_ack_wait_for_a_commit_are_not_redelivered(
        nats_server: NatsServer, publisher: Publisher, tmp_path: Path, nodes: list[Node]) -> None:
    # Commits every 5 s, the server redelivers after 2 s: the node tells it "in progress".
    node = await start_node(nodes, nats_server, "serve-k", tmp_path / "k",
                            commit_interval=5.0, ack_wait_s=2.0)
    sent = Sent()
    for i in range(30):
        sent.publish(publisher, RINGS[i % 3], 2)
    await publisher.flush(TIMEOUT * MS)
    await async_until(lambda: node.bus.status()["stored"] == 30, TIMEOUT, "every message")
    await async_until(lambda: node.bus.status()["acked"] == 30, TIMEOUT, "the commit's acks")
    await asyncio.sleep(2.5)  # a redelivery would have come by now
    status = node.bus.status()
    assert (status["stored"], status["duplicates"], status["ack_pending"]) == (30, 0, 0)
    assert_rings_hold_exactly(node.store, sent)

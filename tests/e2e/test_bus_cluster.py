"""A cluster of real processes on one real nats-server (issue 16, "Done means").

Every node is the real command: ``flight-md ingest --demo ... --bus URL`` (the demo's emulators
on loopback, real ccxt.pro, every flush published to JetStream) and ``flight-md serve --bus URL
...`` serving nodes (each its own process, data dir and durable consumer), on the nats-server
``tests/bus/nats_support.py`` runs (JetStream on, loopback, a temporary store). What is
compared is what a Flight client reads from each serving node, ring by ring, row by row
(receive timestamps included).

"Drained" means the serving node's own status says so after the ingestion node stopped: its
consumer's lag, refreshed after the stop, is zero pending and zero waiting for an ack.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import flight

from tests.bus.nats_support import NatsServer
from tests.support import MS, ChildProcess, ServerProcess, until

pytestmark = pytest.mark.timeout(240)

WAIT_S = 45.0
"""The most any one wait of this file takes (every wait polls; most end within seconds)."""
Ring = tuple[str, str, str]  # channel, exchange, symbol


class IngestProcess(ChildProcess):
    """``python -m flight_md ingest ARGS...``; it has no port to print: the serving nodes'
    registry says when it is up."""

    def __init__(self, *args: str) -> None:
        super().__init__(["-m", "flight_md", "ingest", *args])


class Node:
    """A serving node: ``flight-md serve --bus`` and a Flight client of it."""

    def __init__(self, bus: str, name: str, data_dir: Path | None, *more: str) -> None:
        self.name = name
        self.args = ("--bus", bus, "--node-name", name,
                     *(("--data-dir", str(data_dir)) if data_dir else ("--memory-only",)),
                     "--commit-interval", "0.05", *more)
        self.proc = ServerProcess(*self.args)
        self.client: flight.FlightClient | None = None

    def start(self) -> Node:
        self.proc.start()
        self.client = flight.connect(self.proc.location)
        return self

    @property
    def location(self) -> str:
        return self.proc.location

    def restart(self) -> Node:
        """Start the same command again (same data dir, same node name)."""
        self.close_client()
        self.proc = ServerProcess(*self.args)
        return self.start()

    def close_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def action(self, name: str, body: dict[str, Any] | None = None) -> Any:
        assert self.client is not None
        payload = json.dumps(body).encode() if body is not None else b""
        result = list(self.client.do_action(flight.Action(name, payload)))
        return json.loads(result[0].body.to_pybytes())

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.action("status")
        return status

    def bus(self) -> dict[str, Any]:
        bus: dict[str, Any] = self.status()["bus"]
        return bus

    def rings(self) -> set[Ring]:
        """The rings this node stores (status also lists the ingestion nodes' symbols)."""
        return {(s["channel"], s["exchange"], s["symbol"]) for s in self.status()["symbols"]
                if s["ticks_stored"] > 0}

    def read(self, ring: Ring) -> pa.Table:
        assert self.client is not None
        channel, exchange, symbol = ring
        ticket = f"{symbol}?exchange={exchange}&channel={channel}".encode()
        return self.client.do_get(flight.Ticket(ticket)).read_all()

    def events(self) -> list[dict[str, Any]]:
        assert self.client is not None
        rows: list[dict[str, Any]] = self.client.do_get(flight.Ticket(b"@events")).read_all() \
            .to_pylist()
        return rows

    def sees(self, *nodes: str) -> bool:
        return set(nodes) <= set(self.bus()["registry"]["nodes"])

    def drained(self, since: float) -> bool:
        """Nothing pending or unacked, by a lag refreshed after ``since`` (wall clock)."""
        bus = self.bus()
        lag = bus["lag"]
        refreshed = time.time() - float(lag["age_s"] if lag["age_s"] is not None else 1e9)
        return (refreshed > since and not lag["error"] and lag["pending"] == 0
                and lag["server_ack_pending"] == 0 and bus["ack_pending"] == 0)

    def cluster_node(self, name: str) -> dict[str, Any] | None:
        for node in self.status().get("cluster", {}).get("nodes", []):
            if node.get("node") == name and node.get("answered"):
                found: dict[str, Any] = node
                return found
        return None

    def stop(self) -> None:
        self.close_client()
        self.proc.stop()


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    store = tmp_path / "nats"
    store.mkdir()
    server = NatsServer(store).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Every process a test starts, stopped at its end whatever happened."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            (proc.stop if isinstance(proc, Node) else proc.kill)()


def ingest(processes: list[Any], bus: str, name: str, *args: str) -> IngestProcess:
    proc = IngestProcess("--bus", bus, "--node-name", name, *args)
    processes.append(proc)
    proc.start()
    return proc


def serve(processes: list[Any], bus: str, name: str, data_dir: Path | None,
          *more: str) -> Node:
    node = Node(bus, name, data_dir, *more)
    processes.append(node)
    return node.start()


def stored(node: Node) -> int:
    return int(node.bus()["stored"])


def stop_ingest(proc: IngestProcess) -> float:
    """SIGTERM the ingestion node (it flushes its backlog) and return when it stopped."""
    proc.signal(signal.SIGTERM)
    code = proc.wait(20 * MS)
    assert code == 0, proc.output
    return time.time()


def assert_same_rings(one: Node, other: Node) -> int:
    """Every ring of every channel equal on both nodes, row by row; returns the rows."""
    rings = one.rings()
    assert rings == other.rings()
    assert {ring[0] for ring in rings} >= {"ticker", "trades", "book"}, rings
    rows = 0
    for ring in sorted(rings):
        mine, theirs = one.read(ring), other.read(ring)
        assert mine.num_rows > 0, ring
        assert mine.equals(theirs), (ring, mine.num_rows, theirs.num_rows)
        rows += mine.num_rows
    return rows


def test_two_serving_nodes_serve_identical_data(nats: NatsServer, processes: list[Any],
                                                tmp_path: Path) -> None:
    ing = ingest(processes, nats.url, "ing1", "--demo")
    s1 = serve(processes, nats.url, "s1", tmp_path / "d1")
    s2 = serve(processes, nats.url, "s2", tmp_path / "d2")
    until(lambda: s1.sees("ing1", "s2") and s2.sees("ing1", "s1"), WAIT_S, "the registry")
    until(lambda: stored(s1) > 60 and stored(s2) > 60, WAIT_S, "data on both nodes")
    stopped = stop_ingest(ing)
    until(lambda: s1.drained(stopped) and s2.drained(stopped), WAIT_S, "both nodes drained")
    assert assert_same_rings(s1, s2) > 60
    assert s1.status()["server"]["ingestion_mode"] == "bus"


def test_a_serving_node_killed_and_restarted_loses_and_duplicates_nothing(
        nats: NatsServer, processes: list[Any], tmp_path: Path) -> None:
    ing = ingest(processes, nats.url, "ing1", "--demo")
    s1 = serve(processes, nats.url, "s1", tmp_path / "d1")
    s2 = serve(processes, nats.url, "s2", tmp_path / "d2")
    until(lambda: stored(s2) > 40, WAIT_S, "data on s2")
    s2.close_client()
    s2.proc.kill()  # kill -9 mid-stream: whatever it had not committed is gone from it
    before = stored(s1)
    until(lambda: stored(s1) > before + 20, WAIT_S, "messages while s2 is down")
    s2.restart()
    until(lambda: stored(s2) > 0, WAIT_S, "s2 reading again")
    stopped = stop_ingest(ing)
    until(lambda: s1.drained(stopped) and s2.drained(stopped), WAIT_S, "both nodes drained")
    assert assert_same_rings(s1, s2) > 60
    restarted = s2.bus()
    assert restarted["gaps"]["count"] == 0 and restarted["invalid"] == 0, restarted


def test_the_bus_away_for_seconds_is_buffered_then_a_tiny_backlog_overflows(
        nats: NatsServer, processes: list[Any], tmp_path: Path) -> None:
    """Two ingestion nodes ride out the same outage: ing1 with the default backlog keeps
    everything (buffered, then drained: no gap); ing2 with a backlog of 20 messages drops the
    overflow, counts it, and the serving node records the gap in @events."""
    ingest(processes, nats.url, "ing1", "--demo", "binance")
    ingest(processes, nats.url, "ing2", "--demo", "bybit", "--bus-backlog-messages", "20")
    s1 = serve(processes, nats.url, "s1", tmp_path / "d1")
    until(lambda: {r[1] for r in s1.rings()} == {"binance", "bybit"}, WAIT_S, "both venues")
    until(lambda: s1.cluster_node("ing1") and s1.cluster_node("ing2"), WAIT_S, "cluster status")
    nats.stop()
    time.sleep(3.0)  # the outage under test
    nats.restart()

    def publisher(name: str) -> dict[str, Any] | None:
        node = s1.cluster_node(name)
        return node["bus"] if node is not None else None

    def recovered(name: str) -> dict[str, Any] | None:
        bus = publisher(name)
        return bus if bus and bus["connected"] and bus["backlog_messages"] == 0 else None

    kept = until(lambda: recovered("ing1"), WAIT_S, "ing1's backlog drained")
    assert kept["buffered"] > 0 and kept["dropped"] == 0 and kept["dropped_runs"] == 0, kept
    overflowed = until(lambda: recovered("ing2"), WAIT_S, "ing2 back on the bus")
    assert overflowed["dropped"] > 0 and overflowed["dropped_runs"] >= 1, overflowed
    # The serving node finds the hole once ing2's next message on that subject arrives.
    gaps = until(lambda: [e for e in s1.events() if e["kind"] == "gap"], WAIT_S, "a gap event")
    assert {e["exchange"] for e in gaps} == {"bybit"}, gaps
    assert s1.bus()["gaps"]["count"] >= 1


def test_a_sharded_pair_routes_the_client_and_control_reaches_the_ingestion_node(
        nats: NatsServer, processes: list[Any]) -> None:
    ingest(processes, nats.url, "ing1", "--demo", "binance,bybit")
    s1 = serve(processes, nats.url, "s1", None)
    s2 = serve(processes, nats.url, "s2", None, "--bus-subjects", "md.*.bybit.>")
    until(lambda: stored(s1) > 20 and stored(s2) > 5, WAIT_S, "data on both nodes")
    assert {r[1] for r in s2.rings()} == {"bybit"}
    descriptor = flight.FlightDescriptor.for_command(b"BTC/USDT?exchange=binance&channel=trades")
    assert s2.client is not None

    def routed() -> Any:
        assert s2.client is not None
        try:
            [endpoint] = s2.client.get_flight_info(descriptor).endpoints
        except KeyError:  # NOT_FOUND until s1's registry record reaches s2 (within 2 s)
            return None
        locations = [location.uri.decode() for location in endpoint.locations]
        return endpoint if locations == [s1.location] else None

    endpoint = until(routed, WAIT_S, "s2 to name s1 for a binance ring")
    # What a plain Flight client does with it: read the ring where the endpoint says.
    with flight.connect(endpoint.locations[0]) as there:
        table = there.do_get(endpoint.ticket).read_all()
    assert table.num_rows > 0  # s1 stored trades before s2 routed to it (s1 holds md.>)
    here = s2.client.get_flight_info(flight.FlightDescriptor.for_command(
        b"BTC/USDT:USDT?exchange=bybit&channel=trades"))
    assert [list(e.locations) for e in here.endpoints] == [[]]  # s2 holds it: read it here
    # Control through a node that holds none of binance's rings reaches the ingestion node.
    left = s2.action("unsubscribe", {"exchange": "binance", "symbols": ["XRP/USDT"]})
    assert left["node"] == "ing1" and left["unsubscribed"] == ["XRP/USDT"], left
    back = s2.action("subscribe", {"exchange": "binance", "symbols": ["XRP/USDT"]})
    assert back["node"] == "ing1", back

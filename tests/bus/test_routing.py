"""Sharded serving nodes on one bus: a real nats-server, two real Flight servers on loopback,
each with its own registry and cluster view and a store holding its shard; a plain pyarrow
client follows GetFlightInfo's endpoint to the node that holds a ring."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import nats
import pyarrow as pa
import pytest
from nats.aio.client import Client
from pyarrow import flight

from flight_md.buffer import Store
from flight_md.bus.connection import ensure_stream
from flight_md.bus.control import BusControl, ControlResponder
from flight_md.bus.options import BusOptions
from flight_md.bus.registry import Registry, node_record
from flight_md.bus.view import ClusterView
from flight_md.events import EventKind
from flight_md.service import FlightMarketDataServer
from tests.bus.nats_support import NatsServer, nats_server, trades_batch
from tests.support import MS, until

__all__ = ["nats_server"]

TIMEOUT = 10.0
INTERVAL = 0.2
TTL = 1.0
T = TypeVar("T")


class Node:
    """One serving node as the app wires it: a Flight server on 127.0.0.1:0, and on a bus loop
    thread of its own one nats connection, its registry record and its cluster view."""

    def __init__(self, server_url: str, name: str, subjects: tuple[str, ...]) -> None:
        self.name = name
        self.store = Store()
        self.server = FlightMarketDataServer("grpc://127.0.0.1:0", store=self.store)
        self.location = f"grpc://127.0.0.1:{self.server.port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"bus-{name}",
                                       daemon=True)
        self.thread.start()
        self.client: Client = self.run(nats.connect(server_url, reconnect_time_wait=0.1))
        record = node_record("serve", location=self.location, subjects=subjects)
        self.registry = self.run(Registry(self.client, name, record, interval_s=INTERVAL,
                                          ttl_s=TTL).start())
        # Every node answers mdctl.cluster with its server's status; BusControl asks.
        self.responder = self.run(ControlResponder(self.client, name, "serve",
                                                   status=self.server.status).start())
        control = BusControl(self.loop, self.client, name, registry=self.registry)
        self.view = ClusterView(self.registry, subjects=subjects, location=self.location,
                                status=lambda: {"node": name, "connected": True},
                                control=control, loop=self.loop, stream="MD")
        self.server.bus = self.view  # the port is known once the server is bound

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT * MS)

    def trades(self, exchange: str, symbol: str, rows: int) -> pa.RecordBatch:
        batch = trades_batch(rows)
        self.store.buffer("trades").append_batch(exchange, symbol, batch)
        return batch

    def leave(self) -> None:
        """Stop as a node does: its record deleted."""
        self.run(self.registry.stop())

    def close(self) -> None:
        self.server.stop()
        self.run(self.responder.stop())
        self.run(self.registry.stop())
        if not self.client.is_closed:
            self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT * MS)
        self.loop.close()


@pytest.fixture
def pair(nats_server: NatsServer) -> Iterator[tuple[Node, Node]]:
    """s1 holds binance, s2 okx and kraken; each store has trades of its shard."""
    s1 = Node(nats_server.url, "s1", ("md.*.binance.>",))
    s2 = Node(nats_server.url, "s2", ("md.*.okx.>", "md.*.kraken.>"))
    try:
        until(lambda: len(s1.registry.nodes()) == 2 and len(s2.registry.nodes()) == 2,
              TIMEOUT, "both nodes to see each other")
        yield s1, s2
    finally:
        s1.close()
        s2.close()


def rows(table: pa.Table | pa.RecordBatch, *names: str) -> list[tuple[Any, ...]]:
    return list(zip(*(table.column(n).to_pylist() for n in names), strict=True))


def action(client: flight.FlightClient, name: str) -> dict[str, Any]:
    result = list(client.do_action(flight.Action(name, b"")))
    decoded: dict[str, Any] = json.loads(result[0].body.to_pybytes())
    return decoded


@pytest.mark.parametrize("descriptor", [
    flight.FlightDescriptor.for_path("okx", "ETH/USDT", "trades"),
    flight.FlightDescriptor.for_command(b"ETH/USDT?exchange=okx&channel=trades&latest=5"),
    flight.FlightDescriptor.for_command(json.dumps(
        {"symbol": "ETH/USDT", "exchange": "okx", "channel": "trades"}).encode()),
    flight.FlightDescriptor.for_command(b"ETH/USDT?channel=trades&latest=5"),  # exchange omitted
], ids=["path", "ticket", "json", "no-exchange"])
def test_get_flight_info_routes_to_the_holder_and_the_client_follows(
        pair: tuple[Node, Node], descriptor: flight.FlightDescriptor) -> None:
    s1, s2 = pair
    sent = s2.trades("okx", "ETH/USDT", 12)
    if descriptor.path or b"okx" in descriptor.command:
        # The same symbol on s1's own exchange does not keep okx's ring here. (Without
        # exchange= it would: the ticket would mean s1's ring, as without a bus.)
        s1.trades("binance", "ETH/USDT", 3)
    with flight.connect(s1.location) as client:
        info = client.get_flight_info(descriptor)
        [endpoint] = info.endpoints
        assert [str(loc.uri.decode()) for loc in endpoint.locations] == [s2.location]
        assert info.total_records == -1
        ticket = endpoint.ticket.ticket.decode()
        assert "ETH/USDT" in ticket and "channel=trades" in ticket
    # What any Flight client does with an endpoint that has locations: read it there.
    with flight.connect(endpoint.locations[0]) as there:
        table = there.do_get(endpoint.ticket).read_all()
    assert info.schema.equals(table.schema)
    expected = pa.Table.from_batches([sent])
    if b"latest=5" in (descriptor.command or b""):
        expected = expected.slice(expected.num_rows - 5)
    assert rows(table, "timestamp", "price", "trade_id") == \
        rows(expected, "timestamp", "price", "trade_id")
    assert set(table.column("exchange").to_pylist()) == {"okx"}


def test_rings_held_here_are_answered_here(pair: tuple[Node, Node]) -> None:
    s1, s2 = pair
    sent = s1.trades("binance", "BTC/USDT", 7)
    s2.trades("okx", "BTC/USDT", 4)
    with flight.connect(s1.location) as client:
        for descriptor in (flight.FlightDescriptor.for_path("binance", "BTC/USDT", "trades"),
                           flight.FlightDescriptor.for_command(b"BTC/USDT?channel=trades")):
            info = client.get_flight_info(descriptor)
            [endpoint] = info.endpoints
            assert endpoint.locations == [] and info.total_records == 7
            table = client.do_get(endpoint.ticket).read_all()
            assert rows(table, "price") == rows(sent, "price")
        # Held by s1's filter but not stored (yet): the local answer, as without a bus.
        with pytest.raises(pa.ArrowKeyError, match="unknown symbol 'XRP/USDT' on binance"):
            client.get_flight_info(flight.FlightDescriptor.for_path("binance", "XRP/USDT",
                                                                    "trades"))


def test_get_schema_of_a_routed_ring_needs_no_data_here(pair: tuple[Node, Node]) -> None:
    s1, s2 = pair
    s2.trades("okx", "ETH/USDT", 2)
    with flight.connect(s1.location) as client:
        schema = client.get_schema(flight.FlightDescriptor.for_path("okx", "ETH/USDT", "trades"))
        info = client.get_flight_info(flight.FlightDescriptor.for_path("okx", "ETH/USDT",
                                                                       "trades"))
    assert schema.schema.equals(info.schema)


def test_bars_of_a_routed_ring_follow_too(pair: tuple[Node, Node]) -> None:
    s1, s2 = pair
    s2.trades("kraken", "ETH/USD", 30)
    with flight.connect(s1.location) as client:
        info = client.get_flight_info(
            flight.FlightDescriptor.for_command(b"ETH/USD?exchange=kraken&bars=1s"))
    [endpoint] = info.endpoints
    with flight.connect(endpoint.locations[0]) as there:
        bars = there.do_get(endpoint.ticket).read_all()
    assert bars.num_rows > 0 and sum(bars.column("trades").to_pylist()) == 30


def test_do_get_of_a_ring_held_elsewhere_names_the_holder(pair: tuple[Node, Node]) -> None:
    s1, s2 = pair
    s2.trades("okx", "ETH/USDT", 2)
    with flight.connect(s1.location) as client:
        for ticket in (b"ETH/USDT?exchange=okx&channel=trades",
                       b"ETH/USDT?exchange=okx&channel=trades&follow=true"):
            with pytest.raises(pa.ArrowKeyError) as caught:
                client.do_get(flight.Ticket(ticket)).read_all()
            assert "this node does not hold 'ETH/USDT' on okx" in str(caught.value)
            assert s2.location in str(caught.value)


def test_a_ring_nobody_holds_is_not_found_with_the_subjects_held(
        pair: tuple[Node, Node]) -> None:
    s1, _ = pair
    with flight.connect(s1.location) as client:
        for call in (
                lambda: client.get_flight_info(
                    flight.FlightDescriptor.for_path("bybit", "BTC/USDT", "trades")),
                lambda: client.do_get(flight.Ticket(b"BTC/USDT?exchange=bybit")).read_all()):
            with pytest.raises(pa.ArrowKeyError) as caught:
                call()
            message = str(caught.value)
            assert "no node on the bus holds" in message and "on bybit" in message
            assert "this node holds md.*.binance.>" in message


def test_an_exchange_omitted_on_several_remote_exchanges_asks_for_one(
        pair: tuple[Node, Node]) -> None:
    s1, s2 = pair
    s2.trades("okx", "SOL/USDT", 2)
    s2.trades("kraken", "SOL/USDT", 2)
    # The ingestion nodes' subscribe events reach every serving node's event log.
    for exchange in ("okx", "kraken"):
        s1.server.events.record(exchange, EventKind.SUBSCRIBE, ["SOL/USDT"], "subscribed",
                                channel="trades")
    with flight.connect(s1.location) as client:
        with pytest.raises(pa.ArrowInvalid, match="add exchange= one of: kraken, okx"):
            client.get_flight_info(flight.FlightDescriptor.for_command(b"SOL/USDT?channel=trades"))
        info = client.get_flight_info(
            flight.FlightDescriptor.for_command(b"SOL/USDT?channel=trades&exchange=kraken"))
        assert [loc.uri.decode() for loc in info.endpoints[0].locations] == [s2.location]


def test_an_exchange_omitted_that_nodes_may_hold_on_several_asks_for_one(
        pair: tuple[Node, Node], nats_server: NatsServer) -> None:
    s1, s2 = pair
    s2.trades("okx", "DOGE/USDT", 2)
    descriptor = flight.FlightDescriptor.for_command(b"DOGE/USDT?channel=trades")
    with flight.connect(s1.location) as client:
        # Unknown to s1's store and event log: the exchanges s1 does not hold are s2's.
        [endpoint] = client.get_flight_info(descriptor).endpoints
        assert [loc.uri.decode() for loc in endpoint.locations] == [s2.location]
        s3 = Node(nats_server.url, "s3", ("md.*.bybit.>",))
        try:
            until(lambda: len(s1.registry.nodes()) == 3, TIMEOUT, "s1 to see s3")
            with pytest.raises(pa.ArrowInvalid, match="add exchange= one of: bybit, kraken, okx"):
                client.get_flight_info(descriptor)
        finally:
            s3.close()


def test_a_node_that_leaves_or_dies_is_no_longer_routed_to(pair: tuple[Node, Node],
                                                           nats_server: NatsServer) -> None:
    s1, s2 = pair
    s2.trades("okx", "ETH/USDT", 2)
    descriptor = flight.FlightDescriptor.for_path("okx", "ETH/USDT", "trades")

    def routed(client: flight.FlightClient) -> bool:
        try:
            return bool(client.get_flight_info(descriptor).endpoints[0].locations)
        except pa.ArrowKeyError as exc:
            assert "no node on the bus holds trades of 'ETH/USDT' on okx" in str(exc)
            return False

    with flight.connect(s1.location) as client:
        assert routed(client)
        s2.leave()  # stops: its record is deleted
        until(lambda: not routed(client), TIMEOUT, "s1 to stop routing to s2")
        # Back, then gone without a word (its connection dropped): gone within the TTL.
        s3 = Node(nats_server.url, "s3", ("md.*.okx.>",))
        try:
            until(lambda: routed(client), TIMEOUT, "s1 to route to s3")
            s3.run(s3.client.close())
            until(lambda: not routed(client), (TTL + INTERVAL + 1.0), "s3 to expire")
        finally:
            s3.close()


def test_status_shows_the_bus_and_the_cluster(pair: tuple[Node, Node],
                                              nats_server: NatsServer) -> None:
    s1, s2 = pair
    s2.trades("okx", "ETH/USDT", 2)

    async def stream_with_a_consumer() -> None:
        js = s1.client.jetstream()
        await ensure_stream(js, BusOptions(url=nats_server.url))
        for i in range(3):
            await js.publish(f"md.trades.okx.X{i}", b"not a batch")
        await js.add_consumer("MD", durable_name="flight-md-s2", filter_subject="md.*.okx.>")

    s1.run(stream_with_a_consumer())
    with flight.connect(s1.location) as client:
        status = action(client, "status")
    assert status["bus"]["node"] == "s1" and status["bus"]["connected"] is True
    assert status["bus"]["subjects"] == ["md.*.binance.>"]
    assert status["bus"]["advertise"] == s1.location
    assert status["bus"]["registry"]["nodes"] == ["s1", "s2"]
    cluster = status["cluster"]
    assert cluster["source"] == "mdctl.cluster"
    assert [(n["node"], n["role"], n["answered"]) for n in cluster["nodes"]] == \
        [("s1", "serve", True), ("s2", "serve", True)]
    s2_answer = next(n for n in cluster["nodes"] if n["node"] == "s2")
    assert s2_answer["bus"]["subjects"] == ["md.*.okx.>", "md.*.kraken.>"]
    assert [(s["exchange"], s["symbol"], s["ticks_stored"]) for s in s2_answer["symbols"]] == \
        [("okx", "ETH/USDT", 2)]
    stream = cluster["stream"]
    assert stream["name"] == "MD" and stream["messages"] == 3 and stream["last_seq"] == 3
    [consumer] = stream["consumers"]
    assert consumer["name"] == "flight-md-s2" and consumer["num_pending"] == 3

    # A node that does not answer (its responder gone) is listed from its registry record.
    s2.run(s2.responder.stop())
    cluster = s1.view.cluster(0.3)
    assert [(n["node"], n["answered"]) for n in cluster["nodes"]] == \
        [("s1", True), ("s2", False)]
    assert cluster["nodes"][1]["location"] == s2.location
    # Without a control (no mdctl.cluster gather) the cluster is the registry's records.
    alone = ClusterView(s1.registry, subjects=("md.>",), location=s1.location, loop=s1.loop)
    nodes = alone.cluster(0.3)["nodes"]
    assert [(n["node"], n["answered"]) for n in nodes] == [("s1", True), ("s2", False)]
    assert nodes[0]["status"]["registry"]["nodes"] == ["s1", "s2"]


def test_adbc_follows_a_statement_that_reads_only_rings_held_elsewhere(
        pair: tuple[Node, Node]) -> None:
    from adbc_driver_flightsql import dbapi

    s1, s2 = pair
    sent = s2.trades("okx", "ETH/USDT", 9)
    s2.trades("kraken", "ETH/USD", 4)
    here = s1.trades("binance", "ETH/USDT", 3)
    statements = {
        # Every ring it reads is s2's: routed, the answer is s2's.
        "SELECT price FROM trades WHERE exchange = 'okx' AND symbol = 'ETH/USDT' "
        "ORDER BY timestamp": rows(sent, "price"),
        "SELECT count(*) AS n FROM trades WHERE symbol IN ('ETH/USDT', 'ETH/USD') "
        "AND exchange IN ('okx', 'kraken')": [(13,)],
        # A ring of s1's own: answered on s1, over its own rings.
        "SELECT price FROM trades WHERE exchange IN ('okx', 'binance') AND symbol = 'ETH/USDT' "
        "ORDER BY timestamp": rows(here, "price"),
        # No exchange pinned: it may read any ring, answered here.
        "SELECT price FROM trades WHERE symbol = 'ETH/USDT' ORDER BY timestamp":
            rows(here, "price"),
    }
    with dbapi.connect(s1.location, autocommit=True) as conn:
        for sql, expected in statements.items():
            with conn.cursor() as cursor:
                cursor.execute(sql)
                table = cursor.fetch_arrow_table()
            assert rows(table, *table.column_names) == expected, sql
    with flight.connect(s1.location) as client:  # what the driver was told
        from flight_md.sql import flight_sql_pb2 as pb
        from flight_md.sql.protocol import pack

        command = pack(pb.CommandStatementQuery(query=next(iter(statements))))
        [endpoint] = client.get_flight_info(flight.FlightDescriptor.for_command(command)).endpoints
        assert [loc.uri.decode() for loc in endpoint.locations] == [s2.location]

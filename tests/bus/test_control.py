"""Control over the bus: a serving node's BusControl reaches the ingestion node that streams an
exchange (real nats-server, real ccxt.pro on the emulator), every node answers the cluster
status, and errors come back as flight_md errors, never tracebacks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from flight_md import errors
from flight_md.bus.connection import connect
from flight_md.bus.control import (
    BusControl,
    ControlResponder,
    control_subject,
    error_reply,
    markets_from_json,
    markets_to_json,
    status_from_json,
    status_to_json,
)
from flight_md.bus.ingest import IngestNode
from flight_md.bus.message import EventMessage, InvalidMessage, decode_event, encode_event
from flight_md.control import ClockSkew, ExchangeStatus, IngestionStatus, MarketInfo, SymbolStatus
from flight_md.emulator.thread import EmulatorThread
from flight_md.events import Event, EventKind
from tests.bus.nats_support import NatsServer, nats_server
from tests.bus.test_ingest_node import EMULATED, BusLoop, Received, bus_loop, consumer_of, options_for, stream_to
from tests.support import MS, until

__all__ = ["bus_loop", "nats_server"]

pytestmark = pytest.mark.timeout(90 * MS)


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    emu = EmulatorThread(exchange="binance", symbols=EMULATED, rate=100.0, seed=9)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def ingest(nats_server: NatsServer, emulator: EmulatorThread) -> Iterator[IngestNode]:
    node = IngestNode([stream_to(emulator, "trades", ("BTC/USDT",))], options_for(nats_server),
                      node="ing1").start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def serving(nats_server: NatsServer, bus_loop: BusLoop) -> Iterator[tuple[Client, BusControl]]:
    """A serving node's connection on its bus loop, and its BusControl (cluster status over
    0.3 s: the test waits that long for each)."""
    client = bus_loop.run(connect(options_for(nats_server), name="serve-a"))
    try:
        yield client, BusControl(bus_loop.loop, client, "serve-a", timeout=5.0 * MS,
                                 cluster_timeout=0.3 * MS)
    finally:
        bus_loop.run(client.close())


def raw_request(bus_loop: BusLoop, client: Client, subject: str, body: bytes) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        msg = await client.request(subject, body, timeout=5 * MS)
        text = msg.data.decode()
        assert "Traceback" not in text
        found: dict[str, Any] = json.loads(text)
        return found

    return bus_loop.run(ask())


def control_ready(control: BusControl) -> bool:
    return any(r.get("node") == "ing1" for r in control.cluster())


def test_subscribe_through_another_node_starts_its_rows(
        nats_server: NatsServer, bus_loop: BusLoop, ingest: IngestNode,
        serving: tuple[Client, BusControl]) -> None:
    _, control = serving
    until(lambda: control_ready(control), 20, "the ingestion node to answer")
    received = Received()
    consumer = consumer_of(nats_server, bus_loop, received)
    try:
        until(lambda: received.count("trades", "BTC/USDT") >= 3, 30, "BTC trades")
        assert received.count("trades", "ETH/USDT") == 0
        answer = control.subscribe(None, ["ETH/USDT"])  # the only exchange on the bus
        assert answer == {"exchange": "binance", "subscribed": ["ETH/USDT"], "node": "ing1"}
        until(lambda: received.count("trades", "ETH/USDT") >= 3, 30, "ETH trades")
        status = control.status()
        markets = control.markets("binance", "ETH/*")
        everywhere = control.markets(None)
        gone = control.unsubscribe("binance", ["BTC/USDT"])
    finally:
        bus_loop.run(consumer.close())
    assert gone == {"exchange": "binance", "unsubscribed": ["BTC/USDT"], "node": "ing1"}
    [exchange] = status.exchanges
    assert (exchange.exchange, exchange.channel) == ("binance", "trades")
    assert set(exchange.symbols) == {"BTC/USDT", "ETH/USDT"}
    assert {(s.symbol, s.channel) for s in status.symbols} >= {("ETH/USDT", "trades")}
    assert [(m.symbol, m.subscribed) for m in markets] == [("ETH/USDT", True)]
    assert {m.symbol for m in everywhere} == set(EMULATED)


def test_errors_come_back_as_flight_md_errors(
        bus_loop: BusLoop, ingest: IngestNode, serving: tuple[Client, BusControl]) -> None:
    client, control = serving
    until(lambda: control_ready(control), 20, "the ingestion node to answer")
    with pytest.raises(errors.UnknownExchange, match="no ingestion node on the bus streams 'okx'"):
        control.subscribe("okx", ["BTC/USDT"])
    with pytest.raises(errors.InvalidArgument, match="DOGE/USDT"):
        control.subscribe("binance", ["DOGE/USDT"])  # the exchange does not list it
    subject = control_subject("binance", "subscribe")
    for body in (b"not json", b"[1, 2]", b'{"symbols": 5}', b'{"symbols": []}',
                 b'{"symbols": ["ETH/USDT"], "channels": "trades"}', b"\xff\xfe"):
        reply = raw_request(bus_loop, client, subject, body)
        assert reply["error"] == "InvalidActionBody", (body, reply)
        assert issubclass(getattr(errors, reply["error"]), errors.InvalidArgument)
    assert raw_request(bus_loop, client, control_subject("binance", "frobnicate"),
                       b"{}")["error"] == "UnknownAction"
    assert raw_request(bus_loop, client, control_subject("binance", "markets"),
                       b'{"pattern": 7}')["error"] == "InvalidActionBody"
    own = raw_request(bus_loop, client, control_subject("binance", "status"), b"")
    assert own["node"] == "ing1" and own["role"] == "ingest"
    assert {e["exchange"] for e in own["ingestion"]["exchanges"]} == {"binance"}


def test_the_cluster_lists_every_node(bus_loop: BusLoop, ingest: IngestNode,
                                      serving: tuple[Client, BusControl]) -> None:
    client, control = serving
    serve_status = {"stored": 12, "location": "grpc://127.0.0.1:1"}
    responder = bus_loop.run(ControlResponder(client, "serve-a", "serve",
                                              status=lambda: serve_status).start())
    try:
        nodes = until(lambda: (found := control.cluster()) and len(found) == 2 and found, 20,
                      "both nodes to answer")
    finally:
        bus_loop.run(responder.stop())
    by_name = {n["node"]: n for n in nodes}
    assert [n["node"] for n in nodes] == ["ing1", "serve-a"]
    assert by_name["serve-a"] == {**serve_status, "node": "serve-a", "role": "serve"}
    ing = by_name["ing1"]
    assert (ing["role"], ing["exchanges"], ing["producer"]) == ("ingest", ["binance"],
                                                                ingest.producer)
    assert {"published", "acked", "backlog_messages", "backlog_bytes", "dropped",
            "dropped_runs", "disconnects", "resent", "connected"} <= set(ing["bus"])
    assert "password" not in json.dumps(nodes)


def test_with_the_registry_the_exchanges_come_from_its_records(
        bus_loop: BusLoop, ingest: IngestNode, serving: tuple[Client, BusControl]) -> None:
    from flight_md.bus.registry import Registry, node_record

    client, _ = serving
    registry = bus_loop.run(Registry(client, "serve-a", node_record("serve")).start())
    try:
        control = BusControl(bus_loop.loop, client, "serve-a", timeout=5.0 * MS,
                             cluster_timeout=5.0 * MS, registry=registry)
        records = until(lambda: (n := registry.nodes()) and len(n) == 2 and n, 20,
                        "the ingestion node's record")
        status = control.status()  # each exchange's status: no cluster round
        answer = control.subscribe(None, ["ETH/USDT"])  # the registry names the one exchange
    finally:
        bus_loop.run(registry.stop())
    ing = next(r for r in records if r["node"] == "ing1")
    assert (ing["role"], ing["exchanges"], ing["location"]) == ("ingest", ["binance"], None)
    assert [e.exchange for e in status.exchanges] == ["binance"]
    assert answer["node"] == "ing1" and answer["subscribed"] == ["ETH/USDT"]


def test_a_node_started_before_its_bus_answers_once_the_bus_is_up(
        tmp_path: Path, bus_loop: BusLoop, emulator: EmulatorThread) -> None:
    server = NatsServer(tmp_path)  # not started yet
    node = IngestNode([stream_to(emulator, "trades", ("BTC/USDT",))], options_for(server),
                      node="ing-early").start()
    try:
        until(lambda: node.status()["bus"]["buffered"] > 0, 20, "trades kept while away")
        server.start()
        client = bus_loop.run(connect(options_for(server), name="serve-a"))
        try:
            control = BusControl(bus_loop.loop, client, "serve-a", timeout=5.0 * MS,
                                 cluster_timeout=0.3 * MS)
            nodes = until(control.cluster, 20, "the node to answer the cluster")
            markets = control.markets("binance", "BTC/*")
        finally:
            bus_loop.run(client.close())
        until(lambda: (s := node.status()["bus"])["acked"] == s["published"], 20, "the backlog")
    finally:
        node.stop()
        server.kill()
    assert [n["node"] for n in nodes] == ["ing-early"]
    assert [(m.symbol, m.subscribed) for m in markets] == [("BTC/USDT", True)]


def test_no_ingestion_node_is_a_clear_error(serving: tuple[Client, BusControl]) -> None:
    _, control = serving
    with pytest.raises(errors.Unavailable, match="no ingestion node on the bus answered"):
        control.subscribe(None, ["BTC/USDT"])
    with pytest.raises(errors.UnknownExchange, match="'binance'"):
        control.markets("binance")
    assert control.status() == IngestionStatus((), ())
    assert control.cluster() == []


# -- the JSON forms (pure) ----------------------------------------------------------------


def test_status_and_markets_round_trip_through_json() -> None:
    status = IngestionStatus(
        (ExchangeStatus("binance", "connected", "websocket", "trades", 2, ("BTC/USDT",),
                        {"bad": 1}, 0, "boom", 5, ClockSkew(3, 9, 10, 60_000),
                        {"stored": 4}, "fast"),),
        (SymbolStatus("binance", "BTC/USDT", True, 10, 1, False, 123, "trades"),))
    data = json.loads(json.dumps(status_to_json(status)))
    assert status_from_json(data) == status
    data["exchanges"][0]["from_a_newer_node"] = 1  # unknown keys are ignored
    assert status_from_json(data) == status
    with pytest.raises(errors.InvalidArgument):
        status_from_json({"exchanges": [{"exchange": "binance"}]})
    market = MarketInfo("binance", "BTC/USDT", "BTCUSDT", "BTC", "USDT", "spot", False, None,
                        None, None, None, None, 0.01, 0.001, True, True)
    assert markets_from_json(json.loads(json.dumps(markets_to_json([market])))) == (market,)


def test_error_replies_name_a_flight_md_class_and_nothing_else() -> None:
    assert error_reply(errors.UnknownExchange("no 'x'"), "subscribe") == {
        "error": "UnknownExchange", "message": "no 'x'"}
    leaked = error_reply(OSError("secret-token in a message"), "subscribe")
    assert leaked == {"error": "Unavailable", "message": "subscribe failed: OSError"}


def test_an_event_round_trips_and_a_bad_one_is_refused() -> None:
    event = Event(1_700_000_000_000, "binance", EventKind.BOOK_RESYNC, ("BTC/USDT",),
                  "checksum mismatch", "book")
    message = EventMessage("ing1-1", 7, 3, event)
    subject, headers, payload = encode_event(message)
    assert subject == "mdev.binance" and headers["Nats-Msg-Id"] == "ing1-1:e7"
    assert decode_event(subject, headers, payload) == message
    star = replace(message, event=replace(event, exchange="*"))
    assert decode_event(*encode_event(star)) == star
    with pytest.raises(InvalidMessage):
        decode_event("mdev.okx", headers, payload)  # not the event's exchange
    with pytest.raises(InvalidMessage):
        decode_event(subject, headers, b"{}")
    with pytest.raises(InvalidMessage):
        decode_event(subject, {**headers, "Nats-Msg-Id": "ing1-1:7"}, payload)

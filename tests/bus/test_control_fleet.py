"""Control of an exchange streamed by several ingestion nodes (symbol shards), and run-time
subscriptions that survive an ingestion node's restart: real nats-server, real ccxt.pro on
the emulator, real IngestNodes (a restart: one stopped, another started with its name)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from nats.aio.client import Client

from flight_md import errors
from flight_md.bus.connection import connect
from flight_md.bus.control import BusControl, subscribe_target
from flight_md.bus.ingest import SUBSCRIPTIONS_BUCKET, IngestNode, note_subscription
from flight_md.config import StreamConfig
from flight_md.emulator.thread import EmulatorThread
from tests.bus.nats_support import NatsServer, nats_server
from tests.bus.test_ingest_node import BusLoop, bus_loop, options_for, stream_to
from tests.support import MS, ChildProcess, until

__all__ = ["bus_loop", "nats_server"]

pytestmark = pytest.mark.timeout(120 * MS)

LISTED = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT")


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    emu = EmulatorThread(exchange="binance", symbols=LISTED, rate=100.0, seed=11)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def serving(nats_server: NatsServer, bus_loop: BusLoop) -> Iterator[tuple[Client, BusControl]]:
    client = bus_loop.run(connect(options_for(nats_server), name="serve-a"))
    try:
        yield client, BusControl(bus_loop.loop, client, "serve-a", timeout=8.0 * MS,
                                 cluster_timeout=0.4 * MS)
    finally:
        bus_loop.run(client.close())


def streamed(node: IngestNode) -> set[str]:
    """The symbols ``node`` streams (its own status, not the bus's)."""
    ingestion = node.status()["ingestion"] or {"exchanges": []}
    return {s for e in ingestion["exchanges"] for s in e["symbols"]}


def answering(control: BusControl, *names: str) -> bool:
    return {r.get("node") for r in control.cluster()} >= set(names)


def test_every_node_of_an_exchange_is_asked_and_each_symbol_reaches_one_node(
        nats_server: NatsServer, emulator: EmulatorThread,
        serving: tuple[Client, BusControl]) -> None:
    _, control = serving
    options = options_for(nats_server)
    with IngestNode([stream_to(emulator, "trades", ("BTC/USDT",))], options, node="ing-a") as a, \
            IngestNode([stream_to(emulator, "trades", ("ETH/USDT",))], options, node="ing-b") as b:
        until(lambda: answering(control, "ing-a", "ing-b"), 20, "both nodes to answer")
        status = control.status()
        markets = {m.symbol: m.subscribed for m in control.markets("binance")}

        # Each symbol goes to the node streaming it, never to the other one.
        gone = control.unsubscribe("binance", ["ETH/USDT"])
        assert gone == {"exchange": "binance", "unsubscribed": ["ETH/USDT"], "node": "ing-b"}
        assert (streamed(a), streamed(b)) == ({"BTC/USDT"}, set())
        again = control.subscribe("binance", ["BTC/USDT"])  # streamed by ing-a: answered there
        assert again == {"exchange": "binance", "subscribed": ["BTC/USDT"], "node": "ing-a"}

        # New symbols: the node with the fewest, ties by name.
        assert control.subscribe("binance", ["ETH/USDT"])["node"] == "ing-b"  # 0 < 1
        assert control.subscribe("binance", ["SOL/USDT"])["node"] == "ing-a"  # 1 = 1: by name
        assert (streamed(a), streamed(b)) == ({"BTC/USDT", "SOL/USDT"}, {"ETH/USDT"})
        mixed = control.subscribe("binance", ["ETH/USDT", "XRP/USDT"])  # old on b, new on b
        assert (mixed["node"], mixed["subscribed"]) == ("ing-b", ["ETH/USDT", "XRP/USDT"])

        # An unsubscribe over both nodes: each acts for its own symbols, the answer lists both.
        both = control.unsubscribe("binance", ["SOL/USDT", "XRP/USDT"])
        with pytest.raises(errors.InvalidArgument, match="DOGE/USDT"):
            control.unsubscribe("binance", ["DOGE/USDT", "BTC/USDT"])  # as a lone node says it
        left = (streamed(a), streamed(b))
        after = control.status()
    assert both["unsubscribed"] == ["SOL/USDT", "XRP/USDT"]
    assert both["node"] == "ing-a, ing-b"
    assert [(n["node"], n["unsubscribed"]) for n in both["nodes"]] == [
        ("ing-a", ["SOL/USDT"]), ("ing-b", ["XRP/USDT"])]
    assert left == ({"BTC/USDT"}, {"ETH/USDT"})  # the refused one changed nothing
    # status and markets merge every node of the exchange.
    assert sorted(s for e in status.exchanges for s in e.symbols) == ["BTC/USDT", "ETH/USDT"]
    assert markets == {"BTC/USDT": True, "ETH/USDT": True, "SOL/USDT": False,
                       "XRP/USDT": False}
    assert sorted(s for e in after.exchanges for s in e.symbols) == ["BTC/USDT", "ETH/USDT"]


def test_with_the_registry_a_round_ends_once_every_node_of_the_exchange_answered(
        nats_server: NatsServer, bus_loop: BusLoop, emulator: EmulatorThread,
        serving: tuple[Client, BusControl]) -> None:
    from flight_md.bus.registry import Registry, node_record

    client, _ = serving
    options = options_for(nats_server)
    registry = bus_loop.run(Registry(client, "serve-a", node_record("serve")).start())
    try:
        # A round waits 30 s unless every node the registry lists for binance answered.
        control = BusControl(bus_loop.loop, client, "serve-a", timeout=8.0 * MS,
                             cluster_timeout=30.0, registry=registry)
        with IngestNode([stream_to(emulator, "trades", ("BTC/USDT",))], options, node="ing-a"), \
                IngestNode([stream_to(emulator, "trades", ("ETH/USDT",))], options, node="ing-b"):
            until(lambda: len(registry.nodes()) == 3, 20, "both ingestion nodes' records")
            started = time.monotonic()
            status = control.status()
            answer = control.subscribe("binance", ["SOL/USDT"])
            took = time.monotonic() - started
    finally:
        bus_loop.run(registry.stop())
    assert sorted(s for e in status.exchanges for s in e.symbols) == ["BTC/USDT", "ETH/USDT"]
    assert answer["node"] == "ing-a"  # 1 symbol each: by name
    assert took < 10.0


def test_run_time_subscriptions_are_repeated_after_a_restart(
        nats_server: NatsServer, bus_loop: BusLoop, emulator: EmulatorThread,
        serving: tuple[Client, BusControl]) -> None:
    client, control = serving
    options = options_for(nats_server)
    configured = [stream_to(emulator, "trades", ("BTC/USDT", "ETH/USDT"))]
    with IngestNode(configured, options, node="ing-r"):
        until(lambda: answering(control, "ing-r"), 20, "the node to answer")
        control.subscribe("binance", ["SOL/USDT"])
        control.unsubscribe("binance", ["BTC/USDT"])
    kept = kv_value(bus_loop, client, "ing-r")
    with IngestNode(configured, options, node="ing-r") as again:
        until(lambda: streamed(again) == {"ETH/USDT", "SOL/USDT"}, 30,
              "the run-time changes repeated")
        back = control.subscribe("binance", ["BTC/USDT"])  # as configured again
        restored = kv_value(bus_loop, client, "ing-r")
    assert kept == {"binance": {"added": ["SOL/USDT"], "removed": ["BTC/USDT"]}}
    assert back["node"] == "ing-r"
    assert restored == {"binance": {"added": ["SOL/USDT"], "removed": []}}


def test_a_node_no_longer_streaming_an_exchange_does_not_repeat_its_changes(
        nats_server: NatsServer, bus_loop: BusLoop, serving: tuple[Client, BusControl]) -> None:
    client, control = serving
    options = options_for(nats_server)
    emulators = {venue: EmulatorThread(exchange=venue, symbols=LISTED, rate=50.0, seed=3)
                 for venue in ("binance", "bybit")}
    for emu in emulators.values():
        emu.start()
    try:
        binance = stream_to(emulators["binance"], "trades", ("BTC/USDT",))
        with IngestNode([binance], options, node="ing-m"):
            until(lambda: answering(control, "ing-m"), 20, "the node to answer")
            control.subscribe("binance", ["ETH/USDT"])
        bybit = StreamConfig("bybit", ("BTC/USDT",), channel="trades", mode="websocket",
                             url=emulators["bybit"].url, heartbeat_interval=30.0,
                             reconnect_delay=0.05, max_reconnect_delay=0.4)
        with IngestNode([bybit], options, node="ing-m") as moved:
            until(lambda: answering(control, "ing-m"), 20, "the node to answer again")
            symbols = streamed(moved)
            exchanges = moved.status()["exchanges"]
    finally:
        for emu in emulators.values():
            emu.stop()
    assert (exchanges, symbols) == (["bybit"], {"BTC/USDT"})
    # Kept for when binance is configured on it again.
    assert kv_value(bus_loop, client, "ing-m") == {
        "binance": {"added": ["ETH/USDT"], "removed": []}}


def test_a_restarted_ingest_process_repeats_what_control_changed(
        nats_server: NatsServer, serving: tuple[Client, BusControl]) -> None:
    """The real command: ``flight-md ingest --demo`` stopped by SIGTERM and started again
    with the same node name streams what control left it streaming, not what it was told
    at start; both stops are clean (exit 0)."""
    _, control = serving
    argv = ["-m", "flight_md", "ingest", "--demo", "--bus", nats_server.url,
            "--node-name", "ing-p"]
    ready = re.compile(r"flight-md ingesting as (\S+)")

    def binance_symbols() -> set[str]:
        return {s for e in control.status().exchanges if e.exchange == "binance"
                for s in e.symbols}

    first = ChildProcess(argv, ready=ready).start()
    try:
        until(lambda: answering(control, "ing-p"), 30, "the node to answer")
        before = binance_symbols()
        gone = control.unsubscribe("binance", ["SOL/USDT"])
    finally:
        first_code = first.stop(15)
    second = ChildProcess(argv, ready=ready).start()
    try:
        until(lambda: answering(control, "ing-p") and "SOL/USDT" not in binance_symbols()
              and binance_symbols(), 30, "the unsubscribe repeated")
        after = binance_symbols()
    finally:
        second_code = second.stop(15)
    assert gone["node"] == "ing-p" and gone["unsubscribed"] == ["SOL/USDT"]
    assert after == before - {"SOL/USDT"}
    assert (first_code, second_code) == (0, 0), first.output + second.output


def kv_value(bus_loop: BusLoop, client: Client, key: str) -> Any:
    async def read() -> Any:
        kv = await client.jetstream().key_value(SUBSCRIPTIONS_BUCKET)
        entry = await kv.get(key)
        return json.loads(entry.value or b"null")

    return bus_loop.run(read())


# -- pure ----------------------------------------------------------------------------------


def test_a_new_symbol_goes_to_the_node_with_the_fewest_ties_by_name() -> None:
    assert subscribe_target({"b": {"X": {"trades"}}, "a": {"Y": {"trades"}}, "c": {}}) == "c"
    assert subscribe_target({"b": {}, "a": {}}) == "a"


def test_changes_are_kept_relative_to_the_configured_symbols() -> None:
    changes: dict[str, dict[str, list[str]]] = {}
    note_subscription(changes, "binance", ["SOL/USDT"], True)
    note_subscription(changes, "binance", ["BTC/USDT"], False)
    assert changes == {"binance": {"added": ["SOL/USDT"], "removed": ["BTC/USDT"]}}
    note_subscription(changes, "binance", ["BTC/USDT"], True)
    note_subscription(changes, "binance", ["SOL/USDT"], False)
    assert changes == {}

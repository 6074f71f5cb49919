"""Issue 10, items 13-17: the service's rough edges, each proved on a real Flight server.

* 13: a subscribed symbol with no tick yet is an empty table (real ccxt.pro ingestion from the
  emulator, stalled so that no tick can arrive), and a live tail on it delivers the first tick.
* 14: error messages name bad JSON values as the client wrote them, never a Python type name,
  and a backwards range echoes the bounds as typed.
* 15: ``ListFlights`` criteria: an exchange id or a symbol glob; oversized or malformed refused.
* 16: refused requests are logged at most a burst per interval plus one summary line; the
  counters stay exact.
* 17: a live tail ended by the server's shutdown ends with UNAVAILABLE + ``server_shutdown``,
  which a plain pyarrow client tells from a finished stream.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import flight

from flight_md.buffer import MarketDataBuffer
from flight_md.schema import SCHEMA, MarketTick
from flight_md.service import (
    REFUSAL_LOG_BURST,
    REFUSAL_LOG_INTERVAL_S,
    SERVER_SHUTDOWN,
    _RefusalLog,
)
from tests.support import MS, until

T0 = 1_795_000_000_000


def tick(i: int, symbol: str = "BTC/USDT", exchange: str = "binance") -> MarketTick:
    return MarketTick(symbol, T0 + i, 100.0 + i, None, None, None, None, None, None, None,
                      exchange, T0 + i)


def filled() -> MarketDataBuffer:
    buffer = MarketDataBuffer(1000)
    buffer.extend(tick(i) for i in range(10))
    buffer.extend(tick(i, "ETH/USDT") for i in range(5))
    buffer.extend(tick(i, "ETH/USDT", "bybit") for i in range(3))
    buffer.extend(tick(i, "SOL/USDT", "bybit") for i in range(2))
    return buffer


def message(exc: BaseException) -> str:
    """The server's message, without pyarrow's ``. Detail: ...`` tail."""
    return str(exc).split(". Detail:")[0].split(". gRPC client debug context:")[0]


def refused(client: flight.FlightClient) -> dict[str, int]:
    result = next(iter(client.do_action(flight.Action("status", b""))))
    return dict(json.loads(result.body.to_pybytes())["server"]["refused_requests"])


# -- 13: a subscribed symbol before its first tick ---------------------------------------------


class StalledRig:
    """``flight-md serve --exchange binance --symbols BTC/USDT --exchange-url EMU`` in-process,
    against an emulator stalled before ingestion connects: markets load over REST and the
    symbol is subscribed, but no frame reaches ccxt until :meth:`release` (the stream goes
    stale and reconnects meanwhile: the symbol stays subscribed, and no tick can arrive)."""

    def __init__(self) -> None:
        from flight_md.app import MarketDataApp
        from flight_md.config import ServerConfig, StreamConfig
        from flight_md.emulator import EmulatorThread, Fault

        self.emulator = EmulatorThread(exchange="binance", symbols=("BTC/USDT", "ETH/USDT"),
                                       rate=50.0, seed=3)
        self.emulator.start()
        self.app: Any = None
        self.client: Any = None
        try:
            self.emulator.inject(Fault.STALL)
            # The stall swallows the subscription too; once it ends, the stale watchdog
            # (heartbeat) reconnects and subscribes again, and the first tick arrives.
            stream = StreamConfig("binance", ("BTC/USDT",), mode="websocket",
                                  url=self.emulator.url, heartbeat_interval=1.0,
                                  reconnect_delay=0.1, max_reconnect_delay=0.5)
            self.app = MarketDataApp(ServerConfig(port=0, streams=(stream,))).start()
            self.client = flight.connect(self.app.location)
        except BaseException:
            self.close()
            raise

    def release(self) -> None:
        self.emulator.clear_faults()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.app is not None:
            self.app.stop(0.5)
        self.emulator.stop()


@pytest.fixture
def stalled() -> Iterator[StalledRig]:
    rig = StalledRig()
    try:
        yield rig
    finally:
        rig.close()


def test_a_subscribed_symbol_without_ticks_is_an_empty_table(stalled: StalledRig) -> None:
    client, app = stalled.client, stalled.app
    until(lambda: ("binance", "BTC/USDT") in app.events.subscribed(), 10, "the subscribe event")
    assert app.buffer.keys() == []  # the premise: no tick has arrived

    table = client.do_get(flight.Ticket(b"BTC/USDT")).read_all()
    assert table.num_rows == 0
    assert table.schema == SCHEMA
    projected = client.do_get(flight.Ticket(
        b"BTC/USDT?exchange=binance&latest=5&columns=timestamp,price")).read_all()
    assert projected.num_rows == 0
    assert projected.schema == pa.schema([SCHEMA.field("timestamp"), SCHEMA.field("price")])
    ranged = client.do_get(flight.Ticket(b"BTC/USDT?start=2026-11-23T10:00:00Z")).read_all()
    assert (ranged.num_rows, ranged.schema) == (0, SCHEMA)

    info = client.get_flight_info(flight.FlightDescriptor.for_path("binance", "BTC/USDT"))
    assert info.total_records == 0
    assert info.schema == SCHEMA
    assert client.get_schema(flight.FlightDescriptor.for_path("BTC/USDT")).schema == SCHEMA
    listed = [(f.descriptor.path, f.total_records) for f in client.list_flights()
              if f.descriptor.descriptor_type == flight.DescriptorType.PATH]  # not @markets
    assert listed == [([b"binance", b"BTC/USDT"], 0)]

    # Listed by the exchange but not subscribed, or neither: still NOT_FOUND.
    for ticket in (b"ETH/USDT", b"XRP/USDT", b"BTC/USDT?exchange=bybit"):
        with pytest.raises(pa.ArrowKeyError):  # NOT_FOUND
            client.do_get(flight.Ticket(ticket)).read_all()
    assert app.buffer.keys() == []  # still before the first tick: the answers above held


def test_a_live_tail_on_a_subscribed_symbol_delivers_its_first_tick(stalled: StalledRig) -> None:
    client, app = stalled.client, stalled.app
    until(lambda: ("binance", "BTC/USDT") in app.events.subscribed(), 10, "the subscribe event")
    reader = client.do_get(flight.Ticket(b"BTC/USDT?follow=true&columns=timestamp,price"))
    assert reader.schema == pa.schema([SCHEMA.field("timestamp"), SCHEMA.field("price")])
    got: dict[str, Any] = {}

    def read() -> None:
        try:
            got["chunk"] = reader.read_chunk().data
        except BaseException as exc:  # noqa: BLE001 - reported below
            got["error"] = exc

    reader_thread = threading.Thread(target=read, daemon=True)
    reader_thread.start()
    until(lambda: any(s.followers for s in app.buffer.stats()), 10, "the tail to follow")
    assert app.buffer.stats()[0].stored == 0  # it was opened before the first tick
    stalled.release()
    reader_thread.join(30 * MS)
    assert not reader_thread.is_alive(), "the tail delivered nothing after the first tick"
    assert "error" not in got, got.get("error")
    first = app.buffer.get_range_sync("BTC/USDT", columns=["timestamp", "price"]).slice(0, 1)
    assert got["chunk"].slice(0, 1).to_pylist() == first.to_pylist()
    reader.cancel()


# -- 14: error messages in the client's terms ----------------------------------------------------

CMD = flight.FlightDescriptor.for_command
SYMBOL_HINT = "1-64 characters from A-Z a-z 0-9 / - _ : . like 'BTC/USDT'"


def _get(ticket: str) -> Callable[[flight.FlightClient], Any]:
    return lambda c: c.do_get(flight.Ticket(ticket.encode())).read_all()


def _info(command: dict[str, Any]) -> Callable[[flight.FlightClient], Any]:
    return lambda c: c.get_flight_info(CMD(json.dumps(command).encode()))


def _action(name: str, body: Any) -> Callable[[flight.FlightClient], Any]:
    return lambda c: list(c.do_action(flight.Action(name, json.dumps(body).encode())))


def _symbol_needed(got: str) -> str:
    return ("descriptor command needs \"symbol\" as a string such as 'BTC/USDT', '*' or "
            f"'@events', got {got}")


def _body(name: str, example: str, got: str) -> str:
    return f"{name} body must be a JSON object such as {example}, got {got}"


def _symbols(name: str, got: str) -> str:
    return f'"symbols" in {name} must be an array of strings such as ["BTC/USDT"], got {got}'


BAD_INPUTS = [
    # A backwards range echoes what was typed, not milliseconds.
    (_get("BTC/USDT?start=2026-11-23T11:00:00Z&end=2026-11-23T10:00:00Z"),
     "start '2026-11-23T11:00:00Z' is after end '2026-11-23T10:00:00Z'; start must be <= end"),
    (_get("BTC/USDT?start=2026-11-23T11:00:00%2B01:00&end=1"),
     "start '2026-11-23T11:00:00+01:00' is after end '1'; start must be <= end"),
    (_info({"symbol": "BTC/USDT", "start": "2026-11-23T11:00:00Z", "end": 1795000000000}),
     "start '2026-11-23T11:00:00Z' is after end 1795000000000; start must be <= end"),
    # JSON descriptors: null, number, array, object where a string is expected.
    (_info({"symbol": None}), _symbol_needed("null")),
    (_info({"symbol": 5}), _symbol_needed("5")),
    (_info({"symbol": ["BTC/USDT"]}), _symbol_needed('["BTC/USDT"]')),
    (_info({"symbol": {"name": "BTC/USDT"}}), _symbol_needed('{"name": "BTC/USDT"}')),
    (_info({"symbol": True}), _symbol_needed("true")),
    (_info({"symbol": "BTC/USDT", "exchange": 1.5}),
     "\"exchange\" must be a string or null, such as 'binance', got 1.5"),
    (_info({"symbol": "BTC/USDT", "exchange": ["binance"]}),
     "\"exchange\" must be a string or null, such as 'binance', got [\"binance\"]"),
    (_info({"symbol": "BTC/USDT", "latest": "5"}), "\"latest\" must be an integer, got '5'"),
    (_info({"symbol": "BTC/USDT", "latest": False}), '"latest" must be an integer, got false'),
    (_info({"symbol": "BTC/USDT", "latest": {"n": 5}}),
     '"latest" must be an integer, got {"n": 5}'),
    (_info({"symbol": "BTC/USDT", "start": [1]}),
     '"start" must be Unix ms or an ISO-8601 string, got [1]'),
    (_info({"symbol": "BTC/USDT", "end": {"t": 1}}),
     '"end" must be Unix ms or an ISO-8601 string, got {"t": 1}'),
    (_info({"symbol": "BTC/USDT", "columns": 5}),
     '"columns" must be an array of column names or one comma-separated string, got 5'),
    (_info({"symbol": "BTC/USDT", "columns": [None]}),
     '"columns" must be an array of column names or one comma-separated string, got [null]'),
    # Action bodies.
    (_action("status", None), _body("status", "{}", "null")),
    (_action("status", [1]), _body("status", "{}", "[1]")),
    (_action("clear", "BTC/USDT"), _body("clear", '{"symbols": ["BTC/USDT"]}', "'BTC/USDT'")),
    (_action("unsubscribe", 1.5), _body("unsubscribe",
                                        '{"symbols": ["BTC/USDT"], "exchange": "binance"}',
                                        "1.5")),
    (_action("subscribe", {"symbols": None}), _symbols("subscribe", "null")),
    (_action("subscribe", {"symbols": "BTC/USDT"}), _symbols("subscribe", "'BTC/USDT'")),
    (_action("subscribe", {"symbols": {"BTC/USDT": 1}}),
     _symbols("subscribe", '{"BTC/USDT": 1}')),
    (_action("clear", {"symbols": 7}), _symbols("clear", "7")),
    (_action("subscribe", {"symbols": ["BTC/USDT", None]}),
     f"invalid symbol null in subscribe; expected {SYMBOL_HINT}"),
    (_action("subscribe", {"symbols": [5]}), f"invalid symbol 5 in subscribe; expected {SYMBOL_HINT}"),
    (_action("clear", {"symbols": [["BTC/USDT"]]}),
     f'invalid symbol ["BTC/USDT"] in clear; expected {SYMBOL_HINT}'),
    (_action("clear", {"symbols": [{"s": "BTC/USDT"}]}),
     f'invalid symbol {{"s": "BTC/USDT"}} in clear; expected {SYMBOL_HINT}'),
    (_action("clear", {"exchange": 5}),
     "invalid exchange 5 in clear; expected a ccxt exchange id such as 'binance'"),
    (_action("subscribe", {"symbols": ["BTC/USDT"], "exchange": ["binance"]}),
     "invalid exchange [\"binance\"] in subscribe; expected a ccxt exchange id such as 'binance'"),
    (_action("subscribe", {"symbols": ["BTC/USDT"], "exchange": {"id": "binance"}}),
     ("invalid exchange {\"id\": \"binance\"} in subscribe; expected a ccxt exchange id such "
      "as 'binance'")),
    (_action("subscribe", {"symbols": ["BTC/USDT"], "exchange": False}),
     "invalid exchange false in subscribe; expected a ccxt exchange id such as 'binance'"),
]
PYTHON_NAMES = re.compile(r"\b(NoneType|None|True|False|int|str|dict|list|float|bool|tuple)\b")


@pytest.mark.parametrize(("call", "expected"), BAD_INPUTS,
                         ids=[f"{i}-{case[1][:40]}" for i, case in enumerate(BAD_INPUTS)])
def test_bad_inputs_are_refused_in_the_clients_terms(
        md_server_factory: Callable[..., Any], call: Callable[[flight.FlightClient], Any],
        expected: str) -> None:
    harness = md_server_factory(filled())
    with pytest.raises(pa.ArrowInvalid) as info:  # INVALID_ARGUMENT
        call(harness.client)
    assert message(info.value) == expected
    assert not PYTHON_NAMES.search(message(info.value)), message(info.value)
    assert sum(refused(harness.client).values()) == 1


# -- 15: ListFlights criteria --------------------------------------------------------------------


def listed(client: flight.FlightClient, criteria: bytes = b"") -> list[tuple[str, str, int]]:
    return [(f.descriptor.path[0].decode(), f.descriptor.path[1].decode(), f.total_records)
            for f in client.list_flights(criteria)]


@pytest.mark.parametrize(("criteria", "expected"), [
    (b"", [("binance", "BTC/USDT", 10), ("binance", "ETH/USDT", 5), ("bybit", "ETH/USDT", 3),
           ("bybit", "SOL/USDT", 2)]),
    (b"bybit", [("bybit", "ETH/USDT", 3), ("bybit", "SOL/USDT", 2)]),
    (b"binance", [("binance", "BTC/USDT", 10), ("binance", "ETH/USDT", 5)]),
    (b"ETH/*", [("binance", "ETH/USDT", 5), ("bybit", "ETH/USDT", 3)]),
    (b"*/USDT", [("binance", "BTC/USDT", 10), ("binance", "ETH/USDT", 5),
                 ("bybit", "ETH/USDT", 3), ("bybit", "SOL/USDT", 2)]),
    (b"[BS]?[CL]/USDT", [("binance", "BTC/USDT", 10), ("bybit", "SOL/USDT", 2)]),
    (b"SOL/USDT", [("bybit", "SOL/USDT", 2)]),
    (b"btc/*", []),  # case-sensitive
    (b"kraken", []),  # an exchange the server does not know: a glob matching nothing
])
def test_list_flights_criteria(md_server_factory: Callable[..., Any], criteria: bytes,
                               expected: list[tuple[str, str, int]]) -> None:
    harness = md_server_factory(filled())
    assert listed(harness.client, criteria) == expected
    assert refused(harness.client) == {}


@pytest.mark.parametrize(("criteria", "expected", "counted"), [
    (b"x" * 4097, "criteria is 4097 bytes; the limit is 4096", "RequestTooLarge"),
    (b"*" * 100_000, "criteria is 100000 bytes; the limit is 4096", "RequestTooLarge"),
    (b"BTC USDT", ("invalid criteria 'BTC USDT'; expected an exchange id such as 'binance' or a "
                   "symbol glob such as 'BTC/*' (1-64 characters from A-Z a-z 0-9 / - _ : . * ? "
                   "[ ] !)"), "InvalidCriteria"),
    (b"\xff\xfe", ("criteria are not valid UTF-8 text; expected an exchange id such as "
                   "'binance' or a symbol glob such as 'BTC/*'"), "InvalidCriteria"),
])
def test_bad_list_flights_criteria_are_refused(md_server_factory: Callable[..., Any],
                                               criteria: bytes, expected: str,
                                               counted: str) -> None:
    harness = md_server_factory(filled())
    with pytest.raises(pa.ArrowInvalid) as info:  # INVALID_ARGUMENT
        list(harness.client.list_flights(criteria))
    assert message(info.value) == expected
    assert refused(harness.client) == {counted: 1}


# -- 16: refused requests are aggregated in the log ----------------------------------------------

LINE = "%s refused: %s: %s"
SUMMARY = "%d more refused requests in the last %.1f s (by status: %s)"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refusal_log_logs_a_burst_then_one_summary_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    from flight_md import errors

    caplog.set_level(logging.INFO, logger="flight_md.service")
    clock = FakeClock()
    log = _RefusalLog(burst=5, interval_s=10.0, clock=clock)
    for i in range(30):
        log.refused("DoGet", "INVALID_ARGUMENT" if i % 3 else "NOT_FOUND",
                    errors.InvalidTicket(f"bad {i}"))
    assert [r.msg for r in caplog.records] == [LINE] * 5
    clock.now += 10.0
    log.refused("DoAction", "UNIMPLEMENTED", errors.UnknownAction("nope"))
    records = caplog.records[5:]
    assert [r.msg for r in records] == [SUMMARY, LINE]
    assert records[0].args == (25, 10.0, "INVALID_ARGUMENT 17, NOT_FOUND 8")
    log.flush()  # nothing suppressed in the new interval: no line
    assert len(caplog.records) == 7


def test_a_flood_of_bad_requests_is_counted_exactly_and_logged_boundedly(
        md_server_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flight_md.service")
    harness = md_server_factory(filled())
    client = harness.client
    sent = {"InvalidTicket": 0, "UnknownSymbol": 0, "InvalidActionBody": 0}
    started = time.monotonic()
    for i in range(3000):
        kind = ("InvalidTicket", "UnknownSymbol", "InvalidActionBody")[i % 3]
        with pytest.raises(pa.ArrowException):
            if kind == "InvalidTicket":
                client.do_get(flight.Ticket(b"BTC/USDT?latest=x")).read_all()
            elif kind == "UnknownSymbol":
                client.do_get(flight.Ticket(b"NOPE/USDT")).read_all()
            else:
                list(client.do_action(flight.Action("status", b"[1]")))
        sent[kind] += 1
    assert refused(client) == sent
    harness.server.stop()  # logs the summary of the interval in progress
    elapsed = time.monotonic() - started
    lines = [r for r in caplog.records if r.msg == LINE]
    summaries = [r for r in caplog.records if r.msg == SUMMARY]
    intervals = math.ceil(elapsed / REFUSAL_LOG_INTERVAL_S) + 1
    assert len(lines) <= REFUSAL_LOG_BURST * intervals
    assert 1 <= len(summaries) <= intervals
    # Every refusal is in the log: on a line of its own or counted in a summary.
    assert len(lines) + sum(r.args[0] for r in summaries) == 3000


# -- 17: a live tail ended by shutdown is not a finished stream ----------------------------------


def test_a_tail_ended_by_shutdown_is_unavailable_to_a_plain_pyarrow_client(
        md_server_factory: Callable[..., Any]) -> None:
    buffer = filled()
    harness = md_server_factory(buffer)
    reader = harness.client.do_get(flight.Ticket(b"BTC/USDT?latest=3&follow=true"))
    rows = reader.read_chunk().data.num_rows
    until(lambda: buffer.stats()[0].followers == 1, 5, "the tail to follow")
    buffer.append(tick(10))
    rows += reader.read_chunk().data.num_rows
    assert rows == 4
    stopped: dict[str, bool] = {}
    stopper = threading.Thread(target=lambda: stopped.update(clean=harness.server.stop()),
                               daemon=True)
    stopper.start()
    with pytest.raises(flight.FlightUnavailableError) as info:
        while True:
            rows += reader.read_chunk().data.num_rows
    assert info.value.extra_info == SERVER_SHUTDOWN
    assert message(info.value) == "server is shutting down; the live tail ends here"
    assert rows == 4
    stopper.join(10 * MS)
    assert stopped == {"clean": True}

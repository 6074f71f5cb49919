"""The Flight service, end to end: a real server on 127.0.0.1:0 and a real pyarrow.flight client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import flight

from flight_md import buffer as buffer_module
from flight_md import errors
from flight_md.buffer import Follower, MarketDataBuffer
from flight_md.events import EventKind
from flight_md.schema import EVENT_SCHEMA, SCHEMA, MarketTick
from tests.support import until

LEAKS = ("Traceback", '.py"', 'File "', "line ")


# -- helpers ---------------------------------------------------------------------------------


def get(client: flight.FlightClient, ticket: bytes | str) -> pa.Table:
    data = ticket.encode() if isinstance(ticket, str) else ticket
    return client.do_get(flight.Ticket(data)).read_all()


def act(client: flight.FlightClient, name: str, body: Any = b"") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    results = list(client.do_action(flight.Action(name, data)))
    assert len(results) == 1
    return json.loads(results[0].body.to_pybytes())


def status(client: flight.FlightClient) -> dict[str, Any]:
    result: dict[str, Any] = act(client, "status")
    return result


def assert_clean(message: str) -> None:
    for leak in LEAKS:
        assert leak not in message, f"{leak!r} leaked into {message!r}"


def followers(buffer: MarketDataBuffer, exchange: str, symbol: str) -> int:
    """Live tails attached to a ring (the buffer has no public counter for this)."""
    return len(buffer._rings[(exchange, symbol)].followers)


def the_follower(buffer: MarketDataBuffer, exchange: str, symbol: str) -> Follower:
    """The one live tail attached to a ring."""
    (follower,) = buffer._rings[(exchange, symbol)].followers
    return follower


def tick(i: int, symbol: str = "BTC/USDT", exchange: str = "binance",
         ts: int | None = None) -> MarketTick:
    """Tick ``i``: timestamp ``i`` (unless given), price ``2 i``, receive time ``i + 7``."""
    stamp = i if ts is None else ts
    return MarketTick(symbol, stamp, 2.0 * i, None, None, None, None, None, None, None, exchange,
                      i + 7)


# -- DoGet -------------------------------------------------------------------------------------


def test_do_get_latest(server: Any, md_layout: Any) -> None:
    table = get(server.client, "BTC/USDT?latest=5")
    assert table.schema.equals(SCHEMA)
    assert table.equals(server.buffer.get_latest_sync("BTC/USDT", 5))
    assert table.column("timestamp").to_pylist() == [
        md_layout.t0 + i * md_layout.step_ms for i in range(995, 1000)]


def test_do_get_whole_buffer_and_clamped_latest(server: Any, md_layout: Any) -> None:
    whole = get(server.client, "BTC/USDT")
    assert whole.num_rows == md_layout.count("binance", "BTC/USDT")
    assert whole.equals(server.buffer.get_latest_sync("BTC/USDT", 10_000))
    assert get(server.client, f"BTC/USDT?latest={2**31 - 1}").num_rows == whole.num_rows
    assert get(server.client, "BTC/USDT?latest=0").num_rows == 0
    assert get(server.client, "BTC/USDT?latest=0").schema.equals(SCHEMA)


def test_do_get_range_ms_and_iso(server: Any, md_layout: Any) -> None:
    t0, step = md_layout.t0, md_layout.step_ms
    by_ms = get(server.client, f"BTC/USDT?start={t0 + 10 * step}&end={t0 + 20 * step}")
    assert by_ms.column("timestamp").to_pylist() == [t0 + i * step for i in range(10, 20)]
    by_iso = get(server.client, "BTC/USDT?start=2026-11-23T10:00:01Z&end=2026-11-23T10:00:02Z")
    assert by_iso.equals(by_ms)
    offset = get(server.client, "BTC/USDT?start=2026-11-23T11:00:01%2B01:00"
                                "&end=2026-11-23T10:00:02Z")
    assert offset.equals(by_ms)
    newest = get(server.client, f"BTC/USDT?start={t0 + 10 * step}&end={t0 + 20 * step}&latest=3")
    assert newest.column("timestamp").to_pylist() == [t0 + i * step for i in range(17, 20)]
    open_end = get(server.client, f"BTC/USDT?start={t0 + 990 * step}")
    assert open_end.num_rows == 10
    assert get(server.client, f"BTC/USDT?end={t0}").num_rows == 0


def test_do_get_columns(server: Any) -> None:
    table = get(server.client, "BTC/USDT?latest=3&columns=price,symbol,timestamp")
    assert table.schema.equals(pa.schema([SCHEMA.field("price"), SCHEMA.field("symbol"),
                                          SCHEMA.field("timestamp")]))
    expected = server.buffer.get_latest_sync("BTC/USDT", 3)
    assert table.column("price").equals(expected.column("price"))
    assert table.column("symbol").to_pylist() == ["BTC/USDT"] * 3


def test_do_get_exchange_selection(server: Any, md_layout: Any) -> None:
    for exchange in ("binance", "bybit"):
        table = get(server.client, f"ETH/USDT?exchange={exchange}")
        assert table.num_rows == md_layout.count(exchange, "ETH/USDT")
        assert set(table.column("exchange").to_pylist()) == {exchange}
    # An unambiguous symbol needs no exchange.
    assert get(server.client, "SOL/USDT").num_rows == md_layout.count("bybit", "SOL/USDT")


def test_do_get_missing_values_are_nulls(server: Any) -> None:
    table = get(server.client, "SOL/USDT")
    for name in ("volume", "bid", "ask", "high", "low", "open", "close"):
        assert table.column(name).null_count == table.num_rows, name
    assert table.column("price").null_count == 0


def test_do_get_snapshot(server: Any, md_layout: Any) -> None:
    table = get(server.client, "*")
    assert table.schema.equals(SCHEMA)
    keys = [(r["exchange"], r["symbol"]) for r in table.to_pylist()]
    assert keys == sorted(key for key, _ in md_layout.fill)
    for r in table.to_pylist():
        n = md_layout.count(r["exchange"], r["symbol"])
        assert r["timestamp"] == md_layout.t0 + (n - 1) * md_layout.step_ms
    bybit = get(server.client, "*?exchange=bybit")
    assert bybit.column("symbol").to_pylist() == ["ETH/USDT", "SOL/USDT"]
    projected = get(server.client, "*?columns=symbol,price")
    assert projected.column_names == ["symbol", "price"] and projected.num_rows == 4


def test_do_get_events(server: Any) -> None:
    empty = get(server.client, "@events")
    assert empty.num_rows == 0 and empty.schema.equals(EVENT_SCHEMA)
    server.events.record("binance", EventKind.CONNECT, (), "connected", timestamp=1000)
    server.events.record("bybit", EventKind.STALE, ("ETH/USDT",), "silent", timestamp=2000)
    server.events.record("binance", EventKind.RECONNECT, (), "again", timestamp=3000)
    table = get(server.client, "@events")
    assert table.schema.equals(EVENT_SCHEMA)
    assert table.column("kind").to_pylist() == ["connect", "stale", "reconnect"]
    assert get(server.client, "@events?exchange=binance").num_rows == 2
    assert get(server.client, "@events?start=1500&end=3000").column("kind").to_pylist() == [
        "stale"]
    assert get(server.client, "@events?latest=1").column("kind").to_pylist() == ["reconnect"]
    assert get(server.client, "@events?latest=3").num_rows == 3


def test_do_get_events_latest_above_the_count(server: Any) -> None:
    for i in range(3):
        server.events.record("binance", EventKind.CONNECT, (), str(i), timestamp=1000 + i)
    assert get(server.client, "@events?latest=5").column("detail").to_pylist() == [
        "0", "1", "2"]


# -- GetFlightInfo, GetSchema, ListFlights, ListActions --------------------------------------


@pytest.mark.parametrize(("descriptor", "schema", "rows"), [
    (flight.FlightDescriptor.for_path("BTC/USDT"), SCHEMA, 1000),
    (flight.FlightDescriptor.for_path("bybit", "ETH/USDT"), SCHEMA, 300),
    (flight.FlightDescriptor.for_path(b"binance", b"ETH/USDT"), SCHEMA, 500),
    (flight.FlightDescriptor.for_command(b"BTC/USDT?latest=10&columns=price,timestamp"),
     pa.schema([SCHEMA.field("price"), SCHEMA.field("timestamp")]), 10),
    (flight.FlightDescriptor.for_command(b"ETH/USDT?exchange=bybit&start=2026-11-23T10:00:01Z"),
     SCHEMA, 290),
    (flight.FlightDescriptor.for_command(json.dumps(
        {"symbol": "ETH/USDT", "exchange": "binance", "latest": 7,
         "columns": ["symbol", "exchange", "price"]}).encode()),
     pa.schema([SCHEMA.field("symbol"), SCHEMA.field("exchange"), SCHEMA.field("price")]), 7),
    (flight.FlightDescriptor.for_command(json.dumps(
        {"symbol": "BTC/USDT", "start": "2026-11-23T10:00:00Z", "end": 1795428001000}).encode()),
     SCHEMA, 10),
    (flight.FlightDescriptor.for_command(b"*"), SCHEMA, 4),
    (flight.FlightDescriptor.for_command(b'{"symbol": "*", "exchange": "bybit"}'), SCHEMA, 2),
    (flight.FlightDescriptor.for_command(b"@events"), EVENT_SCHEMA, 0),
])
def test_get_flight_info(server: Any, descriptor: flight.FlightDescriptor, schema: pa.Schema,
                         rows: int) -> None:
    info = server.client.get_flight_info(descriptor)
    assert info.schema.equals(schema)
    assert info.total_records == rows
    assert info.descriptor == descriptor
    assert len(info.endpoints) == 1
    endpoint = info.endpoints[0]
    assert list(endpoint.locations) == []  # "fetch from this server"
    table = server.client.do_get(endpoint.ticket).read_all()
    assert table.num_rows == rows
    assert table.schema.equals(schema)
    # GetSchema agrees with GetFlightInfo.
    assert server.client.get_schema(descriptor).schema.equals(schema)


def test_get_schema_checks_the_symbol(server: Any) -> None:
    assert server.client.get_schema(
        flight.FlightDescriptor.for_path("SOL/USDT")).schema.equals(SCHEMA)
    with pytest.raises(pa.ArrowKeyError, match="unknown symbol 'XRP/USDT'"):
        server.client.get_schema(flight.FlightDescriptor.for_path("XRP/USDT"))


def test_get_flight_info_refuses_a_follow_command(server: Any) -> None:
    """A live tail has no finite answer: GetFlightInfo refuses it (INVALID_ARGUMENT).

    Answering would hand out an endpoint ticket that either never ends (``read_all()`` on a
    live tail hangs) or silently reads something other than what was described.
    """
    descriptor = flight.FlightDescriptor.for_command(b"BTC/USDT?follow=true&latest=5")
    with pytest.raises(pa.ArrowInvalid, match="follow=true has no finite answer") as info:
        server.client.get_flight_info(descriptor)
    assert_clean(str(info.value))
    assert status(server.client)["server"]["refused_requests"] == {"InvalidDescriptor": 1}


def test_list_flights(server: Any, md_layout: Any) -> None:
    infos = list(server.client.list_flights())
    assert len(infos) == len(md_layout.fill)
    seen = {}
    for info in infos:
        assert info.descriptor.descriptor_type == flight.DescriptorType.PATH
        exchange, symbol = (p.decode() for p in info.descriptor.path)
        seen[(exchange, symbol)] = info.total_records
        assert info.schema.equals(SCHEMA)
        (endpoint,) = info.endpoints
        table = server.client.do_get(endpoint.ticket).read_all()
        assert table.num_rows == info.total_records
        assert set(table.column("exchange").to_pylist()) == {exchange}
        # The listed descriptor answers GetFlightInfo too.
        assert server.client.get_flight_info(info.descriptor).total_records == info.total_records
    assert seen == dict(md_layout.fill)


def test_list_flights_of_an_empty_server(md_server_factory: Callable[..., Any]) -> None:
    harness = md_server_factory()
    assert list(harness.client.list_flights()) == []
    assert status(harness.client)["symbols"] == []


def test_list_actions(server: Any) -> None:
    actions = {a.type: a.description for a in server.client.list_actions()}
    native = ["subscribe", "unsubscribe", "clear", "status", "health", "flush"]
    assert list(actions)[:6] == native
    assert set(list(actions)[6:]) == {"CreatePreparedStatement", "ClosePreparedStatement"}
    for name in native:
        description = actions[name]
        assert "Body:" in description and "Result:" in description, name
    assert '{"symbols": ["BTC/USDT", ...], "exchange": "binance"}' in actions["subscribe"]
    assert "empty or {}" in actions["status"]


# -- DoAction ------------------------------------------------------------------------------------


def test_status(server: Any, md_layout: Any) -> None:
    result = status(server.client)
    assert set(result) == {"server", "exchanges", "symbols", "persistence"}
    assert result["persistence"] == {"state": "memory_only"}  # a server without persistence
    info = result["server"]
    assert info["buffer_size"] == md_layout.buffer_size
    assert info["ingestion"] is False
    assert info["refused_requests"] == {}
    assert info["events"] == 0
    assert info["uptime_s"] >= 0
    assert result["exchanges"] == {}
    symbols = {(s["exchange"], s["symbol"]): s for s in result["symbols"]}
    assert list(symbols) == sorted(key for key, _ in md_layout.fill)
    for (exchange, symbol), n in md_layout.fill:
        entry = symbols[(exchange, symbol)]
        assert entry["ticks_stored"] == n
        assert entry["ticks_appended"] == n
        assert entry["last_timestamp"] == md_layout.t0 + (n - 1) * md_layout.step_ms
        assert entry["last_receive_timestamp"] == entry["last_timestamp"] + 7
        assert entry["subscribed"] is False
        assert isinstance(entry["age_ms"], int)
    again = act(server.client, "status", b"{}")
    assert [(s["exchange"], s["symbol"], s["ticks_stored"]) for s in again["symbols"]] == [
        (s["exchange"], s["symbol"], s["ticks_stored"]) for s in result["symbols"]]


def test_clear_all(server: Any, md_layout: Any) -> None:
    total = sum(n for _, n in md_layout.fill)
    assert act(server.client, "clear") == {"cleared": total}
    assert get(server.client, "BTC/USDT").num_rows == 0
    assert get(server.client, "*").num_rows == 0
    events = get(server.client, "@events").to_pylist()
    exchanges = sorted({exchange for (exchange, _), _ in md_layout.fill})
    # One clear event per exchange, each with that exchange's own count.
    assert [(e["exchange"], e["kind"], e["symbols"]) for e in events] == [
        (exchange, "clear", []) for exchange in exchanges]
    for event in events:
        own = sum(n for (exchange, _), n in md_layout.fill if exchange == event["exchange"])
        assert f"cleared {own} " in event["detail"]
    assert status(server.client)["server"]["events"] == len(exchanges)
    assert act(server.client, "clear", {}) == {"cleared": 0}


def test_clear_by_symbols(server: Any, md_layout: Any) -> None:
    assert act(server.client, "clear", {"symbols": ["BTC/USDT", "SOL/USDT"]}) == {
        "cleared": 1050}
    assert get(server.client, "BTC/USDT").num_rows == 0
    assert get(server.client, "SOL/USDT").num_rows == 0
    assert get(server.client, "ETH/USDT?exchange=bybit").num_rows == 300
    events = get(server.client, "@events").to_pylist()
    assert sorted((e["exchange"], e["kind"], tuple(e["symbols"])) for e in events) == [
        ("binance", "clear", ("BTC/USDT",)), ("bybit", "clear", ("SOL/USDT",))]
    counts = {(s["exchange"], s["symbol"]): s["ticks_stored"]
              for s in status(server.client)["symbols"]}
    assert counts == {("binance", "BTC/USDT"): 0, ("binance", "ETH/USDT"): 500,
                      ("bybit", "ETH/USDT"): 300, ("bybit", "SOL/USDT"): 0}


def test_clear_by_exchange(server: Any) -> None:
    assert act(server.client, "clear", {"exchange": "bybit"}) == {"cleared": 350}
    assert get(server.client, "ETH/USDT?exchange=binance").num_rows == 500
    assert get(server.client, "ETH/USDT?exchange=bybit").num_rows == 0
    assert act(server.client, "clear", {"symbols": ["ETH/USDT"], "exchange": "binance"}) == {
        "cleared": 500}
    events = get(server.client, "@events").to_pylist()
    assert [(e["exchange"], e["symbols"]) for e in events] == [
        ("bybit", []), ("binance", ["ETH/USDT"])]
    assert get(server.client, "@events?exchange=bybit").num_rows == 1


def test_clear_events_count_each_exchange_s_own_ticks(server: Any) -> None:
    """A clear over two exchanges records one event per exchange, each with its own count."""
    assert act(server.client, "clear", {"symbols": ["BTC/USDT", "SOL/USDT"]}) == {
        "cleared": 1050}
    details = {e["exchange"]: e["detail"] for e in get(server.client, "@events").to_pylist()}
    assert details == {"binance": "cleared 1000 stored ticks on request",
                       "bybit": "cleared 50 stored ticks on request"}


class Ingestion:
    """An :class:`~flight_md.control.IngestionControl` that records what the service asks."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, str | None, tuple[str, ...]]] = []
        self.fail = fail

    def subscribe(self, exchange: str | None, symbols: Any) -> dict[str, Any]:
        self.calls.append(("subscribe", exchange, tuple(symbols)))
        if self.fail is not None:
            raise self.fail
        return {"exchange": exchange or "binance", "subscribed": list(symbols)}

    def unsubscribe(self, exchange: str | None, symbols: Any) -> dict[str, Any]:
        self.calls.append(("unsubscribe", exchange, tuple(symbols)))
        if self.fail is not None:
            raise self.fail
        return {"exchange": exchange or "binance", "unsubscribed": list(symbols)}

    def status(self) -> Any:
        from flight_md.control import ExchangeStatus, IngestionStatus, SymbolStatus

        return IngestionStatus(
            (ExchangeStatus("binance", "connected", "websocket", "ticker", 2,
                            ("BTC/USDT", "XRP/USDT"), {"bad_json": 3}, 1, "timeout"),
             ExchangeStatus("okx", "connecting", "rest", "bidask", 0, ())),
            (SymbolStatus("binance", "BTC/USDT", True, 12, 2, False, 1234),
             SymbolStatus("binance", "XRP/USDT", True, 0, 0, True, None)))


def test_actions_with_ingestion(md_server_factory: Callable[..., Any]) -> None:
    buffer = MarketDataBuffer(100)
    buffer.extend(tick(i) for i in range(5))
    control = Ingestion()
    harness = md_server_factory(buffer, control=control)
    client = harness.client
    assert act(client, "subscribe", {"symbols": ["XRP/USDT", "XRP/USDT"]}) == {
        "exchange": "binance", "subscribed": ["XRP/USDT"]}
    assert act(client, "unsubscribe", {"symbols": ["BTC/USDT"], "exchange": "okx"}) == {
        "exchange": "okx", "unsubscribed": ["BTC/USDT"]}
    assert control.calls == [("subscribe", None, ("XRP/USDT",)),
                             ("unsubscribe", "okx", ("BTC/USDT",))]
    result = status(client)
    assert result["server"]["ingestion"] is True
    binance = dict(result["exchanges"]["binance"])
    streams = binance.pop("channels")
    expected = {
        "state": "connected", "mode": "websocket", "channel": "ticker", "decoder": "ccxt",
        "reconnects": 2,
        "symbols": ["BTC/USDT", "XRP/USDT"], "bad_frames": {"bad_json": 3},
        "callback_errors": 1, "last_error": "timeout", "last_error_ms": None,
        "clock_skew_ms": {"median": None, "p99": None, "samples": 0, "window_s": 0.0},
        "counters": {}}
    assert binance == expected
    assert streams == {"ticker": expected}  # every stream of the exchange, by channel
    assert result["exchanges"]["okx"]["state"] == "connecting"
    symbols = {s["symbol"]: s for s in result["symbols"]}
    assert symbols["BTC/USDT"] | {"age_ms": None} == {
        "exchange": "binance", "symbol": "BTC/USDT", "channel": "ticker", "subscribed": True,
        "ticks_received": 12,
        "ticks_dropped": 2, "stale": False, "last_message_ms": 1234, "ticks_stored": 5,
        "ticks_appended": 5, "last_timestamp": 4, "last_receive_timestamp": 11, "age_ms": None,
        "live_tails": 0}
    assert symbols["XRP/USDT"]["ticks_stored"] == 0 and symbols["XRP/USDT"]["stale"] is True
    # An exchange ingestion runs is known even before it has buffered anything.
    assert get(client, "@events?exchange=okx").num_rows == 0
    assert get(client, "*?exchange=okx").num_rows == 0


@pytest.mark.parametrize(("failure", "wire", "counted"), [
    (errors.Unavailable("binance did not answer within 10 s"), flight.FlightUnavailableError,
     "Unavailable"),
    (errors.UnknownExchange("unknown exchange 'kraken'; streaming: binance"), pa.ArrowKeyError,
     "UnknownExchange"),
    (errors.InvalidArgument("binance does not list 'NOPE/USDT'"), pa.ArrowInvalid,
     "InvalidArgument"),
])
def test_ingestion_errors_map_to_status_codes(md_server_factory: Callable[..., Any],
                                              failure: Exception, wire: type,
                                              counted: str) -> None:
    harness = md_server_factory(control=Ingestion(fail=failure))
    with pytest.raises(wire) as info:
        act(harness.client, "subscribe", {"symbols": ["NOPE/USDT"]})
    assert str(failure) in str(info.value)
    assert_clean(str(info.value))
    assert status(harness.client)["server"]["refused_requests"] == {counted: 1}


# -- errors ------------------------------------------------------------------------------------


def _do_put(client: flight.FlightClient) -> None:
    writer, _ = client.do_put(flight.FlightDescriptor.for_path("BTC/USDT"), SCHEMA)
    writer.close()


def _do_exchange(client: flight.FlightClient) -> None:
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_path("BTC/USDT"))
    writer.close()
    reader.read_all()


def _get(ticket: bytes) -> Callable[[flight.FlightClient], Any]:
    return lambda c: c.do_get(flight.Ticket(ticket)).read_all()


def _info(descriptor: flight.FlightDescriptor) -> Callable[[flight.FlightClient], Any]:
    return lambda c: c.get_flight_info(descriptor)


def _schema(descriptor: flight.FlightDescriptor) -> Callable[[flight.FlightClient], Any]:
    return lambda c: c.get_schema(descriptor)


def _action(name: str, body: bytes = b"") -> Callable[[flight.FlightClient], Any]:
    return lambda c: list(c.do_action(flight.Action(name, body)))


INVALID = (pa.ArrowInvalid, "INVALID_ARGUMENT")
NOT_FOUND = (pa.ArrowKeyError, "NOT_FOUND")
UNIMPLEMENTED = (pa.ArrowNotImplementedError, "UNIMPLEMENTED")
UNAVAILABLE = (flight.FlightUnavailableError, "UNAVAILABLE")
PATH = flight.FlightDescriptor.for_path
CMD = flight.FlightDescriptor.for_command

ERROR_CASES: list[tuple[str, Callable[[flight.FlightClient], Any], tuple[type, str], str, str]] = [
    ("get-ambiguous", _get(b"ETH/USDT?latest=1"), INVALID, "AmbiguousExchange",
     "symbol 'ETH/USDT' is buffered on several exchanges; add exchange= one of: binance, bybit"),
    ("get-unknown-symbol", _get(b"XRP/USDT"), NOT_FOUND, "UnknownSymbol",
     "unknown symbol 'XRP/USDT'; buffered: BTC/USDT, ETH/USDT, SOL/USDT"),
    ("get-symbol-not-on-exchange", _get(b"BTC/USDT?exchange=bybit"), NOT_FOUND, "UnknownSymbol",
     "unknown symbol 'BTC/USDT' on bybit; buffered: ETH/USDT, SOL/USDT"),
    ("get-unknown-exchange", _get(b"BTC/USDT?exchange=kraken"), NOT_FOUND, "UnknownExchange",
     "unknown exchange 'kraken'; buffered: binance, bybit"),
    ("get-snapshot-unknown-exchange", _get(b"*?exchange=kraken"), NOT_FOUND, "UnknownExchange",
     "unknown exchange 'kraken'"),
    ("get-events-unknown-exchange", _get(b"@events?exchange=kraken"), NOT_FOUND,
     "UnknownExchange", "unknown exchange 'kraken'"),
    ("get-follow-unknown", _get(b"XRP/USDT?follow=true"), NOT_FOUND, "UnknownSymbol",
     "unknown symbol 'XRP/USDT'"),
    ("get-bad-param", _get(b"BTC/USDT?limit=5"), INVALID, "InvalidTicket",
     "unknown parameter 'limit'; allowed: latest, start, end, exchange, columns, follow"),
    ("get-bad-column", _get(b"BTC/USDT?columns=price,bogus"), INVALID, "InvalidTicket",
     "unknown column 'bogus'"),
    ("get-bad-time", _get(b"BTC/USDT?start=yesterday"), INVALID, "InvalidTicket",
     "invalid start 'yesterday'; expected Unix milliseconds or ISO-8601"),
    ("get-duplicate", _get(b"BTC/USDT?latest=1&latest=2"), INVALID, "InvalidTicket",
     "parameter 'latest' is given twice"),
    ("get-empty", _get(b""), INVALID, "InvalidTicket", "ticket is empty"),
    ("get-non-utf8", _get(b"BTC/\xffUSDT"), INVALID, "InvalidTicket",
     "ticket is not valid UTF-8"),
    ("get-hostile", _get(b"__import__('os')"), INVALID, "InvalidTicket", "invalid symbol"),
    ("get-too-large", _get(b"BTC/USDT?columns=" + b"x" * 5000), INVALID, "RequestTooLarge",
     "ticket is 5017 bytes; the limit is 4096"),
    ("info-unknown", _info(PATH("XRP/USDT")), NOT_FOUND, "UnknownSymbol",
     "unknown symbol 'XRP/USDT'"),
    ("info-ambiguous", _info(CMD(b'{"symbol": "ETH/USDT"}')), INVALID, "AmbiguousExchange",
     "add exchange= one of: binance, bybit"),
    ("info-bad-path", _info(PATH("a", "b", "trades", "d")), INVALID, "InvalidDescriptor",
     "descriptor path has 4 elements; expected [symbol], [exchange, symbol] or "
     "[exchange, symbol, channel]"),
    ("info-bad-json", _info(CMD(b'{"symbol": ')), INVALID, "InvalidDescriptor",
     "descriptor command is not valid JSON"),
    ("info-json-types", _info(CMD(b'{"symbol": "BTC/USDT", "latest": "5"}')), INVALID,
     "InvalidDescriptor", "\"latest\" must be an integer, got '5'"),
    ("info-bad-ticket", _info(CMD(b"BTC/USDT?latest=x")), INVALID, "InvalidDescriptor",
     "descriptor command: invalid latest 'x'"),
    ("info-too-large", _info(CMD(b"B" * 4097)), INVALID, "RequestTooLarge",
     "descriptor command is 4097 bytes; the limit is 4096"),
    ("schema-unknown", _schema(PATH("binance", "XRP/USDT")), NOT_FOUND, "UnknownSymbol",
     "unknown symbol 'XRP/USDT' on binance"),
    ("schema-bad", _schema(PATH("Binance", "BTC/USDT")), INVALID, "InvalidDescriptor",
     "invalid exchange 'Binance'"),
    ("action-unknown", _action("drop_everything"), UNIMPLEMENTED, "UnknownAction",
     "unknown action 'drop_everything'; available: subscribe, unsubscribe, clear, status"),
    ("action-bad-body", _action("status", b"[1]"), INVALID, "InvalidActionBody",
     "status body must be a JSON object such as {}, got [1]"),
    ("action-bad-key", _action("clear", b'{"symbol": "BTC/USDT"}'), INVALID,
     "InvalidActionBody", "unknown key 'symbol' in clear body; allowed: exchange, symbols"),
    ("action-too-large", _action("clear", b" " * 4097), INVALID, "RequestTooLarge",
     "clear body is 4097 bytes; the limit is 4096"),
    ("clear-unknown-symbol", _action("clear", b'{"symbols": ["XRP/USDT"]}'), NOT_FOUND,
     "UnknownSymbol", "unknown symbol 'XRP/USDT'"),
    ("clear-unknown-exchange", _action("clear", b'{"exchange": "kraken"}'), NOT_FOUND,
     "UnknownExchange", "unknown exchange 'kraken'"),
    ("clear-ambiguous", _action("clear", b'{"symbols": ["BTC/USDT", "ETH/USDT"]}'), INVALID,
     "AmbiguousExchange", "add exchange= one of: binance, bybit"),
    ("subscribe-no-ingestion", _action("subscribe", b'{"symbols": ["XRP/USDT"]}'), UNAVAILABLE,
     "Unavailable", "subscribe needs ingestion, which is not running on this server"),
    ("unsubscribe-no-ingestion", _action("unsubscribe", b'{"symbols": ["BTC/USDT"]}'),
     UNAVAILABLE, "Unavailable", "unsubscribe needs ingestion"),
    ("do-put", _do_put, UNIMPLEMENTED, "UnknownAction", "DoPut takes only Flight SQL"),
    ("do-exchange", _do_exchange, UNIMPLEMENTED, "UnknownAction", "DoExchange is not supported"),
]


@pytest.mark.parametrize(("call", "wire", "counted", "fragment"),
                         [case[1:] for case in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_errors_map_to_status_codes(server: Any, call: Callable[[flight.FlightClient], Any],
                                    wire: tuple[type, str], counted: str, fragment: str) -> None:
    exc_type, code = wire
    with pytest.raises(exc_type) as info:
        call(server.client)
    message = str(info.value)
    assert fragment in message
    assert_clean(message)
    if "gRPC client debug context" in message:
        assert f"gRPC client debug context: {code}:" in message
    else:
        # DoAction errors carry no debug context; the exception class is the status code
        # (pyarrow's client maps INVALID_ARGUMENT -> ArrowInvalid, NOT_FOUND -> ArrowKeyError,
        # UNIMPLEMENTED -> ArrowNotImplementedError).
        assert isinstance(info.value, exc_type)
    # Counted by class, once.
    assert status(server.client)["server"]["refused_requests"] == {counted: 1}
    # The server keeps serving.
    assert get(server.client, "BTC/USDT?latest=1").num_rows == 1


def test_do_get_debug_context_names_the_code(server: Any) -> None:
    with pytest.raises(pa.ArrowInvalid) as info:
        get(server.client, "BTC/USDT?latest=-1")
    assert "gRPC client debug context: INVALID_ARGUMENT" in str(info.value)
    with pytest.raises(pa.ArrowKeyError) as not_found:
        get(server.client, "NOPE/USDT")
    assert "gRPC client debug context: NOT_FOUND" in str(not_found.value)


def test_refused_requests_accumulate(server: Any) -> None:
    for _ in range(3):
        with pytest.raises(pa.ArrowKeyError):
            get(server.client, "XRP/USDT")
    with pytest.raises(pa.ArrowInvalid):
        get(server.client, "?")
    assert status(server.client)["server"]["refused_requests"] == {"UnknownSymbol": 3,
                                                                   "InvalidTicket": 1}


def test_authorize_errors_and_unexpected_failures(
        md_server_factory: Callable[..., Any]) -> None:
    calls: list[bool] = []

    def authorize(context: flight.ServerCallContext, mutating: bool) -> None:
        calls.append(mutating)
        if len(calls) == 1:
            raise errors.Unauthenticated("no bearer token; send 'authorization: Bearer <token>'")
        if len(calls) == 2:
            raise RuntimeError('boom in File "/srv/secret.py", line 3')
        if mutating:
            raise errors.PermissionDenied("this token is read-only; clear needs an admin token")

    buffer = MarketDataBuffer(100)
    buffer.append(tick(1))
    harness = md_server_factory(buffer, authorize=authorize)
    client = harness.client
    with pytest.raises(flight.FlightUnauthenticatedError) as unauthenticated:
        get(client, "BTC/USDT")
    assert "no bearer token" in str(unauthenticated.value)
    with pytest.raises(flight.FlightInternalError) as internal:
        get(client, "BTC/USDT")
    message = str(internal.value)
    assert "internal error in DoGet (incident " in message
    assert "details are in the server log" in message
    assert "boom" not in message and "secret" not in message
    assert_clean(message)
    with pytest.raises(flight.FlightUnauthorizedError, match="read-only"):
        act(client, "clear")
    assert calls[-1] is True
    refused = status(client)["server"]["refused_requests"]
    assert refused == {"Unauthenticated": 1, "internal": 1, "PermissionDenied": 1}
    assert calls[-1] is False  # status is not a mutating action


# -- live tails --------------------------------------------------------------------------------


class Tail:
    """Reads a live tail on a thread, noting when each row arrives."""

    def __init__(self, client: flight.FlightClient, ticket: str, want: int) -> None:
        self.reader = client.do_get(flight.Ticket(ticket.encode()))
        self.want = want
        self.rows: list[dict[str, Any]] = []
        self.arrived: list[float] = []
        self.error: BaseException | None = None
        self.got_all = threading.Event()
        self.progress = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while len(self.rows) < self.want:
                chunk = self.reader.read_chunk()
                now = time.monotonic()
                new = chunk.data.to_pylist()
                with self.progress:
                    self.rows += new
                    self.arrived += [now] * len(new)
                    self.progress.notify_all()
            self.got_all.set()
        except (StopIteration, flight.FlightError, pa.ArrowException) as exc:  # end, or error
            self.error = exc
            with self.progress:
                self.progress.notify_all()

    def wait_rows(self, n: int, timeout: float) -> None:
        with self.progress:
            ok = self.progress.wait_for(lambda: len(self.rows) >= n or self.error is not None,
                                        timeout)
        assert ok, f"got {len(self.rows)} of {n} rows within {timeout:.1f}s"

    def finish(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.reader.cancel()
            self.thread.join(timeout)
            pytest.fail(f"live tail got {len(self.rows)} of {self.want} rows in time")


def test_live_tail_backlog_then_every_tick_in_order(md_server_factory: Callable[..., Any],
                                                    time_scale: float) -> None:
    buffer = MarketDataBuffer(100_000)
    buffer.extend(tick(i) for i in range(100))
    harness = md_server_factory(buffer)
    new = 600
    tail = Tail(harness.client, "BTC/USDT?follow=true&latest=10", want=10 + new)
    tail.wait_rows(10, 5 * time_scale)
    assert [r["timestamp"] for r in tail.rows] == list(range(90, 100))
    until(lambda: followers(buffer, "binance", "BTC/USDT") == 1, 5, "follower")
    for i in range(100, 100 + new):
        buffer.append(tick(i))
        if i % 50 == 0:
            # Bursts, then a pause with nothing appended: the tail must flush on its own
            # (a tail that only sent full batches would never deliver these rows).
            tail.wait_rows(10 + i - 100 + 1, 5 * time_scale)
    tail.finish(10 * time_scale)
    assert tail.error is None
    stamps = [r["timestamp"] for r in tail.rows]
    assert stamps == list(range(90, 100 + new)), "ticks lost, duplicated or reordered"
    assert all(r["price"] == 2.0 * r["timestamp"] for r in tail.rows)
    assert tail.rows[-1] == buffer.get_latest_sync("BTC/USDT", 1).to_pylist()[0]
    tail.reader.cancel()


def test_live_tail_with_start_columns_and_exchange(md_server_factory: Callable[..., Any],
                                                   time_scale: float) -> None:
    buffer = MarketDataBuffer(1000)
    buffer.extend(tick(i, "ETH/USDT", "bybit") for i in range(50))
    buffer.extend(tick(i, "ETH/USDT", "binance") for i in range(50))
    harness = md_server_factory(buffer)
    tail = Tail(harness.client, "ETH/USDT?follow=true&exchange=bybit&start=45&columns=price",
                want=5 + 3)
    tail.wait_rows(5, 5 * time_scale)
    until(lambda: followers(buffer, "bybit", "ETH/USDT") == 1, 5, "follower")
    buffer.append(tick(99, "ETH/USDT", "binance"))  # another exchange: not in this tail
    buffer.extend(tick(i, "ETH/USDT", "bybit", ts=i) for i in (10, 60, 61))  # no range filter
    tail.finish(10 * time_scale)
    assert tail.rows == [{"price": 2.0 * i} for i in (45, 46, 47, 48, 49, 10, 60, 61)]
    tail.reader.cancel()


@pytest.mark.parametrize("ticket", ["BTC/USDT?follow=true&start=98",
                                    "BTC/USDT?follow=true&latest=2"], ids=["start", "latest"])
def test_live_tail_misses_no_tick_appended_while_it_opens(
        md_server_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
        time_scale: float, ticket: str) -> None:
    """A tick appended while a live tail opens is in its backlog or its tail, exactly once.

    Ingestion appends from its own thread at any moment. Here a real second thread appends
    tick 100 at the worst moment: as soon as the server's ``follow()`` has read the backlog
    (``segments_between`` for ``start=``, ``snapshot`` for ``latest=``), before its follower
    exists. Nothing but the ring's lock holds that append back: wherever ``follow()`` runs
    with the lock released before its follower is registered (the backlog read itself, or
    building the backlog table), the append is let through there and then, so a tail that
    does not take both under one lock loses tick 100.
    """
    buffer = MarketDataBuffer(1000)
    buffer.extend(tick(i) for i in range(100))
    harness = md_server_factory(buffer)
    raced: dict[str, Any] = {}
    backlog_read = "segments_between" if "start=" in ticket else "snapshot"
    read_original = getattr(buffer_module._Ring, backlog_read)
    table_original = buffer_module._Ring.table

    def let_the_append_through(ring: Any) -> None:
        """Outside the lock: wait until the racing append has landed."""
        appender = raced.get("appender")
        if appender is not None and "landed" not in raced and not ring.lock.locked():
            raced["landed"] = len(ring.followers)
            appender.join(5 * time_scale)

    def read_backlog_then_race(ring: Any, *args: Any) -> list[pa.RecordBatch]:
        held = ring.lock.locked()  # no other thread appends in this test: held by follow()
        batches = read_original(ring, *args)
        if "appender" not in raced:
            raced["followers_before"] = len(ring.followers)
            raced["appender"] = threading.Thread(target=buffer.append, args=(tick(100),),
                                                 daemon=True)
            raced["appender"].start()
            if not held:
                let_the_append_through(ring)
        return batches

    def build_table(ring: Any, *args: Any) -> pa.Table:
        let_the_append_through(ring)
        return table_original(ring, *args)

    monkeypatch.setattr(buffer_module._Ring, backlog_read, read_backlog_then_race)
    monkeypatch.setattr(buffer_module._Ring, "table", build_table)
    tail = Tail(harness.client, ticket, want=4)
    until(lambda: followers(buffer, "binance", "BTC/USDT") == 1, 5, "follower")
    assert "appender" in raced, f"the race never ran: follow() did not call {backlog_read}"
    assert raced["followers_before"] == 0, "the append did not race the follower's start"
    raced["appender"].join(5 * time_scale)
    assert not raced["appender"].is_alive(), "the racing append never finished"
    monkeypatch.undo()
    buffer.append(tick(101))
    until(lambda: tail.rows and tail.rows[-1]["timestamp"] == 101, 10, "tick 101 in the tail")
    assert tail.error is None
    assert [r["timestamp"] for r in tail.rows] == [98, 99, 100, 101]
    tail.finish(10 * time_scale)
    tail.reader.cancel()


def test_live_tail_cancel_removes_the_follower(md_server_factory: Callable[..., Any],
                                               time_scale: float) -> None:
    buffer = MarketDataBuffer(1000)
    buffer.extend(tick(i) for i in range(10))
    harness = md_server_factory(buffer)
    reader = harness.client.do_get(flight.Ticket(b"BTC/USDT?follow=true&latest=2"))
    assert reader.read_chunk().data.num_rows == 2
    until(lambda: followers(buffer, "binance", "BTC/USDT") == 1, 5, "follower")
    reader.cancel()
    until(lambda: followers(buffer, "binance", "BTC/USDT") == 0, 5,
             "the server to end the cancelled tail")
    # A client process that dies ends its tail too.
    code = (f"import sys, pyarrow.flight as f\n"
            f"r = f.FlightClient({harness.location!r}).do_get(f.Ticket(b'BTC/USDT?follow=true'))\n"
            f"r.read_chunk()\nprint('reading', flush=True)\nsys.stdin.read()\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline() == b"reading\n"
        assert followers(buffer, "binance", "BTC/USDT") == 1
    finally:
        process.kill()
        process.wait(10 * time_scale)
    until(lambda: followers(buffer, "binance", "BTC/USDT") == 0, 5,
             "the server to end the tail of a dead client")
    assert status(harness.client)["server"]["refused_requests"] == {}


def test_slow_reader_fails_alone(md_server_factory: Callable[..., Any],
                                 time_scale: float) -> None:
    buffer = MarketDataBuffer(100_000)
    buffer.extend(tick(i) for i in range(10))
    buffer.extend(tick(i, "ETH/USDT") for i in range(10))
    harness = md_server_factory(buffer, follow_max_lag=100)
    slow = harness.client.do_get(flight.Ticket(b"BTC/USDT?follow=true&latest=1"))
    assert slow.read_chunk().data.num_rows == 1
    other = harness.connect()
    healthy = Tail(other, "ETH/USDT?follow=true&latest=0", want=40)
    until(lambda: followers(buffer, "binance", "ETH/USDT") == 1, 5, "follower")

    # Many ticks while the slow client reads nothing: appends never wait for it.
    burst = threading.Thread(target=buffer.extend,
                             args=([tick(i) for i in range(10, 200_010)],))
    burst.start()
    for i in range(10, 50):
        buffer.append(tick(i, "ETH/USDT"))
        # Other clients are served meanwhile.
        assert get(harness.client, "ETH/USDT?latest=1").column("timestamp")[0].as_py() == i
    burst.join(30 * time_scale)
    assert not burst.is_alive(), "appends blocked behind a slow live tail"
    healthy.finish(10 * time_scale)
    assert [r["timestamp"] for r in healthy.rows] == list(range(10, 50))

    with pytest.raises(flight.FlightCancelledError) as info:
        while True:
            slow.read_chunk()
    assert info.value.extra_info == b"slow_consumer"
    message = str(info.value)
    assert "live tail of 'BTC/USDT' on binance fell" in message
    assert "(limit 100); read faster or resume with a new request" in message
    assert_clean(message)
    until(lambda: followers(buffer, "binance", "BTC/USDT") == 0, 5,
             "the slow tail to be dropped")
    assert status(harness.client)["server"]["refused_requests"] == {"SlowConsumer": 1}
    healthy.reader.cancel()


# -- shutdown ---------------------------------------------------------------------------------


def _stop_in_thread(server: Any, grace: float | None) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        out["clean"] = server.stop() if grace is None else server.stop(grace)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_stop_with_an_idle_live_tail(md_server_factory: Callable[..., Any], time_scale: float,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """An idle live tail ends at its next check (UNAVAILABLE, ``server_shutdown``): stop()
    is clean and severs nothing.

    The join bound (3 times the grace) is there only to report a hang.
    """
    caplog.set_level("WARNING", logger="flight_md.service")
    buffer = MarketDataBuffer(1000)
    buffer.extend(tick(i) for i in range(10))
    harness = md_server_factory(buffer)
    reader = harness.client.do_get(flight.Ticket(b"BTC/USDT?follow=true"))
    until(lambda: followers(buffer, "binance", "BTC/USDT") == 1, 5, "follower")
    thread, out = _stop_in_thread(harness.server, 2.0 * time_scale)
    thread.join(6 * time_scale)
    assert not thread.is_alive(), "stop() hung on an idle live tail"
    assert out["clean"] is True
    assert not [r for r in caplog.records if "severed" in r.getMessage()], caplog.text
    assert followers(buffer, "binance", "BTC/USDT") == 0
    with pytest.raises(flight.FlightUnavailableError, match="server is shutting down") as ended:
        while True:
            reader.read_chunk()
    assert ended.value.extra_info == b"server_shutdown"
    assert harness.server.stop() is True  # idempotent


def test_stop_with_unread_streams(md_server_factory: Callable[..., Any], time_scale: float,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """stop() with streams nobody reads severs their connections, says so, and ends clean.

    A live tail whose client reads nothing is fed until the server is blocked writing to
    it (its follower stops moving with far more rows queued than one write holds): such a
    stream cannot end at its next check, so stop must sever it after the grace period.
    """
    rows = 100_000  # ~10 MB a stream: unread DoGets of plain tables as well
    buffer = MarketDataBuffer(400_000)
    buffer.extend([MarketTick("BTC/USDT", i, float(i), None, None, None, None, None, None, None,
                              "binance", i) for i in range(rows)])
    buffer.append(tick(1, "ETH/USDT"))
    harness = md_server_factory(buffer)
    big = [harness.connect().do_get(flight.Ticket(b"BTC/USDT")) for _ in range(2)]
    tail = harness.connect().do_get(flight.Ticket(b"ETH/USDT?follow=true"))
    until(lambda: followers(buffer, "binance", "ETH/USDT") == 1, 5, "follower")
    follower = the_follower(buffer, "binance", "ETH/USDT")
    fed = {"next": 2, "cursor": -1}

    def blocked_writing() -> bool:
        """Feed the tail; true once its cursor stood still over a whole feed."""
        buffer.extend(tick(i, "ETH/USDT") for i in range(fed["next"], fed["next"] + 20_000))
        fed["next"] += 20_000
        cursor, fed["cursor"] = fed["cursor"], follower.cursor
        return cursor == follower.cursor and fed["next"] - cursor > 100_000

    until(blocked_writing, 30, "the unread live tail to block on its client")
    caplog.set_level("WARNING", logger="flight_md.service")
    thread, out = _stop_in_thread(harness.server, None)  # the default grace, as users call it
    # stop() takes about 2 * grace (2 s each); only a hang outlasts this bound.
    thread.join(20 * time_scale)
    assert not thread.is_alive(), "stop() hung on streams nobody reads"
    assert out["clean"] is True
    severed = [r for r in caplog.records if "severed" in r.getMessage()]
    assert len(severed) == 1, caplog.text
    assert severed[0].levelname == "WARNING"
    assert severed[0].getMessage().startswith("shutdown: ")
    assert followers(buffer, "binance", "ETH/USDT") == 0
    del big, tail

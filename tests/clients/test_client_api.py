"""MarketDataClient against a real server: every read, every action, every error."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
import trustme
from client_support import ROWS, STEP_MS, IngestingMarket, refused_port, running_server
from flight_md_client import (
    ConnectionFailed,
    FlightMdClientError,
    InvalidLocation,
    InvalidRequest,
    MarketDataClient,
    NotFound,
    PermissionDenied,
    SymbolInfo,
    TimedOut,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    format_ms,
    ticket,
    to_ms,
)
from flight_md_client.errors import clean_message
from hypothesis import given
from hypothesis import strategies as st
from pyarrow import flight

from flight_md.buffer import MarketDataBuffer
from flight_md.config import Secret
from flight_md.schema import EVENT_SCHEMA, SCHEMA, now_ms
from flight_md.service import FlightMarketDataServer
from flight_md.tickets import parse_ticket, parse_time


def _start(server: FlightMarketDataServer) -> int:
    return int(server.test_start)  # type: ignore[attr-defined]


# -- reads -----------------------------------------------------------------------------------


def test_symbols_lists_every_buffer_with_its_record_count(md: MarketDataClient) -> None:
    symbols = md.symbols()
    assert symbols == [
        SymbolInfo("binance", "BTC/USDT", ROWS, "BTC/USDT?exchange=binance"),
        SymbolInfo("binance", "ETH/USDT", ROWS, "ETH/USDT?exchange=binance"),
        SymbolInfo("binance", "SOL/USDT", 10, "SOL/USDT?exchange=binance"),
        SymbolInfo("bybit", "SOL/USDT", 10, "SOL/USDT?exchange=bybit"),
    ]
    assert [s.symbol for s in md.symbols("bybit")] == ["SOL/USDT"]
    assert md.get(symbols[0].ticket).num_rows == ROWS


def test_latest_returns_the_newest_rows_oldest_first(md: MarketDataClient,
                                                     server: FlightMarketDataServer) -> None:
    table = md.latest("BTC/USDT", 3)
    assert table.schema == SCHEMA
    assert table.column("price").to_pylist() == [100.0 + ROWS - 3, 100.0 + ROWS - 2,
                                                 100.0 + ROWS - 1]
    assert table.column("timestamp").to_pylist()[-1] == _start(server) + (ROWS - 1) * STEP_MS
    assert md.latest("BTC/USDT").num_rows == 100
    assert md.latest("BTC/USDT", 10**6).num_rows == ROWS  # above the buffer: clamps
    empty = md.latest("BTC/USDT", 0)
    assert empty.num_rows == 0 and empty.schema == SCHEMA


def test_columns_take_a_list_or_a_comma_separated_string(md: MarketDataClient) -> None:
    assert md.latest("ETH/USDT", 2, columns=["timestamp", "price"]).column_names == [
        "timestamp", "price"]
    assert md.latest("ETH/USDT", 2, columns="price,bid").column_names == ["price", "bid"]
    with pytest.raises(InvalidRequest, match=r"^unknown column 'nope'; allowed: symbol, "):
        md.latest("ETH/USDT", columns=["price", "nope"])
    with pytest.raises(TypeError, match="columns must be names"):
        md.latest("ETH/USDT", columns=[1])  # type: ignore[list-item]


def test_a_symbol_on_two_exchanges_needs_exchange(md: MarketDataClient) -> None:
    with pytest.raises(InvalidRequest, match="several exchanges; add exchange= one of: "
                                             "binance, bybit") as err:
        md.latest("SOL/USDT")
    assert isinstance(err.value, ValueError)
    assert md.latest("SOL/USDT", 1, exchange="bybit").column("price").to_pylist() == [69.0]
    assert md.latest("SOL/USDT", 1, exchange="binance").column("exchange").to_pylist() == [
        "binance"]


def test_range_accepts_every_time_form(md: MarketDataClient,
                                       server: FlightMarketDataServer) -> None:
    start = _start(server)
    t10 = start + 10 * STEP_MS
    t20 = start + 20 * STEP_MS
    aware = datetime.fromtimestamp(t10 / 1000, tz=UTC)
    naive = aware.replace(tzinfo=None)  # naive means UTC
    plus_one = aware.astimezone(timezone(timedelta(hours=1)))
    forms = [t10, aware, naive, plus_one, aware.isoformat().replace("+00:00", "Z"),
             plus_one.isoformat(), str(t10), np.datetime64(t10, "ms")]
    for form in forms:
        table = md.range("BTC/USDT", start=form, end=t20, columns=["price"])
        assert table.column("price").to_pylist() == [100.0 + i for i in range(10, 20)], form


def test_range_bounds_are_inclusive_exclusive_and_optional(md: MarketDataClient,
                                                            server: FlightMarketDataServer
                                                            ) -> None:
    start = _start(server)
    assert md.range("BTC/USDT").num_rows == ROWS
    assert md.range("BTC/USDT", end=start + 5 * STEP_MS).num_rows == 5
    assert md.range("BTC/USDT", start + (ROWS - 5) * STEP_MS).num_rows == 5
    newest = md.range("BTC/USDT", start, start + 50 * STEP_MS, latest=3, columns="price")
    assert newest.column("price").to_pylist() == [147.0, 148.0, 149.0]


def test_range_with_timedelta_means_before_now(md: MarketDataClient) -> None:
    stamps = md.range("ETH/USDT", columns=["timestamp"]).column("timestamp").to_pylist()
    before = now_ms()
    rows = md.range("ETH/USDT", start=timedelta(seconds=30)).num_rows
    after = now_ms()
    # "30 s before now", now being some instant of the call: exactly the ticks from there on
    assert rows in {sum(t >= now - 30_000 for t in stamps) for now in range(before, after + 1)}
    assert md.range("ETH/USDT", start=timedelta(hours=1)).num_rows == ROWS
    assert md.range("ETH/USDT", start=date(2000, 1, 1)).num_rows == ROWS


def test_bad_times_are_refused_before_sending(md: MarketDataClient) -> None:
    with pytest.raises(TypeError, match=r"start=1\.5 has type float"):
        md.range("BTC/USDT", start=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is a bool"):
        md.range("BTC/USDT", start=True)
    with pytest.raises(ValueError, match="end='yesterday' is not a time"):
        md.range("BTC/USDT", end="yesterday")
    with pytest.raises(ValueError, match="between 1970-01-01 and 9999-12-31"):
        md.range("BTC/USDT", start=-5)
    with pytest.raises(InvalidRequest,
                       match=r"^start '2000' is after end '1000'; start must be <= end$"):
        md.range("BTC/USDT", start=2000, end=1000)


def test_snapshot_has_one_row_per_symbol(md: MarketDataClient) -> None:
    snap = md.snapshot()
    assert sorted(zip(snap.column("exchange").to_pylist(), snap.column("symbol").to_pylist())
                  ) == [("binance", "BTC/USDT"), ("binance", "ETH/USDT"),
                        ("binance", "SOL/USDT"), ("bybit", "SOL/USDT")]
    bybit = md.snapshot("bybit", columns=["symbol", "price"])
    assert bybit.to_pylist() == [{"symbol": "SOL/USDT", "price": 69.0}]
    with pytest.raises(NotFound, match="^unknown exchange 'kraken'"):
        md.snapshot("kraken")


def test_events_filter_like_ranges(md: MarketDataClient, server: FlightMarketDataServer) -> None:
    events = md.events()
    assert events.schema == EVENT_SCHEMA
    assert events.column("kind").to_pylist() == ["connect", "subscribe", "reconnect"]
    assert md.events("bybit").column("detail").to_pylist() == ["reset by peer"]
    assert md.events(latest=1).column("kind").to_pylist() == ["reconnect"]
    assert md.events(start=_start(server) + 1, end=_start(server) + 2).num_rows == 1
    assert md.events(start=timedelta(seconds=1)).num_rows == 0


def test_get_reads_any_raw_ticket(md: MarketDataClient) -> None:
    assert md.get("*?exchange=bybit&columns=price").to_pylist() == [{"price": 69.0}]
    with pytest.raises(InvalidRequest, match="^unknown parameter 'bogus'"):
        md.get("BTC/USDT?bogus=1")


def test_ticket_formatting_percent_encodes_like_the_server() -> None:
    assert ticket("BTC/USDT", latest=5, exchange=None) == "BTC/USDT?latest=5"
    assert ticket("X", start="2026-01-01T00:00:00+01:00") == (
        "X?start=2026-01-01T00:00:00%2B01:00")
    assert ticket("BTC/USDT", follow=True, columns="a,b") == "BTC/USDT?follow=true&columns=a,b"


# -- actions ---------------------------------------------------------------------------------


# Actions against real ingestion (status, subscribe, reconnects): test_client_ingestion.py.


def test_status_without_ingestion_has_no_exchanges(md: MarketDataClient) -> None:
    status = md.status()
    assert status["server"]["ingestion"] is False and status["exchanges"] == {}
    btc = next(s for s in status["symbols"] if s["symbol"] == "BTC/USDT")
    assert (btc["ticks_stored"], btc["subscribed"]) == (ROWS, False)


def test_clear_drops_stored_ticks(md: MarketDataClient) -> None:
    with pytest.raises(InvalidRequest, match="invalid symbol 'not a symbol' in subscribe"):
        md.subscribe(["not a symbol"])  # refused before it reaches ingestion

    assert md.clear("ETH/USDT") == ROWS
    assert md.latest("ETH/USDT").num_rows == 0
    assert md.clear(exchange="bybit") == 10
    assert md.clear() == ROWS + 10  # BTC/USDT and SOL/USDT on binance
    assert md.events(latest=1).column("kind").to_pylist() == ["clear"]


def test_subscribe_without_ingestion_is_unavailable(md: MarketDataClient) -> None:
    with pytest.raises(Unavailable, match="^subscribe needs ingestion") as err:
        md.subscribe("BTC/USDT")
    assert not isinstance(err.value, ConnectionFailed)


def test_actions_and_unknown_action(md: MarketDataClient) -> None:
    assert set(md.actions()) == {"subscribe", "unsubscribe", "clear", "status", "health", "flush",
                                 "CreatePreparedStatement", "ClosePreparedStatement"}  # Flight SQL
    with pytest.raises(Unimplemented, match="^unknown action 'explode'; available: subscribe, "
                                            "unsubscribe, clear, status, health, flush$"):
        md.action("explode")


# -- errors ----------------------------------------------------------------------------------


def test_not_found_carries_the_clean_server_message(md: MarketDataClient) -> None:
    with pytest.raises(NotFound) as err:
        md.latest("BTC/USDX")
    assert str(err.value) == ("unknown symbol 'BTC/USDX'; buffered: BTC/USDT, ETH/USDT, "
                              "SOL/USDT")
    assert err.value.message == str(err.value)
    assert isinstance(err.value, LookupError) and isinstance(err.value, FlightMdClientError)
    assert "Detail" in str(err.value.flight_error)  # the original stays available


def test_unreachable_server_is_connection_failed() -> None:
    with refused_port() as port, MarketDataClient(f"127.0.0.1:{port}") as md:
        # bare host:port means grpc://
        assert md.location == f"grpc://127.0.0.1:{port}"
        with pytest.raises(ConnectionFailed) as err:
            md.latest("BTC/USDT")
    assert str(err.value) == (f"cannot reach grpc://127.0.0.1:{port} (connection refused); "
                              "is `flight-md serve` running?")
    assert isinstance(err.value, ConnectionError) and isinstance(err.value, Unavailable)


def test_wait_ready(md: MarketDataClient) -> None:
    assert md.wait_ready(timeout=5) is md
    with refused_port() as port, MarketDataClient(f"grpc://127.0.0.1:{port}") as down, \
            pytest.raises(ConnectionFailed, match=r"\(connection refused\)"):
        down.wait_ready(timeout=0.3)


class _SlowServer(flight.FlightServerBase):  # type: ignore[misc]
    """A Flight server whose actions take longer than the client's deadline."""

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> list[bytes]:
        time.sleep(0.5)
        return [b"{}"]


def test_deadline_is_timed_out() -> None:
    with _SlowServer("grpc://127.0.0.1:0") as slow, \
            MarketDataClient(f"grpc://127.0.0.1:{slow.port}", timeout=0.1) as md:
        with pytest.raises(TimedOut, match="no answer from grpc://127.0.0.1:") as err:
            md.status()
        assert isinstance(err.value, TimeoutError)


def test_clean_message_strips_pyarrow_tails() -> None:
    raw = ("unknown symbol 'X'; buffered: A. Detail: Python exception: NotFound. gRPC client "
           "debug context: NOT_FOUND:unknown symbol 'X'. Client context: IOError: x")
    assert clean_message(raw) == "unknown symbol 'X'; buffered: A"
    assert clean_message("Flight returned unavailable error, with message: failed to connect. "
                         "gRPC client debug context: UNAVAILABLE:x") == "failed to connect"


# -- auth and TLS ----------------------------------------------------------------------------


@pytest.fixture
def secured() -> Iterator[str]:
    """A server with real ingestion and two tokens: one full, one read-only."""
    with IngestingMarket(auth_tokens=(Secret("full-token"),),
                         read_only_tokens=(Secret("read-token"),)) as rig:
        yield rig.location


def test_bearer_token_on_every_call(secured: str) -> None:
    with MarketDataClient(secured) as anonymous:
        with pytest.raises(Unauthenticated, match="^missing or invalid bearer token"):
            anonymous.latest("BTC/USDT")
        with pytest.raises(Unauthenticated):
            anonymous.tail("BTC/USDT")
    with MarketDataClient(secured, token="wrong") as wrong, pytest.raises(Unauthenticated):
        wrong.status()
    with MarketDataClient(secured, token="full-token") as md:
        assert "full-token" not in repr(md) and "token=***" in repr(md)
        assert md.latest("BTC/USDT", 1).num_rows == 1
        assert md.symbols() and md.status() and md.actions()
        assert md.subscribe("XRP/USDT")["subscribed"] == ["XRP/USDT"]
        with md.tail("BTC/USDT", backlog=2) as live:
            assert live.read_all(max_rows=2).num_rows == 2
    with MarketDataClient(secured, token=" read-token\n") as reader:
        assert reader.latest("BTC/USDT", 1).num_rows == 1
        with pytest.raises(PermissionDenied, match="^this token is read-only") as err:
            reader.subscribe("XRP/USDT")
        assert isinstance(err.value, PermissionError)


def test_tls_and_mutual_tls(tmp_path: pytest.TempPathFactory) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("analyst@example.com")
    ca_file = tmp_path / "ca.pem"  # type: ignore[operator]
    ca.cert_pem.write_to_path(str(ca_file))
    cert = server_cert.cert_chain_pems[0].bytes()
    key = server_cert.private_key_pem.bytes()
    buffer = MarketDataBuffer(10)
    from client_support import tick

    buffer.append(tick("BTC/USDT", 1_000, 1.0))
    with running_server(buffer, location="grpc+tls://127.0.0.1:0",
                        tls_certificates=[(cert, key)]) as server:
        location = f"grpc+tls://127.0.0.1:{server.port}"
        with MarketDataClient(location, tls_root_certs=ca_file) as md:
            assert md.latest("BTC/USDT").num_rows == 1
        with MarketDataClient(f"127.0.0.1:{server.port}",
                              tls_root_certs=ca.cert_pem.bytes()) as md:
            assert md.location == location
            assert md.latest("BTC/USDT").num_rows == 1
        with MarketDataClient(location) as untrusted, pytest.raises(ConnectionFailed):
            untrusted.latest("BTC/USDT")  # the system CAs do not know our CA
    with running_server(buffer, location="grpc+tls://127.0.0.1:0",
                        tls_certificates=[(cert, key)], verify_client=True,
                        root_certificates=ca.cert_pem.bytes()) as server:
        location = f"grpc+tls://127.0.0.1:{server.port}"
        chain = b"".join(p.bytes() for p in client_cert.cert_chain_pems)
        with MarketDataClient(location, tls_root_certs=ca.cert_pem.bytes(), cert_chain=chain,
                              private_key=client_cert.private_key_pem.bytes().decode()) as md:
            assert md.latest("BTC/USDT").num_rows == 1
        with MarketDataClient(location, tls_root_certs=ca.cert_pem.bytes()) as md, \
                pytest.raises(FlightMdClientError):
            md.latest("BTC/USDT")  # no client certificate


def test_constructor_checks_its_arguments(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(ValueError, match="TLS options need a grpc\\+tls:// location"):
        MarketDataClient("grpc://127.0.0.1:1", tls_root_certs=b"-----BEGIN CERTIFICATE-----")
    with pytest.raises(ValueError, match="needs both cert_chain and private_key"):
        MarketDataClient("grpc+tls://127.0.0.1:1", cert_chain=b"x")
    with pytest.raises(ValueError, match="tls_root_certs: cannot read"):
        MarketDataClient("grpc+tls://127.0.0.1:1",
                         tls_root_certs=tmp_path / "missing.pem")  # type: ignore[operator]
    with pytest.raises(ValueError, match="token is empty"):
        MarketDataClient(token="  ")
    with pytest.raises(InvalidLocation) as bad:
        MarketDataClient("carrier-pigeon://x")
    assert isinstance(bad.value, ValueError)  # refused before sending: not a server error
    assert (bad.value.location, bad.value.reason) == (
        "carrier-pigeon://x", "No client transport implementation for carrier-pigeon")
    assert str(bad.value) == ("invalid location 'carrier-pigeon://x': No client transport "
                              "implementation for carrier-pigeon")
    with pytest.raises(InvalidLocation, match="^invalid location 'grpc://host:port'"):
        MarketDataClient("host:port")  # a bare host:port gets grpc:// first


def test_argument_types_are_checked(md: MarketDataClient) -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        md.latest("BTC/USDT", -1)
    with pytest.raises(TypeError, match="n must be an int"):
        md.latest("BTC/USDT", True)
    with pytest.raises(TypeError, match="symbols must be a symbol or a list"):
        md.subscribe([1])  # type: ignore[list-item]


def test_close_is_idempotent_and_final(location: str) -> None:
    md = MarketDataClient(location)
    assert md.latest("BTC/USDT", 1).num_rows == 1
    md.close()
    md.close()
    assert "closed" in repr(md)
    with pytest.raises(RuntimeError, match="closed"):
        md.latest("BTC/USDT")


def test_one_client_serves_many_threads(md: MarketDataClient) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                results.append(md.latest("BTC/USDT", 50).num_rows)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and results == [50] * 160


# -- time arguments --------------------------------------------------------------------------


def test_to_ms_forms() -> None:
    assert to_ms(datetime(2026, 11, 23, 10, 0, 0, 123456)) == 1_795_428_000_123
    assert to_ms(datetime(2026, 11, 23, 11, tzinfo=timezone(timedelta(hours=1)))) == (
        1_795_428_000_000)
    assert to_ms(date(1970, 1, 2)) == 86_400_000
    assert to_ms("2026-11-23T10:00:00Z") == to_ms("2026-11-23T10:00:00") == 1_795_428_000_000
    assert to_ms("2026-11-23T11:00:00+01:00") == 1_795_428_000_000
    assert to_ms(" 42 ") == 42 and to_ms(0) == 0
    assert to_ms(timedelta(minutes=5), now_ms=1_000_000) == 700_000
    assert to_ms(timedelta(minutes=-1), now_ms=0) == 60_000
    assert to_ms(np.datetime64("1970-01-01T00:00:01.5")) == 1500
    assert to_ms(pa.scalar(5, pa.timestamp("ms")).as_py()) == 5
    assert format_ms(1_795_428_000_123) == "2026-11-23T10:00:00.123Z"
    with pytest.raises(TypeError):
        to_ms(None)


def test_to_ms_takes_now_and_ages_before_now() -> None:
    """The forms a command line uses (``flight-md get --start 5m``): the terminal's parser."""
    now = 1_000_000_000
    assert to_ms("now", now_ms=now) == to_ms(" NOW ", now_ms=now) == now
    assert to_ms("5m", now_ms=now) == now - 300_000
    assert to_ms("90s", now_ms=now) == to_ms("90s ago", now_ms=now) == to_ms("-90s", now_ms=now)
    assert to_ms("90s", now_ms=now) == now - 90_000
    assert to_ms("1.5h", now_ms=now) == now - 5_400_000
    assert to_ms("2d", now_ms=now) == now - 172_800_000
    assert to_ms("250ms", now_ms=now) == now - 250
    assert to_ms("1D", now_ms=now) == now - 86_400_000  # units in any case, like "now"
    before = now_ms()
    assert before - 60_000 <= to_ms("1m") <= now_ms() - 60_000  # the wall clock by default
    assert to_ms("5", now_ms=now) == 5  # digits are Unix ms; a unit makes an age
    with pytest.raises(ValueError, match=r"^start='-5' is not a time; expected"):
        to_ms("-5", "start", now_ms=now)
    for bad in ("5 minutes", "5x", "m5", "yesterday", "½"):
        with pytest.raises(ValueError, match=(rf"^end={bad!r} is not a time; expected ISO-8601 "
                                              r"such as '2026-11-23T10:00:00Z', Unix "
                                              r"milliseconds, 'now', or an age such as '90s'")):
            to_ms(bad, "end", now_ms=now)
    with pytest.raises(ValueError, match="between 1970-01-01 and 9999-12-31"):
        to_ms("2d", now_ms=1000)  # before 1970


def test_range_takes_an_age(md: MarketDataClient) -> None:
    stamps = md.latest("ETH/USDT", ROWS, columns="timestamp").column("timestamp").to_pylist()
    before = now_ms()
    rows = md.range("ETH/USDT", start="30s").num_rows
    after = now_ms()
    # "30 s ago", now being some instant of the call: exactly the ticks from there on
    assert rows in {sum(t >= now - 30_000 for t in stamps) for now in range(before, after + 1)}


# -- the client's encoding agrees with the server's grammar ----------------------------------

_SYMBOLS = st.from_regex(r"[A-Za-z0-9/_:.\-]{1,64}", fullmatch=True)
_TIMES = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
                      timezones=st.sampled_from([UTC, None,
                                                 timezone(timedelta(hours=5, minutes=30)),
                                                 timezone(timedelta(hours=-8))]))


@given(symbol=_SYMBOLS, latest=st.none() | st.integers(0, 2**31 - 1),
       start=st.none() | _TIMES, exchange=st.none() | st.from_regex(r"[a-z0-9_\-]{1,32}",
                                                                    fullmatch=True),
       columns=st.none() | st.lists(st.sampled_from(SCHEMA.names), min_size=1, unique=True),
       follow=st.booleans())
def test_client_tickets_parse_on_the_server(symbol: str, latest: int | None,
                                            start: datetime | None, exchange: str | None,
                                            columns: list[str] | None, follow: bool) -> None:
    start_text = None if start is None else start.isoformat()
    text = ticket(symbol, latest=latest, start=start_text, exchange=exchange,
                  columns=None if columns is None else ",".join(columns), follow=follow)
    query = parse_ticket(text)
    assert (query.symbol, query.latest, query.exchange, query.follow) == (
        symbol, latest, exchange, follow)
    assert query.columns == (None if columns is None else tuple(columns))
    assert query.start == (None if start is None else to_ms(start))
    if start is not None:
        assert to_ms(start) == parse_time(start_text or "")

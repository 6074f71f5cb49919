"""Flight SQL safety: read-only, bounded, cancellable, specific errors, and the server serves on.

Raw Flight SQL messages through a plain ``pyarrow.flight`` client, so each case checks the
exact status (pyarrow raises ``ArrowInvalid`` for INVALID_ARGUMENT, ``ArrowNotImplementedError``
for UNIMPLEMENTED, ``FlightUnavailableError`` for UNAVAILABLE). After every refusal the same
server answers a query.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import flight

from flight_md.sql import flight_sql_pb2 as pb
from flight_md.sql.frontend import MAX_COMMAND_BYTES
from flight_md.sql.protocol import TYPE_URL_PREFIX, pack
from tests.sql.conftest import TOTAL, MemorySource, SqlOnlyServer, market, serving, uri
from tests.support import until

HEAVY = "SELECT sum(i % 7) FROM range(100000000000) t(i)"
"""A query that runs for minutes unless interrupted (no rows until it ends)."""
ENDLESS = "SELECT i FROM range(1000000000000) t(i)"
"""A query that streams rows for hours unless stopped."""


def statement(sql: str) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(pack(pb.CommandStatementQuery(query=sql)))


def query(client: flight.FlightClient, sql: str) -> pa.Table:
    info = client.get_flight_info(statement(sql))
    table: pa.Table = client.do_get(info.endpoints[0].ticket).read_all()
    return table


def assert_serving(client: flight.FlightClient) -> None:
    assert query(client, "SELECT count(*) AS n FROM trades").to_pylist() == [{"n": 3 * TOTAL}]


@pytest.fixture
def client(sql_server: SqlOnlyServer) -> Iterator[flight.FlightClient]:
    with flight.FlightClient(uri(sql_server)) as c:
        yield c


REFUSED = [
    ("create", "CREATE TABLE x (a INTEGER)", "CREATE statements are not allowed"),
    ("create_view", "CREATE VIEW v AS SELECT 1", "CREATE statements are not allowed"),
    ("create_macro", "CREATE MACRO m(a) AS a", "CREATE statements are not allowed"),
    ("drop", "DROP VIEW trades", "DROP statements are not allowed"),
    ("insert", "INSERT INTO trades SELECT * FROM trades", "INSERT statements are not allowed"),
    ("update", "UPDATE trades SET price = 0", "UPDATE statements are not allowed"),
    ("delete", "DELETE FROM trades", "DELETE statements are not allowed"),
    ("alter", "ALTER VIEW trades RENAME TO t", "ALTER statements are not allowed"),
    ("copy", "COPY trades TO '/tmp/x.csv'", "COPY statements are not allowed"),
    ("export", "EXPORT DATABASE '/tmp/x'", "EXPORT statements are not allowed"),
    ("attach", "ATTACH '/tmp/x.db' AS x", "ATTACH statements are not allowed"),
    ("detach", "DETACH memory", "DETACH statements are not allowed"),
    ("install", "INSTALL httpfs", "statements are not allowed"),
    ("load", "LOAD httpfs", "LOAD statements are not allowed"),
    ("set", "SET threads = 64", "SET statements are not allowed"),
    ("set_access", "SET enable_external_access = true", "SET statements are not allowed"),
    ("reset", "RESET memory_limit", "SET statements are not allowed"),
    ("use", "USE memory", "SET statements are not allowed"),
    ("pragma_set", "PRAGMA threads = 64", "SET statements are not allowed"),
    ("pragma", "PRAGMA show_tables", "PRAGMA statements are not allowed"),
    ("call", "CALL pragma_version()", "CALL statements are not allowed"),
    ("checkpoint", "CHECKPOINT", "CALL statements are not allowed"),
    ("transaction", "BEGIN TRANSACTION", "TRANSACTION statements are not allowed"),
    ("prepare", "PREPARE p AS SELECT 1", "PREPARE statements are not allowed"),
    ("vacuum", "VACUUM", "VACUUM statements are not allowed"),
    ("variable", "SET VARIABLE x = 1", "SET statements are not allowed"),
    ("two", "SELECT 1; SELECT 2", "one statement per query, got 2"),
    ("smuggled", "SELECT 1; DROP VIEW trades", "one statement per query, got 2"),
    ("explain_analyze_ddl", "EXPLAIN ANALYZE CREATE TABLE y AS SELECT 1",
     "EXPLAIN is allowed only of a query"),
    ("read_csv", "SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
    ("read_parquet", "SELECT * FROM read_parquet('/etc/hosts')",
     "file system operations are disabled"),
    ("replacement_scan", "SELECT * FROM '/etc/passwd'", "Table with name /etc/passwd does not exist"),
    ("glob", "SELECT * FROM glob('/*')", "file system operations are disabled"),
    ("http", "SELECT * FROM read_csv('http://127.0.0.1:1/x.csv')", "disabled"),
    ("query_fn", "SELECT * FROM query('DROP VIEW trades')", "Expected a single SELECT"),
    ("getenv", "SELECT getenv('HOME')", "getenv does not exist"),
    ("empty", "   -- nothing\n", "no SQL statement"),
]


@pytest.mark.parametrize(("sql", "message"), [(s, m) for _, s, m in REFUSED],
                         ids=[name for name, _, _ in REFUSED])
def test_refused_statement_is_invalid_argument_and_server_serves_on(
        client: flight.FlightClient, sql: str, message: str) -> None:
    with pytest.raises(pa.ArrowInvalid, match=message) as info:
        query(client, sql)
    assert "Traceback" not in str(info.value) and ".py" not in str(info.value)
    assert_serving(client)
    assert query(client, "SELECT count(*) AS n FROM duckdb_views() WHERE NOT internal") \
        .to_pylist() == [{"n": 5}]  # nothing was created or dropped


def test_allowed_statement_kinds(client: flight.FlightClient) -> None:
    for sql in ["WITH a AS (SELECT 1 AS x) SELECT * FROM a", "VALUES (1), (2)", "TABLE events",
                "FROM trades LIMIT 1", "DESCRIBE trades", "SHOW TABLES", "SUMMARIZE ticker",
                "EXPLAIN SELECT * FROM trades", "EXPLAIN ANALYZE SELECT count(*) FROM trades",
                "-- a comment\nSELECT 1;"]:
        assert query(client, sql).num_rows > 0, sql


def test_bad_sql_gets_the_engine_message_with_line_and_position(
        client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowInvalid, match=r"(?s)syntax error at or near \"trades\".*LINE 1: SELECT \* FORM trades"):
        query(client, "SELECT * FORM trades")
    with pytest.raises(pa.ArrowInvalid, match="Table with name nope does not exist"):
        query(client, "SELECT * FROM nope")
    with pytest.raises(pa.ArrowInvalid, match="Referenced column \"nope\" not found"):
        query(client, "SELECT nope FROM trades")
    assert_serving(client)


def test_unsupported_commands_are_unimplemented_by_name(client: flight.FlightClient) -> None:
    def raw(name: str, value: bytes = b"") -> bytes:
        from google.protobuf import any_pb2
        return any_pb2.Any(type_url=TYPE_URL_PREFIX + name, value=value).SerializeToString()

    for name in ["CommandGetPrimaryKeys", "CommandGetXdbcTypeInfo", "CommandStatementSubstraitPlan",
                 "CommandGetCrossReference", "CommandSomethingNew"]:
        with pytest.raises(pa.ArrowNotImplementedError, match=name):
            client.get_flight_info(flight.FlightDescriptor.for_command(raw(name)))
    update = flight.FlightDescriptor.for_command(raw("CommandStatementUpdate"))
    writer, _ = client.do_put(update, pa.schema([]))
    with pytest.raises(pa.ArrowNotImplementedError, match="CommandStatementUpdate"):
        writer.close()
    for action in ["BeginTransaction", "CancelQuery", "CreatePreparedSubstraitPlan"]:
        with pytest.raises(pa.ArrowNotImplementedError, match=action):
            list(client.do_action(flight.Action(action, b"")))
    transaction = pb.CommandStatementQuery(query="SELECT 1", transaction_id=b"t")
    with pytest.raises(pa.ArrowNotImplementedError, match="transactions are not supported"):
        client.get_flight_info(flight.FlightDescriptor.for_command(pack(transaction)))
    assert_serving(client)


def test_forged_statement_handle_is_invalid_argument(client: flight.FlightClient) -> None:
    for handle in [b"", b"x" * 10, b"FMSQL1\xff\xff\xff\xff"]:
        ticket = flight.Ticket(pack(pb.TicketStatementQuery(statement_handle=handle)))
        with pytest.raises(pa.ArrowInvalid, match="unknown statement handle"):
            client.do_get(ticket).read_all()
    assert_serving(client)


def test_sql_size_limit_is_one_mib(client: flight.FlightClient) -> None:
    tail = "\nSELECT 42 AS x"
    padding = "-" * (MAX_COMMAND_BYTES - len(tail))
    assert query(client, padding + tail).to_pylist() == [{"x": 42}]  # exactly 1 MiB of SQL
    with pytest.raises(pa.ArrowInvalid, match=r"limit is 1048576 \(1 MiB\)"):
        query(client, "-" * MAX_COMMAND_BYTES + "\nSELECT 1")
    assert_serving(client)


def test_timeout_cancels_the_query_and_says_so(source: MemorySource) -> None:
    with serving(source, timeout_s=0.5) as server, flight.FlightClient(uri(server)) as client:
        with pytest.raises(flight.FlightUnavailableError,
                           match=r"ran longer than the SQL timeout \(0.5 s, --sql-timeout\)"):
            query(client, HEAVY)
        assert until(lambda: server.sql.engine.running == 0, 10, "the query's slot to free")
        assert_serving(client)


def test_client_cancelling_do_get_stops_the_query(source: MemorySource) -> None:
    with serving(source, timeout_s=600) as server, flight.FlightClient(uri(server)) as client:
        # Before its first row: the client gives up (its deadline), which cancels the call.
        info = client.get_flight_info(statement(HEAVY))
        with pytest.raises(flight.FlightTimedOutError):
            client.do_get(info.endpoints[0].ticket,
                          options=flight.FlightCallOptions(timeout=0.5)).read_all()
        # The watchdog sees the cancelled call and interrupts DuckDB: the slot frees long
        # before the query (minutes) or the SQL timeout (10 minutes) would end it.
        assert until(lambda: server.sql.engine.running == 0, 10, "the cancelled query to stop")
        # While streaming: the client cancels its reader.
        reader = client.do_get(client.get_flight_info(statement(ENDLESS)).endpoints[0].ticket)
        reader.read_chunk()
        assert server.sql.engine.running == 1
        reader.cancel()
        assert until(lambda: server.sql.engine.running == 0, 10, "the cancelled stream to stop")
        assert_serving(client)


def test_concurrency_cap(source: MemorySource) -> None:
    with serving(source, max_concurrent=1, queue_wait_s=0.05, timeout_s=600) as server, \
            flight.FlightClient(uri(server)) as client:
        info = client.get_flight_info(statement(ENDLESS))
        reader = client.do_get(info.endpoints[0].ticket)
        reader.read_chunk()  # streaming: the query holds the only slot
        with pytest.raises(flight.FlightUnavailableError,
                           match=r"too many concurrent SQL queries \(limit 1\)"):
            query(client, "SELECT 1")
        reader.cancel()
        assert until(lambda: server.sql.engine.running == 0, 10, "the slot to free")
        assert_serving(client)


def test_concurrent_queries_all_answer(sql_server: SqlOnlyServer) -> None:
    results: list[Any] = []

    def work() -> None:
        with flight.FlightClient(uri(sql_server)) as c:
            results.append(query(c, "SELECT count(*) AS n FROM trades WHERE symbol = 'BTC/USDT'")
                           .to_pylist())

    threads = [threading.Thread(target=work) for _ in range(4)]  # the default cap: 4 at once
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [[{"n": 2 * TOTAL}]] * 4


def test_symbol_filter_never_opens_other_symbols_files(tmp_path: Path) -> None:
    source = market(tmp_path)
    assert source.history_root is not None
    eth = source.history_root / "channel=trades" / "exchange=binance" / "symbol=ETH%2FUSDT"
    files = [p for p in eth.rglob("*.parquet")]
    assert files
    for path in files:  # any read of these files fails
        path.write_bytes(b"not parquet" * 10)
        os.chmod(path, 0)
    with serving(source) as server, flight.FlightClient(uri(server)) as client:
        got = query(client, "SELECT count(*) AS n, min(timestamp) AS lo FROM trades "
                            "WHERE symbol = 'BTC/USDT' AND exchange = 'binance'")
        assert got["n"].to_pylist() == [TOTAL]
        got = query(client, "SELECT count(*) AS n FROM trades WHERE symbol IN ('BTC/USDT')")
        assert got["n"].to_pylist() == [2 * TOTAL]
        # Reading them is the server's failure, reported without the path.
        with pytest.raises(flight.FlightUnavailableError,
                           match="a stored table could not be read") as info:
            query(client, "SELECT count(*) FROM trades")
        assert str(tmp_path) not in str(info.value)
        assert query(client, "SELECT count(*) AS n FROM ticker").num_rows == 1  # serves on


def test_memory_limit_is_unavailable_and_server_serves_on(source: MemorySource) -> None:
    with serving(source, memory_limit="20MB") as server, flight.FlightClient(uri(server)) as client:
        with pytest.raises(flight.FlightUnavailableError,
                           match=r"more memory than the SQL engine's limit \(20MB\)"):
            query(client, "SELECT list(i) FROM range(20000000) t(i)")
        assert_serving(client)

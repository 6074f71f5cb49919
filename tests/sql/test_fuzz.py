"""Fuzzing Flight SQL: arbitrary SQL text and arbitrary command bytes get specific statuses
(INVALID_ARGUMENT, UNIMPLEMENTED, UNAVAILABLE), never INTERNAL or a traceback, and the server
answers a query after each. Also: every catalogue command's schema, on GetSchema and on the
DoGet stream, is the specification's, nullability included."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from google.protobuf import any_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyarrow import flight

from flight_md.sql import flight_sql_pb2 as pb
from flight_md.sql.protocol import (
    CATALOGS_SCHEMA,
    DB_SCHEMAS_SCHEMA,
    SQL_INFO_SCHEMA,
    TABLE_TYPES_SCHEMA,
    TABLES_SCHEMA,
    TABLES_SCHEMA_WITH_SCHEMA,
    TYPE_URL_PREFIX,
    Command,
    pack,
)
from tests.sql.conftest import market, serving, uri
from tests.sql.test_safety import query

SPECIFIC = (pa.ArrowInvalid, pa.ArrowNotImplementedError, flight.FlightUnavailableError)
"""INVALID_ARGUMENT, UNIMPLEMENTED, UNAVAILABLE as pyarrow's client raises them."""

WORDS = ["SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "LIMIT", "JOIN", "UNION ALL", "WITH",
         "AS", "(", ")", ",", ";", "*", "=", "'", '"', "?", "$1", "--", "/*", "*/", "NULL",
         "trades", "ticker", "events", "status", "bars_1m", "symbol", "price", "timestamp",
         "count(*)", "sum(price)", "1", "-1", "1e308", "'BTC/USDT'", "CREATE", "DROP", "COPY",
         "ATTACH", "SET", "PRAGMA", "INSTALL", "EXPLAIN", "ANALYZE", "DESCRIBE", "read_csv",
         "'/etc/passwd'", "range(10)", "\x00", "é", "\n"]

sql_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(WORDS), max_size=25).map(" ".join),
)
flight_sql_names = st.sampled_from([c.value for c in Command] + ["CommandNope", ""])
command_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda name, value: any_pb2.Any(type_url=TYPE_URL_PREFIX + name,
                                              value=value).SerializeToString(),
              flight_sql_names, st.binary(max_size=100)),
    sql_text.map(lambda q: pack(pb.CommandStatementQuery(query=q))),
)


def check(call: Callable[[], object]) -> None:
    try:
        call()
    except SPECIFIC as exc:
        assert "Traceback" not in str(exc) and "internal error" not in str(exc)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, flight.FlightClient]]:
    source = market(Path(tmp_path_factory.mktemp("fuzz")))
    with serving(source, timeout_s=2.0, memory_limit="256MB") as server, \
            flight.FlightClient(uri(server)) as client:
        yield server, client


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sql=sql_text)
def test_any_sql_gets_a_specific_status(fuzz_server: Any, sql: str) -> None:
    _, client = fuzz_server
    check(lambda: query(client, sql))
    assert query(client, "SELECT 1 AS one").to_pylist() == [{"one": 1}]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=command_bytes, rpc=st.sampled_from(["info", "schema", "get", "prepare", "put"]))
def test_any_command_bytes_get_a_specific_status(fuzz_server: Any, data: bytes,
                                                 rpc: str) -> None:
    _, client = fuzz_server
    descriptor = flight.FlightDescriptor.for_command(data)
    if rpc == "info":
        check(lambda: client.get_flight_info(descriptor))
    elif rpc == "schema":
        check(lambda: client.get_schema(descriptor))
    elif rpc == "get":
        check(lambda: client.do_get(flight.Ticket(data)).read_all())
    elif rpc == "prepare":
        check(lambda: list(client.do_action(flight.Action("CreatePreparedStatement", data))))
    else:
        def put() -> None:
            writer, _ = client.do_put(descriptor, pa.schema([("a", pa.int64())]))
            writer.write_table(pa.table({"a": [1]}))
            writer.close()
        check(put)
    assert query(client, "SELECT 1 AS one").to_pylist() == [{"one": 1}]


CATALOGUE = [
    (pb.CommandGetSqlInfo(), SQL_INFO_SCHEMA),
    (pb.CommandGetSqlInfo(info=[0, 1, 3, 99_999]), SQL_INFO_SCHEMA),
    (pb.CommandGetCatalogs(), CATALOGS_SCHEMA),
    (pb.CommandGetDbSchemas(), DB_SCHEMAS_SCHEMA),
    (pb.CommandGetDbSchemas(catalog="memory", db_schema_filter_pattern="m%"), DB_SCHEMAS_SCHEMA),
    (pb.CommandGetTables(), TABLES_SCHEMA),
    (pb.CommandGetTables(include_schema=True, table_types=["TABLE"]), TABLES_SCHEMA_WITH_SCHEMA),
    (pb.CommandGetTableTypes(), TABLE_TYPES_SCHEMA),
]


@pytest.mark.parametrize(("command", "schema"), CATALOGUE,
                         ids=[f"{type(c).__name__}-{i}" for i, (c, _) in enumerate(CATALOGUE)])
def test_catalogue_schemas_are_the_specifications(fuzz_server: Any, command: Any,
                                                  schema: pa.Schema) -> None:
    _, client = fuzz_server
    descriptor = flight.FlightDescriptor.for_command(pack(command))
    assert client.get_schema(descriptor).schema == schema
    info = client.get_flight_info(descriptor)
    assert info.schema == schema
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert table.schema == schema
    assert table.num_rows > 0


def test_sql_info_answers_the_codes_asked(fuzz_server: Any) -> None:
    _, client = fuzz_server
    descriptor = flight.FlightDescriptor.for_command(pack(pb.CommandGetSqlInfo(info=[3, 0, 77])))
    table = client.do_get(client.get_flight_info(descriptor).endpoints[0].ticket).read_all()
    assert table.to_pylist() == [{"info_name": 3, "value": True},
                                 {"info_name": 0, "value": "flight-md"}]


def test_tables_include_schema_is_the_tables_schema(fuzz_server: Any) -> None:
    server, client = fuzz_server
    descriptor = flight.FlightDescriptor.for_command(
        pack(pb.CommandGetTables(include_schema=True, table_name_filter_pattern="trade_")))
    rows = client.do_get(client.get_flight_info(descriptor).endpoints[0].ticket).read_all()
    assert rows["table_name"].to_pylist() == ["trades"]
    got = pa.ipc.read_schema(pa.py_buffer(rows["table_schema"][0].as_py()))
    assert got == server.sql.engine.source.schema("trades")
    assert query(client, "SELECT * FROM trades LIMIT 0").schema.names == got.names


def test_prepared_statement_schema_without_parameters(fuzz_server: Any) -> None:
    _, client = fuzz_server
    body = pack(pb.ActionCreatePreparedStatementRequest(query="SELECT symbol, price FROM trades"))
    (result,) = list(client.do_action(flight.Action("CreatePreparedStatement", body)))
    wrapped = any_pb2.Any()
    wrapped.ParseFromString(result.body.to_pybytes())
    prepared = pb.ActionCreatePreparedStatementResult()
    assert wrapped.Unpack(prepared)
    assert pa.ipc.read_schema(pa.py_buffer(prepared.dataset_schema)).names == ["symbol", "price"]
    assert prepared.parameter_schema == b""
    close = pack(pb.ActionClosePreparedStatementRequest(
        prepared_statement_handle=prepared.prepared_statement_handle))
    assert list(client.do_action(flight.Action("ClosePreparedStatement", close))) == []

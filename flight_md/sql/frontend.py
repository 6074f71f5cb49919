"""The Flight SQL RPCs, for the native server to delegate to: :class:`SqlFrontend`.

The server keeps its own RPC methods and asks the frontend first::

    if self.sql.handles_descriptor(descriptor):   # GetFlightInfo, GetSchema, DoPut
        return self.sql.get_flight_info(context, descriptor)
    if self.sql.handles_ticket(ticket):           # DoGet
        return self.sql.do_get(context, ticket)
    if self.sql.handles_action(action.type):      # DoAction
        return self.sql.do_action(context, action)

The frontend raises :mod:`flight_md.errors` classes only (the server's ``map_errors`` turns
them into statuses); results that stream (``DoGet`` of a query) run their errors through the
``guard`` given at construction, because they are raised after ``do_get`` returned.

What it answers (everything else Flight SQL: UNIMPLEMENTED, naming the message):

* ``CommandGetSqlInfo``, ``CommandGetCatalogs``, ``CommandGetDbSchemas``, ``CommandGetTables``
  (``include_schema`` too), ``CommandGetTableTypes``: GetFlightInfo, GetSchema, then DoGet with
  the command as the ticket;
* ``CommandStatementQuery``: GetFlightInfo plans it (its schema, ``LIMIT 0``) and returns a
  ``TicketStatementQuery``; DoGet runs it, streaming;
* prepared statements: the ``CreatePreparedStatement`` action, ``CommandPreparedStatementQuery``
  (GetFlightInfo, GetSchema, DoPut to bind parameters) and ``ClosePreparedStatement``.

Handles are stateless: a statement handle carries the SQL and the bound parameters (Arrow IPC),
so the server keeps no per-client state, nothing leaks when a client disappears, and a handle
is checked again (size, allow-list) every time it is used. DoPut answers with the new handle
(``DoPutPreparedStatementResult``), which the clients use from then on.
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Final

import pyarrow as pa
from pyarrow import flight

import flight_md
from flight_md import errors
from flight_md.sql import flight_sql_pb2 as pb
from flight_md.sql.engine import (
    CATALOG,
    DB_SCHEMA,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_TIMEOUT_S,
    Engine,
    SqlLimits,
)
from flight_md.sql.protocol import (
    CATALOGS_SCHEMA,
    DB_SCHEMAS_SCHEMA,
    SQL_INFO_SCHEMA,
    TABLE_TYPES_SCHEMA,
    TABLES_SCHEMA,
    TABLES_SCHEMA_WITH_SCHEMA,
    Command,
    pack,
    sql_info_table,
    sql_info_values,
    sql_type_url,
    unpack,
)
from flight_md.sql.source import TableSource

__all__ = ["MAX_COMMAND_BYTES", "SQL_ACTIONS", "SqlFrontend"]

MAX_COMMAND_BYTES: Final = 1 << 20
"""Largest Flight SQL command, ticket, action body or bound parameter set (1 MiB): BI tools
send kilobytes of SQL; the native tickets keep their own, smaller limit."""

CREATE_PREPARED_STATEMENT: Final = "CreatePreparedStatement"
CLOSE_PREPARED_STATEMENT: Final = "ClosePreparedStatement"
SQL_ACTIONS: Final = {
    CREATE_PREPARED_STATEMENT: "Flight SQL: prepare a query (ActionCreatePreparedStatementRequest)",
    CLOSE_PREPARED_STATEMENT: "Flight SQL: close a prepared statement",
}
"""The Flight SQL actions flight_md implements (listed by ListActions)."""
_UNSUPPORTED_ACTIONS: Final = frozenset({
    "CreatePreparedSubstraitPlan", "BeginTransaction", "BeginSavepoint", "EndTransaction",
    "EndSavepoint", "CancelQuery",
})
"""Flight SQL actions the frontend claims only to answer UNIMPLEMENTED with their name."""

_CATALOGUE: Final = frozenset({Command.GET_SQL_INFO, Command.GET_CATALOGS,
                               Command.GET_DB_SCHEMAS, Command.GET_TABLES,
                               Command.GET_TABLE_TYPES})
_INFO_COMMANDS: Final = _CATALOGUE | {Command.STATEMENT_QUERY, Command.PREPARED_STATEMENT_QUERY}
_TICKETS: Final = _CATALOGUE | {Command.TICKET_STATEMENT_QUERY}
_TABLE_TYPES: Final = ("TABLE", "VIEW")
_HANDLE_MAGIC: Final = b"FMSQL1"
_HANDLE_HEADER: Final = struct.Struct("<6sI")


class InvalidHandle(errors.InvalidArgument):
    """A statement handle that flight_md did not make (or that was altered)."""


def _encode_handle(sql: str, params: pa.RecordBatch | None) -> bytes:
    text = sql.encode()
    tail = b""
    if params is not None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, params.schema) as writer:
            writer.write_batch(params)
        tail = sink.getvalue().to_pybytes()
    return _HANDLE_HEADER.pack(_HANDLE_MAGIC, len(text)) + text + tail


def _decode_handle(handle: bytes) -> tuple[str, pa.RecordBatch | None]:
    bad = InvalidHandle("unknown statement handle: use the handle the server returned")
    if len(handle) < _HANDLE_HEADER.size:
        raise bad
    magic, length = _HANDLE_HEADER.unpack_from(handle)
    end = _HANDLE_HEADER.size + length
    if magic != _HANDLE_MAGIC or end > len(handle):
        raise bad
    try:
        sql = handle[_HANDLE_HEADER.size:end].decode()
    except UnicodeDecodeError:
        raise bad from None
    if end == len(handle):
        return sql, None
    try:
        table = pa.ipc.open_stream(pa.py_buffer(handle[end:])).read_all()
    except (pa.ArrowException, OSError):
        raise bad from None
    return sql, _one_row(table)


def _one_row(table: pa.Table) -> pa.RecordBatch | None:
    if table.num_rows == 0:
        return None
    if table.num_rows > 1:
        raise errors.InvalidArgument(
            f"bind one row of parameters to a query, got {table.num_rows} rows")
    return table.combine_chunks().to_batches()[0]


def _params(batch: pa.RecordBatch | None, names: frozenset[str]) -> list[Any] | dict[str, Any] | None:
    """Bound values in DuckDB's form: positional for ``?``/``$n``, by name for ``$name``."""
    if not names:
        if batch is not None and batch.num_columns:
            raise errors.InvalidArgument(
                f"the query has no parameters, but {batch.num_columns} value(s) were bound")
        return None
    if batch is None:
        return None
    row = batch.to_pylist()[0]
    if all(n.isdigit() for n in names):
        if batch.num_columns != len(names):
            raise errors.InvalidArgument(
                f"the query has {len(names)} parameter(s), {batch.num_columns} value(s) were bound")
        return list(row.values())
    missing = sorted(names - set(row))
    if missing:
        raise errors.InvalidArgument(
            f"no value bound for parameter(s) {', '.join('$' + m for m in missing)}; bind "
            "columns named after them")
    return {name: row[name] for name in names}


def _like(pattern: str | None) -> Callable[[str], bool]:
    """A Flight SQL filter pattern (``%`` any run, ``_`` one character, ``\\`` escapes)."""
    if pattern is None:
        return lambda _name: True
    regex = ""
    escaped = False
    for char in pattern:
        if escaped:
            regex += re.escape(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            regex += ".*"
        elif char == "_":
            regex += "."
        else:
            regex += re.escape(char)
    compiled = re.compile(regex, re.DOTALL)
    return lambda name: compiled.fullmatch(name) is not None


def _nothing(_rpc: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


class SqlFrontend:
    """Flight SQL over a :class:`~flight_md.sql.source.TableSource` (see the module docstring).

    Args:
        tables: The server's tables.
        timeout_s: ``--sql-timeout``: longest a query runs, start to last batch.
        memory_limit: The SQL engine's memory limit (DuckDB syntax, ``"1GB"``).
        max_concurrent: Queries running at once; more wait briefly, then UNAVAILABLE.
        server_name: ``FLIGHT_SQL_SERVER_NAME`` of ``CommandGetSqlInfo``.
        version: ``FLIGHT_SQL_SERVER_VERSION``.
        guard: ``guard(rpc)`` wraps the body of a streaming result (the server's
            ``lambda rpc: map_errors(rpc, self.refused)``), so errors raised while streaming
            get the same statuses as the others.
        limits: All the engine's bounds at once (overrides the three above).
    """

    def __init__(self, tables: TableSource, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_limit: str = DEFAULT_MEMORY_LIMIT,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT,
                 server_name: str = "flight-md", version: str = flight_md.__version__,
                 guard: Callable[[str], AbstractContextManager[None]] | None = None,
                 limits: SqlLimits | None = None) -> None:
        self.limits = limits if limits is not None else SqlLimits(
            timeout_s=timeout_s, memory_limit=memory_limit, max_concurrent=max_concurrent)
        self.engine = Engine(tables, self.limits)
        self._guard = guard if guard is not None else _nothing
        self._info = sql_info_values(server_name, version, int(self.limits.timeout_s * 1000))

    def close(self) -> None:
        """Cancel the running queries: call before the server's shutdown, which waits for them."""
        self.engine.close()

    # -- routing -----------------------------------------------------------------------------

    @staticmethod
    def handles_descriptor(descriptor: flight.FlightDescriptor) -> bool:
        """Whether ``descriptor`` is a command carrying a Flight SQL message."""
        return (descriptor.descriptor_type == flight.DescriptorType.CMD
                and sql_type_url(descriptor.command) is not None)

    @staticmethod
    def handles_ticket(ticket: flight.Ticket) -> bool:
        """Whether ``ticket`` carries a Flight SQL message."""
        return sql_type_url(ticket.ticket) is not None

    @staticmethod
    def handles_action(action_type: str) -> bool:
        """Whether ``action_type`` is a Flight SQL action (implemented or not)."""
        return action_type in SQL_ACTIONS or action_type in _UNSUPPORTED_ACTIONS

    def list_actions(self) -> list[tuple[str, str]]:
        """The Flight SQL actions, for the server's ListActions."""
        return list(SQL_ACTIONS.items())

    # -- RPCs --------------------------------------------------------------------------------

    def get_flight_info(self, context: flight.ServerCallContext,
                        descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        """Plan a query or a catalogue command; its endpoint's ticket is for :meth:`do_get`."""
        command, message = unpack(_limited(descriptor.command, "command", _HANDLE_LIMIT),
                                  _INFO_COMMANDS)
        if command in _CATALOGUE:
            schema = self._catalogue_schema(command, message)
            ticket = descriptor.command
        else:
            sql, params = self._statement(command, message)
            schema = self.engine.schema(sql, _params(params, self.engine.check(sql)))
            ticket = pack(pb.TicketStatementQuery(statement_handle=_encode_handle(sql, params)))
        endpoint = flight.FlightEndpoint(ticket, [])
        return flight.FlightInfo(schema, descriptor, [endpoint], -1, -1)

    def get_schema(self, context: flight.ServerCallContext,
                   descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        """The result schema of a query or a catalogue command."""
        command, message = unpack(_limited(descriptor.command, "command", _HANDLE_LIMIT),
                                  _INFO_COMMANDS)
        if command in _CATALOGUE:
            return flight.SchemaResult(self._catalogue_schema(command, message))
        sql, params = self._statement(command, message)
        return flight.SchemaResult(
            self.engine.schema(sql, _params(params, self.engine.check(sql))))

    def do_get(self, context: flight.ServerCallContext,
               ticket: flight.Ticket) -> flight.FlightDataStream:
        """Stream a query's result (cancellable) or a catalogue command's table."""
        command, message = unpack(_limited(ticket.ticket, "ticket", _HANDLE_LIMIT), _TICKETS)
        if command in _CATALOGUE:
            return flight.RecordBatchStream(self._catalogue(command, message))
        assert isinstance(message, pb.TicketStatementQuery)
        sql, params = _decode_handle(message.statement_handle)
        _limited(sql.encode(), "SQL text")
        values = _params(params, self.engine.check(sql))
        schema = self.engine.schema(sql, values)  # planned (cached): the stream's schema
        engine, guard = self.engine, self._guard

        # The query starts on the stream's first pull, not here: a generator that is never
        # started never runs its finally, and would keep a query slot and a cursor forever.
        def batches() -> Iterator[pa.RecordBatch]:
            with guard("DoGet(sql)"):
                execution = engine.execute(sql, values, cancelled=context.is_cancelled)
                try:
                    same = execution.schema.equals(schema)
                    for batch in execution.batches():
                        yield batch if same else batch.cast(schema)
                finally:
                    execution.close()  # also when the client went away mid-stream

        return flight.GeneratorStream(schema, batches())

    def do_action(self, context: flight.ServerCallContext,
                  action: flight.Action) -> Iterator[flight.Result]:
        """``CreatePreparedStatement`` and ``ClosePreparedStatement``."""
        if action.type not in SQL_ACTIONS:
            raise _unsupported_action(action.type)
        body = action.body.to_pybytes() if action.body is not None else b""
        _limited(body, "action body")
        if action.type == CLOSE_PREPARED_STATEMENT:
            unpack(body, {Command.CLOSE_PREPARED_STATEMENT})
            return iter([])  # stateless handles: nothing to free
        _, message = unpack(body, {Command.CREATE_PREPARED_STATEMENT})
        assert isinstance(message, pb.ActionCreatePreparedStatementRequest)
        if message.HasField("transaction_id"):
            raise _no_transactions()
        sql = message.query
        _limited(sql.encode(), "SQL text")
        names = self.engine.check(sql)
        # With parameters the result's types may depend on the values: its schema comes with
        # GetFlightInfo once they are bound.
        dataset = b"" if names else self.engine.schema(sql).serialize().to_pybytes()
        parameters = pa.schema([pa.field(n, pa.null()) for n in sorted(names, key=_param_order)])
        result = pb.ActionCreatePreparedStatementResult(
            prepared_statement_handle=_encode_handle(sql, None), dataset_schema=dataset,
            parameter_schema=parameters.serialize().to_pybytes() if names else b"")
        return iter([flight.Result(pack(result))])

    def do_put(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor,
               reader: flight.MetadataRecordBatchReader,
               writer: flight.FlightMetadataWriter) -> None:
        """Bind parameters to a prepared statement (``CommandPreparedStatementQuery``).

        Writes the new handle (``DoPutPreparedStatementResult``) the client uses from then on.
        """
        _, message = unpack(_limited(descriptor.command, "command", _HANDLE_LIMIT),
                            {Command.PREPARED_STATEMENT_QUERY})
        assert isinstance(message, pb.CommandPreparedStatementQuery)
        sql, _ = _decode_handle(_limited(message.prepared_statement_handle, "statement handle",
                                         _HANDLE_LIMIT))
        names = self.engine.check(sql)
        batches, size = [], 0
        for chunk in reader:
            if chunk.data is None:
                continue
            size += chunk.data.nbytes
            if size > MAX_COMMAND_BYTES:
                raise errors.RequestTooLarge(
                    f"bound parameters exceed {MAX_COMMAND_BYTES} bytes; bind one row")
            batches.append(chunk.data)
        table = pa.Table.from_batches(batches, schema=reader.schema)
        params = _one_row(table)
        _params(params, names)  # refuse a mismatch now, not at the query
        handle = _encode_handle(sql, params)
        writer.write(pa.py_buffer(
            pb.DoPutPreparedStatementResult(prepared_statement_handle=handle).SerializeToString()))

    # -- helpers -----------------------------------------------------------------------------

    def _statement(self, command: Command, message: Any) -> tuple[str, pa.RecordBatch | None]:
        if command is Command.STATEMENT_QUERY:
            if message.HasField("transaction_id"):
                raise _no_transactions()
            sql = str(message.query)
            _limited(sql.encode(), "SQL text")
            return sql, None
        sql, params = _decode_handle(_limited(message.prepared_statement_handle,
                                              "statement handle", _HANDLE_LIMIT))
        _limited(sql.encode(), "SQL text")
        return sql, params

    def _catalogue_schema(self, command: Command, message: Any) -> pa.Schema:
        if command is Command.GET_SQL_INFO:
            return SQL_INFO_SCHEMA
        if command is Command.GET_CATALOGS:
            return CATALOGS_SCHEMA
        if command is Command.GET_DB_SCHEMAS:
            return DB_SCHEMAS_SCHEMA
        if command is Command.GET_TABLES:
            return TABLES_SCHEMA_WITH_SCHEMA if message.include_schema else TABLES_SCHEMA
        return TABLE_TYPES_SCHEMA

    def _catalogue(self, command: Command, message: Any) -> pa.Table:
        if command is Command.GET_SQL_INFO:
            return sql_info_table(self._info, list(message.info))
        if command is Command.GET_CATALOGS:
            return pa.Table.from_pylist([{"catalog_name": CATALOG}], schema=CATALOGS_SCHEMA)
        if command is Command.GET_TABLE_TYPES:
            return pa.Table.from_pylist([{"table_type": t} for t in sorted(_TABLE_TYPES)],
                                        schema=TABLE_TYPES_SCHEMA)
        catalog = message.catalog if message.HasField("catalog") else None
        schema_ok = _like(message.db_schema_filter_pattern
                          if message.HasField("db_schema_filter_pattern") else None)
        in_catalog = catalog is None or catalog == CATALOG
        if command is Command.GET_DB_SCHEMAS:
            rows = [{"catalog_name": CATALOG, "db_schema_name": DB_SCHEMA}] \
                if in_catalog and schema_ok(DB_SCHEMA) else []
            return pa.Table.from_pylist(rows, schema=DB_SCHEMAS_SCHEMA)
        table_ok = _like(message.table_name_filter_pattern
                         if message.HasField("table_name_filter_pattern") else None)
        types = set(message.table_types)
        rows = []
        if in_catalog and schema_ok(DB_SCHEMA):
            for table in self.engine.tables():
                if table_ok(table.name) and (not types or table.table_type in types):
                    row: dict[str, Any] = {"catalog_name": CATALOG, "db_schema_name": DB_SCHEMA,
                                           "table_name": table.name,
                                           "table_type": table.table_type}
                    if message.include_schema:
                        row["table_schema"] = table.schema.serialize().to_pybytes()
                    rows.append(row)
        schema = TABLES_SCHEMA_WITH_SCHEMA if message.include_schema else TABLES_SCHEMA
        return pa.Table.from_pylist(rows, schema=schema)


def _param_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def _limited(data: bytes, what: str, limit: int = MAX_COMMAND_BYTES) -> bytes:
    if len(data) > limit:
        raise errors.RequestTooLarge(
            f"Flight SQL {what} is {len(data)} bytes; the limit is {limit} "
            f"({limit / (1 << 20):g} MiB)")
    return data


_HANDLE_LIMIT: Final = 2 * MAX_COMMAND_BYTES + 4096
"""A handle or ticket the server made: SQL of up to 1 MiB, parameters of up to 1 MiB, framing."""


def _no_transactions() -> errors.FlightMdError:
    return errors.UnknownAction("transactions are not supported: flight_md's SQL is read-only "
                                "and every query sees one snapshot")


def _unsupported_action(name: str) -> errors.FlightMdError:
    return errors.UnknownAction(
        f"Flight SQL action {name!r} is not supported (flight_md is a read-only Flight SQL "
        f"server); supported: {', '.join(SQL_ACTIONS)}")


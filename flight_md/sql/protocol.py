"""Flight SQL on the wire: command type URLs, ``Any`` packing, result schemas, ``SqlInfo``.

Pure (no engine, no server): :mod:`flight_md.sql.frontend` routes by what this module decodes.

A Flight SQL request is a protobuf message packed in ``google.protobuf.Any``, carried in a
``FlightDescriptor``'s command, a ``Ticket`` or an ``Action`` body, and told apart by the Any's
type URL, ``type.googleapis.com/arrow.flight.protocol.sql.<Message>`` (:class:`Command`).
:func:`unpack` reads one: a command of :data:`IMPLEMENTED` becomes its message; any other
Flight SQL type URL raises :class:`UnsupportedCommand` (UNIMPLEMENTED, naming it); bytes that
are no ``Any`` or an ``Any`` of another package are not Flight SQL at all (:func:`sql_type_url`
is ``None``), so the native ticket grammar keeps them.

The catalogue schemas (:data:`CATALOGS_SCHEMA` ... :data:`SQL_INFO_SCHEMA`) are those of the
specification field by field, nullability included: the ADBC drivers compare them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum, StrEnum
from typing import Final

import pyarrow as pa
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from flight_md import errors
from flight_md.sql import flight_sql_pb2 as pb

__all__ = [
    "CATALOGS_SCHEMA",
    "DB_SCHEMAS_SCHEMA",
    "IMPLEMENTED",
    "SQL_INFO_SCHEMA",
    "TABLES_SCHEMA",
    "TABLES_SCHEMA_WITH_SCHEMA",
    "TABLE_TYPES_SCHEMA",
    "TYPE_URL_PREFIX",
    "Command",
    "InvalidCommand",
    "SqlInfo",
    "UnsupportedCommand",
    "pack",
    "sql_info_table",
    "sql_type_url",
    "unpack",
]

TYPE_URL_PREFIX: Final = "type.googleapis.com/arrow.flight.protocol.sql."


class Command(StrEnum):
    """Every Flight SQL message name a client may send (the specification's, as of Arrow 18)."""

    GET_SQL_INFO = "CommandGetSqlInfo"
    GET_XDBC_TYPE_INFO = "CommandGetXdbcTypeInfo"
    GET_CATALOGS = "CommandGetCatalogs"
    GET_DB_SCHEMAS = "CommandGetDbSchemas"
    GET_TABLES = "CommandGetTables"
    GET_TABLE_TYPES = "CommandGetTableTypes"
    GET_PRIMARY_KEYS = "CommandGetPrimaryKeys"
    GET_EXPORTED_KEYS = "CommandGetExportedKeys"
    GET_IMPORTED_KEYS = "CommandGetImportedKeys"
    GET_CROSS_REFERENCE = "CommandGetCrossReference"
    STATEMENT_QUERY = "CommandStatementQuery"
    STATEMENT_SUBSTRAIT_PLAN = "CommandStatementSubstraitPlan"
    STATEMENT_UPDATE = "CommandStatementUpdate"
    STATEMENT_INGEST = "CommandStatementIngest"
    PREPARED_STATEMENT_QUERY = "CommandPreparedStatementQuery"
    PREPARED_STATEMENT_UPDATE = "CommandPreparedStatementUpdate"
    TICKET_STATEMENT_QUERY = "TicketStatementQuery"
    CREATE_PREPARED_STATEMENT = "ActionCreatePreparedStatementRequest"
    CLOSE_PREPARED_STATEMENT = "ActionClosePreparedStatementRequest"

    @property
    def type_url(self) -> str:
        """The ``Any`` type URL of this message."""
        return TYPE_URL_PREFIX + self.value


IMPLEMENTED: Final[Mapping[Command, type[Message]]] = {
    Command.GET_SQL_INFO: pb.CommandGetSqlInfo,
    Command.GET_CATALOGS: pb.CommandGetCatalogs,
    Command.GET_DB_SCHEMAS: pb.CommandGetDbSchemas,
    Command.GET_TABLES: pb.CommandGetTables,
    Command.GET_TABLE_TYPES: pb.CommandGetTableTypes,
    Command.STATEMENT_QUERY: pb.CommandStatementQuery,
    Command.PREPARED_STATEMENT_QUERY: pb.CommandPreparedStatementQuery,
    Command.TICKET_STATEMENT_QUERY: pb.TicketStatementQuery,
    Command.CREATE_PREPARED_STATEMENT: pb.ActionCreatePreparedStatementRequest,
    Command.CLOSE_PREPARED_STATEMENT: pb.ActionClosePreparedStatementRequest,
}
"""The commands flight_md answers, and the message class of each."""

_BY_URL: Final = {command.type_url: command for command in Command}


class InvalidCommand(errors.InvalidDescriptor):
    """A Flight SQL type URL whose message bytes do not decode."""


class UnsupportedCommand(errors.UnknownAction):
    """A Flight SQL message flight_md does not implement (UNIMPLEMENTED on the wire)."""


def sql_type_url(data: bytes) -> str | None:
    """The Flight SQL type URL ``data`` carries, or ``None`` if it is no Flight SQL ``Any``."""
    if not data or data[0] != 0x0A:  # an Any starts with field 1 (type_url), length-delimited
        return None
    message = any_pb2.Any()
    try:
        message.ParseFromString(data)
    except DecodeError:
        return None
    url: str = message.type_url
    return url if url.startswith(TYPE_URL_PREFIX) else None


def unpack(data: bytes, allowed: Iterable[Command] | None = None) -> tuple[Command, Message]:
    """The command ``data`` (a serialized ``Any``) carries, decoded.

    Args:
        data: The descriptor command, ticket or action body.
        allowed: The commands this RPC accepts (default: every implemented one).

    Raises:
        InvalidCommand: ``data`` is no Flight SQL ``Any``, or its message does not decode.
        UnsupportedCommand: A Flight SQL message flight_md does not implement here.
    """
    message = any_pb2.Any()
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise InvalidCommand("not a Flight SQL command: the bytes are no google.protobuf.Any") \
            from None
    url: str = message.type_url
    if not url.startswith(TYPE_URL_PREFIX):
        raise InvalidCommand(f"not a Flight SQL command: type URL {url[:200]!r}")
    command = _BY_URL.get(url)
    accepted = set(IMPLEMENTED) if allowed is None else set(allowed) & set(IMPLEMENTED)
    if command is None or command not in accepted:
        name = url[len(TYPE_URL_PREFIX):][:200]
        raise UnsupportedCommand(_unsupported(name, accepted))
    decoded = IMPLEMENTED[command]()
    try:
        decoded.ParseFromString(message.value)
    except DecodeError:
        raise InvalidCommand(f"{command.value} does not decode (malformed protobuf)") from None
    return command, decoded


def _unsupported(name: str, accepted: set[Command]) -> str:
    listed = ", ".join(sorted(c.value for c in accepted)) or "none"
    return (f"Flight SQL {name!r} is not supported here (flight_md is a read-only Flight SQL "
            f"server); supported here: {listed}")


def pack(message: Message) -> bytes:
    """``message`` packed in a ``google.protobuf.Any``, serialized."""
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    data: bytes = wrapped.SerializeToString()
    return data


# -- result schemas (the specification's, nullability included) -----------------------------

CATALOGS_SCHEMA: Final = pa.schema([pa.field("catalog_name", pa.string(), nullable=False)])
DB_SCHEMAS_SCHEMA: Final = pa.schema([
    pa.field("catalog_name", pa.string()),
    pa.field("db_schema_name", pa.string(), nullable=False),
])
TABLES_SCHEMA: Final = pa.schema([
    pa.field("catalog_name", pa.string()),
    pa.field("db_schema_name", pa.string()),
    pa.field("table_name", pa.string(), nullable=False),
    pa.field("table_type", pa.string(), nullable=False),
])
TABLES_SCHEMA_WITH_SCHEMA: Final = TABLES_SCHEMA.append(
    pa.field("table_schema", pa.binary(), nullable=False))
TABLE_TYPES_SCHEMA: Final = pa.schema([pa.field("table_type", pa.string(), nullable=False)])

_SQL_INFO_VALUE: Final = pa.dense_union([
    pa.field("string_value", pa.string(), nullable=False),
    pa.field("bool_value", pa.bool_(), nullable=False),
    pa.field("bigint_value", pa.int64(), nullable=False),
    pa.field("int32_bitmask", pa.int32(), nullable=False),
    pa.field("string_list", pa.list_(pa.string()), nullable=False),
    pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())),
             nullable=False),
])
SQL_INFO_SCHEMA: Final = pa.schema([
    pa.field("info_name", pa.uint32(), nullable=False),
    pa.field("value", _SQL_INFO_VALUE, nullable=False),
])


class SqlInfo(IntEnum):
    """The ``SqlInfo`` codes flight_md answers (the specification's numbers)."""

    FLIGHT_SQL_SERVER_NAME = 0
    FLIGHT_SQL_SERVER_VERSION = 1
    FLIGHT_SQL_SERVER_ARROW_VERSION = 2
    FLIGHT_SQL_SERVER_READ_ONLY = 3
    FLIGHT_SQL_SERVER_SQL = 4
    FLIGHT_SQL_SERVER_SUBSTRAIT = 5
    FLIGHT_SQL_SERVER_TRANSACTION = 8
    FLIGHT_SQL_SERVER_CANCEL = 9
    FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT = 100
    SQL_DDL_CATALOG = 500
    SQL_DDL_SCHEMA = 501
    SQL_DDL_TABLE = 502
    SQL_IDENTIFIER_CASE = 503
    SQL_IDENTIFIER_QUOTE_CHAR = 504
    SQL_QUOTED_IDENTIFIER_CASE = 505
    SQL_ALL_TABLES_ARE_SELECTABLE = 506
    SQL_NULL_ORDERING = 507
    SQL_SEARCH_STRING_ESCAPE = 513
    SQL_SUPPORTS_COLUMN_ALIASING = 515
    SQL_NULL_PLUS_NULL_IS_NULL = 516
    SQL_TRANSACTIONS_SUPPORTED = 545


_STRING, _BOOL, _BIGINT, _INT32 = 0, 1, 2, 3  # dense union type codes (the schema's order)
_TRANSACTION_NONE: Final = 0  # SqlSupportedTransaction.SQL_SUPPORTED_TRANSACTION_NONE
_CASE_INSENSITIVE: Final = 2  # SqlSupportedCaseSensitivity.SQL_CASE_SENSITIVITY_CASE_INSENSITIVE
_NULLS_SORTED_AT_END: Final = 3  # SqlNullOrdering.SQL_NULLS_SORTED_AT_END (DuckDB's default)


def sql_info_values(server_name: str, version: str,
                    timeout_ms: int) -> dict[SqlInfo, tuple[int, str | bool | int]]:
    """What flight_md answers for each :class:`SqlInfo`: ``(union type code, value)``."""
    return {
        SqlInfo.FLIGHT_SQL_SERVER_NAME: (_STRING, server_name),
        SqlInfo.FLIGHT_SQL_SERVER_VERSION: (_STRING, version),
        SqlInfo.FLIGHT_SQL_SERVER_ARROW_VERSION: (_STRING, pa.__version__),
        SqlInfo.FLIGHT_SQL_SERVER_READ_ONLY: (_BOOL, True),
        SqlInfo.FLIGHT_SQL_SERVER_SQL: (_BOOL, True),
        SqlInfo.FLIGHT_SQL_SERVER_SUBSTRAIT: (_BOOL, False),
        SqlInfo.FLIGHT_SQL_SERVER_TRANSACTION: (_INT32, _TRANSACTION_NONE),
        SqlInfo.FLIGHT_SQL_SERVER_CANCEL: (_BOOL, False),
        SqlInfo.FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT: (_INT32, timeout_ms),
        SqlInfo.SQL_DDL_CATALOG: (_BOOL, False),
        SqlInfo.SQL_DDL_SCHEMA: (_BOOL, False),
        SqlInfo.SQL_DDL_TABLE: (_BOOL, False),
        SqlInfo.SQL_IDENTIFIER_CASE: (_INT32, _CASE_INSENSITIVE),
        SqlInfo.SQL_IDENTIFIER_QUOTE_CHAR: (_STRING, '"'),
        SqlInfo.SQL_QUOTED_IDENTIFIER_CASE: (_INT32, _CASE_INSENSITIVE),
        SqlInfo.SQL_ALL_TABLES_ARE_SELECTABLE: (_BOOL, True),
        SqlInfo.SQL_NULL_ORDERING: (_INT32, _NULLS_SORTED_AT_END),
        SqlInfo.SQL_SEARCH_STRING_ESCAPE: (_STRING, "\\"),
        SqlInfo.SQL_SUPPORTS_COLUMN_ALIASING: (_BOOL, True),
        SqlInfo.SQL_NULL_PLUS_NULL_IS_NULL: (_BOOL, True),
        SqlInfo.SQL_TRANSACTIONS_SUPPORTED: (_BOOL, False),
    }


def sql_info_table(values: Mapping[SqlInfo, tuple[int, str | bool | int]],
                   wanted: Sequence[int]) -> pa.Table:
    """The ``CommandGetSqlInfo`` result for the codes ``wanted`` (all known ones if empty).

    Codes flight_md does not know are left out, as the specification allows.
    """
    codes = [SqlInfo(c) for c in wanted if c in SqlInfo._value2member_map_] if wanted \
        else list(values)
    codes = [c for c in dict.fromkeys(codes) if c in values]
    children: list[list[object]] = [[] for _ in _SQL_INFO_VALUE]
    type_ids, offsets = [], []
    for code in codes:
        type_code, value = values[code]
        type_ids.append(type_code)
        offsets.append(len(children[type_code]))
        children[type_code].append(value)
    arrays = [pa.array(child, type=field.type) for child, field in zip(children, _SQL_INFO_VALUE)]
    # From buffers: UnionArray.from_dense would make every child field nullable.
    union = pa.Array.from_buffers(
        _SQL_INFO_VALUE, len(codes),
        [None, pa.array(type_ids, pa.int8()).buffers()[1], pa.array(offsets, pa.int32()).buffers()[1]],
        children=arrays)
    names = pa.array([int(c) for c in codes], pa.uint32())
    return pa.Table.from_arrays([names, union], schema=SQL_INFO_SCHEMA)

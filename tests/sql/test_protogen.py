"""The committed Flight SQL classes are what protoc makes of the committed proto, and they speak
the specification's type URLs and field numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from flight_md.sql import flight_sql_pb2 as pb
from flight_md.sql import protogen
from flight_md.sql.protocol import IMPLEMENTED, TYPE_URL_PREFIX, Command, pack, unpack


def test_generated_files_are_current(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    for name, data in protogen.generate(tmp_path).items():
        committed = (protogen.PACKAGE_DIR / name).read_bytes()
        assert committed == data, f"{name} is stale: run python -m flight_md.sql.protogen"


def test_type_urls_are_the_specifications() -> None:
    for command, cls in IMPLEMENTED.items():
        assert cls.DESCRIPTOR.full_name == "arrow.flight.protocol.sql." + command.value
        assert command.type_url == TYPE_URL_PREFIX + command.value
    assert TYPE_URL_PREFIX == "type.googleapis.com/arrow.flight.protocol.sql."


def test_wire_bytes_follow_the_specifications_field_numbers() -> None:
    # Hand-encoded: field 1 (query, string) "x", field 2 (transaction_id, bytes) "t".
    assert pb.CommandStatementQuery(query="x", transaction_id=b"t").SerializeToString() \
        == b"\x0a\x01x\x12\x01t"
    # CommandGetTables: include_schema is field 5 (varint), table_types field 4.
    assert pb.CommandGetTables(table_types=["VIEW"], include_schema=True).SerializeToString() \
        == b"\x22\x04VIEW\x28\x01"
    result = pb.ActionCreatePreparedStatementResult(prepared_statement_handle=b"h",
                                                    dataset_schema=b"d", parameter_schema=b"p")
    assert result.SerializeToString() == b"\x0a\x01h\x12\x01d\x1a\x01p"


def test_pack_unpack_round_trip() -> None:
    command, message = unpack(pack(pb.CommandGetTables(catalog="memory", include_schema=True)))
    assert command is Command.GET_TABLES
    assert isinstance(message, pb.CommandGetTables)
    assert message.HasField("catalog") and not message.HasField("table_name_filter_pattern")

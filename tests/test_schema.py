"""MarketTick and the Arrow schemas."""

from __future__ import annotations

import dataclasses
import math
import time
import typing

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flight_md.buffer import MarketDataBuffer
from flight_md.schema import (EVENT_SCHEMA, FLOAT_FIELDS, NUMERIC_FIELDS, NUMERIC_SCHEMA, SCHEMA,
                              MarketTick, now_ms)

FIELDS = ["symbol", "timestamp", "price", "volume", "bid", "ask", "high", "low", "open", "close",
          "exchange", "receive_timestamp"]
OPTIONAL = ["volume", "bid", "ask", "high", "low", "open", "close"]


def tick(**overrides: object) -> MarketTick:
    values: dict[str, object] = dict(symbol="BTC/USDT", timestamp=1_700_000_000_000,
                                     price=100.5, volume=None, bid=None, ask=None, high=None,
                                     low=None, open=None, close=None, exchange="binance",
                                     receive_timestamp=1_700_000_000_007)
    values.update(overrides)
    return MarketTick(**values)  # type: ignore[arg-type]


def test_market_tick_field_names_and_order() -> None:
    assert [f.name for f in dataclasses.fields(MarketTick)] == FIELDS


def test_market_tick_field_types() -> None:
    hints = typing.get_type_hints(MarketTick)
    expected = {"symbol": str, "timestamp": int, "price": float, "exchange": str,
                "receive_timestamp": int}
    expected.update({name: float | None for name in OPTIONAL})  # type: ignore[misc]
    assert hints == expected


def test_market_tick_is_frozen() -> None:
    t = tick()
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.price = 1.0  # type: ignore[misc]


def test_market_tick_has_slots() -> None:
    t = tick()
    assert MarketTick.__slots__ == tuple(FIELDS)
    assert not hasattr(t, "__dict__")
    with pytest.raises((AttributeError, TypeError)):
        t.extra = 1  # type: ignore[attr-defined]


def test_market_tick_equality_and_hash() -> None:
    assert tick() == tick()
    assert hash(tick()) == hash(tick())
    assert tick(price=1.0) != tick(price=2.0)


def test_to_row_follows_numeric_fields() -> None:
    t = tick(volume=1.0, bid=2.0, ask=3.0, high=4.0, low=5.0, open=6.0, close=7.0)
    assert t.to_row() == tuple(getattr(t, name) for name in NUMERIC_FIELDS)


def test_schema_is_exact() -> None:
    expected = pa.schema([
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=True),
        pa.field("bid", pa.float64(), nullable=True),
        pa.field("ask", pa.float64(), nullable=True),
        pa.field("high", pa.float64(), nullable=True),
        pa.field("low", pa.float64(), nullable=True),
        pa.field("open", pa.float64(), nullable=True),
        pa.field("close", pa.float64(), nullable=True),
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("receive_timestamp", pa.int64(), nullable=False),
    ])
    assert SCHEMA.equals(expected, check_metadata=True)
    assert SCHEMA.names == FIELDS
    for field in SCHEMA:
        assert field.nullable is (field.name in OPTIONAL), field.name


def test_schema_matches_market_tick() -> None:
    arrow_types = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    hints = typing.get_type_hints(MarketTick)
    for field in SCHEMA:
        hint = hints[field.name]
        base = float if field.nullable else hint
        assert field.type == arrow_types[base], field.name


def test_numeric_schema_is_schema_without_constant_columns() -> None:
    assert NUMERIC_SCHEMA.names == [n for n in FIELDS if n not in ("symbol", "exchange")]
    assert list(NUMERIC_FIELDS) == NUMERIC_SCHEMA.names
    for field in NUMERIC_SCHEMA:
        assert field.equals(SCHEMA.field(field.name))
    assert list(FLOAT_FIELDS) == ["price", *OPTIONAL]


def test_event_schema_is_exact() -> None:
    expected = pa.schema([
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("symbols", pa.list_(pa.string()), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ])
    assert EVENT_SCHEMA.equals(expected, check_metadata=True)


@pytest.mark.parametrize("missing", OPTIONAL)
def test_missing_values_are_nulls_never_zero_or_nan(missing: str) -> None:
    values = {name: float(i + 1) for i, name in enumerate(OPTIONAL)}
    values[missing] = None  # type: ignore[assignment]
    buffer = MarketDataBuffer(16)
    buffer.append(tick(**values))
    table = buffer.get_latest_sync("BTC/USDT")
    assert table.schema.equals(SCHEMA)
    row = table.to_pylist()[0]
    assert row[missing] is None
    column = table.column(missing)
    assert column.null_count == 1
    for name in OPTIONAL:
        if name != missing:
            assert row[name] == values[name]
            assert table.column(name).null_count == 0


def test_all_optional_missing_stay_null_and_present_values_are_exact() -> None:
    buffer = MarketDataBuffer(600)
    # Enough rows to be sealed into Arrow segments, not only pending rows.
    for i in range(520):
        buffer.append(tick(timestamp=i, receive_timestamp=i + 1, price=0.1 * i + 0.3,
                           volume=None if i % 2 else 0.0))
    table = buffer.get_latest_sync("BTC/USDT", 600)
    assert table.num_rows == 520
    for name in OPTIONAL:
        column = table.column(name)
        if name == "volume":
            assert column.null_count == 260
            # A real 0.0 stays 0.0: only missing values are null.
            assert table.column("volume").to_pylist()[::2] == [0.0] * 260
        else:
            assert column.null_count == 520
        assert not pc.any(pc.is_nan(column)).as_py()
    assert table.column("price").to_pylist() == [0.1 * i + 0.3 for i in range(520)]


def test_now_ms_is_wall_clock_milliseconds() -> None:
    before = time.time() * 1000
    value = now_ms()
    after = time.time() * 1000
    assert isinstance(value, int)
    assert math.floor(before) - 1 <= value <= math.ceil(after) + 1

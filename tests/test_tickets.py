"""The ticket and descriptor grammar: round trips, examples, and refusals."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_md.control import MARKET_SCHEMA
from flight_md.core.bars import BAR_SCHEMA, BarInterval
from flight_md.core.channels import BOOK_SCHEMA, TRADE_SCHEMA
from flight_md.errors import (FlightMdError, InvalidArgument, InvalidDescriptor, InvalidTicket,
                              RequestTooLarge)
from flight_md.normalize import Channel
from flight_md.schema import SCHEMA
from flight_md.tickets import (MAX_LATEST, MAX_REQUEST_BYTES, MAX_TIME_MS, Query, Target,
                               answer_schema, check_size, format_ticket, parse_descriptor,
                               parse_ticket, parse_time)

T0 = int(datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc).timestamp() * 1000)
SYMBOL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/-_:."
EXCHANGE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-"

symbols = st.text(SYMBOL_CHARS, min_size=1, max_size=64)
exchanges = st.text(EXCHANGE_CHARS, min_size=1, max_size=32)
times = st.integers(0, MAX_TIME_MS)
columns = st.lists(st.sampled_from(SCHEMA.names), min_size=1, max_size=12, unique=True).map(
    tuple)
GLOB_CHARS = SYMBOL_CHARS + "*?[]!"
globs = st.text(GLOB_CHARS, min_size=1, max_size=64)
market_columns = st.lists(st.sampled_from(MARKET_SCHEMA.names), min_size=1, max_size=16,
                          unique=True).map(tuple)


@st.composite
def queries(draw: st.DrawFn) -> Query:
    """Every valid :class:`Query`, by target."""
    target = draw(st.sampled_from(Target))
    exchange = draw(st.none() | exchanges)
    if target is Target.SNAPSHOT:
        return Query(target, exchange=exchange, columns=draw(st.none() | columns))
    if target is Target.MARKETS:
        return Query(target, symbol=draw(st.none() | globs), exchange=exchange,
                     columns=draw(st.none() | market_columns))
    start, end = draw(st.none() | times), draw(st.none() | times)
    if start is not None and end is not None and start > end:
        start, end = end, start
    latest = draw(st.none() | st.integers(0, MAX_LATEST))
    if target is Target.EVENTS:
        return Query(target, exchange=exchange, latest=latest, start=start, end=end)
    follow = draw(st.booleans())
    if follow:
        end = None
    return Query(target, symbol=draw(symbols), exchange=exchange, latest=latest, start=start,
                 end=end, columns=draw(st.none() | columns), follow=follow)


# -- round trip ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(queries())
def test_round_trip(q: Query) -> None:
    text = format_ticket(q)
    assert len(text.encode()) <= MAX_REQUEST_BYTES
    assert parse_ticket(text) == q
    assert parse_ticket(text.encode()) == q


@settings(max_examples=50)
@given(queries())
def test_round_trip_through_descriptor_command(q: Query) -> None:
    if q.follow:
        # A live tail has no finite answer for GetFlightInfo to describe.
        with pytest.raises(InvalidDescriptor, match="follow=true"):
            parse_descriptor("cmd", None, format_ticket(q).encode())
    else:
        assert parse_descriptor("cmd", None, format_ticket(q).encode()) == q


# -- examples from the grammar --------------------------------------------------------------


TICKS = Target.TICKS


@pytest.mark.parametrize(("ticket", "expected"), [
    ("BTC/USDT", Query(TICKS, symbol="BTC/USDT")),
    ("BTC/USDT?latest=100", Query(TICKS, symbol="BTC/USDT", latest=100)),
    ("BTC/USDT?latest=0", Query(TICKS, symbol="BTC/USDT", latest=0)),
    (f"BTC/USDT?latest={2**31 - 1}", Query(TICKS, symbol="BTC/USDT", latest=2**31 - 1)),
    ("BTC/USDT?start=1700000000000&end=1700000060000",
     Query(TICKS, symbol="BTC/USDT", start=1_700_000_000_000, end=1_700_000_060_000)),
    ("BTC/USDT?start=2026-11-23T10:00:00Z", Query(TICKS, symbol="BTC/USDT", start=T0)),
    ("BTC/USDT?start=2026-11-23T10:00:00Z&end=2026-11-23T10:05:00.250Z",
     Query(TICKS, symbol="BTC/USDT", start=T0, end=T0 + 300_250)),
    ("BTC/USDT?start=2026-11-23T11:00:00%2B01:00", Query(TICKS, symbol="BTC/USDT", start=T0)),
    ("BTC/USDT?start=2026-11-23T11:00:00+01:00", Query(TICKS, symbol="BTC/USDT", start=T0)),
    ("BTC/USDT?start=2026-11-23T10:00:00", Query(TICKS, symbol="BTC/USDT", start=T0)),
    ("BTC/USDT?start=2026-11-23", Query(TICKS, symbol="BTC/USDT", start=T0 - 36_000_000)),
    ("BTC/USDT?start=1&end=1", Query(TICKS, symbol="BTC/USDT", start=1, end=1)),
    ("BTC/USDT?start=10&latest=5", Query(TICKS, symbol="BTC/USDT", start=10, latest=5)),
    ("BTC/USDT?exchange=binance", Query(TICKS, symbol="BTC/USDT", exchange="binance")),
    ("BTC/USDT:USDT?exchange=binanceusdm",
     Query(TICKS, symbol="BTC/USDT:USDT", exchange="binanceusdm")),
    ("BTC/USDT?exchange=gate_io-2", Query(TICKS, symbol="BTC/USDT", exchange="gate_io-2")),
    ("BTC/USDT?exchange=%62inance", Query(TICKS, symbol="BTC/USDT", exchange="binance")),
    ("BTC/USDT?columns=timestamp,price",
     Query(TICKS, symbol="BTC/USDT", columns=("timestamp", "price"))),
    ("BTC/USDT?columns=price%2Csymbol",
     Query(TICKS, symbol="BTC/USDT", columns=("price", "symbol"))),
    ("BTC/USDT?follow=true", Query(TICKS, symbol="BTC/USDT", follow=True)),
    ("BTC/USDT?follow=false", Query(TICKS, symbol="BTC/USDT")),
    ("BTC/USDT?follow=true&latest=10&start=5",
     Query(TICKS, symbol="BTC/USDT", follow=True, latest=10, start=5)),
    ("BTC/USDT?columns=price&follow=true&exchange=bybit&latest=1",
     Query(TICKS, symbol="BTC/USDT", columns=("price",), follow=True, exchange="bybit",
           latest=1)),
    ("*", Query(Target.SNAPSHOT)),
    ("*?exchange=binance", Query(Target.SNAPSHOT, exchange="binance")),
    ("*?columns=symbol,price", Query(Target.SNAPSHOT, columns=("symbol", "price"))),
    ("@events", Query(Target.EVENTS)),
    ("@events?exchange=bybit&latest=10", Query(Target.EVENTS, exchange="bybit", latest=10)),
    ("@events?start=2026-11-23T10:00:00Z&end=1795428060000",
     Query(Target.EVENTS, start=T0, end=T0 + 60_000)),
    ("@markets", Query(Target.MARKETS)),
    ("@markets?exchange=binance&symbol=BTC/*",
     Query(Target.MARKETS, symbol="BTC/*", exchange="binance")),
    ("@markets?symbol=*/USDT:USDT&columns=symbol,price_tick,subscribed",
     Query(Target.MARKETS, symbol="*/USDT:USDT", columns=("symbol", "price_tick", "subscribed"))),
    ("@markets?symbol=%5BBE%5DTC/US%3F", Query(Target.MARKETS, symbol="[BE]TC/US?")),
    ("@markets?symbol=[!B]*", Query(Target.MARKETS, symbol="[!B]*")),
    ("a", Query(TICKS, symbol="a")),
    ("X" * 64, Query(TICKS, symbol="X" * 64)),
    ("../..", Query(TICKS, symbol="../..")),  # just a (nonexistent) symbol, never a path
])
def test_grammar_examples(ticket: str, expected: Query) -> None:
    assert parse_ticket(ticket) == expected
    assert parse_ticket(ticket.encode()) == expected
    assert parse_ticket(format_ticket(expected)) == expected


@pytest.mark.parametrize(("query", "text"), [
    (Query(TICKS, symbol="BTC/USDT"), "BTC/USDT"),
    (Query(TICKS, symbol="BTC/USDT", latest=5, exchange="binance"),
     "BTC/USDT?latest=5&exchange=binance"),
    (Query(TICKS, symbol="BTC/USDT", start=1, end=2, columns=("price", "timestamp"),
           follow=False), "BTC/USDT?start=1&end=2&columns=price,timestamp"),
    (Query(TICKS, symbol="E", follow=True), "E?follow=true"),
    (Query(Target.SNAPSHOT, exchange="okx"), "*?exchange=okx"),
    (Query(Target.EVENTS, latest=3), "@events?latest=3"),
    (Query(Target.MARKETS), "@markets"),
    (Query(Target.MARKETS, symbol="BTC/*", exchange="bybit", columns=("symbol", "type")),
     "@markets?exchange=bybit&columns=symbol,type&symbol=BTC/*"),
])
def test_format_examples(query: Query, text: str) -> None:
    assert format_ticket(query) == text


def test_iso_times() -> None:
    assert parse_time("2026-11-23T10:00:00Z") == T0
    assert parse_time("2026-11-23T10:00:00+00:00") == T0
    assert parse_time("2026-11-23T12:00:00+02:00") == T0
    assert parse_time("2026-11-23T09:00:00-01:00") == T0
    assert parse_time("2026-11-23T10:00:00.123456Z") == T0 + 123
    assert parse_time("1970-01-01T00:00:00Z") == 0
    assert parse_time("0") == 0
    assert parse_time(str(MAX_TIME_MS)) == MAX_TIME_MS
    assert parse_time("9999-12-31T23:59:59.999Z") == MAX_TIME_MS


def test_too_late_iso_time_names_the_upper_bound() -> None:
    """A time past 9999-12-31T23:59:59.999Z is refused for being too late, not too early."""
    with pytest.raises(InvalidTicket) as info:
        parse_time("9999-12-31T23:59:59-01:00", "end")
    message = str(info.value)
    assert "invalid end '9999-12-31T23:59:59-01:00'" in message
    assert "at or after 1970" not in message
    assert str(MAX_TIME_MS) in message or "9999-12-31T23:59:59.999Z" in message


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.just(timezone.utc)))
def test_iso_times_match_datetime(moment: datetime) -> None:
    expected = (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)
    assert parse_time(moment.isoformat()) == expected
    assert parse_time(moment.isoformat().replace("+00:00", "Z")) == expected


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(("ticket", "fragment"), [
    ("", "ticket is empty; expected SYMBOL[?PARAMS], '*', '@events' or '@markets'"),
    ("?latest=1", "invalid symbol ''"),
    ("BTC/USDT?", "ends with '?' but has no parameters"),
    ("BTC/USDT?latest", "parameter 'latest' has no '='; expected key=value"),
    ("BTC/USDT?latest=1&", "parameter '' has no '='"),
    ("BTC/USDT?&latest=1", "parameter '' has no '='"),
    ("BTC/USDT?limit=5", "unknown parameter 'limit'; allowed: latest, start, end, exchange, "
                         "columns, follow"),
    ("BTC/USDT?LATEST=5", "unknown parameter 'LATEST'"),
    ("BTC/USDT?latest=-1", "invalid latest '-1'; expected a non-negative integer"),
    ("BTC/USDT?latest=1.5", "invalid latest '1.5'"),
    ("BTC/USDT?latest=", "invalid latest ''"),
    ("BTC/USDT?latest=%2B5", "invalid latest '+5'"),
    ("BTC/USDT?latest=1e3", "invalid latest '1e3'"),
    ("BTC/USDT?latest=٣", "invalid latest '٣'"),  # a non-ASCII digit
    (f"BTC/USDT?latest={2**31}", f"invalid latest {2**31}; expected an integer from 0 to "
                                 f"{2**31 - 1}"),
    ("BTC/USDT?latest=99999999999999999999", "invalid latest"),
    ("BTC/USDT?start=yesterday", "invalid start 'yesterday'; expected Unix milliseconds or "
                                 "ISO-8601 such as '2026-11-23T10:00:00Z'"),
    ("BTC/USDT?start=-5", "invalid start '-5'"),
    ("BTC/USDT?end=", "invalid end ''"),
    ("BTC/USDT?start=1969-12-31T23:59:59Z", "invalid start '1969-12-31T23:59:59Z'; must be at "
                                            "or after 1970-01-01T00:00:00Z"),
    (f"BTC/USDT?start={MAX_TIME_MS + 1}", f"must be <= {MAX_TIME_MS}"),
    ("BTC/USDT?start=5&end=4", "start '5' is after end '4'; start must be <= end"),
    ("BTC/USDT?exchange=Binance", "invalid exchange 'Binance'; expected a ccxt exchange id"),
    ("BTC/USDT?exchange=", "parameter 'exchange' is empty"),
    ("BTC/USDT?exchange=bin%20ance", "invalid exchange 'bin ance'"),
    ("BTC/USDT?exchange=" + "a" * 33, "invalid exchange"),
    ("BTC/USDT?columns=", "columns is empty; name at least one of: symbol, timestamp"),
    ("BTC/USDT?columns=price,bogus", "unknown column 'bogus'; allowed: symbol, timestamp, "
                                     "price"),
    ("BTC/USDT?columns=price,,timestamp", "unknown column ''"),
    ("BTC/USDT?columns=price,price", "repeat a column"),
    ("BTC/USDT?follow=yes", "invalid follow 'yes'; expected 'true' or 'false'"),
    ("BTC/USDT?follow=True", "invalid follow 'True'"),
    ("BTC/USDT?follow=true&end=5", "follow=true cannot have an end"),
    ("BTC/USDT?latest=1&latest=2", "parameter 'latest' is given twice; give it once"),
    ("BTC/USDT?exchange=a&exchange=a", "parameter 'exchange' is given twice"),
    ("*?latest=5", "parameter 'latest' is not allowed for '*'; allowed: exchange, columns"),
    ("*?follow=true", "parameter 'follow' is not allowed for '*'"),
    ("*?start=1", "parameter 'start' is not allowed for '*'"),
    ("@events?columns=kind", "parameter 'columns' is not allowed for '@events'; allowed: "
                             "latest, start, end, exchange"),
    ("@events?follow=true", "parameter 'follow' is not allowed for '@events'"),
    ("@markets?latest=5", "parameter 'latest' is not allowed for '@markets'; allowed: exchange, "
                          "columns, symbol"),
    ("@markets?follow=true", "parameter 'follow' is not allowed for '@markets'"),
    ("@markets?symbol=", "parameter 'symbol' is empty"),
    ("@markets?symbol=BTC%20USDT", "invalid symbol glob 'BTC USDT' for '@markets'; expected 1-64 "
                                   "characters from A-Z a-z 0-9 / - _ : . * ? [ ] !"),
    ("@markets?symbol=" + "A" * 65, "invalid symbol glob"),
    ("@markets?columns=price", "unknown column 'price'; allowed: exchange, symbol, id, base"),
    ("@markets?columns=", "columns is empty; name at least one of: exchange, symbol, id"),
    ("@markets?exchange=Binance", "invalid exchange 'Binance'"),
    ("@markets?symbol=A&symbol=B", "parameter 'symbol' is given twice"),
    ("BTC/USDT?symbol=ETH/USDT", "parameter 'symbol' is not allowed for 'BTC/USDT'; allowed: "
                                 "latest, start, end, exchange, columns, follow"),
    ("*?symbol=BTC/*", "parameter 'symbol' is not allowed for '*'; allowed: exchange, columns"),
    ("@events?symbol=BTC/*", "parameter 'symbol' is not allowed for '@events'"),
    ("@Markets", "invalid symbol '@Markets'"),
    ("BTC/USDT?latest=%ff", "parameter 'latest' is not valid percent-encoded UTF-8"),
])
def test_malformed_tickets(ticket: str, fragment: str) -> None:
    with pytest.raises(InvalidTicket) as info:
        parse_ticket(ticket)
    assert fragment in str(info.value)
    assert isinstance(info.value, InvalidArgument)


@pytest.mark.parametrize("symbol", [
    "BTC USDT", "BTC/USDT\n", "\nBTC/USDT", "BTC/USDT\x00", "BTC%2FUSDT", "BTC\\USDT",
    "__import__('os').system('id')", "'; DROP TABLE ticks; --", "<script>", "ＢＴＣ/USDT",
    "BTC/USDT\u200b", "BTC/ÜSDT", "X" * 65, "BTC#USDT", "$(id)", "`id`", "{symbol}",
    "**", "@events2", "@", "*BTC", "BTC/USDT ", "\t",
])
def test_hostile_symbols_are_refused(symbol: str) -> None:
    with pytest.raises(InvalidTicket) as info:
        parse_ticket(symbol + "?latest=1")
    message = str(info.value)
    assert "invalid symbol" in message
    assert "expected 1-64 characters from A-Z a-z 0-9 / - _ : ." in message
    assert len(message) < 300


def test_long_hostile_symbol_is_truncated_in_message() -> None:
    with pytest.raises(InvalidTicket) as info:
        parse_ticket("!" * 3000)
    assert len(str(info.value)) < 300


def test_size_limit() -> None:
    ok = "X" * MAX_REQUEST_BYTES
    with pytest.raises(InvalidTicket, match="invalid symbol"):  # refused, but not for size
        parse_ticket(ok)
    with pytest.raises(RequestTooLarge, match=f"ticket is {MAX_REQUEST_BYTES + 1} bytes; "
                                              f"the limit is {MAX_REQUEST_BYTES}"):
        parse_ticket(ok + "X")
    with pytest.raises(RequestTooLarge):
        parse_ticket(b"BTC/USDT?columns=" + b"price," * 2000)
    # The limit is in bytes, not characters.
    with pytest.raises(RequestTooLarge):
        parse_ticket("BTC/USDT?exchange=" + "é" * 2040)
    check_size(b"x" * MAX_REQUEST_BYTES, "thing")
    with pytest.raises(RequestTooLarge, match="thing is 4097 bytes"):
        check_size(b"x" * 4097, "thing")


@pytest.mark.parametrize("data", [b"\xff", b"BTC/USDT?latest=\xff", b"\xc3\x28", b"\xed\xa0\x80",
                                  b"BTC/USDT\x80"])
def test_non_utf8_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidTicket, match="not valid UTF-8"):
        parse_ticket(data)


def test_lone_surrogate_text_is_refused() -> None:
    with pytest.raises(InvalidTicket, match="not valid UTF-8"):
        parse_ticket("BTC\ud800")


@pytest.mark.parametrize("kwargs", [
    dict(target=TICKS),
    dict(target=TICKS, symbol="bad symbol"),
    dict(target=Target.SNAPSHOT, symbol="BTC"),
    dict(target=Target.EVENTS, symbol="BTC"),
    dict(target=TICKS, symbol="BTC", latest=-1),
    dict(target=TICKS, symbol="BTC", latest=True),
    dict(target=TICKS, symbol="BTC", latest=1.0),
    dict(target=TICKS, symbol="BTC", start=MAX_TIME_MS + 1),
    dict(target=TICKS, symbol="BTC", end=False),
    dict(target=TICKS, symbol="BTC", exchange="BINANCE"),
    dict(target=TICKS, symbol="BTC", columns=()),
    dict(target=TICKS, symbol="BTC", follow=True, end=5),
    dict(target=Target.SNAPSHOT, latest=1),
    dict(target=Target.EVENTS, follow=True),
])
def test_query_validates_itself(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidTicket):
        Query(**kwargs)


# -- fuzz -----------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_flight_md_errors(data: bytes) -> None:
    try:
        q = parse_ticket(data)
    except FlightMdError as exc:
        assert isinstance(exc, (InvalidTicket, RequestTooLarge))
    else:
        assert parse_ticket(format_ticket(q)) == q


ticketish = st.lists(
    st.sampled_from(["BTC/USDT", "*", "@events", "?", "&", "=", "latest", "start", "end",
                     "exchange", "columns", "follow", "true", "false", "binance", "price",
                     ",", "%", "%2", "%41", "%ff", "2026-11-23T10:00:00Z", "+01:00", "Z",
                     "0", "1", "-", "99999999999999999999", ":", ".", "T", " ", "é", "\x00"]),
    max_size=12).map("".join)


@settings(max_examples=250)
@given(st.one_of(ticketish, st.text(max_size=100)))
def test_near_grammar_text_raises_only_flight_md_errors(text: str) -> None:
    try:
        q = parse_ticket(text)
    except FlightMdError as exc:
        assert isinstance(exc, (InvalidTicket, RequestTooLarge))
        assert "Traceback" not in str(exc)
    else:
        assert parse_ticket(format_ticket(q)) == q


@settings(max_examples=150)
@given(st.binary(max_size=300) | st.text(max_size=100).map(str.encode)
       | st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                      lambda inner: st.lists(inner) | st.dictionaries(
                          st.sampled_from(["symbol", "exchange", "latest", "start", "end",
                                           "columns", "x"]), inner),
                      max_leaves=10).map(lambda v: json.dumps(v).encode()))
def test_arbitrary_commands_raise_only_flight_md_errors(data: bytes) -> None:
    try:
        parse_descriptor("cmd", None, data)
    except FlightMdError as exc:
        assert isinstance(exc, (InvalidDescriptor, RequestTooLarge))


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=40), max_size=4))
def test_arbitrary_paths_raise_only_flight_md_errors(path: list[bytes]) -> None:
    try:
        q = parse_descriptor("path", path, None)
    except FlightMdError as exc:
        assert isinstance(exc, (InvalidDescriptor, RequestTooLarge))
    else:
        assert q.target is Target.TICKS


# -- descriptors ----------------------------------------------------------------------------


def test_path_descriptors() -> None:
    assert parse_descriptor("path", [b"BTC/USDT"], None) == Query(TICKS, symbol="BTC/USDT")
    assert parse_descriptor("path", [b"binance", b"BTC/USDT"], None) == Query(
        TICKS, symbol="BTC/USDT", exchange="binance")


@pytest.mark.parametrize(("path", "fragment"), [
    ([], "descriptor path has 0 elements; expected [symbol], [exchange, symbol] or "
         "[exchange, symbol, channel]"),
    (None, "descriptor path has 0 elements"),
    ([b"a", b"b", b"trades", b"d"], "descriptor path has 4 elements"),
    ([b"a", b"b", b"c"], "descriptor path: invalid channel 'c'; expected one of: ticker, "
                         "bidask, trades, book"),
    ([b"binance", b"BTC/USDT", b"1m"], "invalid channel '1m'"),
    ([b"binance", b"BTC/USDT", b"Trades"], "invalid channel 'Trades'"),
    ([b"binance", b"BTC/USDT", b""], "invalid channel ''"),
    ([b"\xff"], "descriptor path is not valid UTF-8"),
    ([b"BTC USDT"], "descriptor path: invalid symbol 'BTC USDT'"),
    ([b"*"], "invalid symbol '*'"),
    ([b"@events"], "invalid symbol '@events'"),
    ([b"@markets"], "invalid symbol '@markets'"),
    ([b"Binance", b"BTC/USDT"], "descriptor path: invalid exchange 'Binance'"),
    ([b"", b"BTC/USDT"], "invalid exchange ''"),
])
def test_bad_path_descriptors(path: list[bytes] | None, fragment: str) -> None:
    with pytest.raises(InvalidDescriptor) as info:
        parse_descriptor("path", path, None)
    assert fragment in str(info.value)


def test_oversized_descriptors() -> None:
    with pytest.raises(RequestTooLarge, match="descriptor path is"):
        parse_descriptor("path", [b"x" * 4000, b"y" * 200], None)
    with pytest.raises(RequestTooLarge, match="descriptor command is 4097 bytes"):
        parse_descriptor("cmd", None, b" " * 4097)
    with pytest.raises(RequestTooLarge):
        parse_descriptor("cmd", None, json.dumps({"symbol": "B" * 5000}).encode())


@pytest.mark.parametrize(("command", "expected"), [
    (b"BTC/USDT?latest=5", Query(TICKS, symbol="BTC/USDT", latest=5)),
    (b"*", Query(Target.SNAPSHOT)),
    (b"@events?latest=1", Query(Target.EVENTS, latest=1)),
    (b'{"symbol": "BTC/USDT"}', Query(TICKS, symbol="BTC/USDT")),
    (b'  {"symbol": "BTC/USDT", "latest": 100}', Query(TICKS, symbol="BTC/USDT", latest=100)),
    (b'{"symbol": "BTC/USDT", "exchange": "binance", "start": 1, "end": 2, '
     b'"columns": ["price", "timestamp"]}',
     Query(TICKS, symbol="BTC/USDT", exchange="binance", start=1, end=2,
           columns=("price", "timestamp"))),
    (b'{"symbol": "BTC/USDT", "start": "2026-11-23T10:00:00Z", "end": null}',
     Query(TICKS, symbol="BTC/USDT", start=T0)),
    (b'{"symbol": "BTC/USDT", "columns": "price,symbol"}',
     Query(TICKS, symbol="BTC/USDT", columns=("price", "symbol"))),
    (b'{"symbol": "BTC/USDT", "exchange": null, "latest": null, "columns": null}',
     Query(TICKS, symbol="BTC/USDT")),
    (b'{"symbol": "*", "exchange": "bybit", "columns": ["price"]}',
     Query(Target.SNAPSHOT, exchange="bybit", columns=("price",))),
    (b'{"symbol": "@events", "latest": 3}', Query(Target.EVENTS, latest=3)),
    (b"@markets?exchange=bybit&symbol=*/USDT:USDT",
     Query(Target.MARKETS, symbol="*/USDT:USDT", exchange="bybit")),
    (b'{"symbol": "@markets", "exchange": "binance", "columns": ["symbol", "price_tick"]}',
     Query(Target.MARKETS, exchange="binance", columns=("symbol", "price_tick"))),
])
def test_command_descriptors(command: bytes, expected: Query) -> None:
    assert parse_descriptor("cmd", None, command) == expected


@pytest.mark.parametrize(("command", "fragment"), [
    (b"", "descriptor command: ticket is empty"),
    (None, "descriptor command: ticket is empty"),
    (b"BTC/USDT?bogus=1", "descriptor command: unknown parameter 'bogus'"),
    (b"\xff", "descriptor command: ticket is not valid UTF-8"),
    (b"{", "descriptor command is not valid JSON; expected a ticket or"),
    (b'{"symbol": "BTC/USDT",}', "not valid JSON"),
    (b"{\"symbol\": \"\xff\"}", "not valid JSON"),
    (b"[" * 3000, "invalid symbol"),  # not an object: parsed as a ticket
    (b'{"symbol": "BTC/USDT", "follow": true}', "unknown key 'follow' in descriptor command; "
                                                "allowed: bars, channel, columns, end, "
                                                "exchange, latest, start, symbol"),
    (b'{}', 'descriptor command needs "symbol" as a string'),
    (b'{"symbol": 5}', 'needs "symbol" as a string'),
    (b'{"symbol": null}', 'needs "symbol" as a string'),
    (b'{"symbol": "BTC USDT"}', "invalid symbol 'BTC USDT'"),
    (b'{"symbol": "@markets", "latest": 3}', "parameter 'latest' is not allowed for '@markets'"),
    (b"@markets?start=1", "descriptor command: parameter 'start' is not allowed for '@markets'"),
    (b'{"symbol": "BTC/USDT", "exchange": 1}', '"exchange" must be a string or null'),
    (b'{"symbol": "BTC/USDT", "exchange": "Binance"}', "invalid exchange 'Binance'"),
    (b'{"symbol": "BTC/USDT", "latest": "100"}', "\"latest\" must be an integer, got '100'"),
    (b'{"symbol": "BTC/USDT", "latest": 1.0}', '"latest" must be an integer, got 1.0'),
    (b'{"symbol": "BTC/USDT", "latest": true}', '"latest" must be an integer, got true'),
    (b'{"symbol": "BTC/USDT", "latest": -1}', "invalid latest -1"),
    (b'{"symbol": "BTC/USDT", "latest": 1e400}', '"latest" must be an integer'),
    (b'{"symbol": "BTC/USDT", "start": 1.5}', '"start" must be Unix ms or an ISO-8601 string'),
    (b'{"symbol": "BTC/USDT", "start": true}', '"start" must be Unix ms'),
    (b'{"symbol": "BTC/USDT", "end": [1]}', '"end" must be Unix ms'),
    (b'{"symbol": "BTC/USDT", "start": -1}', "invalid start -1"),
    (b'{"symbol": "BTC/USDT", "start": "soon"}', "invalid start 'soon'"),
    (b'{"symbol": "BTC/USDT", "start": 5, "end": 4}', "start 5 is after end 4"),
    (b'{"symbol": "BTC/USDT", "columns": [1]}', '"columns" must be an array of column names or one '
     'comma-separated string, got [1]'),
    (b'{"symbol": "BTC/USDT", "columns": {"a": 1}}', '"columns" must be an array of column names '
     'or one comma-separated string, got {"a": 1}'),
    (b'{"symbol": "BTC/USDT", "columns": []}', "columns is empty"),
    (b'{"symbol": "BTC/USDT", "columns": ["bogus"]}', "unknown column 'bogus'"),
    (b'{"symbol": "*", "latest": 5}', "parameter 'latest' is not allowed for '*'"),
    (b'{"symbol": "@events", "columns": ["kind"]}', "parameter 'columns' is not allowed"),
    (b'{"symbol": "BTC/USDT"} {"symbol": "ETH/USDT"}', "not valid JSON"),
    (b'{"symbol": ' + b"[" * 2000 + b"]" * 2000 + b"}", "not valid JSON"),  # too deep
])
def test_bad_command_descriptors(command: bytes | None, fragment: str) -> None:
    with pytest.raises(InvalidDescriptor) as info:
        parse_descriptor("cmd", None, command)
    message = str(info.value)
    assert fragment in message
    assert len(message) < 600


@pytest.mark.parametrize(("kind", "path", "command"), [
    ("cmd", None, b'{"symbol": "BTC/USDT", "latest": ' + b"9" * 4000 + b"}"),
    ("cmd", None, b'{"symbol": "' + b"B" * 4000 + b'"}'),
    ("path", [b"x" * 3000, b"BTC/USDT"], None),
    ("cmd", None, b"BTC/USDT?exchange=" + b"x" * 4000),
])
def test_refusal_messages_stay_short_whatever_the_input(kind: str, path: list[bytes] | None,
                                                         command: bytes | None) -> None:
    """Messages name the bad value, but a 4 KiB value must not come back whole.

    The ticket parser already truncates a bad symbol to 80 characters; the checks in
    ``Query`` (reached from JSON commands, paths and ticket parameters) do not.
    """
    with pytest.raises(InvalidDescriptor) as info:
        parse_descriptor(kind, path, command)
    assert len(str(info.value)) < 600, str(info.value)[:200]


def test_json_command_strict_types_are_not_coerced() -> None:
    for body in ({"symbol": "BTC/USDT", "latest": "5"}, {"symbol": "BTC/USDT", "latest": 5.0},
                 {"symbol": ["BTC/USDT"]}, {"symbol": "BTC/USDT", "exchange": ["binance"]},
                 {"symbol": "BTC/USDT", "start": {"ms": 1}}):
        with pytest.raises(InvalidDescriptor):
            parse_descriptor("cmd", None, json.dumps(body).encode())


# -- channels and bars (issue 12) -----------------------------------------------------------


@pytest.mark.parametrize(("ticket", "expected"), [
    ("BTC/USDT?channel=trades&latest=1000",
     Query(TICKS, symbol="BTC/USDT", channel="trades", latest=1000)),
    ("BTC/USDT?channel=ticker", Query(TICKS, symbol="BTC/USDT", channel="ticker")),
    ("BTC/USDT?channel=bidask&columns=bid,ask",
     Query(TICKS, symbol="BTC/USDT", channel="bidask", columns=("bid", "ask"))),
    ("BTC/USDT?channel=book&latest=1&columns=timestamp,bids,asks,nonce",
     Query(TICKS, symbol="BTC/USDT", channel="book", latest=1,
           columns=("timestamp", "bids", "asks", "nonce"))),
    ("BTC/USDT?channel=trades&columns=trade_id,price,amount,side&follow=true",
     Query(TICKS, symbol="BTC/USDT", channel="trades", follow=True,
           columns=("trade_id", "price", "amount", "side"))),
    ("BTC/USDT?bars=1m", Query(TICKS, symbol="BTC/USDT", bars="1m")),
    ("BTC/USDT?channel=trades&bars=1h&start=2026-11-23T10:00:00Z",
     Query(TICKS, symbol="BTC/USDT", channel="trades", bars="1h", start=T0)),
    ("BTC/USDT?bars=1s&follow=true&columns=bar_start,close,volume,vwap",
     Query(TICKS, symbol="BTC/USDT", bars="1s", follow=True,
           columns=("bar_start", "close", "volume", "vwap"))),
    ("ETH/USDT?bars=15m&latest=96&exchange=okx",
     Query(TICKS, symbol="ETH/USDT", bars="15m", latest=96, exchange="okx")),
    ("*?channel=trades", Query(Target.SNAPSHOT, channel="trades")),
    ("*?channel=book&exchange=kraken&columns=symbol,bids",
     Query(Target.SNAPSHOT, channel="book", exchange="kraken", columns=("symbol", "bids"))),
    ("*?channel=bidask", Query(Target.SNAPSHOT, channel="bidask")),
])
def test_channel_and_bars_examples(ticket: str, expected: Query) -> None:
    assert parse_ticket(ticket) == expected
    assert parse_ticket(format_ticket(expected)) == expected


def test_channel_and_bars_are_stored_as_their_enums() -> None:
    q = parse_ticket("BTC/USDT?channel=trades&bars=5m")
    assert q.channel is Channel.TRADES and q.bars is BarInterval.M5
    built = Query(TICKS, symbol="BTC/USDT", channel="trades", bars="5m")
    assert built.channel is Channel.TRADES and built.bars is BarInterval.M5
    assert built == q and hash(built) == hash(q)
    assert format_ticket(q) == "BTC/USDT?channel=trades&bars=5m"
    assert Query(TICKS, symbol="X", channel=Channel.BOOK).channel is Channel.BOOK


@pytest.mark.parametrize(("query", "channel"), [
    (Query(TICKS, symbol="B"), None),
    (Query(TICKS, symbol="B", channel="bidask"), Channel.BIDASK),
    (Query(TICKS, symbol="B", bars="1d"), Channel.TRADES),
    (Query(TICKS, symbol="B", channel="trades", bars="1d"), Channel.TRADES),
    (Query(Target.SNAPSHOT, channel="book"), Channel.BOOK),
])
def test_effective_channel(query: Query, channel: Channel | None) -> None:
    assert query.effective_channel is channel


@pytest.mark.parametrize(("query", "schema"), [
    (Query(TICKS, symbol="B"), SCHEMA),
    (Query(TICKS, symbol="B", channel="ticker"), SCHEMA),
    (Query(TICKS, symbol="B", channel="bidask"), SCHEMA),
    (Query(TICKS, symbol="B", channel="trades"), TRADE_SCHEMA),
    (Query(TICKS, symbol="B", channel="book"), BOOK_SCHEMA),
    (Query(TICKS, symbol="B", bars="1m"), BAR_SCHEMA),
    (Query(TICKS, symbol="B", channel="trades", bars="1m"), BAR_SCHEMA),
    (Query(Target.SNAPSHOT), SCHEMA),
    (Query(Target.SNAPSHOT, channel="trades"), TRADE_SCHEMA),
    (Query(Target.MARKETS), MARKET_SCHEMA),
])
def test_answer_schema(query: Query, schema: pa.Schema) -> None:
    assert answer_schema(query).equals(schema)


@pytest.mark.parametrize(("ticket", "fragment"), [
    ("BTC/USDT?channel=trade", "invalid channel 'trade'; expected one of: ticker, bidask, "
                               "trades, book"),
    ("BTC/USDT?channel=TRADES", "invalid channel 'TRADES'"),
    ("BTC/USDT?channel=", "invalid channel ''"),
    ("BTC/USDT?channel=trades&channel=book", "parameter 'channel' is given twice"),
    ("BTC/USDT?bars=2m", "invalid bars '2m'; expected one of: 1s, 1m, 5m, 15m, 1h, 1d"),
    ("BTC/USDT?bars=1M", "invalid bars '1M'"),
    ("BTC/USDT?bars=", "invalid bars ''"),
    ("BTC/USDT?bars=%201m", "invalid bars ' 1m'"),
    ("BTC/USDT?channel=book&bars=1m", "bars=1m needs trades; channel 'book' has no bars (use "
                                      "channel=trades, or no channel)"),
    ("BTC/USDT?bars=1m&channel=ticker", "channel 'ticker' has no bars"),
    ("BTC/USDT?channel=bidask&bars=1d", "channel 'bidask' has no bars"),
    ("BTC/USDT?channel=trades&columns=bid", "unknown column 'bid' for channel 'trades'; allowed: "
                                            "symbol, exchange, timestamp, trade_id, price, "
                                            "amount, side, receive_timestamp"),
    ("BTC/USDT?channel=book&columns=price", "unknown column 'price' for channel 'book'; allowed: "
                                            "symbol, exchange, timestamp, bids, asks, nonce, "
                                            "receive_timestamp"),
    ("BTC/USDT?channel=trades&columns=", "columns is empty; name at least one for channel "
                                         "'trades' of: symbol, exchange"),
    ("BTC/USDT?bars=1m&columns=price", "unknown column 'price' for bars; allowed: bar_start, "
                                       "open, high, low, close, volume, vwap, trades"),
    ("BTC/USDT?channel=trades&bars=1m&columns=trade_id", "unknown column 'trade_id' for bars"),
    ("BTC/USDT?bars=1m&columns=open,open", "repeat a column"),
    ("BTC/USDT?channel=ticker&columns=bids", "unknown column 'bids' for channel 'ticker'; "
                                             "allowed: symbol, timestamp, price"),
    ("BTC/USDT?bars=1m&follow=true&end=5", "follow=true cannot have an end"),
    ("*?bars=1m", "parameter 'bars' is not allowed for '*'; allowed: exchange, columns, "
                  "channel"),
    ("*?channel=trades&columns=bid", "unknown column 'bid' for channel 'trades'"),
    ("@events?channel=trades", "parameter 'channel' is not allowed for '@events'; allowed: "
                               "latest, start, end, exchange"),
    ("@markets?channel=book", "parameter 'channel' is not allowed for '@markets'"),
    ("@markets?bars=1m", "parameter 'bars' is not allowed for '@markets'"),
    ("BTC/USDT?chanel=trades", "unknown parameter 'chanel'; allowed: latest, start, end, "
                               "exchange, columns, follow, channel, bars, symbol"),
])
def test_bad_channel_and_bars_tickets(ticket: str, fragment: str) -> None:
    with pytest.raises(InvalidTicket) as info:
        parse_ticket(ticket)
    assert fragment in str(info.value)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("kwargs", [
    dict(target=TICKS, symbol="B", channel="trade"),
    dict(target=TICKS, symbol="B", channel=5),
    dict(target=TICKS, symbol="B", bars="2m"),
    dict(target=TICKS, symbol="B", bars=60_000),
    dict(target=TICKS, symbol="B", channel="book", bars="1m"),
    dict(target=TICKS, symbol="B", channel="trades", columns=("bid",)),
    dict(target=Target.SNAPSHOT, bars="1m"),
    dict(target=Target.EVENTS, channel="trades"),
    dict(target=Target.MARKETS, channel="trades"),
])
def test_query_validates_channel_and_bars(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidTicket):
        Query(**kwargs)


def test_path_descriptor_with_channel() -> None:
    assert parse_descriptor("path", [b"binance", b"BTC/USDT", b"trades"], None) == Query(
        TICKS, symbol="BTC/USDT", exchange="binance", channel="trades")
    for channel in Channel:
        q = parse_descriptor("path", [b"okx", b"ETH/USDT", channel.value.encode()], None)
        assert q.channel is channel


@pytest.mark.parametrize(("command", "expected"), [
    (b'{"symbol": "BTC/USDT", "channel": "trades", "latest": 1000}',
     Query(TICKS, symbol="BTC/USDT", channel="trades", latest=1000)),
    (b'{"symbol": "BTC/USDT", "bars": "1m", "start": "2026-11-23T10:00:00Z"}',
     Query(TICKS, symbol="BTC/USDT", bars="1m", start=T0)),
    (b'{"symbol": "BTC/USDT", "channel": "trades", "bars": "5m", "columns": ["close"]}',
     Query(TICKS, symbol="BTC/USDT", channel="trades", bars="5m", columns=("close",))),
    (b'{"symbol": "BTC/USDT", "channel": null, "bars": null}', Query(TICKS, symbol="BTC/USDT")),
    (b'{"symbol": "*", "channel": "book"}', Query(Target.SNAPSHOT, channel="book")),
    (b"BTC/USDT?channel=book&latest=1", Query(TICKS, symbol="BTC/USDT", channel="book",
                                              latest=1)),
])
def test_command_descriptors_with_channel_and_bars(command: bytes, expected: Query) -> None:
    assert parse_descriptor("cmd", None, command) == expected


@pytest.mark.parametrize(("command", "fragment"), [
    (b'{"symbol": "BTC/USDT", "channel": 1}', '"channel" must be a string or null, such as '
                                             "'trades', got 1"),
    (b'{"symbol": "BTC/USDT", "channel": ["trades"]}', '"channel" must be a string or null'),
    (b'{"symbol": "BTC/USDT", "bars": 60}', "\"bars\" must be a string or null, such as '1m', "
                                           "got 60"),
    (b'{"symbol": "BTC/USDT", "channel": "tick"}', "invalid channel 'tick'; expected one of"),
    (b'{"symbol": "BTC/USDT", "bars": "1w"}', "invalid bars '1w'; expected one of: 1s, 1m"),
    (b'{"symbol": "BTC/USDT", "channel": "book", "bars": "1m"}', "channel 'book' has no bars"),
    (b'{"symbol": "@events", "channel": "trades"}', "parameter 'channel' is not allowed for "
                                                    "'@events'"),
    (b'{"symbol": "*", "bars": "1m"}', "parameter 'bars' is not allowed for '*'"),
    (b"BTC/USDT?bars=1m&follow=true", "follow=true has no finite answer"),
])
def test_bad_command_descriptors_with_channel_and_bars(command: bytes, fragment: str) -> None:
    with pytest.raises(InvalidDescriptor) as info:
        parse_descriptor("cmd", None, command)
    assert fragment in str(info.value)

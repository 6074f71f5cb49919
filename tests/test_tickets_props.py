"""Property tests of the ticket grammar over channels and bars (issue 12).

``tests/test_tickets.py`` holds the examples and refusals; here Hypothesis generates every
valid :class:`Query` with ``channel`` and ``bars`` (and columns from the schema that the
channel or the bars give) and checks that :func:`format_ticket` and :func:`parse_ticket` are
exact inverses, also through the descriptor forms, and that any input is refused only with
the grammar's own errors.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_md.core.bars import BarInterval
from flight_md.errors import FlightMdError, InvalidDescriptor, InvalidTicket, RequestTooLarge
from flight_md.normalize import Channel
from flight_md.tickets import (MAX_LATEST, MAX_REQUEST_BYTES, MAX_TIME_MS, Query, Target,
                               answer_schema, format_ticket, parse_descriptor, parse_ticket)

SYMBOL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/-_:."
symbols = st.text(SYMBOL_CHARS, min_size=1, max_size=64)
exchanges = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=32)
times = st.integers(0, MAX_TIME_MS)


@st.composite
def channel_queries(draw: st.DrawFn) -> Query:
    """Every valid ``SYMBOL`` or ``*`` query, with or without ``channel`` and ``bars``."""
    target = draw(st.sampled_from([Target.TICKS, Target.SNAPSHOT]))
    channel = draw(st.none() | st.sampled_from(Channel))
    bars = None
    if target is Target.TICKS and channel in (None, Channel.TRADES):
        bars = draw(st.none() | st.sampled_from(BarInterval))
    exchange = draw(st.none() | exchanges)
    # Columns come from the schema the channel or the bars give the answer.
    names = answer_schema(Query(Target.TICKS, symbol="X", channel=channel, bars=bars)).names
    columns = draw(st.none() | st.lists(st.sampled_from(names), min_size=1, unique=True)
                   .map(tuple))
    if target is Target.SNAPSHOT:
        return Query(target, exchange=exchange, columns=columns, channel=channel)
    start, end = draw(st.none() | times), draw(st.none() | times)
    if start is not None and end is not None and start > end:
        start, end = end, start
    follow = draw(st.booleans())
    return Query(target, symbol=draw(symbols), exchange=exchange,
                 latest=draw(st.none() | st.integers(0, MAX_LATEST)), start=start,
                 end=None if follow else end, columns=columns, follow=follow, channel=channel,
                 bars=bars)


@settings(max_examples=200)
@given(channel_queries())
def test_round_trip_with_channels_and_bars(q: Query) -> None:
    text = format_ticket(q)
    assert len(text.encode()) <= MAX_REQUEST_BYTES
    parsed = parse_ticket(text)
    assert parsed == q
    # The parser gives the enums, whatever form the query was built with.
    assert parsed.channel is None or isinstance(parsed.channel, Channel)
    assert parsed.bars is None or isinstance(parsed.bars, BarInterval)
    assert format_ticket(parsed) == text


@settings(max_examples=100)
@given(channel_queries())
def test_round_trip_through_descriptors(q: Query) -> None:
    command = format_ticket(q).encode()
    if q.follow:
        with pytest.raises(InvalidDescriptor, match="follow=true"):
            parse_descriptor("cmd", None, command)
        return
    assert parse_descriptor("cmd", None, command) == q
    body = {"symbol": q.symbol if q.target is Target.TICKS else "*", "exchange": q.exchange,
            "latest": q.latest, "start": q.start, "end": q.end,
            "columns": None if q.columns is None else list(q.columns),
            "channel": q.channel, "bars": q.bars}
    assert parse_descriptor("cmd", None, json.dumps(body).encode()) == q
    if q.target is Target.TICKS and q.exchange is not None and q.channel is not None and (
            q == Query(Target.TICKS, symbol=q.symbol, exchange=q.exchange, channel=q.channel)):
        path = [q.exchange.encode(), q.symbol.encode(), q.channel.encode()]
        assert parse_descriptor("path", path, None) == q


def _only_grammar_errors(data: bytes | str) -> None:
    try:
        q = parse_ticket(data)
    except FlightMdError as exc:
        assert isinstance(exc, (InvalidTicket, RequestTooLarge)), repr(exc)
        assert len(str(exc)) < 600
    else:
        assert parse_ticket(format_ticket(q)) == q


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_ticket_errors(data: bytes) -> None:
    _only_grammar_errors(data)


near = st.lists(st.sampled_from(
    ["BTC/USDT", "*", "?", "&", "=", "channel", "bars", "ticker", "bidask", "trades", "book",
     "trade", "1s", "1m", "5m", "15m", "1h", "1d", "2m", "columns", "bar_start", "vwap",
     "trade_id", "bids", "nonce", "side", "price", ",", "latest", "1", "follow", "true",
     "start", "end", "%", "%2", "%74", "\x00", "é"]), max_size=14).map("".join)


@settings(max_examples=200)
@given(near | near.map(str.encode) | st.binary(min_size=4090, max_size=4100))
def test_near_grammar_input_raises_only_ticket_errors(data: bytes | str) -> None:
    _only_grammar_errors(data)


@settings(max_examples=200)
@given(st.dictionaries(
    st.sampled_from(["symbol", "exchange", "latest", "columns", "channel", "bars"]),
    st.none() | st.booleans() | st.integers(-2, 70) | st.sampled_from(
        ["BTC/USDT", "*", "@events", "trades", "book", "ticker", "1m", "1d", "2m", "close",
         "trade_id", ""]) | st.lists(st.sampled_from(["close", "bids", "price"]), max_size=3)))
def test_json_commands_raise_only_descriptor_errors(body: dict[str, object]) -> None:
    try:
        parse_descriptor("cmd", None, json.dumps(body).encode())
    except FlightMdError as exc:
        assert isinstance(exc, (InvalidDescriptor, RequestTooLarge)), repr(exc)

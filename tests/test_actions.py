"""The action registry: names, descriptions, body parsing and results."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_md.actions import (ACTIONS, ActionName, ClearRequest, StatusRequest,
                               SubscribeRequest, encode_result, parse_action)
from flight_md.errors import (FlightMdError, InvalidActionBody, InvalidArgument, RequestTooLarge,
                              UnknownAction)


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- the registry ----------------------------------------------------------------------------


def test_registry_covers_every_action() -> None:
    assert list(ACTIONS) == list(ActionName)
    assert [a.value for a in ActionName] == ["subscribe", "unsubscribe", "clear", "status",
                                             "health", "flush"]
    for name, spec in ACTIONS.items():
        assert spec.name is name
        assert "Body:" in spec.description and "Result:" in spec.description, name
    assert {n for n, s in ACTIONS.items() if s.mutates} == {
        ActionName.SUBSCRIBE, ActionName.FLUSH, ActionName.UNSUBSCRIBE, ActionName.CLEAR}


def test_descriptions_show_body_formats() -> None:
    assert '{"symbols": ["BTC/USDT", ...], "exchange": "binance"}' in ACTIONS[
        ActionName.SUBSCRIBE].description
    assert '"symbols"' in ACTIONS[ActionName.UNSUBSCRIBE].description
    assert '"cleared"' in ACTIONS[ActionName.CLEAR].description
    assert "empty or {}" in ACTIONS[ActionName.STATUS].description


# -- valid bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("status", b"", StatusRequest()),
    ("status", b"{}", StatusRequest()),
    ("status", b"  \n ", StatusRequest()),
    ("status", b" {} ", StatusRequest()),
    ("clear", b"", ClearRequest()),
    ("clear", b"{}", ClearRequest()),
    ("clear", body({"symbols": None}), ClearRequest()),
    ("clear", body({"symbols": ["BTC/USDT"]}), ClearRequest(("BTC/USDT",))),
    ("clear", body({"symbols": []}), ClearRequest(())),
    ("clear", body({"exchange": "binance"}), ClearRequest(None, "binance")),
    ("clear", body({"symbols": ["BTC/USDT", "ETH/USDT"], "exchange": "bybit"}),
     ClearRequest(("BTC/USDT", "ETH/USDT"), "bybit")),
    ("clear", body({"symbols": ["A", "B", "A"]}), ClearRequest(("A", "B"))),
    ("subscribe", body({"symbols": ["BTC/USDT"]}), SubscribeRequest(("BTC/USDT",))),
    ("subscribe", body({"symbols": ["BTC/USDT:USDT"], "exchange": "binanceusdm"}),
     SubscribeRequest(("BTC/USDT:USDT",), "binanceusdm")),
    ("subscribe", body({"symbols": ["BTC/USDT"], "exchange": None}),
     SubscribeRequest(("BTC/USDT",))),
    ("subscribe", body({"symbols": ["B", "A", "B"]}), SubscribeRequest(("B", "A"))),
    ("unsubscribe", body({"symbols": ["ETH/USDT"], "exchange": "okx"}),
     SubscribeRequest(("ETH/USDT",), "okx")),
    ("subscribe", json.dumps({"symbols": ["A"] * 1000}, separators=(",", ":")).encode(),
     SubscribeRequest(("A",))),
])
def test_valid_bodies(name: str, data: bytes, expected: Any) -> None:
    assert parse_action(name, data) == expected


# -- invalid bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "data", "fragment"), [
    ("status", body({"verbose": True}), "unknown key 'verbose' in status body; allowed: none"),
    ("status", b"[]", "status body must be a JSON object such as {}, got []"),
    ("status", b"null", "status body must be a JSON object such as {}, got null"),
    ("status", b"{", "status body is not valid UTF-8 JSON"),
    ("status", b"\xff", "status body is not valid UTF-8 JSON"),
    ("clear", b"[", "clear body is not valid UTF-8 JSON"),
    ("clear", b'"BTC/USDT"', "clear body must be a JSON object such as {\"symbols\": [\"BTC/USDT\"]}, got 'BTC/USDT'"),
    ("clear", body({"symbol": ["BTC/USDT"]}), "unknown key 'symbol' in clear body; allowed: "
                                              "exchange, symbols"),
    ("clear", body({"symbols": "BTC/USDT"}), '"symbols" in clear must be an array of strings such as '
                                             '["BTC/USDT"], got \'BTC/USDT\''),
    ("clear", body({"symbols": [1]}), "invalid symbol 1 in clear; expected 1-64 characters"),
    ("clear", body({"symbols": ["BTC USDT"]}), "invalid symbol 'BTC USDT' in clear; expected "
                                               "1-64 characters"),
    ("clear", body({"exchange": "Binance"}), "invalid exchange 'Binance' in clear; expected a "
                                             "ccxt exchange id"),
    ("clear", body({"exchange": 5}), "invalid exchange 5 in clear; expected a ccxt exchange id"),
    ("clear", body({"exchange": ""}), "invalid exchange '' in clear"),
    ("subscribe", b"", 'subscribe needs "symbols": a list such as ["BTC/USDT"]'),
    ("subscribe", b"{}", 'subscribe needs "symbols"'),
    ("subscribe", body({"symbols": []}), 'subscribe needs at least one symbol in "symbols"'),
    ("subscribe", body({"symbols": None}), '"symbols" in subscribe must be an array of strings such as '
                                           '["BTC/USDT"], got null'),
    ("subscribe", body({"symbols": {"BTC/USDT": 1}}), "must be an array of strings such as [\"BTC/USDT\"], got {\"BTC/USDT\": 1}"),
    ("subscribe", body({"symbols": ["BTC/USDT", None]}), "invalid symbol null in subscribe"),
    ("subscribe", body({"symbols": ["x" * 65]}), "invalid symbol"),
    ("subscribe", body({"symbols": ["BTC/USDT"], "exchange": ["binance"]}),
     'invalid exchange ["binance"] in subscribe'  ),
    ("subscribe", body({"symbols": ["BTC/USDT"], "extra": 1}),
     "unknown key 'extra' in subscribe body; allowed: exchange, symbols"),
    ("unsubscribe", body({"symbols": []}), 'unsubscribe needs at least one symbol'),
    ("unsubscribe", body({"symbols": ["ETH/USDT"], "exchange": "BYBIT"}),
     "invalid exchange 'BYBIT' in unsubscribe"),
    ("unsubscribe", b"1", "unsubscribe body must be a JSON object such as {\"symbols\": [\"BTC/USDT\"], "
     "\"exchange\": \"binance\"}, got 1"),
    ("clear", b'{"symbols": ' + b"[" * 2000 + b"]" * 2000 + b"}", "clear body is not valid"),
])
def test_invalid_bodies(name: str, data: bytes, fragment: str) -> None:
    if len(data) > 4096:
        pytest.fail("test body too large")  # pragma: no cover
    with pytest.raises(InvalidActionBody) as info:
        parse_action(name, data)
    message = str(info.value)
    assert fragment in message
    assert isinstance(info.value, InvalidArgument)
    assert len(message) < 400


@pytest.mark.parametrize("name", [n.value for n in ActionName])
def test_invalid_json_message_shows_a_complete_example(name: str) -> None:
    """The 'expected an object such as ...' example must be whole, not cut at its first '.'."""
    with pytest.raises(InvalidActionBody) as info:
        parse_action(name, b"{not json")
    message = str(info.value)
    example = message.split("such as ", 1)[1]
    if example != "empty or {}":
        assert example.startswith("{") and example.rstrip().endswith("}"), message
        assert example.count("{") == example.count("}"), message
        assert example.count("[") == example.count("]"), message


@pytest.mark.parametrize("name", ["", "Status", "STATUS", "get", "status ", "subscribe\x00",
                                  "x" * 1000, "DoPut", "clear_all"])
def test_unknown_action(name: str) -> None:
    with pytest.raises(UnknownAction) as info:
        parse_action(name, b"")
    message = str(info.value)
    assert "unknown action" in message
    assert "available: subscribe, unsubscribe, clear, status" in message
    assert len(message) < 200
    assert not isinstance(info.value, InvalidArgument)


def test_body_size_limit() -> None:
    padded = b'{"symbols": ["BTC/USDT"]' + b" " * (4096 - 25) + b"}"
    assert len(padded) == 4096
    assert parse_action("subscribe", padded) == SubscribeRequest(("BTC/USDT",))
    with pytest.raises(RequestTooLarge, match="subscribe body is 4097 bytes; the limit is 4096"):
        parse_action("subscribe", padded + b" ")
    for name in ActionName:
        with pytest.raises(RequestTooLarge):
            parse_action(name.value, b" " * 5000)


def test_unknown_action_is_checked_before_the_body() -> None:
    with pytest.raises(UnknownAction):
        parse_action("nope", b"x" * 10_000)


@settings(max_examples=200)
@given(name=st.sampled_from([n.value for n in ActionName] + ["nope"]),
       data=st.binary(max_size=200) | st.recursive(
           st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
               st.sampled_from(["symbols", "exchange", "x"]), inner, max_size=3),
           max_leaves=8).map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bodies_raise_only_flight_md_errors(name: str, data: bytes) -> None:
    try:
        parse_action(name, data)
    except FlightMdError as exc:
        assert isinstance(exc, (InvalidActionBody, UnknownAction, RequestTooLarge))


# -- results ---------------------------------------------------------------------------------


def test_encode_result_is_compact_sorted_json() -> None:
    data = encode_result({"b": 1, "a": [1, None, "x"], "c": {"z": 1, "y": 2}})
    assert data == b'{"a":[1,null,"x"],"b":1,"c":{"y":2,"z":1}}'
    assert json.loads(data) == {"a": [1, None, "x"], "b": 1, "c": {"z": 1, "y": 2}}
    assert re.fullmatch(rb"[ -~]*", encode_result({"s": "é"}))  # ASCII-safe

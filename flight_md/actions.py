"""The action registry: names, JSON bodies and their validation, pure.

One registry feeds both ``ListActions`` (names and descriptions with the body format) and
``DoAction`` (parsing the body into a typed request). The service supplies the handlers.

=============  ==========================================================  ================
action         body (JSON)                                                 result (JSON)
=============  ==========================================================  ================
subscribe      ``{"symbols": ["BTC/USDT", ...], "exchange": "binance"}``   ``{"exchange", "subscribed": [...]}``
unsubscribe    ``{"symbols": ["BTC/USDT", ...], "exchange": "binance"}``   ``{"exchange", "unsubscribed": [...]}``
clear          ``{"symbols": [...]}`` (absent: all) ``, "exchange": ...``  ``{"cleared": ticks}``
status         empty or ``{}``                                             see README
health         empty or ``{}``                                             ``{"ready", "live", "exchanges"}``
flush          empty or ``{}``                                             ``{"segments", "rows", "files", ...}``
=============  ==========================================================  ================

``exchange`` may be omitted when the server runs exactly one exchange.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from flight_md.errors import InvalidActionBody, UnknownAction
from flight_md.tickets import EXCHANGE_RE, SYMBOL_RE, check_size, show_json

__all__ = [
    "ACTIONS",
    "ActionName",
    "ActionSpec",
    "ClearRequest",
    "StatusRequest",
    "SubscribeRequest",
    "encode_result",
    "parse_action",
]

MAX_SYMBOLS: Final = 1024


class ActionName(StrEnum):
    """Every action the server implements."""

    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    CLEAR = "clear"
    STATUS = "status"
    HEALTH = "health"
    FLUSH = "flush"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """What ``ListActions`` shows for one action."""

    name: ActionName
    description: str
    mutates: bool
    example: str


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """Body of ``subscribe`` and ``unsubscribe``."""

    symbols: tuple[str, ...]
    exchange: str | None = None


@dataclass(frozen=True, slots=True)
class ClearRequest:
    """Body of ``clear``: ``symbols=None`` clears every symbol (of ``exchange`` if given)."""

    symbols: tuple[str, ...] | None = None
    exchange: str | None = None


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Body of ``status`` (no fields)."""


ActionRequest = SubscribeRequest | ClearRequest | StatusRequest

ACTIONS: Final[dict[ActionName, ActionSpec]] = {
    spec.name: spec for spec in (
        ActionSpec(ActionName.SUBSCRIBE,
                   'Start streaming symbols. Body: {"symbols": ["BTC/USDT", ...], '
                   '"exchange": "binance"} (exchange optional with one exchange). '
                   'Result: {"exchange": ..., "subscribed": [...]}', True,
                   '{"symbols": ["BTC/USDT"], "exchange": "binance"}'),
        ActionSpec(ActionName.UNSUBSCRIBE,
                   'Stop streaming symbols; stored ticks stay. Body: {"symbols": [...], '
                   '"exchange": "binance"}. Result: {"exchange": ..., "unsubscribed": [...]}',
                   True, '{"symbols": ["BTC/USDT"], "exchange": "binance"}'),
        ActionSpec(ActionName.CLEAR,
                   'Drop stored ticks. Body: {"symbols": [...], "exchange": "binance"}; '
                   'without "symbols" every symbol (of "exchange" if given). '
                   'Result: {"cleared": <ticks dropped>}', True, '{"symbols": ["BTC/USDT"]}'),
        ActionSpec(ActionName.STATUS,
                   'Connection state per exchange and counters per symbol. Body: empty or {}. '
                   'Result: {"exchanges": {...}, "symbols": [...], "server": {...}}', False,
                   '{}'),
        ActionSpec(ActionName.HEALTH,
                   'Readiness for load balancers: ready once an exchange is connected. Body: '
                   'empty or {}. Result: {"ready": bool, "live": true, "exchanges": {id: '
                   '{"state", "mode", "ready"}}} (with "reason" when not ready)', False, '{}'),
        ActionSpec(ActionName.FLUSH,
                   'Write everything journalled to the Parquet history now. Body: empty or {}. '
                   'Result: {"segments", "rows", "files", "bytes", "events", "skipped_rows", '
                   '"seconds"}', True, '{}'),
    )
}


def parse_action(action_type: str, body: bytes) -> ActionRequest:
    """Validate an action's type and JSON body.

    Raises:
        UnknownAction: ``action_type`` is not in :data:`ACTIONS`.
        InvalidActionBody: The body is not the JSON object the action expects.
        RequestTooLarge: The body is over 4 KiB.
    """
    try:
        name = ActionName(action_type)
    except ValueError:
        raise UnknownAction(f"unknown action {action_type[:64]!r}; available: "
                            f"{', '.join(ACTIONS)}") from None
    check_size(body, f"{name} body")
    data = _json_object(name, body)
    if name in (ActionName.STATUS, ActionName.HEALTH, ActionName.FLUSH):
        _only(name, data, set())
        return StatusRequest()
    if name is ActionName.CLEAR:
        _only(name, data, {"symbols", "exchange"})
        symbols = _symbols(name, data["symbols"]) if data.get("symbols") is not None else None
        return ClearRequest(symbols, _exchange(name, data.get("exchange")))
    _only(name, data, {"symbols", "exchange"})
    if "symbols" not in data:
        raise InvalidActionBody(f'{name} needs "symbols": a list such as ["BTC/USDT"]')
    symbols = _symbols(name, data["symbols"])
    if not symbols:
        raise InvalidActionBody(f'{name} needs at least one symbol in "symbols"')
    return SubscribeRequest(symbols, _exchange(name, data.get("exchange")))


def _json_object(name: ActionName, body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidActionBody(f"{name} body is not valid UTF-8 JSON; expected an object such "
                                f"as {ACTIONS[name].example}") from None
    if not isinstance(data, dict):
        raise InvalidActionBody(f"{name} body must be a JSON object such as "
                                f"{ACTIONS[name].example}, got {show_json(data)}")
    return data


def _only(name: ActionName, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        allowed_text = ", ".join(sorted(allowed)) or "none"
        raise InvalidActionBody(f"unknown key {unknown[0][:40]!r} in {name} body; allowed: "
                                f"{allowed_text}")


def _symbols(name: ActionName, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidActionBody(f'"symbols" in {name} must be an array of strings such as '
                                f'["BTC/USDT"], got {show_json(value)}')
    if len(value) > MAX_SYMBOLS:
        raise InvalidActionBody(f'"symbols" in {name} has {len(value)} entries; at most '
                                f"{MAX_SYMBOLS}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not SYMBOL_RE.fullmatch(item):
            raise InvalidActionBody(f"invalid symbol {show_json(item)} in {name}; expected "
                                    "1-64 characters from A-Z a-z 0-9 / - _ : . like 'BTC/USDT'")
        if item not in out:
            out.append(item)
    return tuple(out)


def _exchange(name: ActionName, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not EXCHANGE_RE.fullmatch(value):
        raise InvalidActionBody(f"invalid exchange {show_json(value, 40)} in {name}; expected "
                                "a ccxt exchange id such as 'binance'")
    return value


def encode_result(result: Any) -> bytes:
    """JSON-encode an action result."""
    return json.dumps(result, separators=(",", ":"), sort_keys=True).encode()

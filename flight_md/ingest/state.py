"""What one stream knows about itself, shared by its parts (session, poller, fan-out, facade).

:class:`Health` is the stream's connection state, reconnect count and last error, and the
one place that turns a failure or a recovery into a state change, an event and a log line
(the decisions themselves are the pure :class:`~flight_md.ingest.policy.ReconnectPolicy`'s).
:class:`Subscriptions` is the set of symbols, their counters (:class:`SymbolState`) and how
they are packed into subscribe messages. Everything here runs on the stream's loop.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Final

from flight_md.errors import InvalidArgument
from flight_md.events import EventKind, EventLog
from flight_md.ingest.policy import GiveUp, ReconnectPolicy
from flight_md.schema import now_ms

__all__ = ["ConnectionState", "Health", "Mode", "Stale", "Subscriptions", "SymbolState",
           "check_listed", "check_symbols", "preview"]

logger = logging.getLogger("flight_md.ingest.stream")

MAX_ERROR_CHARS: Final = 300


def preview(names: Sequence[str], limit: int = 10) -> str:
    """``names`` for a message: the first ``limit``, and how many more."""
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names) - limit} more)"


def check_symbols(symbols: Iterable[str], action: str) -> list[str]:
    """``symbols`` as a list without duplicates (one string counts as one symbol).

    Raises:
        InvalidArgument: Not a list of non-empty strings, or empty (nothing to ``action``).
    """
    if isinstance(symbols, str):
        symbols = [symbols]
    try:
        wanted = list(dict.fromkeys(symbols))
    except TypeError:
        raise InvalidArgument(f"symbols must be a list of strings, got {symbols!r}") from None
    if not wanted:
        raise InvalidArgument(f"no symbols to {action}")
    bad = [s for s in wanted if not isinstance(s, str) or not s]
    if bad:
        raise InvalidArgument(f"symbols must be non-empty strings, got {bad[0]!r}")
    return wanted


def check_listed(symbols: Iterable[str], markets: Mapping[str, Any], exchange_id: str,
                 alias_of: Callable[[Mapping[str, Any]], str | None] | None = None) -> None:
    """Raise :class:`InvalidArgument` for the first of ``symbols`` the exchange does not list
    (the message suggests close matches), or that it streams as another market (an alias,
    whose updates arrive under the other symbol and would never reach this one)."""
    for symbol in symbols:
        if symbol not in markets:
            close = difflib.get_close_matches(symbol, list(markets), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                f"; it lists {len(markets)} markets"
            raise InvalidArgument(f"unknown symbol {symbol!r} on {exchange_id}{hint}")
        target = alias_of(markets[symbol]) if alias_of is not None else None
        if target:
            streams_as = next((s for s, m in markets.items() if m.get("id") == target), target)
            raise InvalidArgument(f"symbol {symbol!r} on {exchange_id} is an alias of "
                                  f"{streams_as!r}, whose updates it streams; subscribe "
                                  f"{streams_as!r} instead")


class ConnectionState(StrEnum):
    """Where a stream is in its life."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    DOWN = "down"
    """Reported for the streams of an ingestion process that is not running (being restarted)."""


class Mode(StrEnum):
    """How a stream gets its data."""

    AUTO = "auto"
    """Websocket where ccxt supports it, REST polling while the websocket keeps failing."""
    WEBSOCKET = "websocket"
    REST = "rest"


class Stale(Exception):
    """Internal: the watchdog found the session silent."""


class Health:
    """A stream's state, reconnect count and last error; failures and recoveries.

    Args:
        exchange_id: For events and log lines.
        events: Where connection events go.
        policy: The stream's reconnect policy.
        redact: Removes the stream's secrets from a text.
        symbols: The subscribed symbols now (named in events).
    """

    __slots__ = ("_symbols", "events", "exchange_id", "last_error", "last_error_ms", "policy",
                 "reconnects", "redact", "state")

    def __init__(self, exchange_id: str, events: EventLog, policy: ReconnectPolicy,
                 redact: Callable[[str], str], symbols: Callable[[], tuple[str, ...]]) -> None:
        self.exchange_id = exchange_id
        self.events = events
        self.policy = policy
        self.redact = redact
        self._symbols = symbols
        self.state = ConnectionState.DISCONNECTED
        self.reconnects = 0
        self.last_error: str | None = None
        self.last_error_ms: int | None = None

    def set_state(self, state: ConnectionState) -> None:
        """Move to ``state`` (logged at DEBUG when it changes)."""
        if state is not self.state:
            logger.debug("%s: %s -> %s", self.exchange_id, self.state.value, state.value)
            self.state = state

    def note_error(self, error: BaseException) -> str:
        """Remember ``error`` as the current outage's (status ``last_error``); its text."""
        reason = self.describe(error)
        self.last_error, self.last_error_ms = reason, now_ms()
        return reason

    def note_text(self, reason: str) -> None:
        """Remember an already phrased (secret-free) reason as ``last_error``."""
        self.last_error, self.last_error_ms = reason, now_ms()

    def describe(self, error: BaseException) -> str:
        """A one-line, secret-free description of an error."""
        text = str(error).strip().replace("\n", " ")
        if not isinstance(error, Stale):
            text = f"{type(error).__name__}: {text}" if text else type(error).__name__
        if len(text) > MAX_ERROR_CHARS:
            text = text[:MAX_ERROR_CHARS - 3] + "..."
        return self.redact(text)

    def failed(self, error: BaseException, what: str, *, websocket: bool) -> None:
        """Account a failed session or poll; raise :class:`GiveUp` when out of attempts."""
        reason = self.note_error(error)
        try:
            self.policy.failed(websocket=websocket)
        except GiveUp as give_up:
            raise GiveUp(f"{give_up}; last error: {reason}") from None
        self.set_state(ConnectionState.RECONNECTING)
        logger.warning("%s: %s (%s); retrying (attempt %d)", self.exchange_id, what, reason,
                       self.policy.failures)

    def recovered(self, how: str, *, websocket: bool) -> None:
        """A session delivered, or a poll answered: ``CONNECTED``, and a ``reconnect`` event
        if it ends an outage."""
        self.policy.good(websocket=websocket)
        was = self.state
        if was is ConnectionState.CONNECTED:
            return
        self.set_state(ConnectionState.CONNECTED)
        if was is ConnectionState.RECONNECTING:
            if not websocket:
                # A websocket session counts each attempt as it starts it; polling has no
                # session to start, so an outage of failed polls counts once, as it ends.
                self.reconnects += 1
            symbols = self._symbols()
            self.events.record(self.exchange_id, EventKind.RECONNECT, symbols,
                               f"{how}; {len(symbols)} symbols subscribed")
            logger.info("%s: %s (%d symbols)", self.exchange_id, how, len(symbols))


class SymbolState:
    """Counters of one subscribed (or formerly subscribed) symbol."""

    __slots__ = ("dropped", "last_mono", "last_ms", "polled", "received", "since", "subscribed")

    def __init__(self) -> None:
        self.subscribed = False
        self.received = 0
        self.dropped = 0
        self.last_ms: int | None = None
        self.last_mono: float | None = None
        self.since = time.monotonic()
        self.polled: tuple[Any, ...] | None = None  # REST: fingerprint of the last stored ticker


class Subscriptions:
    """The stream's symbols (subscribed or not any more) and their subscription groups.

    Args:
        exchange: The ccxt exchange (its ``markets`` give each symbol's market type).
        max_group: At most this many symbols per subscribe message (the venue's
            ``symbols_per_message``).
    """

    __slots__ = ("_exchange", "changed", "lock", "max_group", "states")

    def __init__(self, exchange: Any, max_group: int) -> None:
        self._exchange = exchange
        self.max_group = max_group
        self.states: dict[str, SymbolState] = {}
        self.lock = asyncio.Lock()
        """Held while the set changes, and while a session subscribes it."""
        self.changed = asyncio.Event()

    @property
    def symbols(self) -> tuple[str, ...]:
        """Subscribed symbols, in subscription order."""
        return tuple(s for s, st in self.states.items() if st.subscribed)

    def subscribed(self, symbol: str) -> SymbolState | None:
        """The counters of ``symbol`` if it is subscribed."""
        state = self.states.get(symbol)
        return state if state is not None and state.subscribed else None

    def add(self, symbols: Iterable[str]) -> list[str]:
        """Mark ``symbols`` subscribed (counters of a former subscription are kept); the ones
        that were not subscribed yet."""
        new = [s for s in symbols if self.subscribed(s) is None]
        now = time.monotonic()
        for symbol in new:
            state = self.states.setdefault(symbol, SymbolState())
            state.subscribed = True
            state.since = now
            state.polled = None
        return new

    async def wait(self) -> None:
        """Return once a symbol is subscribed."""
        while not self.symbols:
            self.changed.clear()
            await self.changed.wait()

    def pack(self, symbols: Iterable[str]) -> list[tuple[str, ...]]:
        """Subscription groups: one market type each, at most ``max_group`` symbols."""
        kinds: dict[tuple[Any, ...], list[str]] = {}
        markets = self._exchange.markets or {}
        for symbol in symbols:
            market = markets.get(symbol) or {}
            kind = (market.get("type"), market.get("linear"), market.get("inverse"))
            kinds.setdefault(kind, []).append(symbol)
        size = self.max_group
        return [tuple(members[i:i + size]) for members in kinds.values()
                for i in range(0, len(members), size)]

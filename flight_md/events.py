"""The event log: what happened to the streams, served as ``@events``.

Ingestion records every connect, disconnect, reconnect, stale detection, mode change,
subscribe, unsubscribe and clear here, so gaps in the data are visible to users. The log is
bounded (oldest events dropped first) and thread-safe: ingestion writes from its asyncio
thread, Flight handlers read from gRPC threads.

The log also knows what is subscribed, for the service to answer a subscribed symbol that
has no tick yet with an empty table rather than NOT_FOUND: a symbol counts as subscribed
from its ``subscribe`` event until its ``unsubscribe`` event, however many events the
bounded log has dropped since. Subscriptions are kept per (exchange, channel) when the
events name their channel (every stream's do): unsubscribing a symbol's trades leaves it
subscribed on the exchange while its ticker stream still has it.

After a restart the events of the earlier run are put back (:meth:`EventLog.restore`) but
count for nothing by default: a server's own ingestion subscribes its symbols again at start,
recording new events. A serving node of a bus has no ingestion of its own, and the
ingestion nodes sent their events once, to the incarnation that stored them: it takes what
the restored events say (:meth:`EventLog.resume_subscriptions`). Restored events have lost
their channel (the journal keeps the ``@events`` schema), so those subscriptions count on
every channel of the exchange until the next live ``subscribe`` or ``unsubscribe`` event for
that symbol there, which replaces them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import pyarrow as pa

from flight_md.schema import EVENT_SCHEMA, now_ms

__all__ = ["Event", "EventKind", "EventLog"]

DEFAULT_EVENT_CAPACITY: Final = 100_000


class EventKind(StrEnum):
    """What happened."""

    CONNECT = "connect"
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"
    STALE = "stale"
    FAILED = "failed"
    RESTARTED = "restarted"  # a supervised ingestion process came back
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    CLEAR = "clear"
    MODE = "mode"  # websocket <-> REST polling switch
    ERROR = "error"  # an exchange error that did not drop the connection
    RECOVERED = "recovered"  # the journal was read back at start (torn tails cut, ...)
    PERSIST_ERROR = "persist_error"  # the disk refused a write: serving from memory
    PERSIST_RESUMED = "persist_resumed"  # writes work again
    QUARANTINED = "quarantined"  # a corrupt file was moved aside
    GAP = "gap"  # sequential trade ids jumped: detail says how many and which ids
    BACKFILL = "backfill"  # missing trades fetched over REST after a gap or reconnect
    BOOK_RESYNC = "book_resync"  # an out-of-sequence or failed-checksum book was rebuilt
    LAG = "lag"  # a serving node's bus consumer fell behind on a subject, or caught up


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the log.

    Attributes:
        timestamp: Local wall-clock time, Unix ms.
        exchange: ccxt exchange id (``"*"`` for server-wide events).
        kind: What happened.
        symbols: Symbols concerned (empty for the whole connection).
        detail: Human-readable reason, never containing secrets.
        channel: The stream's channel (``subscribe``/``unsubscribe`` and the stream's other
            events); empty for the exchange as a whole. Not part of ``@events``' schema.
    """

    timestamp: int
    exchange: str
    kind: EventKind
    symbols: tuple[str, ...]
    detail: str
    channel: str = ""


def _applied(subscribed: dict[tuple[str, str], frozenset[str]],
             event: Event) -> dict[tuple[str, str], frozenset[str]]:
    """``subscribed`` after a ``subscribe`` or ``unsubscribe`` event (a new dict)."""
    key = (event.exchange, event.channel)
    current = subscribed.get(key, frozenset())
    changed = (current | set(event.symbols) if event.kind is EventKind.SUBSCRIBE
               else current - set(event.symbols))
    return {**subscribed, key: changed}


class EventLog:
    """A bounded, thread-safe, append-only log of :class:`Event`.

    Args:
        capacity: Events kept; the oldest are dropped first.
    """

    def __init__(self, capacity: int = DEFAULT_EVENT_CAPACITY) -> None:
        self.capacity = capacity
        self._events: deque[Event] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.recorded = 0
        self._subscribed: dict[tuple[str, str], frozenset[str]] = {}  # (exchange, channel) -> symbols
        self._restorable: dict[tuple[str, str], frozenset[str]] = {}  # what restored events say
        self._resumed: dict[tuple[str, str], frozenset[str]] = {}  # taken by resume_subscriptions
        self.sink: Callable[[Event], None] | None = None
        """Called with every recorded event (the journal's queue, when persisting)."""

    def record(self, exchange: str, kind: EventKind, symbols: Sequence[str] = (),
               detail: str = "", *, timestamp: int | None = None, channel: str = "") -> Event:
        """Append an event and return it (``channel``: the stream's, see :class:`Event`)."""
        event = Event(now_ms() if timestamp is None else timestamp, exchange, EventKind(kind),
                      tuple(symbols), detail, str(channel))
        with self._lock:
            self._events.append(event)
            self.recorded += 1
            if event.kind is EventKind.SUBSCRIBE or event.kind is EventKind.UNSUBSCRIBE:
                # Replaced, never mutated: readers take the dict without the lock.
                self._subscribed = _applied(self._subscribed, event)
                if self._resumed:  # a live event replaces what the restored ones said
                    names = set(event.symbols)
                    self._resumed = {k: v - names if k[0] == exchange else v
                                     for k, v in self._resumed.items()}
        sink = self.sink
        if sink is not None:
            sink(event)
        return event

    def restore(self, events: Sequence[Event]) -> None:
        """Put events of an earlier run back in front of the log (after a restart).

        They are served by ``@events`` but change nothing else: what is subscribed now is
        what this run subscribes (the configured symbols and the run-time changes it
        repeats), not what the old events say, unless :meth:`resume_subscriptions` takes it.
        """
        with self._lock:
            current = list(self._events)
            self._events.clear()
            self._events.extend(events)
            self._events.extend(current)
            self.recorded += len(events)
            restorable = self._restorable
            for event in events:
                if event.kind is EventKind.SUBSCRIBE or event.kind is EventKind.UNSUBSCRIBE:
                    restorable = _applied(restorable, event)
            self._restorable = restorable

    def resume_subscriptions(self) -> list[tuple[str, str]]:
        """Count as subscribed what the restored events say (a serving node of a bus, see
        the module docstring; call it before live events come); the ``(exchange, symbol)``
        pairs taken, sorted."""
        with self._lock:
            self._resumed = {k: v for k, v in self._restorable.items() if v}
            self._restorable = {}
            return sorted({(e, s) for (e, _), symbols in self._resumed.items()
                           for s in symbols})

    def _subscriptions(self) -> list[tuple[tuple[str, str], frozenset[str]]]:
        return [*self._subscribed.items(), *self._resumed.items()]

    def subscribed(self) -> list[tuple[str, str]]:
        """Every subscribed ``(exchange, symbol)``, on any channel, sorted (see the module
        docstring)."""
        return sorted({(e, s) for (e, _), symbols in self._subscriptions() for s in symbols})

    def subscribers(self, symbol: str) -> list[str]:
        """The exchanges that subscribed ``symbol`` on any channel, sorted."""
        return sorted({e for (e, _), symbols in self._subscriptions() if symbol in symbols})

    def subscribed_channels(self, exchange: str, symbol: str) -> list[str]:
        """The channels ``symbol`` is subscribed on at ``exchange``, sorted (``""``: events
        that named no channel)."""
        return sorted({c for (e, c), symbols in self._subscriptions()
                       if e == exchange and symbol in symbols})

    def events(self, exchange: str | None = None, start: int | None = None,
               end: int | None = None, latest: int | None = None) -> list[Event]:
        """Events in order, filtered like a tick range (start inclusive, end exclusive)."""
        with self._lock:
            items = list(self._events)
        out = [e for e in items
               if (exchange is None or e.exchange == exchange)
               and (start is None or e.timestamp >= start)
               and (end is None or e.timestamp < end)]
        if latest is not None:
            out = out[max(0, len(out) - latest):] if latest else []
        return out

    def to_table(self, exchange: str | None = None, start: int | None = None,
                 end: int | None = None, latest: int | None = None) -> pa.Table:
        """The filtered log as a table in :data:`flight_md.schema.EVENT_SCHEMA`."""
        events = self.events(exchange, start, end, latest)
        return pa.Table.from_pydict({
            "timestamp": [e.timestamp for e in events],
            "exchange": [e.exchange for e in events],
            "kind": [e.kind.value for e in events],
            "symbols": [list(e.symbols) for e in events],
            "detail": [e.detail for e in events],
        }, schema=EVENT_SCHEMA)

    def __len__(self) -> int:
        return len(self._events)

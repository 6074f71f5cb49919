"""Counters kept by the emulator, and the immutable snapshot tests read."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from flight_md.emulator.fault import Fault
from flight_md.emulator.market import StreamKey

__all__ = ["HANDSHAKES_KEPT", "EmulatorStats", "StatsCounter"]

HANDSHAKES_KEPT = 1000
"""How many websocket handshake times :attr:`EmulatorStats.handshakes` keeps (the newest)."""


@dataclass(frozen=True, slots=True)
class EmulatorStats:
    """A snapshot of the emulator's counters.

    Attributes:
        frames: Intact data frames written, per stream (a frame fanned out to two
            connections counts twice). Corrupted frames are counted in ``faults`` only.
        frames_total: Sum of ``frames``.
        connections_opened: Websocket connections accepted since start.
        connections_open: Websocket connections open now.
        subscriptions: Stream subscriptions live now, over all connections.
        control_messages: Control messages received (subscribe, unsubscribe, ping, ...).
        rest_requests: REST requests received, including refused ones.
        limit_closes: Websockets closed for sending more control messages per second
            than the exchange allows.
        slow_drops: Websockets dropped because their outbound queue overflowed.
        faults: Applications of each fault: frames corrupted, connections cut,
            requests refused.
        unserved_subscriptions: Subscriptions to a stream the emulator has no data for (a
            symbol it does not list, a channel it cannot synthesize or the recording lacks),
            whether the venue accepted them or answered with its own error.
        handshakes: When each websocket handshake request arrived, refused ones included
            (``time.monotonic()`` seconds, the emulator loop's clock; the newest
            :data:`HANDSHAKES_KEPT`): a client's reconnect attempts, as the exchange sees them.
    """

    frames: Mapping[StreamKey, int]
    frames_total: int
    connections_opened: int
    connections_open: int
    subscriptions: int
    control_messages: int
    rest_requests: int
    limit_closes: int
    slow_drops: int
    faults: Mapping[Fault, int]
    handshakes: tuple[float, ...] = ()
    unserved_subscriptions: int = 0


class StatsCounter:
    """The emulator's mutable counters; only the emulator's loop thread touches them."""

    __slots__ = ("connections_open", "connections_opened", "control_messages", "faults", "frames",
                 "frames_total", "handshakes", "limit_closes", "rest_requests", "slow_drops",
                 "subscriptions", "unserved_subscriptions")

    def __init__(self) -> None:
        self.frames: Counter[StreamKey] = Counter()
        self.frames_total = 0
        self.connections_opened = 0
        self.connections_open = 0
        self.subscriptions = 0
        self.control_messages = 0
        self.rest_requests = 0
        self.limit_closes = 0
        self.slow_drops = 0
        self.faults: Counter[Fault] = Counter()
        self.handshakes: deque[float] = deque(maxlen=HANDSHAKES_KEPT)
        self.unserved_subscriptions = 0

    def snapshot(self) -> EmulatorStats:
        """Copy the counters into an immutable snapshot."""
        return EmulatorStats(
            frames=MappingProxyType(dict(self.frames)),
            frames_total=self.frames_total,
            connections_opened=self.connections_opened,
            connections_open=self.connections_open,
            subscriptions=self.subscriptions,
            control_messages=self.control_messages,
            rest_requests=self.rest_requests,
            limit_closes=self.limit_closes,
            slow_drops=self.slow_drops,
            faults=MappingProxyType(dict(self.faults)),
            handshakes=tuple(self.handshakes),
            unserved_subscriptions=self.unserved_subscriptions,
        )

    def as_json(self) -> dict[str, object]:
        """The counters as a JSON-ready dict (for the control endpoint)."""
        return {
            "frames": {f"{key.channel} {key.symbol}": count for key, count in self.frames.items()},
            "frames_total": self.frames_total,
            "connections_opened": self.connections_opened,
            "connections_open": self.connections_open,
            "subscriptions": self.subscriptions,
            "control_messages": self.control_messages,
            "rest_requests": self.rest_requests,
            "limit_closes": self.limit_closes,
            "slow_drops": self.slow_drops,
            "faults": {str(fault): count for fault, count in self.faults.items()},
            "handshakes": list(self.handshakes),
            "unserved_subscriptions": self.unserved_subscriptions,
        }

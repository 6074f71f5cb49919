"""What an exchange dialect must provide: the contract between the server and each exchange.

The server (:mod:`flight_md.emulator.server`) owns sockets, pacing, fan-out, faults and
counters. A dialect owns everything that is specific to one exchange's wire protocol:
REST routes and bodies, websocket paths, control messages, frame rendering, how a
recorded frame maps to a stream, and what a corrupted frame looks like.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from flight_md.emulator.fault import Fault
from flight_md.emulator.market import Market, StreamKey
from flight_md.emulator.recording import RecordedMessage, Recording
from flight_md.emulator.synthetic import PriceWalk, Quote

__all__ = ["ConnectionInfo", "Control", "Dialect", "RestHandler", "Subscription", "now_ms"]

RestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def now_ms() -> int:
    """Wall-clock epoch milliseconds, as exchanges stamp events."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Subscription:
    """A stream a connection asked for.

    Attributes:
        key: The stream.
        wire: Its name on the wire: a Binance stream name or a Bybit topic.
    """

    key: StreamKey
    wire: str


@dataclass(frozen=True, slots=True)
class Control:
    """What the server must do after a control message.

    Attributes:
        replies: Frames to send back, in order, before any data.
        subscribe: Streams to add.
        unsubscribe: Streams to drop.
        close: Close the connection with this code and reason (a protocol violation).
        unknown: Wire names the venue refused as unknown (its own error is in ``replies``).
    """

    replies: tuple[str, ...] = ()
    subscribe: tuple[Subscription, ...] = ()
    unsubscribe: tuple[StreamKey, ...] = ()
    close: tuple[int, str] | None = None
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What a dialect may know about the connection a control message came in on.

    Attributes:
        path: URL path of the websocket.
        conn_id: An opaque id of the connection (Bybit echoes it in replies).
        subscribed: Streams it has now, with their wire names.
    """

    path: str
    conn_id: str = ""
    subscribed: Mapping[StreamKey, str] = field(default_factory=dict)


class Dialect(ABC):
    """One exchange's public market-data protocol.

    Args:
        markets: Markets listed in synthetic mode (ignored in replay, where the
            recorded market list is served).
        walks: The synthetic price walks by unified symbol (empty in replay).
        recording: The recording in replay mode, else ``None``.
    """

    name: str
    #: Websocket control messages a connection may send per second; ``None``: no limit.
    control_rate_limit: int | None = None
    #: Whether the server pings each websocket with ping frames.
    server_pings: bool = False
    #: Exchange-native channels synthetic data is generated for.
    synthetic_channels: frozenset[str] = frozenset()
    #: Seconds between two :meth:`keepalive` calls per connection; ``None``: never called.
    keepalive_interval: float | None = None
    #: Whether :meth:`renumber` is applied to every frame a connection is sent.
    renumbers: bool = False

    def __init__(self, markets: tuple[Market, ...], walks: Mapping[str, PriceWalk], recording: Recording | None) -> None:
        self.walks = walks
        self.recording = recording
        self.markets = self.recorded_markets(recording) if recording is not None else markets

    # -- markets and REST -------------------------------------------------------------

    @abstractmethod
    def recorded_markets(self, recording: Recording) -> tuple[Market, ...]:
        """Markets listed in a recording's market-list response."""

    @abstractmethod
    def rest_routes(self) -> list[tuple[str, RestHandler]]:
        """``(path, handler)`` pairs for every GET endpoint served."""

    @abstractmethod
    def rest_error(self, status: int) -> str:
        """JSON body the exchange's API returns with a 4xx status (429, 404); 5xx pages are the server's."""

    # -- websockets -------------------------------------------------------------------

    @abstractmethod
    def ws_paths(self) -> tuple[str, ...]:
        """aiohttp route patterns of the public websocket endpoints."""

    def on_open(self, path: str, query: Mapping[str, str]) -> tuple[tuple[Subscription, ...], bool]:
        """Streams a connection subscribes to through its URL, and whether frames are wrapped.

        Args:
            path: URL path of the handshake.
            query: Its query parameters.

        Returns:
            The initial subscriptions and whether data frames carry a stream envelope.
        """
        return (), False

    def on_connect_frames(self, connection: ConnectionInfo) -> tuple[str, ...]:
        """Frames the venue sends a new websocket before anything else (Kraken's ``status``).

        Called once per connection, right after the handshake; the frames are control frames
        (never corrupted or counted).
        """
        return ()

    @abstractmethod
    def control(self, connection: ConnectionInfo, text: str) -> Control:
        """Handle a control message (subscribe, unsubscribe, ping, ...)."""

    def wrap(self, wire: str, text: str) -> str:
        """Put a data frame in the stream envelope of a combined connection."""
        return text

    def renumber(self, conn_id: str, text: str) -> str:
        """Number a frame as the connection's next message (only where :attr:`renumbers`).

        Called for every frame written to a connection, in wire order, data and control alike
        (and for a book update a ``book_gap`` fault loses, which uses up its number); frames
        are rendered once for every subscriber, so a per-connection counter goes in here.
        """
        return text

    # -- data -------------------------------------------------------------------------

    @abstractmethod
    def renders(self, channel: str) -> bool:
        """Whether synthetic data can be generated for a channel."""

    @abstractmethod
    def render(self, key: StreamKey, market: Market, quote: Quote, *, snapshot: bool) -> str:
        """Serialize a synthetic update as the exchange would send it.

        Args:
            key: The stream.
            market: Its market.
            quote: The market's new state.
            snapshot: Send the full state (first frame of a subscription) rather than
                a delta, where the channel distinguishes the two.
        """

    def snapshot_on_subscribe(self, key: StreamKey) -> bool:
        """Whether the exchange pushes the current state right after a subscription."""
        return False

    @abstractmethod
    def recorded_frame(self, message: RecordedMessage) -> tuple[StreamKey, str, str] | None:
        """Map a recorded frame to ``(stream, wire name, data text)``; ``None`` skips it.

        The data text is byte-for-byte what a subscriber receives.
        """

    def recorded_frames(self, message: RecordedMessage) -> tuple[tuple[StreamKey, str, str], ...]:
        """Every ``(stream, wire name, data text)`` a recorded frame is served as, in order.

        Default: :meth:`recorded_frame`'s one mapping (or none). A dialect overrides it to
        serve a frame on a further stream too (Binance: a recorded ``aggTrade`` also as a
        ``trade`` event).
        """
        mapped = self.recorded_frame(message)
        return () if mapped is None else (mapped,)

    def observe(self, key: StreamKey, text: str) -> None:
        """Note a replayed frame so REST endpoints can answer from the latest state."""

    @abstractmethod
    def corrupt(self, fault: Fault, text: str) -> str:
        """Corrupt a data frame the way a frame fault asks."""

    def keepalive(self, connection: ConnectionInfo) -> str | None:
        """The keep-alive frame the venue sends a connection now (Coinbase ``heartbeats``), or ``None``.

        Called every :attr:`keepalive_interval` seconds while the connection is open and the
        emulator is not stalled; the frame is a control frame (never corrupted or counted).
        """
        return None

    def closed(self, connection: ConnectionInfo) -> None:
        """A websocket closed: forget what the dialect kept about it."""

    def shutdown_event(self) -> str | None:
        """The frame announcing an imminent server shutdown, if the exchange has one."""
        return None

    def market_by_symbol(self) -> dict[str, Market]:
        """Markets by unified symbol."""
        return {market.symbol: market for market in self.markets}

"""The state of one websocket connection to the emulator."""

from __future__ import annotations

import asyncio
import struct
from collections import deque

from aiohttp import web

from flight_md.emulator.dialect import ConnectionInfo
from flight_md.emulator.market import StreamKey

__all__ = ["Connection", "text_frame"]


class Connection:
    """One client websocket: its subscriptions, its outbound queue and its limits.

    Frames are queued (``push``) by the producer, the replay tasks and the control
    handler, and written in order by the connection's writer task. A queued item with
    key ``None`` is a control frame: never corrupted, never counted as data.

    Args:
        ws: The prepared websocket.
        transport: The TCP transport under it (for resets).
        path: URL path of the handshake.
        conn_id: Opaque connection id.
        combined: Whether data frames are wrapped in a stream envelope.
    """

    __slots__ = ("closed", "combined", "conn_id", "control_times", "last_pong", "path", "queue", "subscriptions",
                 "tasks", "transport", "wake", "ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, path: str, conn_id: str,
                 combined: bool) -> None:
        self.ws = ws
        self.transport = transport
        self.path = path
        self.conn_id = conn_id
        self.combined = combined
        self.subscriptions: dict[StreamKey, str] = {}
        self.queue: deque[tuple[StreamKey | None, str]] = deque()
        self.wake = asyncio.Event()
        self.control_times: deque[float] = deque()
        self.last_pong = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def push(self, key: StreamKey | None, text: str) -> None:
        """Queue a frame for the writer; ``key`` is ``None`` for control frames."""
        self.queue.append((key, text))
        if not self.wake.is_set():
            self.wake.set()

    def info(self) -> ConnectionInfo:
        """What the dialect may know about this connection."""
        return ConnectionInfo(self.path, self.conn_id, self.subscriptions)

    def over_limit(self, now: float, limit: int) -> bool:
        """Record an incoming message and tell whether the last second holds more than ``limit``."""
        times = self.control_times
        times.append(now)
        while times and times[0] <= now - 1.0:
            times.popleft()
        return len(times) > limit


def text_frame(payload: bytes) -> bytes:
    """Encode one unmasked, uncompressed, final websocket text frame (RFC 6455, server to client).

    The writer batches many frames into one ``transport.write``: one syscall per batch
    instead of one per frame is what lets the emulator reach tens of thousands of
    frames per second.
    """
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload

"""Faults the emulator can inject, and the board that tracks which are armed.

Faults fall into four families that share :meth:`Emulator.inject`'s arguments:

==================  ==========================================================  =====================
family              effect                                                      count / duration
==================  ==========================================================  =====================
connection          ``RESET`` (TCP RST), ``CLOSE_1006`` (TCP FIN without a      ``count`` caps how many
                    close frame: the client sees 1006), ``CLOSE_1001`` (close   open websockets it hits
                    frame "going away"), ``SERVER_SHUTDOWN`` (Binance           (default all);
                    ``{"e":"serverShutdown","E":...}`` event, then 1001)        ``duration`` is the
                                                                                shutdown grace period
frame               ``MALFORMED`` (invalid JSON), ``TRUNCATED`` (first half     next ``count`` data
                    of the frame), ``MISSING_FIELDS`` (symbol field dropped),   frames (default 1), or
                    ``NON_NUMERIC`` (price field set to ``"abc"``)             all within ``duration``
REST                ``REST_429`` (with ``Retry-After``), ``REST_5XX`` (503)     next ``count`` requests
                                                                                (default 1) or all
                                                                                within ``duration``
window              ``STALL`` (open sockets go silent: no data, no pings, no    for ``duration``
                    pongs, no replies), ``REFUSE`` (new websocket handshakes    seconds, or until
                    and REST requests get HTTP 503)                             ``clear_faults()``
book                ``BOOK_GAP`` (the update is lost: never sent, so the        next ``count`` book
                    client sees its venue's sequence jump: Binance ``U``,       updates (default 1),
                    Bybit ``u``, Coinbase ``sequence_num``, OKX                 or all within
                    ``prevSeqId``; Kraken, which has none, a wrong checksum     ``duration``
                    on the next update), ``BOOK_CHECKSUM`` (the update's
                    ``checksum`` is off by one bit; only where the venue's
                    book has one: Kraken, OKX)
==================  ==========================================================  =====================

Book faults hit book *updates* only (:func:`is_book_update`: a book stream's frame that is not a
snapshot), on whichever connection's writer sends the next one, and stay armed while other
frames pass; ``BOOK_CHECKSUM`` waits for an update that carries a checksum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["BOOK_FAULTS", "CONNECTION_FAULTS", "FRAME_FAULTS", "REST_FAULTS", "WINDOW_FAULTS", "Fault", "FaultBoard",
           "is_book_update"]


class Fault(StrEnum):
    """A fault kind; the value is the name used by the control endpoint and the CLI."""

    RESET = "reset"
    CLOSE_1006 = "close_1006"
    CLOSE_1001 = "close_1001"
    STALL = "stall"
    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    MISSING_FIELDS = "missing_fields"
    NON_NUMERIC = "non_numeric"
    REFUSE = "refuse"
    SERVER_SHUTDOWN = "server_shutdown"
    REST_429 = "rest_429"
    REST_5XX = "rest_5xx"
    BOOK_GAP = "book_gap"
    BOOK_CHECKSUM = "book_checksum"


CONNECTION_FAULTS = frozenset({Fault.RESET, Fault.CLOSE_1006, Fault.CLOSE_1001, Fault.SERVER_SHUTDOWN})
FRAME_FAULTS = frozenset({Fault.MALFORMED, Fault.TRUNCATED, Fault.MISSING_FIELDS, Fault.NON_NUMERIC})
REST_FAULTS = frozenset({Fault.REST_429, Fault.REST_5XX})
WINDOW_FAULTS = frozenset({Fault.STALL, Fault.REFUSE})
BOOK_FAULTS = frozenset({Fault.BOOK_GAP, Fault.BOOK_CHECKSUM})

# Every dialect's book stream is named so (Binance depth, Bybit orderbook.<depth>, Coinbase
# level2, Kraken and OKX book / books); its snapshots say "snapshot" near the start (Bybit,
# Kraken and Coinbase "type", OKX "action"), Binance's come over REST.
_BOOK_CHANNELS: Final = ("depth", "orderbook", "level2", "book")
_SNAPSHOT: Final = '"snapshot"'
_HEAD: Final = 256
_CHECKSUM: Final = re.compile(r'"checksum":(-?\d+)')


def is_book_update(channel: str, text: str) -> bool:
    """Whether a data frame of a stream is a book update (not a snapshot), which book faults hit."""
    return channel.startswith(_BOOK_CHANNELS) and _SNAPSHOT not in text[:_HEAD]


def _wrong_checksum(text: str) -> str | None:
    """The frame with its first ``checksum`` off by one bit, or ``None`` if it has none."""
    match = _CHECKSUM.search(text)
    if match is None:
        return None
    return f"{text[:match.start(1)]}{int(match.group(1)) ^ 1}{text[match.end(1):]}"


@dataclass(slots=True)
class _Armed:
    remaining: int | None  # None: unlimited within the window
    until: float | None  # loop time; None: no deadline


class FaultBoard:
    """Armed frame, book, REST and window faults; connection faults act at once and are not kept."""

    __slots__ = ("_armed", "book_armed", "frame_armed")

    def __init__(self) -> None:
        self._armed: dict[Fault, _Armed] = {}
        #: Whether any frame fault may be armed: a cheap test for the hot path.
        self.frame_armed = False
        #: Likewise for the book faults.
        self.book_armed = False

    def arm(self, fault: Fault, *, count: int | None, duration: float | None, now: float) -> None:
        """Arm a frame, book, REST or window fault.

        Args:
            fault: The fault; not a connection fault.
            count: How many frames or requests it hits; ignored for window faults.
            duration: Seconds it stays armed; ``None`` means until used up or cleared.
            now: Current loop time.
        """
        until = None if duration is None else now + duration
        if fault in WINDOW_FAULTS:
            count = None
        elif count is None and duration is None:
            count = 1
        self._armed[fault] = _Armed(count, until)
        self._flags()

    def take(self, fault: Fault, now: float) -> bool:
        """Consume one use of a fault if it is armed.

        Args:
            fault: The fault.
            now: Current loop time.

        Returns:
            Whether the fault applies to this frame or request.
        """
        armed = self._armed.get(fault)
        if armed is None:
            return False
        if armed.until is not None and now >= armed.until:
            self._disarm(fault)
            return False
        if armed.remaining is not None:
            armed.remaining -= 1
            if armed.remaining <= 0:
                self._disarm(fault)
        return True

    def book(self, channel: str, text: str, now: float) -> tuple[Fault, str | None] | None:
        """Apply an armed book fault to a data frame, if it is a book update the fault can hit.

        Args:
            channel: The frame's stream channel.
            text: The frame.
            now: Current loop time.

        Returns:
            ``(fault, text)``: the fault and the frame to send instead (``None``: send nothing,
            the update is lost); ``None`` when no book fault applies (the frame goes as it is).
        """
        if not is_book_update(channel, text):
            return None
        if self.take(Fault.BOOK_GAP, now):
            return Fault.BOOK_GAP, None
        if Fault.BOOK_CHECKSUM in self._armed:
            wrong = _wrong_checksum(text)
            if wrong is not None and self.take(Fault.BOOK_CHECKSUM, now):
                return Fault.BOOK_CHECKSUM, wrong
        return None

    def _flags(self) -> None:
        self.frame_armed = any(armed in FRAME_FAULTS for armed in self._armed)
        self.book_armed = any(armed in BOOK_FAULTS for armed in self._armed)

    def _disarm(self, fault: Fault) -> None:
        del self._armed[fault]
        self._flags()

    def active(self, fault: Fault, now: float) -> bool:
        """Whether a window fault is in force, without consuming it."""
        armed = self._armed.get(fault)
        if armed is None:
            return False
        if armed.until is not None and now >= armed.until:
            self._disarm(fault)
            return False
        return True

    def clear(self) -> None:
        """Disarm every fault."""
        self._armed.clear()
        self._flags()

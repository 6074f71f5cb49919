"""One exception tree for the client, and the single place Flight errors are translated.

Every error a :class:`~flight_md_client.MarketDataClient` method raises for a server or
connection problem is a :class:`FlightMdClientError` carrying the server's clean message (the
text before pyarrow's ``". Detail: ..."`` and ``"gRPC client debug context: ..."`` tails)::

    FlightMdClientError
    ├── InvalidRequest ........ INVALID_ARGUMENT (also a ValueError)
    ├── NotFound .............. NOT_FOUND: unknown symbol or exchange (also a LookupError)
    ├── Unimplemented ......... UNIMPLEMENTED: unknown action, DoPut, DoExchange
    ├── Unavailable ........... UNAVAILABLE: the server cannot serve this now (no ingestion,
    │   │                       shutting down)
    │   ├── ServerShuttingDown  UNAVAILABLE + extra_info server_shutdown: the server is
    │   │                       stopping (it ends live tails with this)
    │   └── ConnectionFailed .. the server cannot be reached, or the connection was lost
    │                           (also a ConnectionError)
    ├── Unauthenticated ....... UNAUTHENTICATED: missing or wrong bearer token
    ├── PermissionDenied ...... PERMISSION_DENIED: e.g. a read-only token tried to subscribe
    │                           (also a PermissionError)
    ├── SlowConsumer .......... CANCELLED + extra_info slow_consumer: a live tail fell behind
    ├── TimedOut .............. the call's deadline (``timeout=``) passed (also a TimeoutError)
    └── ServerError ........... INTERNAL and anything else the server reports

Arguments the client rejects before sending (a bad ``start``, a symbol that is not a string)
raise plain :class:`ValueError` or :class:`TypeError`; a location pyarrow cannot use raises
:class:`InvalidLocation`, a :class:`ValueError` that names the location and the reason apart.
"""

from __future__ import annotations

import re
from typing import Final

import pyarrow as pa
from pyarrow import flight

__all__ = [
    "ConnectionFailed",
    "FlightMdClientError",
    "InvalidLocation",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "ServerError",
    "ServerShuttingDown",
    "SlowConsumer",
    "TimedOut",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "clean_message",
    "translate",
]


class FlightMdClientError(Exception):
    """Base class of every error the client raises for a server or connection problem.

    Attributes:
        message: The server's message without pyarrow's debug tails.
        flight_error: The original pyarrow exception (for debugging), or ``None``.
    """

    def __init__(self, message: str, flight_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.flight_error = flight_error

    def __str__(self) -> str:
        return self.message


class InvalidRequest(FlightMdClientError, ValueError):
    """The server refused the request as malformed (INVALID_ARGUMENT)."""


class NotFound(FlightMdClientError, LookupError):
    """The request names a symbol or exchange the server does not have (NOT_FOUND)."""

    def __str__(self) -> str:  # LookupError subclasses must not quote like KeyError
        return self.message


class Unimplemented(FlightMdClientError):
    """The server does not implement the call or action (UNIMPLEMENTED)."""


class Unavailable(FlightMdClientError):
    """The server cannot serve the request now (UNAVAILABLE)."""


class ServerShuttingDown(Unavailable):
    """The server is stopping: it refuses new live tails and ends open ones with this."""


class ConnectionFailed(Unavailable, ConnectionError):
    """The server cannot be reached, or the connection to it was lost."""


class Unauthenticated(FlightMdClientError):
    """The call carried no valid bearer token (UNAUTHENTICATED)."""


class PermissionDenied(FlightMdClientError, PermissionError):
    """The token is valid but may not do this (PERMISSION_DENIED)."""


class SlowConsumer(FlightMdClientError):
    """A live tail fell further behind than the server's bounded queue allows.

    Ticks were not silently skipped: the stream ended. Read faster (or with fewer columns) and
    open a new tail; ``range(start=...)`` recovers what was missed while it is still buffered.
    """


class TimedOut(FlightMdClientError, TimeoutError):
    """The call did not finish within its deadline."""


class ServerError(FlightMdClientError):
    """The server failed unexpectedly (INTERNAL); its log has the details."""


class InvalidLocation(ValueError):
    """``MarketDataClient(location)`` got a location pyarrow cannot connect with.

    Raised by the constructor, before anything is sent (so it is a :class:`ValueError`, not a
    :class:`FlightMdClientError`). The message is ``invalid location '<location>': <reason>``;
    the parts are attributes, so a caller can phrase the fact in its own terms (the terminal
    says ``invalid --location ...``).

    Attributes:
        location: The location as the client saw it (``grpc://`` added to a bare
            ``host:port``).
        reason: pyarrow's reason, e.g. ``"No client transport implementation for foo"``.
    """

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"invalid location {location!r}: {reason}")
        self.location = location
        self.reason = reason


SERVER_SHUTDOWN: Final = b"server_shutdown"
"""``extra_info`` of the UNAVAILABLE error with which the server ends a live tail as it stops."""

_PREFIX_RE: Final = re.compile(r"^Flight (?:returned|cancelled) [a-z ]*?(?:error|call), with "
                               r"message: ")
_TAILS: Final = (". Detail: ", ". gRPC client debug context: ", "gRPC client debug context: ",
                 ". Client context: ")
# gRPC's own connection failures (as opposed to a server handler raising UNAVAILABLE).
_CONNECT_HINTS: Final = (
    ("connection refused", "connection refused"),
    ("failed to connect", "connection failed"),
    ("name resolution", "name resolution failed"),
    ("errors resolving", "name resolution failed"),
    ("dns resolution", "name resolution failed"),
    ("connection reset", "connection reset"),
    ("socket closed", "connection closed"),
    ("broken pipe", "connection closed"),
    ("connections to all backends failing", "connection failed"),
    ("ssl", "TLS handshake failed"),
    ("handshake", "TLS handshake failed"),
    ("deadline", "timed out"),
    ("timed out", "timed out"),
)


def clean_message(text: str) -> str:
    """The server's message: without pyarrow's prefix and its ``Detail``/debug tails."""
    text = _PREFIX_RE.sub("", text.strip())
    for tail in _TAILS:
        index = text.find(tail)
        if index >= 0:
            text = text[:index]
    return text.strip() or "no message"


def _detail(text: str) -> str:
    """The server-side exception name pyarrow appends as ``Detail: Python exception: Name``."""
    match = re.search(r"Detail: (?:Python exception: )?([A-Za-z_]+)", text)
    return match.group(1) if match else ""


def _is_connection_failure(exc: BaseException, text: str) -> bool:
    """gRPC reports transport failures with its own prefix and no server ``Detail``."""
    return text.startswith("Flight returned unavailable error") or (
        isinstance(exc, flight.FlightUnavailableError) and "Detail:" not in text)


def connection_reason(text: str) -> str:
    """A short lowercase reason for a transport failure, e.g. ``"connection refused"``."""
    lowered = text.lower()
    for needle, reason in _CONNECT_HINTS:
        if needle in lowered:
            return reason
    return clean_message(text)


def translate(exc: BaseException, location: str = "the server", *,
              streaming: bool = False) -> FlightMdClientError:
    """Map a pyarrow/Flight exception to the client's exception tree (the one place it happens).

    Args:
        exc: What pyarrow raised.
        location: The server location, named in connection errors.
        streaming: The error ended a stream that was already open (a lost connection, not
            an unreachable server).
    """
    text = str(exc)
    message = clean_message(text)
    detail = _detail(text)
    if isinstance(exc, FlightMdClientError):
        return exc
    if isinstance(exc, flight.FlightCancelledError) and \
            getattr(exc, "extra_info", b"") == b"slow_consumer":
        return SlowConsumer(message, exc)
    if isinstance(exc, flight.FlightUnavailableError):
        if getattr(exc, "extra_info", b"") == SERVER_SHUTDOWN:
            return ServerShuttingDown(message, exc)
        if _is_connection_failure(exc, text):
            if streaming:
                return ConnectionFailed(f"lost the connection to {location} "
                                        f"({connection_reason(text)})", exc)
            return ConnectionFailed(f"cannot reach {location} ({connection_reason(text)}); "
                                    "is `flight-md serve` running?", exc)
        return Unavailable(message, exc)
    if isinstance(exc, flight.FlightUnauthenticatedError):
        return Unauthenticated(message, exc)
    if isinstance(exc, flight.FlightUnauthorizedError):
        return PermissionDenied(message, exc)
    if isinstance(exc, flight.FlightTimedOutError):
        return TimedOut(f"no answer from {location} in time ({message})", exc)
    if isinstance(exc, pa.ArrowInvalid):
        return InvalidRequest(message, exc)
    if isinstance(exc, pa.ArrowKeyError):
        return NotFound(message, exc)
    if isinstance(exc, pa.ArrowNotImplementedError):
        return Unimplemented(message, exc)
    if isinstance(exc, flight.FlightCancelledError):
        return ConnectionFailed(f"the call to {location} was cancelled ({message})", exc)
    if detail in ("InvalidArgument",):
        return InvalidRequest(message, exc)
    if detail in ("NotFound",):
        return NotFound(message, exc)
    if isinstance(exc, flight.FlightInternalError) and any(
            hint in text.lower() for hint in ("socket closed", "connection reset", "goaway",
                                              "stream removed", "broken pipe")):
        return ConnectionFailed(f"lost the connection to {location} "
                                f"({connection_reason(text)})", exc)
    return ServerError(message, exc)

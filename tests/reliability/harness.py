"""What the reliability and security suites share: status codes, tokens, ticks.

Child processes, the time scale and condition waits live in :mod:`tests.support` and are
re-exported here.

Tests start ``python -m flight_md serve ...`` as a real process (so that signals, resident
memory and everything it prints can be observed) and talk to it with a real
``pyarrow.flight`` client. Every wait is a multiple of :data:`TIME_SCALE`, which
``FLIGHT_MD_TIME_SCALE`` stretches on a slow machine.
"""

from __future__ import annotations

import re
from typing import Final

import pyarrow as pa
from pyarrow import flight

from flight_md.schema import MarketTick
from tests.support import REPO_ROOT, TIME_SCALE, ChildProcess, EmulatorProcess, ServerProcess, child_env, wait_until

__all__ = [
    "ALLOWED_REFUSALS",
    "REPO_ROOT",
    "TIME_SCALE",
    "ChildProcess",
    "EmulatorProcess",
    "ServerProcess",
    "assert_no_traceback",
    "bearer",
    "child_env",
    "status_code",
    "tick",
    "wait_until",
]


# pyarrow raises these client-side for each gRPC status; checked in this order because
# several Flight errors share base classes.
_STATUS_BY_CLASS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    (flight.FlightUnauthorizedError, "PERMISSION_DENIED"),
    (flight.FlightUnavailableError, "UNAVAILABLE"),
    (flight.FlightTimedOutError, "DEADLINE_EXCEEDED"),
    (flight.FlightCancelledError, "CANCELLED"),
    (flight.FlightInternalError, "INTERNAL"),
    (pa.ArrowInvalid, "INVALID_ARGUMENT"),
    (pa.ArrowKeyError, "NOT_FOUND"),
    (pa.ArrowNotImplementedError, "UNIMPLEMENTED"),
    (flight.FlightServerError, "SERVER_ERROR"),  # RESOURCE_EXHAUSTED, UNKNOWN, ...
)
ALLOWED_REFUSALS: Final = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED"})
"""What bad input may be answered with (besides a success) by a server without auth: it has
no credentials to check, so UNAUTHENTICATED or PERMISSION_DENIED would be a bug."""
_TRACEBACK_MARKERS: Final = ("Traceback", 'File "', '.py"')


# pyarrow's client raises a plain OSError for Flight-specific codes of GetSchema (it checks
# that call's status with check_status, not check_flight_status); the Flight status detail
# it appends to the message still names the code.
_DETAIL_RE: Final = re.compile(r"Detail: (Unauthenticated|Unauthorized|Unavailable|Internal|"
                               r"TimedOut|Cancelled)\b")
_STATUS_BY_DETAIL: Final = {"Unauthenticated": "UNAUTHENTICATED", "Unauthorized": "PERMISSION_DENIED",
                            "Unavailable": "UNAVAILABLE", "Internal": "INTERNAL",
                            "TimedOut": "DEADLINE_EXCEEDED", "Cancelled": "CANCELLED"}


def status_code(exc: BaseException) -> str:
    """The gRPC status a pyarrow client exception stands for (``"OTHER:<type>"`` if unknown)."""
    for cls, code in _STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return code
    match = _DETAIL_RE.search(str(exc))
    if isinstance(exc, OSError) and match:
        return _STATUS_BY_DETAIL[match.group(1)]
    if type(exc) is pa.ArrowException and str(exc).startswith("Unknown error"):
        return "UNKNOWN"
    return f"OTHER:{type(exc).__name__}"


def assert_no_traceback(message: str) -> None:
    """Fail if a message that crossed the wire carries any trace of server source."""
    for marker in _TRACEBACK_MARKERS:
        assert marker not in message, f"{marker!r} leaked to the client: {message[:2000]!r}"


def bearer(token: str, timeout: float = 10.0) -> flight.FlightCallOptions:
    """Call options carrying ``authorization: Bearer <token>`` and a deadline."""
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())],
                                    timeout=timeout * TIME_SCALE)


def tick(symbol: str, n: int, exchange: str = "binance") -> MarketTick:
    """The ``n``-th tick of a made-up market (distinct values for every ``n``)."""
    return MarketTick(symbol, 1_700_000_000_000 + n, 100.0 + n, 1.0, 99.5 + n, 100.5 + n,
                      None, None, None, 100.0 + n, exchange, 1_700_000_000_100 + n)



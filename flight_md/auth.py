"""Bearer-token authentication for the Flight service.

With tokens configured, every RPC must carry ``authorization: Bearer <token>``. The check runs
in server middleware, before any handler, so it covers ListFlights, GetFlightInfo, GetSchema,
DoGet (live tails included), DoAction and ListActions alike. Tokens are compared in constant
time (every configured token is compared, whichever matches). A *read-only* token may read
but not run mutating actions (subscribe, unsubscribe, clear): those answer PERMISSION_DENIED.

Token values never reach a log line, an error message or a response.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Final

from pyarrow import flight

from flight_md.config import Secret
from flight_md.errors import PermissionDenied

__all__ = ["MIDDLEWARE_KEY", "Role", "TokenAuth"]

MIDDLEWARE_KEY: Final = "flight_md_auth"


class Role(StrEnum):
    """What a token may do."""

    FULL = "full"
    READ_ONLY = "read_only"


class _Session(flight.ServerMiddleware):
    """Per-call middleware instance remembering the caller's role."""

    def __init__(self, role: Role) -> None:
        self.role = role


class TokenAuth(flight.ServerMiddlewareFactory):
    """Middleware factory that admits calls carrying a configured bearer token.

    Args:
        tokens: Tokens with full access.
        read_only_tokens: Tokens that may read but not change anything.
    """

    def __init__(self, tokens: Iterable[Secret], read_only_tokens: Iterable[Secret] = ()) -> None:
        self._tokens = [(t.reveal().encode(), Role.FULL) for t in tokens]
        self._tokens += [(t.reveal().encode(), Role.READ_ONLY) for t in read_only_tokens]
        if not self._tokens:
            raise ValueError("TokenAuth needs at least one token")

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[Any]]) -> _Session:
        values = headers.get("authorization") or headers.get("Authorization") or []
        presented = b""
        for value in values:
            raw = value if isinstance(value, bytes) else str(value).encode()
            if raw[:7].lower() == b"bearer ":
                presented = raw[7:].strip()
                break
        role: Role | None = None
        for token, token_role in self._tokens:
            if hmac.compare_digest(token, presented) and role is None:
                role = token_role
        if role is None:
            raise flight.FlightUnauthenticatedError(
                "missing or invalid bearer token; send the header 'authorization: Bearer <token>'")
        return _Session(role)

    @staticmethod
    def authorize(context: flight.ServerCallContext, mutating: bool) -> None:
        """Refuse a mutating call from a read-only token (the service calls this)."""
        session = context.get_middleware(MIDDLEWARE_KEY)
        if mutating and session is not None and session.role is Role.READ_ONLY:
            raise PermissionDenied("this token is read-only; subscribe, unsubscribe and clear "
                                   "need a full-access token")

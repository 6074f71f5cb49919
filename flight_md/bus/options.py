"""How a node reaches the bus: the NATS URL, credentials, TLS, and the stream's limits.

Secrets (a password, a token, credentials in the URL, the contents of a creds file) are held
here and handed to nats-py only in :meth:`BusOptions.connect_kwargs`; ``repr``/``str`` show
``'***'`` in their place and :meth:`BusOptions.redact` removes them from any text (an error
from nats-py can quote the URL it dialled), so that no log line, error or status carries one.

The default URL is loopback (``nats://127.0.0.1:4222``): a node reaches another host's bus
only when told to.

This module does no I/O except :meth:`BusOptions.tls_context`, which reads the TLS files.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from flight_md.errors import ConfigError

__all__ = ["DEFAULT_STREAM", "DEFAULT_URL", "REDACTED", "BusOptions", "StreamLimits"]

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
DEFAULT_STREAM: Final = "MD"
REDACTED: Final = "***"
_STREAM_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCHEMES: Final = ("nats", "tls", "ws", "wss")


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Retention of the JetStream stream the ingestion nodes create (or update) at start.

    Args:
        max_age_s: Messages older than this are removed (0: no age limit).
        max_bytes: The stream keeps at most this many bytes (-1: no limit).
        max_msgs: ... and at most this many messages (-1: no limit).
        duplicate_window_s: A re-publish of a message id within this window is dropped by the
            server (a publish retried after a lost ack); longer than any outage the publisher
            rides out with its backlog, so that the backlog's re-sends are de-duplicated too.
        replicas: Copies in a NATS cluster (1 for one server).
    """

    max_age_s: float = 24 * 3600.0
    max_bytes: int = -1
    max_msgs: int = -1
    duplicate_window_s: float = 120.0
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.max_age_s < 0:
            raise ConfigError(f"stream max age must be >= 0 s, got {self.max_age_s!r}")
        for name in ("max_bytes", "max_msgs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
                raise ConfigError(f"stream {name} must be a positive integer or -1 (no limit), "
                                  f"got {value!r}")
        if not self.duplicate_window_s > 0:
            raise ConfigError(f"stream duplicate window must be > 0 s, got {self.duplicate_window_s!r}")
        if self.max_age_s and self.duplicate_window_s > self.max_age_s:
            raise ConfigError(f"stream duplicate window ({self.duplicate_window_s!r} s) must not "
                              f"exceed its max age ({self.max_age_s!r} s)")
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) \
                or not 1 <= self.replicas <= 5:
            raise ConfigError(f"stream replicas must be 1 to 5, got {self.replicas!r}")


@dataclass(frozen=True, slots=True)
class BusOptions:
    """Where the bus is and how to log in.

    Args:
        url: The NATS server, ``nats://host:port`` (``tls://`` for TLS); credentials in it
            (``nats://user:pass@host``) are accepted and redacted like the others.
        user: User name (with ``password``).
        password: Password.
        token: Token authentication (instead of a user).
        creds_file: A NATS ``.creds`` file (JWT and NKey seed: decentralised auth).
        tls_ca: CA bundle that signs the server's certificate.
        tls_cert: Client certificate (mutual TLS), with ``tls_key``.
        tls_key: The client certificate's key.
        stream: The JetStream stream's name.
        limits: The stream's retention (ingestion nodes create or update it).
        connect_timeout_s: One attempt to dial.
        reconnect_wait_s: Between attempts to reconnect after the connection was lost.
    """

    url: str = DEFAULT_URL
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    stream: str = DEFAULT_STREAM
    limits: StreamLimits = StreamLimits()
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 0.5

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 - parsing it raises on a bad port
        except ValueError:
            raise ConfigError(f"bus url {self.redact(self.url)!r} is not a valid URL") from None
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise ConfigError(f"bus url {self.redact(self.url)!r} must be "
                              f"{'|'.join(_SCHEMES)}://host[:port]")
        if self.password is not None and self.user is None:
            raise ConfigError("a bus password needs a bus user")
        logins = [self.user is not None or parts.username is not None, self.token is not None,
                  self.creds_file is not None]
        if sum(logins) > 1:
            raise ConfigError("give one bus login: a user (and password), a token or a creds file")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("a bus TLS client certificate needs its key, and a key its certificate")
        if not _STREAM_NAME.fullmatch(self.stream):
            raise ConfigError(f"bus stream name {self.stream!r} must be 1 to 64 of "
                              f"A-Z a-z 0-9 _ -")
        for name in ("connect_timeout_s", "reconnect_wait_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"bus {name} must be > 0, got {getattr(self, name)!r}")

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("password", "token"):
                value = None if value is None else REDACTED
            elif f.name == "url":
                value = self.redact(value)
            shown.append(f"{f.name}={value!r}")
        return f"BusOptions({', '.join(shown)})"

    __str__ = __repr__

    @property
    def display_url(self) -> str:
        """The URL without its credentials, for logs and status."""
        return self.redact(self.url)

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith(("tls://", "wss://")) or self.tls_ca is not None \
            or self.tls_cert is not None

    def secrets(self) -> tuple[str, ...]:
        """Every secret text these options hold (for :meth:`redact`)."""
        found = [s for s in (self.password, self.token) if s]
        parts = urlsplit(self.url)
        found += [s for s in (parts.password, parts.username) if s]
        if self.creds_file is not None:
            try:
                text = self.creds_file.read_text()
            except OSError:
                text = ""
            # The JWT and the seed: the lines between the BEGIN/END markers.
            found += [line.strip() for line in text.splitlines()
                      if line.strip() and not line.startswith("---") and "*" not in line]
        return tuple(sorted(set(found), key=len, reverse=True))

    def redact(self, text: str) -> str:
        """``text`` with every secret of these options, and any URL's user info, replaced."""
        text = re.sub(r"(?<=://)[^/@\s]+@", f"{REDACTED}@", text)
        for secret in self.secrets():
            text = text.replace(secret, REDACTED)
        return text

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for the connection, or ``None`` (plain TCP).

        Raises:
            ConfigError: a TLS file cannot be read or is not what it should be.
        """
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.tls_ca) if self.tls_ca is not None else None)
            if self.tls_cert is not None and self.tls_key is not None:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        except (OSError, ssl.SSLError) as exc:
            # Only the file names: an SSL error can quote what it read.
            raise ConfigError(f"bus TLS files cannot be used (ca {self.tls_ca}, cert "
                              f"{self.tls_cert}, key {self.tls_key}): "
                              f"{type(exc).__name__}") from None
        return context

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (secrets included: never log them)."""
        kwargs: dict[str, Any] = {
            "servers": [self.url],
            "connect_timeout": self.connect_timeout_s,
            "reconnect_time_wait": self.reconnect_wait_s,
            "max_reconnect_attempts": -1,
        }
        if self.user is not None:
            kwargs["user"] = self.user
            kwargs["password"] = self.password or ""
        if self.token is not None:
            kwargs["token"] = self.token
        if self.creds_file is not None:
            kwargs["user_credentials"] = str(self.creds_file)
        context = self.tls_context()
        if context is not None:
            kwargs["tls"] = context
            hostname = urlsplit(self.url).hostname
            if hostname:
                kwargs["tls_hostname"] = hostname
        return kwargs


"""The NATS connection of a bus node, and the JetStream stream every node shares.

The one module that talks to nats-py's connection and stream API: the publisher and the
consumer connect through :func:`connect`, which maps every nats-py error to
:class:`BusUnavailable` with a redacted message (:meth:`~flight_md.bus.options.BusOptions.redact`)
and no chained cause (a nats-py error can quote the URL it dialled, credentials included), and
ingestion nodes create or update the stream with :func:`ensure_stream`.

nats-py is connected with ``pending_size=0``: while the server is away nats-py buffers no
publish of its own (by default it would, 2 MiB, unbounded in count, and lose it on close), so
that every unacked message is in the publisher's :class:`~flight_md.bus.backlog.Backlog`,
counted and bounded in one place.

Assumption on nats-py's internals (2.16, pinned to the minor): ``Client.options`` is the dict
its reconnect loop reads ``max_reconnect_attempts`` from at each attempt, so that the first
dial can be bounded and later reconnects not (:func:`connect`; the bus tests cover both).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api
from nats.js.client import JetStreamContext

from flight_md.bus.message import ALL_EVENTS
from flight_md.bus.options import BusOptions
from flight_md.bus.subjects import ALL_SUBJECTS
from flight_md.errors import Unavailable

__all__ = ["BUS_ERRORS", "STREAM_SUBJECTS", "BusUnavailable", "connect", "ensure_stream"]

logger = logging.getLogger(__name__)

BUS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError)
"""What a call to the bus raises when the server is away, slow or refuses (nats-py's errors,
sockets, timeouts)."""


STREAM_SUBJECTS: Final = (ALL_SUBJECTS, ALL_EVENTS)
"""The stream's subjects: the rings' batches and the ingestion nodes' events."""


class BusUnavailable(Unavailable):
    """The bus cannot be reached or refused a call; the message names no secret."""


def bus_error(options: BusOptions, what: str, exc: BaseException) -> BusUnavailable:
    """``exc`` (from nats-py) as a :class:`BusUnavailable` saying ``what`` failed, redacted."""
    detail = options.redact(str(exc)) or type(exc).__name__
    return BusUnavailable(f"{what} ({options.display_url}): {type(exc).__name__}: {detail}")


async def connect(options: BusOptions, *, name: str,
                  on_disconnect: Callable[[], Awaitable[None]] | None = None,
                  on_reconnect: Callable[[], Awaitable[None]] | None = None) -> Client:
    """A connection to the bus that reconnects by itself (forever, ``reconnect_wait_s`` apart).

    Raises:
        BusUnavailable: the first dial failed (no server, refused login, bad TLS).
    """

    seen: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if len(seen) < 2:
            seen.append(exc)
        logger.debug("bus %s: %s", name, options.redact(f"{type(exc).__name__}: {exc}"))

    kwargs: dict[str, Any] = options.connect_kwargs()
    # nats-py applies max_reconnect_attempts to the first dial too (-1: it never returns while
    # the server is away); the first dial gets one retry, and the connection, once made,
    # reconnects forever (set below).
    kwargs.update(name=name, pending_size=0, error_cb=on_error, allow_reconnect=True,
                  max_reconnect_attempts=1)
    if on_disconnect is not None:
        kwargs["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        kwargs["reconnected_cb"] = on_reconnect
    client = Client()
    # Bounded as a whole too: after a failed TLS handshake nats-py 2.16 can wait forever in
    # connect() (seen with an untrusted server certificate).
    first_dial = 2 * (options.connect_timeout_s + options.reconnect_wait_s) + 1.0
    try:
        await asyncio.wait_for(client.connect(**kwargs), first_dial)
    except BUS_ERRORS as exc:
        # nats-py raises "no servers" after its retries; the first error seen says why.
        cause = seen[0] if seen and isinstance(exc, nats.errors.NoServersError | TimeoutError) else exc
        await _close_quietly(client)
        # No cause chained: its text (and its own causes) can hold the credentials.
        raise bus_error(options, "cannot connect to the bus", cause) from None
    client.options["max_reconnect_attempts"] = -1  # an assumption on nats-py: module docstring
    return client


async def _close_quietly(client: Client) -> None:
    try:
        await asyncio.wait_for(client.close(), 2.0)
    except BUS_ERRORS:
        pass


def stream_config(options: BusOptions) -> api.StreamConfig:
    """The stream every node shares: every ``md.>`` (data) and ``mdev.>`` (events) subject,
    on disk, limits retention."""
    limits = options.limits
    return api.StreamConfig(
        name=options.stream,
        subjects=list(STREAM_SUBJECTS),
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        discard=api.DiscardPolicy.OLD,
        max_age=limits.max_age_s or None,
        max_bytes=limits.max_bytes,
        max_msgs=limits.max_msgs,
        duplicate_window=limits.duplicate_window_s,
        num_replicas=limits.replicas,
    )


async def ensure_stream(js: JetStreamContext, options: BusOptions) -> api.StreamInfo:
    """Create the stream, or update an existing one to ``options``' limits and subjects (a
    stream an earlier version made with ``md.>`` alone gains ``mdev.>``).

    Raises:
        BusUnavailable: the server refused (no JetStream, limits it does not allow) or is away.
    """
    config = stream_config(options)
    try:
        try:
            return await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Exists with another configuration (e.g. other limits): make it ours.
            return await js.update_stream(config)
    except BUS_ERRORS as exc:
        raise bus_error(options, f"cannot create the bus stream {options.stream!r}", exc) from None

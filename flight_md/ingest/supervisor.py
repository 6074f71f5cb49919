"""Which side of a stream runs: websocket sessions or REST polling, and the switch between them.

In ``mode="auto"`` the websocket side runs until the reconnect policy says to fall back
(``rest_fallback_after`` consecutive failures), then the poller runs until a websocket probe
answers, and so on; each switch is a ``mode`` event. ``GiveUp`` (out of reconnect attempts)
leaves the stream ``FAILED`` with a ``failed`` event, and so does an unexpected error: a bug
must leave a visible state, never a silent task.
"""

from __future__ import annotations

import asyncio
import logging

from flight_md.events import EventKind
from flight_md.ingest.policy import GiveUp
from flight_md.ingest.poller import Poller
from flight_md.ingest.session import WebsocketRunner
from flight_md.ingest.state import ConnectionState, Health, Mode, Subscriptions

__all__ = ["Supervisor"]

# The stream's parts log as the stream: one logger to configure for a stream's story.
logger = logging.getLogger("flight_md.ingest.stream")


class Supervisor:
    """Runs a stream's websocket side or its poller, switching as the policy decides.

    Args:
        health: The stream's state and reconnect policy.
        subscriptions: The stream's symbols (named in events).
        websocket: The websocket side (``None``: the exchange has no ccxt.pro).
        poller: The REST side (``None``: ccxt cannot fetch the channel).
        active: The side to start with.

    Attributes:
        active: What runs now: :attr:`Mode.WEBSOCKET` or :attr:`Mode.REST`.
    """

    __slots__ = ("_health", "_poller", "_subs", "_websocket", "active")

    def __init__(self, health: Health, subscriptions: Subscriptions,
                 websocket: WebsocketRunner | None, poller: Poller | None, active: Mode) -> None:
        self._health = health
        self._subs = subscriptions
        self._websocket = websocket
        self._poller = poller
        self.active = active
        if websocket is not None:
            websocket.delivering = active is Mode.WEBSOCKET

    async def run(self) -> None:
        """Run until cancelled, or until the stream fails (then it is ``FAILED``)."""
        health = self._health
        try:
            while True:
                if self.active is Mode.WEBSOCKET:
                    assert self._websocket is not None  # websocket mode needs ccxt.pro
                    await self._websocket.run()
                    assert self._poller is not None  # the policy falls back only to a poller
                    self._switch(Mode.REST, f"websocket failed {health.policy.ws_failures} times "
                                 f"in a row; polling every {self._poller.poll_interval:g} s")
                else:
                    assert self._poller is not None  # REST mode needs a fetch method
                    await self._poller.run()
                    self._switch(Mode.WEBSOCKET, "websocket answers again")
        except GiveUp as give_up:
            health.set_state(ConnectionState.FAILED)
            health.events.record(health.exchange_id, EventKind.FAILED, self._subs.symbols,
                                 str(give_up))
            logger.error("%s: %s", health.exchange_id, give_up)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a bug must leave a visible FAILED state
            reason = health.note_error(error)
            health.set_state(ConnectionState.FAILED)
            health.events.record(health.exchange_id, EventKind.FAILED, self._subs.symbols,
                                 f"ingestion stopped by an unexpected error: {reason}")
            logger.error("%s: ingestion stopped by an unexpected error: %s", health.exchange_id,
                         reason)

    def _switch(self, mode: Mode, reason: str) -> None:
        health = self._health
        self.active = mode
        if self._websocket is not None:
            self._websocket.delivering = mode is Mode.WEBSOCKET
        health.policy.mode_switched()
        health.events.record(health.exchange_id, EventKind.MODE, self._subs.symbols,
                             f"{mode.value}: {reason}")
        logger.warning("%s: switching to %s: %s", health.exchange_id, mode.value, reason)

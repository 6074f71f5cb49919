"""A stream's REST side: poll the channel's ``fetch_*`` method, and probe the websocket.

REST polling
    Used when the exchange has no websocket support in ccxt, when ``mode="rest"``, and in
    ``mode="auto"`` after ``rest_fallback_after`` consecutive websocket failures; auto mode
    probes the websocket every ``ws_probe_interval`` seconds and returns to it when it
    answers. A polled ticker is stored only when its values changed. Trades are polled with
    ``fetch_trades`` per symbol (the venue's latest page); the trade path stores each trade id
    once (:class:`~flight_md.ingest.trades.TradeFanout`), so the overlap of two polls is
    dropped without being counted as a resend, and a jump between polls is a gap it backfills. 429 and 5xx answers
    back off like a reconnect (at least ``Retry-After``). REST fetches do not write ccxt's
    ticker cache, so the websocket tap cannot count a polled ticker twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import ccxt.async_support as ccxt_async

from flight_md.events import EventKind
from flight_md.ingest import ccxt_compat
from flight_md.ingest.fanout import Fanout
from flight_md.ingest.policy import retry_after_seconds
from flight_md.ingest.session import WebsocketRunner
from flight_md.ingest.state import Health, Subscriptions
from flight_md.ingest.trades import TradeFanout
from flight_md.normalize import fingerprint
from flight_md.schema import now_ms

__all__ = ["PROBE_TIMEOUT", "Poller"]

# The stream's parts log as the stream: one logger to configure for a stream's story.
logger = logging.getLogger("flight_md.ingest.stream")

PROBE_TIMEOUT: Final = 10.0
"""Seconds a websocket probe may take (at most the heartbeat interval)."""


class Poller:
    """Polls one stream's symbols over REST until auto mode should go back to the websocket.

    Args:
        exchange: The stream's ccxt exchange.
        method: The ccxt ``fetch_*`` method the venue and ccxt offer for the channel.
        health: The stream's state and reconnect policy.
        subscriptions: The stream's symbols.
        fanout: Where polled tickers go.
        websocket: The stream's websocket side, to probe; ``None``: never probe.
        poll_interval: Seconds between polls.
        ws_probe_interval: Seconds between websocket probes.
        heartbeat_interval: A probe waits at most this long.
        max_reconnect_delay: Cap of a ``Retry-After`` wait.
    """

    __slots__ = ("_exchange", "_fanout", "_health", "_method", "_subs", "_websocket",
                 "heartbeat_interval", "max_reconnect_delay", "poll_interval", "ws_probe_interval")

    def __init__(self, exchange: Any, method: str, health: Health, subscriptions: Subscriptions,
                 fanout: Fanout, websocket: WebsocketRunner | None, *, poll_interval: float,
                 ws_probe_interval: float, heartbeat_interval: float,
                 max_reconnect_delay: float) -> None:
        self._exchange = exchange
        self._method = method
        self._health = health
        self._subs = subscriptions
        self._fanout = fanout
        self._websocket = websocket
        self.poll_interval = poll_interval
        self.ws_probe_interval = ws_probe_interval
        self.heartbeat_interval = heartbeat_interval
        self.max_reconnect_delay = max_reconnect_delay

    async def run(self) -> None:
        """Poll until the websocket answers a probe (never, without a websocket to probe)."""
        health = self._health
        probe_at = time.monotonic() + self.ws_probe_interval
        while True:
            await self._subs.wait()
            symbols = self._subs.symbols
            try:
                tickers = await self._poll(symbols)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - every failed poll backs off alike
                health.events.record(health.exchange_id, EventKind.ERROR, symbols,
                                     f"poll failed: {health.describe(error)}")
                health.failed(error, "poll failed", websocket=False)
                await asyncio.sleep(health.policy.next_delay(self._retry_after(error)))
                continue
            health.recovered("polling again", websocket=False)
            receive_ms = now_ms()
            for symbol in symbols:
                ticker = tickers.get(symbol)
                state = self._subs.subscribed(symbol)
                if ticker is None or state is None:
                    continue
                if isinstance(self._fanout, TradeFanout):
                    self._fanout.ingest_polled(symbol, state, ticker, receive_ms)
                    continue
                key = fingerprint(ticker)
                if key == state.polled:
                    continue  # unchanged since the last poll
                state.polled = key
                self._fanout.ingest(symbol, state, ticker, receive_ms)
            if self._websocket is not None and time.monotonic() >= probe_at:
                if await self._probe(self._websocket):
                    return
                probe_at = time.monotonic() + self.ws_probe_interval
            await asyncio.sleep(self.poll_interval)

    async def _poll(self, symbols: Sequence[str]) -> dict[str, Any]:
        method = self._method
        out: dict[str, Any] = {}
        if method in ("fetch_ticker", "fetch_trades"):
            fetch_one = getattr(self._exchange, method)
            for symbol in symbols:
                out[symbol] = await fetch_one(symbol)
            return out
        fetch = getattr(self._exchange, method)
        for group in self._subs.pack(symbols):
            result = await fetch(list(group))
            if isinstance(result, Mapping):
                out.update(result)
        return out

    def _retry_after(self, error: BaseException) -> float:
        if not isinstance(error, ccxt_async.DDoSProtection):
            return 0.0
        return retry_after_seconds(ccxt_compat.response_headers(self._exchange),
                                   self.max_reconnect_delay)

    async def _probe(self, websocket: WebsocketRunner) -> bool:
        """Whether the websocket delivers again (its ticks are not stored: REST is active)."""
        symbol = self._subs.symbols[0]
        try:
            await asyncio.wait_for(websocket.call(websocket.watch_method, (symbol,)),
                                   min(PROBE_TIMEOUT, self.heartbeat_interval))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure means "not yet"
            logger.info("%s: websocket probe failed (%s); still polling", self._health.exchange_id,
                        self._health.describe(error))
            return False
        finally:
            await websocket.close_clients()
        return True

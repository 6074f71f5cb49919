"""The emulator server: one aiohttp app speaking one exchange dialect on 127.0.0.1.

One asyncio loop runs everything: REST handlers, one reader and one writer task per
websocket, the synthetic producer (or one replay task per subscription request) and
the Binance ping loops. Data frames travel producer -> ``Connection.push`` -> writer,
and the writer is the only place where frames are corrupted and counted, so
``sent(channel, symbol)`` is exactly what reached the socket intact.

Control endpoint (for the CLI and other processes), exempt from faults:
``POST /_emulator/faults`` with ``{"fault": "reset", "count": 1, "duration": 2.0,
"retry_after": 1.0}``, ``DELETE /_emulator/faults``, ``GET /_emulator/stats`` and
``POST /_emulator/burst`` with ``{"channel": "trade", "symbol": "BTC/USDT", "count": 20000}``
(:meth:`Emulator.burst`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import socket
import struct
import uuid
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

from flight_md.emulator.connection import Connection, text_frame
from flight_md.emulator.dialect import Dialect, Subscription, now_ms
from flight_md.emulator.dialects import dialect_class, emulated
from flight_md.emulator.fault import CONNECTION_FAULTS, FRAME_FAULTS, Fault, FaultBoard
from flight_md.emulator.market import StreamKey, parse_symbols
from flight_md.emulator.recording import Recording
from flight_md.emulator.stats import EmulatorStats, StatsCounter
from flight_md.emulator.synthetic import IDLE_STEPS_PER_SECOND, PriceWalk, RestWalks

__all__ = ["EXCHANGES", "Emulator"]

logger = logging.getLogger(__name__)

EXCHANGES: Final = emulated()
_CONTROL_PREFIX: Final = "/_emulator/"
_MAX_BURST_SECONDS: Final = 0.01  # a late producer tick catches up at most this much
_REPLAY_BACKLOG: Final = 4096  # an as-fast-as-possible replay waits while a queue is this long
_CLOSE_TIMEOUT: Final = 1.0
_LIMIT_CLOSE_CODE: Final = 1008
_COUNTED_MESSAGES: Final = frozenset({WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG})
_WRITE_BATCH: Final = 16384  # frames per transport.write: drain the queue, a syscall per batch
_WRITE_HIGH_WATER: Final = 4 << 20  # bytes buffered in the kernel-side queue before the writer waits
_WRITE_LOW_WATER: Final = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class _ReplayFrame:
    offset: float
    key: StreamKey
    text: str


class Emulator:
    """A local exchange (Binance spot or Bybit v5) for unmodified ccxt.pro clients.

    Point ccxt at :attr:`url` with :func:`flight_md.ingest.endpoints.url_overrides`.

    Args:
        exchange: A venue the emulator speaks (:func:`flight_md.venues.emulated`).
        symbols: Unified symbols listed and streamed in synthetic mode
            (``BTC/USDT`` spot, ``BTC/USDT:USDT`` linear on Bybit). Ignored in replay.
        rate: Synthetic updates per second in total, spread round-robin over the
            subscribed streams; each update goes to every connection subscribed to it.
            A market no websocket streams still moves, at ``rate / markets`` updates per
            second (at most 10), as REST reads see it (:class:`~flight_md.emulator.synthetic.RestWalks`).
        replay: A recording to replay instead of synthetic data; ``None`` for synthetic.
        speed: Replay pace: 1 is recorded timing, X is X times faster, 0 as fast as possible.
        loop: Replay the recording again and again.
        seed: Seed of the synthetic random walks.
        host: Interface to listen on.
        port: TCP port; 0 picks a free one.
        ping_interval: Seconds between server ping frames (Binance; the real one pings
            every 20 s and drops a connection that has not answered within three).
        replay_gap: Minimum seconds between two replayed frames on one connection, so
            a slow consumer can observe every frame even at ``speed=0``.
        max_queue: Frames queued for one connection beyond which it is dropped as a
            slow consumer.

    Raises:
        ValueError: On an unknown exchange, a bad symbol or a negative rate or speed.
    """

    def __init__(
        self,
        exchange: str = "binance",
        symbols: tuple[str, ...] | list[str] | str = ("BTC/USDT", "ETH/USDT"),
        rate: float = 100.0,
        replay: Path | str | None = None,
        speed: float = 1.0,
        loop: bool = False,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval: float = 20.0,
        replay_gap: float = 0.0,
        max_queue: int = 200_000,
    ) -> None:
        dialect_cls = dialect_class(exchange)
        if rate < 0 or not math.isfinite(rate):
            raise ValueError(f"bad rate {rate!r}; expected a finite number >= 0")
        if speed < 0 or not math.isfinite(speed):
            raise ValueError(f"bad speed {speed!r}; expected a finite number >= 0")
        if ping_interval <= 0:
            raise ValueError(f"bad ping_interval {ping_interval!r}; expected seconds > 0")
        self.exchange = exchange
        self.rate = rate
        self.speed = speed
        self.loop = loop
        self.host = host
        self.ping_interval = ping_interval
        self.replay_gap = replay_gap
        self.max_queue = max_queue
        self._requested_port = port
        recording = Recording.load(Path(replay)) if replay is not None else None
        markets = parse_symbols(symbols) if recording is None else ()
        walks = {market.symbol: PriceWalk(market, seed) for market in markets}
        idle_pace = min(IDLE_STEPS_PER_SECOND, rate / len(walks)) if walks else 0.0
        self._rest_walks = RestWalks(walks, idle_pace)
        self._dialect: Dialect = dialect_cls(markets, self._rest_walks, recording)
        self._walks = walks
        self._replay_frames = self._prepare_replay(recording) if recording is not None else ()
        self._replay_keys = frozenset(frame.key for frame in self._replay_frames)
        self._source = recording.source if recording is not None else None
        self._stats = StatsCounter()
        self._faults = FaultBoard()
        self._retry_after = 1.0
        self._connections: dict[Connection, None] = {}
        self._subscribers: dict[StreamKey, dict[Connection, None]] = {}
        self._producible: list[StreamKey] = []
        self._running: asyncio.Event | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._producer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Listen and start producing. Idempotent."""
        if self._runner is not None:
            return
        self._running = asyncio.Event()
        self._running.set()
        app = web.Application(middlewares=[self._gate])
        for path, handler in self._dialect.rest_routes():
            app.router.add_get(path, handler)
        for path in self._dialect.ws_paths():
            app.router.add_get(path, self._serve_websocket)
        app.router.add_post(_CONTROL_PREFIX + "faults", self._post_fault)
        app.router.add_delete(_CONTROL_PREFIX + "faults", self._delete_faults)
        app.router.add_get(_CONTROL_PREFIX + "stats", self._get_stats)
        app.router.add_post(_CONTROL_PREFIX + "burst", self._post_burst)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=_CLOSE_TIMEOUT)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        await site.start()
        self._runner = runner
        server = site._server  # aiohttp exposes the bound port only here
        assert isinstance(server, asyncio.base_events.Server)
        self._port = server.sockets[0].getsockname()[1]
        if not self._replay_frames and self.rate > 0:
            self._producer = asyncio.get_running_loop().create_task(self._produce(), name="emulator-producer")
        logger.info("emulator %s listening on %s (%s)", self.exchange, self.url,
                    "replay" if self._replay_frames else f"synthetic {self.rate:g}/s")

    async def stop(self) -> None:
        """Close every connection and stop listening. Idempotent."""
        if self._runner is None:
            return
        if self._producer is not None:
            self._producer.cancel()
            await asyncio.gather(self._producer, return_exceptions=True)
            self._producer = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        if self._running is not None:
            self._running.set()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(self._close(conn, 1001, "going away") for conn in list(self._connections)),
                             return_exceptions=True)
        runner, self._runner = self._runner, None
        await runner.cleanup()
        logger.info("emulator %s on port %s stopped", self.exchange, self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The TCP port listened on (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("emulator not started; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8765``; websockets use the same host and port."""
        return f"http://{self.host}:{self.port}"

    @property
    def symbols(self) -> tuple[str, ...]:
        """Unified symbols of the markets listed."""
        return tuple(market.symbol for market in self._dialect.markets)

    @property
    def channels(self) -> dict[str, tuple[str, ...]]:
        """What subscribers can get: exchange-native channel -> unified symbols, sorted.

        In replay, exactly the streams the recording holds data frames for; in synthetic
        mode, every listed symbol on every channel the dialect synthesizes.
        """
        if self._replay_frames:
            by_channel: dict[str, set[str]] = {}
            for key in self._replay_keys:
                by_channel.setdefault(key.channel, set()).add(key.symbol)
        else:
            by_channel = {channel: set(self._walks) for channel in self._dialect.synthetic_channels}
        return {channel: tuple(sorted(symbols)) for channel, symbols in sorted(by_channel.items())}

    def summary(self) -> list[str]:
        """What this emulator serves, as lines for a person starting it.

        The first line names the source; then one ``<channel>: <symbol>, ...`` line per
        channel (see :attr:`channels`).
        """
        if self._replay_frames:
            span = max(frame.offset for frame in self._replay_frames)
            head = (f"{self.exchange} replay of {self._source}: {len(self._replay_frames)} frames "
                    f"over {span:.1f} s{', looped' if self.loop else ''}; streams by channel:")
        else:
            head = (f"{self.exchange} synthetic markets, {self.rate:g} updates/s; streams by "
                    "channel:")
        return [head, *(f"  {channel}: {', '.join(symbols)}" for channel, symbols in self.channels.items())]

    # -- observation ------------------------------------------------------------------

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters."""
        return self._stats.snapshot()

    def sent(self, channel: str, symbol: str) -> int:
        """Intact data frames written for one stream, over all connections.

        Args:
            channel: Exchange-native channel: ``bookTicker``, ``ticker``, ``miniTicker``,
                ``trade`` (Binance); ``tickers``, ``orderbook.1``, ``publicTrade`` (Bybit).
            symbol: Unified symbol, e.g. ``BTC/USDT`` or ``BTC/USDT:USDT``.

        Returns:
            The count.
        """
        return self._stats.frames[StreamKey(channel, symbol)]

    def burst(self, channel: str, symbol: str, count: int) -> int:
        """Publish ``count`` synthetic updates of one stream at once, on top of the paced feed.

        Each update steps the market's walk and goes to the stream's subscribers now (queued
        in one go, so a subscriber receives them as fast as the socket takes them: the 20,000
        trades a second of a busy market, or more). Without subscribers the updates are still
        published (a venue's trade ids and REST history move on), which is how a test makes a
        subscriber that is away miss trades.

        Args:
            channel: Exchange-native channel the dialect renders (Binance ``trade``, Bybit
                ``publicTrade``, Coinbase ``market_trades``, OKX ``trades``, Kraken ``trade``).
            symbol: A unified symbol the emulator lists.
            count: Updates, at least 1.

        Returns:
            ``count``.

        Raises:
            ValueError: In replay mode, an unknown symbol or channel, or a count below 1.
        """
        if self._replay_frames:
            raise ValueError("a burst is synthetic data; this emulator replays a recording")
        walk = self._walks.get(symbol)
        if walk is None:
            raise ValueError(f"unknown symbol {symbol!r}; listed: {', '.join(self._walks)}")
        if not self._dialect.renders(channel):
            raise ValueError(f"{self.exchange} renders no channel {channel!r}; it renders "
                             f"{', '.join(sorted(self._dialect.synthetic_channels))}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"bad burst count {count!r}; expected an integer >= 1")
        key = StreamKey(channel, symbol)
        render, ms = self._dialect.render, now_ms()
        subscribers = list(self._subscribers.get(key, ()))
        for _ in range(count):
            text = render(key, walk.market, walk.step(ms), snapshot=False)
            for conn in subscribers:
                conn.push(key, text)
        for conn in subscribers:
            if len(conn.queue) > self.max_queue:
                self._slow(conn)
        logger.info("emulator %s: burst of %d %s updates of %s to %d connections", self.exchange,
                    count, channel, symbol, len(subscribers))
        return count

    # -- faults -----------------------------------------------------------------------

    async def inject(self, fault: Fault | str, *, count: int | None = None, duration: float | None = None,
                     retry_after: float = 1.0) -> int:
        """Inject a fault; see :mod:`flight_md.emulator.fault` for each one's meaning.

        Args:
            fault: The fault, or its name (``"reset"``, ``"stall"``, ...).
            count: Connection faults: how many open websockets to hit (default all).
                Frame and REST faults: how many frames or requests (default 1 unless
                ``duration`` is given). Ignored by ``STALL`` and ``REFUSE``.
            duration: ``STALL`` and ``REFUSE``: seconds in force (default until
                :meth:`clear_faults`). Frame and REST faults: seconds armed.
                ``SERVER_SHUTDOWN``: grace seconds between the event and the close.
            retry_after: ``Retry-After`` seconds sent with ``REST_429``.

        Returns:
            Websockets affected now (connection faults and ``STALL``), else 0.

        Raises:
            ValueError: On an unknown fault, or ``SERVER_SHUTDOWN`` on an exchange
                without such an event.
        """
        fault = Fault(fault)
        loop = asyncio.get_running_loop()
        if fault in CONNECTION_FAULTS:
            if fault is Fault.SERVER_SHUTDOWN and self._dialect.shutdown_event() is None:
                raise ValueError(f"fault {fault.value!r} needs a venue 'server going away' message; "
                                 f"{self.exchange} has none")
            targets = list(self._connections)[:count] if count is not None else list(self._connections)
            logger.info("emulator %s: injecting %s into %d connections", self.exchange, fault.value, len(targets))
            await asyncio.gather(*(self._cut(conn, fault, duration or 0.0) for conn in targets))
            self._stats.faults[fault] += len(targets)
            return len(targets)
        if fault is Fault.STALL:
            self._stall(duration)
            self._stats.faults[fault] += 1
            return len(self._connections)
        if fault is Fault.REST_429:
            self._retry_after = retry_after
        self._faults.arm(fault, count=count, duration=duration, now=loop.time())
        logger.info("emulator %s: armed %s (count=%s, duration=%s)", self.exchange, fault.value, count, duration)
        return 0

    def clear_faults(self) -> None:
        """Disarm every fault and end a stall."""
        self._faults.clear()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._running is not None:
            self._running.set()

    def _stall(self, duration: float | None) -> None:
        assert self._running is not None, "emulator not started"
        self._running.clear()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if duration is not None:
            self._stall_timer = asyncio.get_running_loop().call_later(duration, self._running.set)

    async def _cut(self, conn: Connection, fault: Fault, grace: float) -> None:
        if fault is Fault.RESET:
            _reset(conn.transport)
        elif fault is Fault.CLOSE_1006:
            if conn.transport is not None:
                conn.transport.close()
        elif fault is Fault.CLOSE_1001:
            await self._close(conn, 1001, "going away")
        else:
            event = self._dialect.shutdown_event()
            assert event is not None
            try:
                await conn.ws.send_str(event)
            except (ConnectionError, RuntimeError):
                return
            task = asyncio.get_running_loop().create_task(self._close_later(conn, grace))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _close_later(self, conn: Connection, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._close(conn, 1001, "server shutdown")

    async def _close(self, conn: Connection, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(conn.ws.close(code=code, message=reason.encode()), _CLOSE_TIMEOUT)
        except (TimeoutError, ConnectionError, RuntimeError):
            _reset(conn.transport)

    # -- HTTP -------------------------------------------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_CONTROL_PREFIX):
            return await handler(request)
        now = asyncio.get_running_loop().time()
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if upgrade:
            self._stats.handshakes.append(now)
        else:
            self._stats.rest_requests += 1
        if self._faults.active(Fault.REFUSE, now):
            self._stats.faults[Fault.REFUSE] += 1
            return self._error(503)
        if not upgrade:
            if self._faults.take(Fault.REST_429, now):
                self._stats.faults[Fault.REST_429] += 1
                response = self._error(429)
                response.headers["Retry-After"] = f"{self._retry_after:g}"
                return response
            if self._faults.take(Fault.REST_5XX, now):
                self._stats.faults[Fault.REST_5XX] += 1
                return self._error(503)
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return self._error(404)

    def _error(self, status: int) -> web.Response:
        if status >= 500:
            # 5xx answers come from the exchanges' gateways as HTML, not from their APIs.
            reason = HTTPStatus(status).phrase
            page = f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1></body></html>"
            return web.Response(text=page, status=status, content_type="text/html")
        return web.Response(text=self._dialect.rest_error(status), status=status, content_type="application/json")

    async def _post_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            fault = Fault(body["fault"])
            count = None if body.get("count") is None else int(body["count"])
            duration = None if body.get("duration") is None else float(body["duration"])
            retry_after = float(body.get("retry_after", 1.0))
            affected = await self.inject(fault, count=count, duration=duration, retry_after=retry_after)
        except (ValueError, KeyError, TypeError) as error:
            allowed = ", ".join(f.value for f in Fault)
            return web.json_response({"ok": False, "error": f"bad fault request: {error}; faults: {allowed}"},
                                     status=400)
        return web.json_response({"ok": True, "fault": fault.value, "affected": affected})

    async def _post_burst(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            count = self.burst(str(body["channel"]), str(body["symbol"]), body.get("count", 1))
        except (ValueError, KeyError, TypeError) as error:
            return web.json_response({"ok": False, "error": f"bad burst request: {error}"}, status=400)
        return web.json_response({"ok": True, "count": count})

    async def _delete_faults(self, request: web.Request) -> web.StreamResponse:
        self.clear_faults()
        return web.json_response({"ok": True})

    async def _get_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._stats.as_json())

    # -- websockets -------------------------------------------------------------------

    async def _serve_websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False, compress=False, timeout=_CLOSE_TIMEOUT, max_msg_size=1 << 20)
        await ws.prepare(request)
        subscriptions, combined = self._dialect.on_open(request.path, request.query)
        conn = Connection(ws, request.transport, request.path, uuid.uuid4().hex[:20], combined)
        loop = asyncio.get_running_loop()
        conn.last_pong = loop.time()
        self._connections[conn] = None
        self._stats.connections_opened += 1
        self._stats.connections_open += 1
        logger.debug("emulator %s: websocket %s opened on %s", self.exchange, conn.conn_id, request.path)
        self._spawn(conn, self._write(conn))
        for frame in self._dialect.on_connect_frames(conn.info()):
            conn.push(None, frame)
        if self._dialect.server_pings:
            self._spawn(conn, self._ping(conn))
        if self._dialect.keepalive_interval is not None:
            self._spawn(conn, self._keepalive(conn, self._dialect.keepalive_interval))
        if subscriptions:
            self._subscribe(conn, subscriptions)
        try:
            await self._read(conn)
        finally:
            self._drop(conn)
            self._dialect.closed(conn.info())
        return ws

    def _spawn(self, conn: Connection, coroutine: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)

    async def _read(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        limit = self._dialect.control_rate_limit
        running = self._running
        assert running is not None
        async for message in conn.ws:
            now = loop.time()
            if limit is not None and message.type in _COUNTED_MESSAGES and conn.over_limit(now, limit):
                logger.info("emulator %s: websocket %s sent more than %d messages in a second; closing",
                            self.exchange, conn.conn_id, limit)
                self._stats.limit_closes += 1
                await self._close(conn, _LIMIT_CLOSE_CODE, "Too many requests")
                return
            if message.type is WSMsgType.TEXT:
                self._stats.control_messages += 1
                if not running.is_set():
                    continue  # stalled: the request is swallowed
                control = self._dialect.control(conn.info(), message.data)
                for reply in control.replies:
                    conn.push(None, reply)
                for wire in control.unknown:
                    self._unserved(conn, wire, "answered with the venue's error")
                if control.subscribe:
                    self._subscribe(conn, control.subscribe)
                for key in control.unsubscribe:
                    self._unsubscribe(conn, key)
                if control.close is not None:
                    await self._close(conn, *control.close)
                    return
            elif message.type is WSMsgType.PING:
                if running.is_set():
                    await conn.ws.pong(message.data)
            elif message.type is WSMsgType.PONG:
                conn.last_pong = now

    def _subscribe(self, conn: Connection, subscriptions: tuple[Subscription, ...]) -> None:
        added: list[StreamKey] = []
        for sub in subscriptions:
            if sub.key in conn.subscriptions:
                continue
            conn.subscriptions[sub.key] = sub.wire
            self._subscribers.setdefault(sub.key, {})[conn] = None
            self._stats.subscriptions += 1
            added.append(sub.key)
            if not self._serves(sub.key):
                self._unserved(conn, sub.wire, "accepted, as the venue does; no data will follow")
        if not added:
            return
        self._refresh_producible()
        if self._replay_frames:
            self._spawn(conn, self._playback(conn, frozenset(added)))
            return
        for key in added:
            walk = self._walks.get(key.symbol)
            if walk is not None and self._dialect.renders(key.channel) and self._dialect.snapshot_on_subscribe(key):
                quote = walk.quote._replace(time_ms=now_ms())
                conn.push(key, self._dialect.render(key, walk.market, quote, snapshot=True))

    def _serves(self, key: StreamKey) -> bool:
        if self._replay_frames:
            return key in self._replay_keys
        return key.symbol in self._walks and self._dialect.renders(key.channel)

    def _unserved(self, conn: Connection, wire: str, outcome: str) -> None:
        self._stats.unserved_subscriptions += 1
        source = "the recording" if self._replay_frames else "this emulator"
        available = "; ".join(f"{channel}: {_abbreviated(symbols)}" for channel, symbols in self.channels.items())
        logger.warning("emulator %s: websocket %s subscribed to %r, which %s has no data for (%s); "
                       "available: %s", self.exchange, conn.conn_id, wire, source, outcome, available)

    def _unsubscribe(self, conn: Connection, key: StreamKey) -> None:
        if conn.subscriptions.pop(key, None) is None:
            return
        self._stats.subscriptions -= 1
        subscribers = self._subscribers.get(key)
        if subscribers is not None:
            subscribers.pop(conn, None)
            if not subscribers:
                del self._subscribers[key]
        self._refresh_producible()

    def _refresh_producible(self) -> None:
        dialect = self._dialect
        self._producible = [key for key in self._subscribers
                            if key.symbol in self._walks and dialect.renders(key.channel)]
        self._rest_walks.streamed(frozenset(key.symbol for key in self._producible))

    def _drop(self, conn: Connection) -> None:
        conn.closed = True
        for key in list(conn.subscriptions):
            self._unsubscribe(conn, key)
        for task in list(conn.tasks):
            task.cancel()
        if self._connections.pop(conn, 0) is None:
            self._stats.connections_open -= 1
        logger.debug("emulator %s: websocket %s closed", self.exchange, conn.conn_id)

    async def _write(self, conn: Connection) -> None:
        running = self._running
        assert running is not None
        queue, transport, stats, faults, dialect = conn.queue, conn.transport, self._stats, self._faults, self._dialect
        frames, renumbers, conn_id = stats.frames, dialect.renumbers, conn.conn_id
        loop = asyncio.get_running_loop()
        if transport is None:
            return
        while not transport.is_closing():
            if not queue:
                conn.wake.clear()
                await conn.wake.wait()
                continue
            if not running.is_set():
                await running.wait()
                continue
            batch: list[bytes] = []
            for _ in range(min(len(queue), _WRITE_BATCH)):
                key, text = queue.popleft()
                if key is not None:
                    fault = self._frame_fault(loop.time()) if faults.frame_armed else None
                    book = faults.book(key.channel, text, loop.time()) if fault is None and faults.book_armed else None
                    if book is not None:
                        stats.faults[book[0]] += 1
                        if book[1] is None:
                            if renumbers:
                                dialect.renumber(conn_id, text)  # lost on the way: its number too
                            continue  # a lost book update
                        text = book[1]
                    elif fault is None:
                        frames[key] += 1
                        stats.frames_total += 1
                    else:
                        text = dialect.corrupt(fault, text)
                        stats.faults[fault] += 1
                    if conn.combined:
                        text = dialect.wrap(conn.subscriptions.get(key, ""), text)
                if renumbers:
                    text = dialect.renumber(conn_id, text)
                batch.append(text_frame(text.encode()))
            transport.write(b"".join(batch))  # type: ignore[attr-defined]
            if transport.get_write_buffer_size() > _WRITE_HIGH_WATER:  # type: ignore[attr-defined]
                while (transport.get_write_buffer_size() > _WRITE_LOW_WATER  # type: ignore[attr-defined]
                       and not transport.is_closing()):
                    await asyncio.sleep(0.001)
            else:
                await asyncio.sleep(0)

    def _frame_fault(self, now: float) -> Fault | None:
        for fault in FRAME_FAULTS:
            if self._faults.take(fault, now):
                return fault
        return None

    async def _ping(self, conn: Connection) -> None:
        running = self._running
        assert running is not None
        loop = asyncio.get_running_loop()
        pong_timeout = 3 * self.ping_interval
        while not conn.closed:
            await asyncio.sleep(self.ping_interval)
            if not running.is_set():
                continue
            if loop.time() - conn.last_pong > pong_timeout:
                logger.info("emulator %s: websocket %s missed pongs for %.1fs; closing", self.exchange,
                            conn.conn_id, pong_timeout)
                await self._close(conn, _LIMIT_CLOSE_CODE, "pong timeout")
                return
            try:
                await conn.ws.ping(str(now_ms()).encode())
            except (ConnectionError, RuntimeError):
                return

    async def _keepalive(self, conn: Connection, interval: float) -> None:
        running = self._running
        assert running is not None
        while not conn.closed:
            await asyncio.sleep(interval)
            if running.is_set():
                frame = self._dialect.keepalive(conn.info())
                if frame is not None:
                    conn.push(None, frame)

    # -- data sources -----------------------------------------------------------------

    async def _produce(self) -> None:
        running = self._running
        assert running is not None
        loop = asyncio.get_running_loop()
        rate = self.rate
        interval = 0.001 if rate >= 1000 else min(0.05, 1.0 / rate)
        max_burst = max(1, int(rate * _MAX_BURST_SECONDS))
        render, walks, subscribers = self._dialect.render, self._walks, self._subscribers
        max_queue = self.max_queue
        origin, produced, cursor = loop.time(), 0, 0
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            keys = self._producible
            if not running.is_set() or not keys:
                if not running.is_set():
                    await running.wait()
                origin, produced = loop.time(), 0
                continue
            due = int((now - origin) * rate) - produced
            if due > max_burst:
                # Behind schedule (a blocked loop): drop the backlog rather than burst.
                due = max_burst
                origin = now - (produced + due) / rate
            if due <= 0:
                continue
            ms = now_ms()
            count = len(keys)
            for _ in range(due):
                key = keys[cursor % count]
                cursor += 1
                walk = walks[key.symbol]
                text = render(key, walk.market, walk.step(ms), snapshot=False)
                for conn in subscribers.get(key, ()):
                    conn.push(key, text)
                    if len(conn.queue) > max_queue:
                        self._slow(conn)
            produced += due

    def _slow(self, conn: Connection) -> None:
        if conn.closed:
            return
        logger.warning("emulator %s: websocket %s fell %d frames behind; dropping it", self.exchange,
                       conn.conn_id, len(conn.queue))
        conn.queue.clear()
        conn.closed = True
        self._stats.slow_drops += 1
        _reset(conn.transport)

    def _prepare_replay(self, recording: Recording) -> tuple[_ReplayFrame, ...]:
        if not recording.messages:
            raise ValueError(f"{recording.source}: no websocket frames recorded")
        first = min(message.ts for message in recording.messages)
        frames = []
        for message in recording.messages:
            for key, _wire, text in self._dialect.recorded_frames(message):
                frames.append(_ReplayFrame(message.ts - first, key, text))
        if not frames:
            raise ValueError(f"{recording.source}: no data frames of a known stream recorded")
        return tuple(frames)

    async def _playback(self, conn: Connection, keys: frozenset[StreamKey]) -> None:
        running = self._running
        assert running is not None
        loop = asyncio.get_running_loop()
        frames = [frame for frame in self._replay_frames if frame.key in keys]
        if not frames:
            return
        span = max(frame.offset for frame in self._replay_frames) + max(self.replay_gap, 0.001)
        speed, gap, observe = self.speed, self.replay_gap, self._dialect.observe
        origin, lap, last_sent, offset_floor = loop.time(), 0.0, -math.inf, 0.0
        while True:
            for number, frame in enumerate(frames):
                if frame.key not in conn.subscriptions:
                    if conn.closed or not (keys & conn.subscriptions.keys()):
                        return
                    continue
                offset_floor = max(offset_floor, lap + frame.offset)
                target = origin + offset_floor / speed if speed > 0 else loop.time()
                target = max(target, last_sent + gap)
                delay = target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif number % 256 == 0:
                    await asyncio.sleep(0)
                while len(conn.queue) > _REPLAY_BACKLOG and not conn.closed:
                    await asyncio.sleep(0.001)
                if not running.is_set():
                    stalled_at = loop.time()
                    await running.wait()
                    origin += loop.time() - stalled_at
                if conn.closed or frame.key not in conn.subscriptions:
                    continue
                conn.push(frame.key, frame.text)
                observe(frame.key, frame.text)
                last_sent = loop.time()
            if not self.loop:
                return
            lap += span


def _abbreviated(symbols: tuple[str, ...], shown: int = 8) -> str:
    more = len(symbols) - shown
    return ", ".join(symbols[:shown]) + (f" and {more} more" if more > 0 else "")


def _reset(transport: asyncio.BaseTransport | None) -> None:
    """Abort a TCP connection with an RST rather than a FIN."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()  # type: ignore[attr-defined]


"""``flight-md record``: capture a live exchange session as a replayable recording.

``flight-md record --exchange ID --symbols A,B [--channel ticker|bidask] --duration SECONDS
--out FILE.jsonl.gz [--upstream URL]`` streams the symbols through flight_md's own ingestion
(real ccxt.pro, as ``serve`` does) for the duration, and writes every REST response and every
websocket frame of the session, sent and received, with its arrival time, in the format of
``../shared/recordings`` (see its README): gzip JSON lines, each with ``t``:

* ``header``: ``exchange`` (upper case, as the shared files), ``config`` (``{channel:
  [symbols]}``), ``recorded`` (epoch seconds), ``format`` 2 and ``recorder``;
* ``http``: ``conn``, ``ts``, ``url`` (the real upstream URL), ``data`` (the body, verbatim);
* ``connect``: ``conn``, ``ts``, ``addr`` (the real websocket URL);
* ``send``: ``conn``, ``ts``, ``addr``, ``data`` (a frame ccxt sent);
* ``recv``: ``conn``, ``ts``, ``data`` (a frame the exchange sent, verbatim).

``flight-md emulator --exchange ID --replay FILE`` replays it offline.

How (no ccxt internals): a recording proxy (an aiohttp server and client) listens on
127.0.0.1; ccxt is pointed at it with the venue's URL overrides
(:meth:`flight_md.venues.Venue.overrides`), and the proxy forwards each request and websocket
to the real host serving its path, from the venue's ``live_hosts`` (path prefix -> real base
URL, longest prefix wins, the path kept), or, with ``--upstream URL``, every path to that one
base (another flight_md emulator, a corporate gateway). Frames and bodies are relayed and
recorded byte for byte (text frames as the text ccxt and the exchange exchanged; binary
frames that are not UTF-8 are relayed but not recorded, and counted). Only 2xx REST answers
are recorded: the emulator serves the first recorded body of a path, which must be a real one.

Secrets: recording is for public market data; ccxt is given no API key here. Request headers
(where ``X-MBX-APIKEY``, ``X-BAPI-API-KEY``, ``OK-ACCESS-KEY``, ``Authorization`` ... would
travel) are never written, and the query parameters that carry keys or signatures
(:data:`SECRET_PARAMS`) are removed from every URL written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from flight_md import __version__
from flight_md.errors import ConfigError, FlightMdError, Unavailable
from flight_md.venues import VENUES, Venue

__all__ = ["SECRET_PARAMS", "RecordSummary", "RecordingProxy", "add_arguments", "record",
           "redact_url", "run"]

logger = logging.getLogger(__name__)

SECRET_PARAMS: Final = frozenset({"signature", "sign", "apikey", "api_key", "key", "secret",
                                  "passphrase", "token", "access_key", "accesskey"})
"""Query parameters (compared case-insensitively) never written to a recording."""
FORMAT: Final = 2
"""The ``format`` of the shared recordings' header."""
CHANNELS: Final = ("ticker", "bidask")
_HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-authenticate",
                                "proxy-authorization", "te", "trailer", "transfer-encoding",
                                "upgrade", "host", "content-length", "content-encoding"})
_UPSTREAM_TIMEOUT_S: Final = 30.0
_CLOSE_TIMEOUT_S: Final = 2.0


def redact_url(url: str) -> str:
    """``url`` without the query parameters that carry keys or signatures (:data:`SECRET_PARAMS`)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.lower() not in SECRET_PARAMS]
    if len(kept) == len(pairs):
        return url  # unchanged: keep the query exactly as it was sent
    return urlunsplit(parts._replace(query=urlencode(kept, safe=",[]\"")))


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """What one recording holds.

    Attributes:
        path: The file written.
        received: Websocket frames recorded from the exchange.
        sent: Websocket frames recorded from ccxt.
        http: REST responses recorded.
        payload_bytes: UTF-8 bytes of every recorded body and frame.
        file_bytes: Size of the gzip file.
        unrecorded: Frames relayed but not recorded (binary, not UTF-8) and non-2xx answers.
        ticks: Ticks ingestion parsed from the session.
    """

    path: Path
    received: int
    sent: int
    http: int
    payload_bytes: int
    file_bytes: int
    unrecorded: int
    ticks: int

    def line(self) -> str:
        """The one-line summary ``flight-md record`` prints."""
        extra = f", {self.unrecorded} not recorded" if self.unrecorded else ""
        return (f"recorded {self.received} frames received and {self.sent} sent, {self.http} "
                f"http calls, {self.payload_bytes} bytes ({self.file_bytes} gzipped){extra}, "
                f"{self.ticks} ticks -> {self.path}")


class _Writer:
    """The recording file: one JSON object a line, written on the proxy's loop only."""

    def __init__(self, path: Path, exchange: str, config: Mapping[str, Sequence[str]]) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".part")
        self._prefix = exchange.upper()
        self._file: IO[str] = gzip.open(self.partial, "wt", encoding="utf-8")  # noqa: SIM115
        self._conns = 0
        self.received = self.sent = self.http = self.payload_bytes = self.unrecorded = 0
        self._line({"t": "header", "format": FORMAT, "exchange": self._prefix,
                    "config": {k: list(v) for k, v in config.items()}, "recorded": time.time(),
                    "recorder": f"flight-md {__version__}"})

    def _line(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")

    def conn(self, kind: str) -> str:
        self._conns += 1
        return f"{self._prefix}.{kind}.{self._conns}"

    def on_http(self, conn: str, url: str, body: str) -> None:
        self.http += 1
        self.payload_bytes += len(body.encode())
        self._line({"t": "http", "conn": conn, "ts": time.time(), "url": redact_url(url),
                    "data": body})

    def on_connect(self, conn: str, addr: str) -> None:
        self._line({"t": "connect", "conn": conn, "ts": time.time(), "addr": redact_url(addr)})

    def on_send(self, conn: str, addr: str, data: str) -> None:
        self.sent += 1
        self.payload_bytes += len(data.encode())
        self._line({"t": "send", "conn": conn, "ts": time.time(), "addr": redact_url(addr),
                    "data": data})

    def on_recv(self, conn: str, data: str) -> None:
        self.received += 1
        self.payload_bytes += len(data.encode())
        self._line({"t": "recv", "conn": conn, "ts": time.time(), "data": data})

    def close(self) -> int:
        """Finish the file (renamed from ``.part`` only now); its size in bytes."""
        self._file.close()
        os.replace(self.partial, self.path)
        return self.path.stat().st_size


def _upstream_base(upstream: str) -> str:
    """``scheme://host:port`` of an ``--upstream`` URL.

    Raises:
        ConfigError: It is not ``http(s)://host[:port]`` without a path.
    """
    parts = urlsplit(upstream)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") \
            or parts.query:
        raise ConfigError(f"invalid upstream {upstream!r}; expected http(s)://host:port "
                          "without a path")
    return f"{parts.scheme}://{parts.netloc}"


def _text(data: Any) -> str | None:
    """A frame's payload as text: as is, or binary decoded as UTF-8 (``None`` if it is not)."""
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return None


class RecordingProxy:
    """A local HTTP and websocket proxy that records what it relays.

    Args:
        venue: The venue whose ``live_hosts`` say where each path goes.
        writer: Where to record.
        upstream: Send every path to this base (``http://host:port``) instead.

    Raises:
        ConfigError: Neither ``upstream`` nor the venue's ``live_hosts`` give a destination,
            or ``upstream`` is not ``http(s)://host[:port]``.
    """

    def __init__(self, venue: Venue, writer: _Writer, upstream: str | None = None) -> None:
        if upstream is not None:
            self._hosts: tuple[tuple[str, str], ...] = (("/", _upstream_base(upstream)),)
        elif venue.live_hosts:
            self._hosts = tuple(sorted(venue.live_hosts.items(), key=lambda kv: -len(kv[0])))
        else:
            raise ConfigError(f"flight_md knows no live hosts of {venue.id!r}; give --upstream "
                              "URL")
        self.venue = venue
        self.writer = writer
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port: int | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (after :meth:`start`)."""
        if self._port is None:
            raise Unavailable("the recording proxy is not running")
        return f"http://127.0.0.1:{self._port}"

    def target(self, path_qs: str, websocket: bool) -> str | None:
        """The real URL of a request for ``path_qs`` (longest matching prefix), or ``None``."""
        path = path_qs.split("?", 1)[0]
        for prefix, base in self._hosts:
            stem = prefix.rstrip("/")
            if path == stem or path.startswith(stem + "/"):
                scheme, sep, rest = base.partition("://")
                if websocket:
                    scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
                else:
                    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
                return f"{scheme}{sep}{rest.rstrip('/')}{path_qs}"
        return None

    async def start(self) -> str:
        """Listen on 127.0.0.1 (a free port); returns :attr:`url`."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_UPSTREAM_TIMEOUT_S))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=_CLOSE_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert isinstance(server, asyncio.base_events.Server)
        self._port = server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        """Close every relayed connection and stop listening (idempotent)."""
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), _CLOSE_TIMEOUT_S)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        target = self.target(request.raw_path, websocket)
        if target is None:
            logger.warning("%s: no live host for %s; answering 502", self.venue.id,
                           request.path)
            return web.Response(status=502, text=f"flight-md record: no live host for "
                                                 f"{request.path!r} of {self.venue.id}")
        if websocket:
            return await self._relay_websocket(request, target)
        return await self._relay_http(request, target)

    async def _relay_http(self, request: web.Request, target: str) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        try:
            async with self._session.request(request.method, URL(target, encoded=True),
                                             headers=headers, data=body or None,
                                             allow_redirects=False) as answer:
                payload = await answer.read()
                status = answer.status
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
                charset = answer.charset or "utf-8"
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            logger.warning("%s: %s %s failed: %s", self.venue.id, request.method,
                           redact_url(target), type(error).__name__)
            return web.Response(status=502, text=f"flight-md record: upstream failed "
                                                 f"({type(error).__name__})")
        if 200 <= status < 300:
            self.writer.on_http(self.writer.conn("http"), target,
                                payload.decode(charset, errors="replace"))
        else:
            self.writer.unrecorded += 1
            logger.info("%s: %s answered %d (not recorded)", self.venue.id,
                        redact_url(target), status)
        return web.Response(body=payload, status=status, headers=kept)

    async def _relay_websocket(self, request: web.Request, target: str) -> web.StreamResponse:
        assert self._session is not None
        downstream = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await downstream.prepare(request)
        self._sockets.add(downstream)
        conn = self.writer.conn("ws")
        try:
            try:
                upstream = await self._session.ws_connect(URL(target, encoded=True),
                                                          autoping=True, max_msg_size=0)
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                logger.warning("%s: websocket %s failed: %s", self.venue.id, redact_url(target),
                               type(error).__name__)
                await downstream.close(code=1011, message=b"upstream unreachable")
                return downstream
            self.writer.on_connect(conn, target)
            async with upstream:
                up = asyncio.ensure_future(self._pump(downstream, upstream, conn, target, True))
                down = asyncio.ensure_future(self._pump(upstream, downstream, conn, target,
                                                        False))
                try:
                    await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (up, down):
                        task.cancel()
                    await asyncio.gather(up, down, return_exceptions=True)
                if not downstream.closed:
                    code = upstream.close_code or 1000
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(downstream.close(code=code), _CLOSE_TIMEOUT_S)
        finally:
            self._sockets.discard(downstream)
        return downstream

    async def _pump(self, source: Any, sink: Any, conn: str, addr: str, sending: bool) -> None:
        """Relay frames from ``source`` to ``sink``, recording each, until either closes."""
        async for message in source:
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break  # CLOSE, CLOSING, CLOSED, ERROR: the other side is closed by the caller
            text = _text(message.data)
            if text is None:
                self.writer.unrecorded += 1
            elif sending:
                self.writer.on_send(conn, addr, text)
            else:
                self.writer.on_recv(conn, text)
            if message.type is WSMsgType.TEXT:
                await sink.send_str(message.data)
            else:
                await sink.send_bytes(message.data)


async def record(exchange: str, symbols: Sequence[str], out: Path | str, *,
                 channel: str = "ticker", duration: float = 60.0, upstream: str | None = None,
                 stop: asyncio.Event | None = None) -> RecordSummary:
    """Record ``duration`` seconds of ``exchange``'s ``channel`` for ``symbols`` into ``out``.

    Args:
        exchange: A registered venue that can be redirected (:data:`flight_md.venues.VENUES`).
        symbols: Unified symbols to stream.
        out: The recording to write (``.jsonl.gz``); written as ``out.part`` and renamed when
            complete.
        channel: ``ticker`` or ``bidask``.
        duration: Seconds to record once the symbols are subscribed.
        upstream: Send everything to this base URL instead of the venue's live hosts.
        stop: Set to end the recording early (what SIGINT does).

    Raises:
        ConfigError: A bad exchange, channel, duration, symbol list or upstream.
        FlightMdError: Ingestion refused the symbols, or the exchange could not be reached.
    """
    from flight_md.ingest.manager import MarketDataManager

    found = VENUES.get(exchange)
    if found is None or found.url_overrides is None:
        redirectable = [v.id for v in VENUES.values() if v.url_overrides is not None]
        raise ConfigError(f"cannot record {exchange!r}; recordable: {', '.join(redirectable)}")
    if channel not in CHANNELS:
        raise ConfigError(f"invalid channel {channel!r}; allowed: {', '.join(CHANNELS)}")
    if not duration > 0:
        raise ConfigError(f"invalid duration {duration!r}; expected seconds > 0")
    wanted = list(dict.fromkeys(s for s in symbols if s))
    if not wanted:
        raise ConfigError("no symbols to record; give --symbols A,B")
    if upstream is not None:
        _upstream_base(upstream)
    elif not found.live_hosts:
        raise ConfigError(f"flight_md knows no live hosts of {exchange!r}; give --upstream URL")
    path = Path(out)
    writer = _Writer(path, exchange, {channel: wanted})
    proxy: RecordingProxy | None = None
    ticks = 0
    try:
        proxy = RecordingProxy(found, writer, upstream)
        url = await proxy.start()
        manager = MarketDataManager()
        try:
            await manager.add_stream(exchange, wanted, channel=channel, mode="websocket",
                                     url=url)
            logger.info("recording %s %s for %g s: %s", exchange, channel, duration,
                        ", ".join(wanted))
            waiter = asyncio.ensure_future((stop or asyncio.Event()).wait())
            try:
                await asyncio.wait({waiter}, timeout=duration)
            finally:
                waiter.cancel()
        finally:
            ticks = sum(s.appended for s in manager.buffer.stats())
            await manager.shutdown()
    except BaseException:
        if proxy is not None:
            await proxy.stop()
        writer.close()
        path.unlink(missing_ok=True)  # a failed session is no recording
        raise
    await proxy.stop()
    size = writer.close()
    return RecordSummary(path, writer.received, writer.sent, writer.http, writer.payload_bytes,
                         size, writer.unrecorded, ticks)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``record`` command's arguments to a parser."""
    recordable = [v.id for v in VENUES.values() if v.url_overrides is not None]
    parser.add_argument("--exchange", required=True, choices=recordable,
                        help="the venue to record")
    parser.add_argument("--symbols", required=True,
                        help="comma-separated unified symbols, e.g. BTC/USDT,ETH/USDT")
    parser.add_argument("--channel", choices=CHANNELS, default="ticker",
                        help="what to stream (default: ticker)")
    parser.add_argument("--duration", type=float, required=True, metavar="SECONDS",
                        help="seconds to record once subscribed")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="the recording to write, e.g. binance.jsonl.gz")
    parser.add_argument("--upstream", default=None, metavar="URL",
                        help="send every request to this base URL (e.g. an emulator) instead "
                             "of the exchange's real hosts")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: WARNING")


def run(args: argparse.Namespace) -> int:
    """Run ``flight-md record``; prints the one-line summary on stdout.

    Returns:
        0, or 1 when the exchange could not be reached (other errors raise
        :class:`~flight_md.errors.FlightMdError`, which the CLI prints as one line).
    """
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    symbols = [s.strip() for s in args.symbols.split(",")]
    try:
        summary = asyncio.run(_run(args, symbols))
    except Unavailable as error:
        print(f"flight-md record: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        raise FlightMdError(f"cannot write {str(args.out)!r}: {error.strerror}") from None
    print(summary.line(), flush=True)
    return 0


async def _run(args: argparse.Namespace, symbols: list[str]) -> RecordSummary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return await record(args.exchange, symbols, args.out, channel=args.channel,
                        duration=args.duration, upstream=args.upstream, stop=stop)

"""Health and Prometheus metrics: the ``health`` report, ``/metrics``, ``/healthz`` and ``/readyz``.

pyarrow's Flight server cannot host the standard gRPC health service, so a load balancer asks
either the ``health`` action (``{"ready": bool, "live": true, "exchanges": {...}}``, callable
by read-only tokens) or, with ``--metrics-port``, plain HTTP on that port (bound to the same
``--host``):

=============  =================================================================
path           answer
=============  =================================================================
``/metrics``   Prometheus text format (``prometheus-client``)
``/healthz``   200 while the process serves (liveness)
``/readyz``    200 once an exchange is connected, 503 before and while none is
=============  =================================================================

Ready means at least one exchange stream is ``connected`` now (websocket or REST): a server
whose exchanges have not connected yet, or are all reconnecting, is live but not ready.

Metrics are collected at scrape time from the server's own ``status()`` (one custom
collector, no second set of counters), plus request counts and latencies per RPC measured by
a Flight server middleware. Threads meet here at one point: the HTTP server's threads call
``status()`` like any ``status`` action would, from outside gRPC.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pyarrow import flight

from flight_md.control import IngestionStatus
from flight_md.errors import FlightMdError

if TYPE_CHECKING:
    from flight_md.service import FlightMarketDataServer

__all__ = ["METRICS_MIDDLEWARE_KEY", "MetricsEndpoint", "RpcMetrics", "health_report"]

logger = logging.getLogger(__name__)

METRICS_MIDDLEWARE_KEY: Final = "flight_md_metrics"
"""Name of the RPC metrics middleware in the Flight server's middleware map."""
CONNECTED: Final = "connected"
"""The stream state that makes a server ready (``ConnectionState.CONNECTED``)."""
STATES: Final = ("disconnected", "connecting", "connected", "reconnecting", "failed")
MODES: Final = ("websocket", "rest")
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_FLIGHT_CODES: Final = (
    (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    (flight.FlightUnauthorizedError, "PERMISSION_DENIED"),
    (flight.FlightUnavailableError, "UNAVAILABLE"),
    (flight.FlightCancelledError, "CANCELLED"),
    (flight.FlightTimedOutError, "DEADLINE_EXCEEDED"),
    (flight.FlightInternalError, "INTERNAL"),
    (pa.ArrowInvalid, "INVALID_ARGUMENT"),
    (pa.ArrowKeyError, "NOT_FOUND"),
    (pa.ArrowNotImplementedError, "UNIMPLEMENTED"),
)


def health_report(ingestion: IngestionStatus | None, error: str | None = None) -> dict[str, Any]:
    """The ``health`` action's result (and the body of ``/readyz``).

    Args:
        ingestion: The ingestion status, or ``None`` when the server has no ingestion.
        error: Why the ingestion status could not be read, if it could not.

    Returns:
        ``{"ready": bool, "live": True, "exchanges": {id: {"state", "mode", "ready"}}}``,
        plus ``"reason"`` when not ready.
    """
    exchanges = {ex.exchange: {"state": ex.state, "mode": ex.mode, "ready": ex.state == CONNECTED}
                 for ex in (ingestion.exchanges if ingestion is not None else ())}
    ready = any(entry["ready"] for entry in exchanges.values())
    report: dict[str, Any] = {"ready": ready, "live": True, "exchanges": exchanges}
    if not ready:
        if error is not None:
            report["reason"] = f"ingestion status unavailable: {error}"
        elif ingestion is None:
            report["reason"] = "no ingestion on this server"
        elif not exchanges:
            report["reason"] = "no exchange configured"
        else:
            report["reason"] = "no exchange connected yet"
    return report


def server_health(server: FlightMarketDataServer) -> dict[str, Any]:
    """:func:`health_report` of a running server (never raises for ingestion trouble)."""
    if server.control is None:
        return health_report(None)
    try:
        return health_report(server.control.status())
    except FlightMdError as exc:
        return health_report(IngestionStatus((), ()), str(exc))


# -- RPC counts and latencies ------------------------------------------------------------------


def _code(exception: BaseException | None) -> str:
    if exception is None:
        return "OK"
    for kind, code in _FLIGHT_CODES:
        if isinstance(exception, kind):
            return code
    return "UNKNOWN"


_METHODS: Final = {
    flight.FlightMethod.HANDSHAKE: "Handshake", flight.FlightMethod.LIST_FLIGHTS: "ListFlights",
    flight.FlightMethod.GET_FLIGHT_INFO: "GetFlightInfo",
    flight.FlightMethod.GET_SCHEMA: "GetSchema", flight.FlightMethod.DO_GET: "DoGet",
    flight.FlightMethod.DO_PUT: "DoPut", flight.FlightMethod.DO_ACTION: "DoAction",
    flight.FlightMethod.LIST_ACTIONS: "ListActions", flight.FlightMethod.DO_EXCHANGE: "DoExchange",
}


class _CallTimer(flight.ServerMiddleware):
    """Times one call; :meth:`follow` renames a DoGet that is a live tail."""

    def __init__(self, metrics: RpcMetrics, rpc: str) -> None:
        super().__init__()
        self._metrics = metrics
        self.rpc = rpc
        self._started = time.perf_counter()

    def follow(self) -> None:
        """Count this call as ``DoGet(follow)``: its duration is the tail's life, not a latency."""
        self.rpc = "DoGet(follow)"

    def call_completed(self, exception: BaseException | None) -> None:
        self._metrics.observe(self.rpc, _code(exception), time.perf_counter() - self._started)


class _TimerFactory(flight.ServerMiddlewareFactory):
    def __init__(self, metrics: RpcMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def start_call(self, info: flight.CallInfo, headers: dict[str, Any]) -> _CallTimer:
        return _CallTimer(self._metrics, _METHODS.get(info.method, str(info.method)))


def mark_follow(context: flight.ServerCallContext) -> None:
    """Tell the RPC metrics that this DoGet is a live tail (a no-op without metrics)."""
    timer = context.get_middleware(METRICS_MIDDLEWARE_KEY)
    if isinstance(timer, _CallTimer):
        timer.follow()


class RpcMetrics:
    """Requests by RPC and status code, and their latencies, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._requests = Counter("flight_md_rpc_requests", "Flight requests by RPC and status code",
                                 ("rpc", "code"), registry=self.registry)
        self._latency = Histogram("flight_md_rpc_duration_seconds",
                                  "Flight request duration by RPC (DoGet(follow): a live tail's life)",
                                  ("rpc",), buckets=LATENCY_BUCKETS, registry=self.registry)

    def middleware(self) -> flight.ServerMiddlewareFactory:
        """The Flight middleware factory to install under :data:`METRICS_MIDDLEWARE_KEY`."""
        return _TimerFactory(self)

    def observe(self, rpc: str, code: str, seconds: float) -> None:
        """Count one finished request."""
        self._requests.labels(rpc, code).inc()
        self._latency.labels(rpc).observe(seconds)


# -- the scrape-time collector -----------------------------------------------------------------


class StatusCollector(Collector):
    """Metric families built from the server's ``status()`` at each scrape."""

    def __init__(self, server: FlightMarketDataServer) -> None:
        self._server = server

    def collect(self) -> Iterable[Metric]:
        server = self._server
        health = server_health(server)
        yield _gauge("flight_md_ready", "1 when an exchange is connected (see /readyz)",
                     (), [((), 1.0 if health["ready"] else 0.0)])
        try:
            status = server.status()
        except FlightMdError as exc:
            logger.warning("metrics: status unavailable: %s", exc)
            return
        info = status.get("server", {})
        yield _gauge("flight_md_uptime_seconds", "Seconds since the server started", (),
                     [((), float(info.get("uptime_s", 0)))])
        yield _counter("flight_md_refused_requests", "Requests refused, by error class",
                       ("reason",), [((reason,), count) for reason, count
                                     in sorted((info.get("refused_requests") or {}).items())])
        exchanges = status.get("exchanges", {})
        yield _gauge("flight_md_exchange_state", "1 for the current state of each exchange stream",
                     ("exchange", "state"), [((ex, state), float(entry.get("state") == state))
                                             for ex, entry in exchanges.items() for state in STATES])
        yield _gauge("flight_md_exchange_mode", "1 for the mode each exchange stream runs in",
                     ("exchange", "mode"), [((ex, mode), float(entry.get("mode") == mode))
                                            for ex, entry in exchanges.items() for mode in MODES])
        yield _counter("flight_md_reconnects", "Reconnections per exchange", ("exchange",),
                       [((ex, ), entry.get("reconnects", 0)) for ex, entry in exchanges.items()])
        yield _counter("flight_md_bad_frames", "Exchange messages dropped as malformed, by reason",
                       ("exchange", "reason"),
                       [((ex, reason), count) for ex, entry in exchanges.items()
                        for reason, count in sorted((entry.get("bad_frames") or {}).items())])
        yield _counter("flight_md_callback_errors", "Exceptions raised by user callbacks",
                       ("exchange",), [((ex,), entry.get("callback_errors", 0))
                                       for ex, entry in exchanges.items()])
        yield _counter("flight_md_channel_counts", "Per-channel ingestion counts (trades: "
                       "stored, duplicates, gaps, backfilled; book: stored, resyncs, ...)",
                       ("exchange", "channel", "count"),
                       [((ex, channel, name), value) for ex, entry in exchanges.items()
                        for channel, stream in sorted((entry.get("channels") or {}).items())
                        for name, value in sorted((stream.get("counters") or {}).items())])
        symbols = status.get("symbols", [])

        def key(s: dict[str, Any]) -> tuple[str, ...]:
            return (s["exchange"], s["symbol"], s.get("channel") or "ticker")

        def per_symbol(field: str, scale: float = 1.0) -> list[tuple[tuple[str, ...], float]]:
            return [(key(s), float(s[field]) * scale) for s in symbols
                    if s.get(field) is not None]

        labels = ("exchange", "symbol", "channel")
        yield _counter("flight_md_ticks_received", "Updates received from the exchange "
                       "(rate() of it is the ingest rate)", labels, per_symbol("ticks_received"))
        yield _counter("flight_md_ticks_stored", "Ticks appended to the store", labels,
                       per_symbol("ticks_appended"))
        yield _counter("flight_md_ticks_dropped", "Updates dropped as bad data", labels,
                       per_symbol("ticks_dropped"))
        yield _gauge("flight_md_ticks_buffered", "Ticks held in the buffer now", labels,
                     per_symbol("ticks_stored"))
        yield _gauge("flight_md_tick_age_seconds", "Age of the newest stored tick", labels,
                     per_symbol("age_ms", 0.001))
        yield _gauge("flight_md_stale", "1 while a subscribed symbol has been silent longer than "
                     "the heartbeat interval", labels,
                     [(key(s), float(bool(s.get("stale")))) for s in symbols])
        yield _gauge("flight_md_live_tails", "Open live tails", labels, per_symbol("live_tails"))


def _gauge(name: str, doc: str, labels: tuple[str, ...],
           samples: Iterable[tuple[tuple[str, ...], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _counter(name: str, doc: str, labels: tuple[str, ...],
             samples: Iterable[tuple[tuple[str, ...], float]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), float(value))
    return family


# -- the HTTP endpoint -------------------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("metrics: " + format, *args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsEndpoint:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP for one Flight server.

    Args:
        server: The Flight server whose ``status()`` is exported.
        rpc: RPC metrics measured by its middleware (``None``: none exported).
        host: Interface to bind (the server's ``--host``).
        port: TCP port; 0 picks a free one (see :attr:`port`).
    """

    def __init__(self, server: FlightMarketDataServer, rpc: RpcMetrics | None, host: str,
                 port: int) -> None:
        self.registry = rpc.registry if rpc is not None else CollectorRegistry()
        self.registry.register(StatusCollector(server))
        self._server = server
        self._metrics_app = make_wsgi_app(self.registry)
        self._host = host
        self._requested_port = port
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsEndpoint:
        """Listen and serve on a daemon thread.

        Raises:
            OSError: The port cannot be bound.
        """
        server_class = _Server6 if ":" in self._host else _Server
        self._httpd = make_server(self._host, self._requested_port, self._app,
                                  server_class=server_class, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="flight-md-metrics",
                                        daemon=True)
        self._thread.start()
        logger.info("metrics and health on %s (/metrics, /healthz, /readyz)", self.url)
        return self

    @property
    def port(self) -> int:
        """The TCP port listened on."""
        assert self._httpd is not None, "metrics endpoint not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9100``."""
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics_app(environ, start_response)
            return body
        if path == "/healthz":
            return _json(start_response, 200, {"live": True})
        if path == "/readyz":
            report = server_health(self._server)
            return _json(start_response, 200 if report["ready"] else 503, report)
        return _json(start_response, 404, {"error": f"unknown path {path[:64]!r}; try /metrics, "
                                                    "/healthz or /readyz"})

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _json(start_response: Callable[..., Any], status: int, body: dict[str, Any]) -> list[bytes]:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                           ("Content-Length", str(len(data)))])
    return [data]

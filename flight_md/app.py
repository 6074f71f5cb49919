"""Assembly of a running flight_md: store, ingestion thread, optional emulator, Flight server.

:class:`MarketDataApp` is what ``flight-md serve`` runs, and what tests and notebooks use to run
the same thing in-process (``ServerConfig``'s default keeps ingestion on a thread of the caller's
process; ``flight-md serve`` sets ``ingest_process`` unless told ``--no-ingest-process``)::

    with MarketDataApp(ServerConfig(demo=True, port=0)) as app:
        client = pyarrow.flight.connect(app.location)

Ingestion (ccxt streams, and the emulator in demo mode) runs on one asyncio loop in a
background thread; the Flight server runs on gRPC's threads. They meet at the buffer and at
:class:`~flight_md.ingest.manager.ThreadedControl`. With ``ingest_process`` the streams run in
a child process instead (:class:`~flight_md.ingest.process.IngestionProcess`), with
``ingest_workers`` N > 1 in N of them (:class:`~flight_md.ingest.workers.IngestionWorkers`),
and the demo emulator on a thread of its own.

With ``config.bus`` (``flight-md serve --bus``) the node ingests nothing itself: its rings and
event log fill from the bus (:class:`~flight_md.bus.serve.ServeBus`, one asyncio loop thread
``flight-md-bus`` with one NATS connection), and on that loop and connection run the control
client the service uses (:class:`~flight_md.bus.control.BusControl`: ``subscribe`` reaches the
ingestion node of the exchange), this node's registry record
(:class:`~flight_md.bus.registry.Registry`), its answer to ``mdctl.cluster``
(:class:`~flight_md.bus.control.ControlResponder`) and the service's view of the cluster
(:class:`~flight_md.bus.view.ClusterView`). None of it is imported without a bus.
"""

from __future__ import annotations

import errno
import gc
import logging
import socket
from typing import Any, Final, Self

from flight_md.buffer import Store
from flight_md.config import DEMO_SYMBOLS, DEMO_VENUE, ServerConfig, StreamConfig
from flight_md.errors import ConfigError, FlightMdError, StartupError, Unavailable
from flight_md.events import EventLog

__all__ = ["DEMO_RATE", "MarketDataApp", "check_listen_address", "check_serving_bus"]

logger = logging.getLogger(__name__)

DEMO_RATE: Final = 25.0
"""Messages per second of the demo market, across its symbols (several a second each)."""
DEMO_CHANNELS: Final = "ticker,trades,book"
"""What ``--demo`` streams of each venue: tickers, every trade and the order book's top."""
START_TIMEOUT_S: Final = 30.0


def _demo_symbols(venue_id: str) -> tuple[str, ...]:
    from flight_md.venues import VENUES

    return DEMO_SYMBOLS if venue_id == DEMO_VENUE else VENUES[venue_id].demo_symbols


def check_listen_address(host: str, port: int) -> None:
    """Fail with one clear line where gRPC would only say "Server did not start properly".

    Binds (and releases) a socket on each address ``host`` resolves to, as gRPC is about to;
    gRPC listens if at least one binds, so this fails only if none does.

    Raises:
        StartupError: The port is in use or needs privileges, or ``host`` is not a name or
            address this machine can listen on.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise StartupError(f"cannot listen on {host!r}: unknown host ({reason}); choose an "
                           "address of this machine with --host, e.g. 127.0.0.1") from None
    failures: list[OSError] = []
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                failures.append(exc)
            else:
                return
    codes = {exc.errno for exc in failures}
    if errno.EADDRINUSE in codes:
        raise StartupError(f"port {port} is in use; is another flight-md serve running? "
                           "choose another with --port")
    if errno.EACCES in codes:
        raise StartupError(f"port {port} needs privileges; choose one above 1023 with --port")
    if errno.EADDRNOTAVAIL in codes:
        raise StartupError(f"cannot listen on {host!r}: not an address of this machine; choose "
                           "one with --host (127.0.0.1 for this machine only, 0.0.0.0 for all)")
    detail = failures[0].strerror if failures else "no address"
    raise StartupError(f"cannot listen on {host}:{port}: {detail}")


def check_serving_bus(config: ServerConfig) -> None:
    """A serving node of a bus ingests nothing itself: refuse streams or a demo beside it.

    Raises:
        ConfigError: ``config.bus`` with streams, ``demo`` or ``ingest_workers``.
    """
    if config.bus is None:
        return
    if config.streams or config.demo:
        what = "--demo" if config.demo else "--exchange/[[exchanges]] streams"
        raise ConfigError(f"serve --bus ingests nothing itself, so {what} cannot go with it: "
                          "run them in a flight-md ingest --bus node, or drop --bus")
    if config.ingest_workers is not None:
        raise ConfigError("serve --bus ingests nothing itself, so --ingest-workers cannot go "
                          "with it: run more flight-md ingest nodes instead")


class MarketDataApp:
    """A complete server: buffer, event log, ingestion loop thread and Flight service.

    Args:
        config: What to run. ``config.demo`` starts one synthetic exchange emulator per
            venue it names (plain ``--demo``: Binance) on loopback and streams each venue's
            demo symbols from it through real ccxt.
        emulator_options: Extra keyword arguments for the demo's ``Emulator`` (each of them).
    """

    def __init__(self, config: ServerConfig, **emulator_options: Any) -> None:
        check_serving_bus(config)
        self.config = config
        self.store = Store(config.buffer_size, book_depth=config.book_depth)
        """Every channel's rings (one buffer per channel)."""
        self.buffer = self.store.buffer("ticker")
        """The ticker channel's buffer."""
        self.events = EventLog()
        self._emulator_options = emulator_options
        self.ingestion: Any = None
        self.emulators: dict[str, Any] = {}
        """The demo's emulators by venue id."""
        self.server: Any = None
        self.metrics: Any = None
        """The ``/metrics``, ``/healthz``, ``/readyz`` endpoint (``config.metrics_port``), if on."""
        self.persistence: Any = None
        """The journal and Parquet history (:class:`~flight_md.persist.store.Persistence`),
        unless ``config.memory_only``."""
        self.bus: Any = None
        """The serving node's bus side (:class:`~flight_md.bus.serve.ServeBus`), with
        ``config.bus``."""
        self.registry: Any = None
        self.cluster: Any = None
        """The service's view of the bus (:class:`~flight_md.bus.view.ClusterView`)."""
        self._responder: Any = None
        self.fatal: FlightMdError | None = None
        """An invalid argument found after start-up (a configured symbol the exchange does not
        list, seen once its markets load): ``flight-md serve`` exits 2 with it."""

    @property
    def streams(self) -> tuple[StreamConfig, ...]:
        """The exchange streams to run (the demo's, one per venue, pointed at its emulator)."""
        if not self.config.demo:
            return self.config.streams
        return tuple(StreamConfig(venue_id, _demo_symbols(venue_id), channel=DEMO_CHANNELS,
                                  mode="websocket", url=emulator.url, heartbeat_interval=10.0,
                                  reconnect_delay=0.5, max_reconnect_delay=5.0,
                                  buffer_size=self.config.buffer_size)
                     for venue_id, emulator in self.emulators.items())

    def streams_planned(self) -> tuple[StreamConfig, ...]:
        """The configured streams, and the demo's venues (before their emulators run)."""
        return (*self.config.streams, *(StreamConfig(venue_id, channel=DEMO_CHANNELS)
                                        for venue_id in self.config.demo))

    @property
    def emulator(self) -> Any:
        """The demo's first (with plain ``--demo``: only) emulator, or ``None``."""
        return next(iter(self.emulators.values()), None)

    def start(self) -> Self:
        """Start ingestion (and the demo emulator), then the Flight server.

        Raises:
            StartupError: The server cannot listen where the config says (checked before
                ingestion starts, so nothing is left running), or the data dir is in use
                by another server or unreadable.
        """
        check_listen_address(self.config.host, self.config.port)
        self._open_persistence()
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _open_persistence(self) -> None:
        persist = self.config.persist_config()
        if persist is None:
            return
        from flight_md.persist.store import Persistence

        self.persistence = Persistence(persist, self.store, self.events).open()
        logger.debug("data dir %s (fsync %s, commit every %g s)", persist.data_dir,
                    persist.fsync.value, persist.commit_interval)

    def _start(self) -> Self:
        from flight_md.service import FlightMarketDataServer

        control = None
        if self.config.bus is not None:
            control = self._start_bus()
        elif (self.config.demo or self.config.streams) and self.config.ingest_process:
            control = self._start_process()
        elif self.config.demo or self.config.streams:
            from flight_md.ingest.manager import IngestionThread

            self.ingestion = IngestionThread(events=self.events, store=self.store,
                                             on_fatal=self._on_fatal).start()
            if self.config.demo:
                from flight_md.emulator import Emulator

                for venue_id in self.config.demo:
                    options = {"exchange": venue_id, "symbols": _demo_symbols(venue_id),
                               "rate": DEMO_RATE, "seed": 7, **self._emulator_options}
                    emulator = self.emulators[venue_id] = Emulator(**options)
                    self.ingestion.run(emulator.start(), START_TIMEOUT_S)
                    logger.info("demo: exchange emulator (%s protocol) at %s", venue_id,
                                emulator.url)
            for stream in self.streams:
                for channel in stream.channels:  # one stream per channel
                    self.ingestion.run(self.ingestion.manager.add_stream(
                        stream.exchange, symbols=list(stream.symbols), keep_retrying=True,
                        **{**stream.stream_kwargs(), "channel": channel}),
                        START_TIMEOUT_S)
                logger.info("streaming %s (%s): %s", stream.exchange,
                            ", ".join(stream.channels), ", ".join(stream.symbols))
            control = self.ingestion.control()
        if control is not None and self.persistence is not None and self.bus is None:
            # (On a bus the ingestion nodes own their subscriptions.)
            self._repeat_subscriptions(control)
        # Markets, ccxt's exchange definitions and the modules are loaded now and live for the
        # whole run: out of the collector's sight they no longer cost a 75-150 ms full
        # collection every few seconds on the ingestion thread (~280k objects, measured).
        gc.freeze()
        if self.persistence is not None and self.bus is None:
            self.persistence.start()
        security = self._security()
        rpc_metrics = None
        if self.config.metrics_port is not None:
            from flight_md.metrics import METRICS_MIDDLEWARE_KEY, RpcMetrics

            rpc_metrics = RpcMetrics()
            security["middleware"] = {**security.get("middleware", {}),
                                      METRICS_MIDDLEWARE_KEY: rpc_metrics.middleware()}
        try:
            self.server = FlightMarketDataServer(self.config.location, store=self.store,
                                                 events=self.events, control=control,
                                                 follow_max_lag=self.config.follow_max_lag,
                                                 persistence=self.persistence,
                                                 sql_timeout_s=self.config.sql_timeout,
                                                 sql_memory_limit=self._sql_memory_limit(),
                                                 sql_max_concurrent=self.config.sql_max_concurrent,
                                                 ingestion_mode=self.config.ingestion_mode,
                                                 bus=self.cluster, **security)
        except Exception as exc:
            # pyarrow says only "Server did not start properly" (the reason goes to gRPC's log):
            # the address was taken between the check above and now, or TLS material is unusable.
            if "did not start" not in str(exc):
                raise
            what = "with this certificate and key" if security.get("tls_certificates") else ""
            raise StartupError(f"cannot listen on {self.config.host}:{self.config.port} {what}"
                               .rstrip() + "; gRPC refused it (see its log line above)") from None
        if self.cluster is not None:
            self._advertise()
        logger.info("serving on %s", self.location)
        if rpc_metrics is not None:
            self._start_metrics(rpc_metrics)
        return self

    def _start_bus(self) -> Any:
        """The serving node's bus side, started after persistence opened (the ledger of what
        this node stored is restored by then) and before the Flight server: its consumer, the
        control client (the service's ``control``), the registry record and the cluster view.

        Returns:
            The :class:`~flight_md.bus.control.BusControl` the service uses.

        Raises:
            BusUnavailable: the bus cannot be reached (the message names no secret).
        """
        from flight_md.bus.control import BusControl, ControlResponder
        from flight_md.bus.registry import Registry, node_record
        from flight_md.bus.serve import ServeBus
        from flight_md.bus.view import ClusterView

        config = self.config
        assert config.bus is not None
        node = config.resolved_node_name()
        if self.persistence is not None:
            # Before the consumer: its acks wait for the journal commits holding their rows.
            self.persistence.start()
        self.bus = ServeBus(config.bus, node=node, store=self.store, events=self.events,
                            persistence=self.persistence, subjects=config.bus_subjects)
        try:
            self.bus.start(START_TIMEOUT_S)
        except Unavailable as exc:
            # Exit 1, not 2: the bus being away at start is worth a restart (systemd).
            raise StartupError(str(exc)) from None
        loop, client = self.bus.loop, self.bus.client
        # The location is final once the server is bound (port 0): _advertise puts it then.
        location = config.advertise or (config.location if config.port else None)
        self.registry = self.bus.submit(Registry(client, node, node_record(
            "serve", location=location, subjects=config.bus_subjects)).start()
        ).result(START_TIMEOUT_S)
        control = BusControl(loop, client, node, registry=self.registry)
        self._responder = self.bus.submit(ControlResponder(
            client, node, "serve", status=self._node_status).start()).result(START_TIMEOUT_S)
        self.cluster = ClusterView(self.registry, subjects=config.bus_subjects,
                                   location=location, status=self.bus.status, control=control,
                                   loop=loop, stream=config.bus.stream)
        logger.info("bus node %s reading %s from %s", node, ", ".join(config.bus_subjects),
                    config.bus.display_url)
        return control

    def _node_status(self) -> dict[str, Any]:
        """This node's answer to ``mdctl.cluster``: the service's status (without the
        cluster, which would ask every node again)."""
        server = self.server
        if server is None:
            return {"starting": True}
        status: dict[str, Any] = server.status()
        return status

    def _advertise(self) -> None:
        """Tell the registry where this node serves, once the port is bound."""
        location = self.config.advertise or self.location
        self.cluster.location = location
        self.registry.update(location=location)

    def _sql_memory_limit(self) -> str:
        """``sql_memory_limit`` in DuckDB's syntax (MiB: DuckDB's ``GB`` is 10^9 bytes)."""
        from flight_md.config import parse_bytes

        size = parse_bytes(self.config.sql_memory_limit, "sql_memory_limit") or 2**30
        return f"{max(1, size // 2**20)}MiB"

    def _repeat_subscriptions(self, control: Any) -> None:
        """Repeat what ``subscribe``/``unsubscribe`` changed before the restart."""
        streamed = {stream.exchange for stream in self.streams}
        for exchange, change in self.persistence.run_time_subscriptions().items():
            if exchange not in streamed:
                logger.warning("not repeating the run-time subscriptions of %s: it is not "
                               "configured now", exchange)
                continue
            for symbols, method in ((change["added"], control.subscribe),
                                    (change["removed"], control.unsubscribe)):
                if not symbols:
                    continue
                try:
                    method(exchange, symbols)
                    logger.info("repeated run-time %s of %s: %s", method.__name__, exchange,
                                ", ".join(symbols))
                except FlightMdError as exc:
                    logger.warning("cannot repeat the run-time %s of %s %s: %s",
                                   method.__name__, exchange, ", ".join(symbols), exc)

    def _start_metrics(self, rpc_metrics: Any) -> None:
        from flight_md.metrics import MetricsEndpoint

        assert self.config.metrics_port is not None
        try:
            self.metrics = MetricsEndpoint(self.server, rpc_metrics, self.config.host,
                                           self.config.metrics_port).start()
        except OSError as exc:
            self.stop()
            raise StartupError(f"cannot serve metrics on {self.config.host}:"
                               f"{self.config.metrics_port} ({exc.strerror}); choose another "
                               "--metrics-port") from None

    def _start_process(self) -> Any:
        from flight_md.ingest.process import IngestionProcess

        if self.config.demo:
            from flight_md.emulator.thread import EmulatorThread

            for venue_id in self.config.demo:
                emulator = self.emulators[venue_id] = EmulatorThread(
                    exchange=venue_id, symbols=_demo_symbols(venue_id), rate=DEMO_RATE, seed=7,
                    **self._emulator_options)
                emulator.start()
                logger.info("demo: exchange emulator (%s protocol) at %s", venue_id, emulator.url)
        if self.config.workers > 1:
            from flight_md.ingest.workers import IngestionWorkers

            self.ingestion = IngestionWorkers(self.config.workers, events=self.events,
                                              store=self.store, on_fatal=self._on_fatal)
        else:
            self.ingestion = IngestionProcess(events=self.events, store=self.store,
                                              on_fatal=self._on_fatal)
        self.ingestion.start()
        try:
            for stream in self.streams:
                # One stream over all of its channels (the child hands each channel's rows
                # to that channel's buffer); one channel is passed as before.
                channels = ({"channel": None, "channels": list(stream.channels)}
                            if len(stream.channels) > 1 else {})
                self.ingestion.add_stream(stream.exchange, list(stream.symbols),
                                          START_TIMEOUT_S, keep_retrying=True,
                                          **{**stream.stream_kwargs(), **channels})
                pids = getattr(self.ingestion, "pids", None) or (self.ingestion.pid,)
                logger.info("streaming %s: %s (ingestion process%s %s)", stream.exchange,
                            ", ".join(stream.symbols), "es" if len(pids) > 1 else "",
                            ", ".join(map(str, pids)))
        except BaseException:
            self.stop()
            raise
        return self.ingestion.control()

    def _on_fatal(self, exchange: str, error: FlightMdError) -> None:
        # A daemon keeps retrying an unreachable exchange; a symbol it does not list is the
        # user's mistake, found only once the markets load: it ends the server (in cli).
        if self.fatal is None:
            self.fatal = error

    def _security(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        config = self.config
        if config.auth_tokens or config.read_only_tokens:
            from flight_md.auth import MIDDLEWARE_KEY, TokenAuth

            auth = TokenAuth(config.auth_tokens, config.read_only_tokens)
            options["middleware"] = {MIDDLEWARE_KEY: auth}
            options["authorize"] = auth.authorize
        if config.tls_cert is not None and config.tls_key is not None:
            try:
                options["tls_certificates"] = [(config.tls_cert.read_bytes(),
                                                config.tls_key.read_bytes())]
                if config.tls_client_ca is not None:
                    options["verify_client"] = True
                    options["root_certificates"] = config.tls_client_ca.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read TLS file {exc.filename!r}: {exc.strerror}") from None
        return options

    @property
    def location(self) -> str:
        """Where clients connect (with the real port when the config asked for port 0)."""
        assert self.server is not None
        scheme = "grpc+tls" if self.config.tls_cert else "grpc"
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::") else self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.server.port}"

    def stop(self, grace: float = 2.0) -> None:
        """Stop the server (bounded, see ``FlightMarketDataServer.stop``), then ingestion."""
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self.server is not None:
            self.server.stop(grace)
            self.server = None
        if self.bus is not None:
            self._stop_bus(grace)
        if self.config.ingest_process:
            if self.ingestion is not None:
                self.ingestion.stop(grace * 2)
                self.ingestion = None
            for emulator in self.emulators.values():
                emulator.stop()
            self.emulators = {}
        elif self.ingestion is not None:
            try:
                # Streams first, so that the emulator going away is not logged as a gap.
                self.ingestion.run(self.ingestion.manager.shutdown(), grace * 2)
                for emulator in self.emulators.values():
                    self.ingestion.run(emulator.stop(), grace * 2)
                self.emulators = {}
            except Exception:
                logger.warning("ingestion did not stop cleanly", exc_info=True)
            self.ingestion.stop(grace * 2)
            self.ingestion = None
        if self.persistence is not None:
            # After ingestion: everything stored is journalled, then moved into the history.
            result = self.persistence.close()
            self.persistence = None
            if result.rows:
                logger.info("wrote %d rows to the history (%d files) in %.2f s", result.rows,
                            result.files, result.seconds)

    def _stop_bus(self, grace: float) -> None:
        """After the server, before persistence: the record and the responder go first (no
        node routes clients here any more), then the consumer, so that its last acks follow
        the journal commits that hold their rows; persistence closes after."""
        bus = self.bus
        for part in (self._responder, self.registry):
            if part is None:
                continue
            try:
                bus.submit(part.stop()).result(grace * 2)
            except Exception:
                logger.warning("bus %r did not stop cleanly", part, exc_info=True)
        self._responder = self.registry = self.cluster = None
        bus.stop(grace * 2)
        self.bus = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

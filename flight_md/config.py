"""Server configuration: from ``flight-md serve`` options or a TOML file, pure.

A config file describes the server and any number of exchanges::

    [server]
    host = "127.0.0.1"          # exposing beyond loopback is an explicit choice
    port = 8815
    buffer_size = 10000
    auth_token_file = "tokens.txt"   # optional; see flight_md.auth
    tls_cert = "server.pem"          # optional, with tls_key (and tls_client_ca for mTLS)
    tls_key = "server.key"
    book_depth = 10                  # book levels a side the book channel keeps
    ingest_process = true            # flight-md serve's default (false: ingestion on a thread)
    ingest_workers = 2               # optional: ingestion in 2 processes (see flight_md.ingest.workers)

    [[exchanges]]
    id = "binance"
    symbols = ["BTC/USDT", "ETH/USDT"]
    channel = "ticker,trades"   # any of ticker, bidask, trades, book (a list works too)
    mode = "auto"               # "websocket" | "rest"
    decoder = "fast"            # "ccxt": ccxt parses every frame
    url = "http://127.0.0.1:9000"    # optional: point ccxt at an emulator
    api_key_env = "BINANCE_API_KEY"  # keys come from the environment, never the file

With a bus (issue 16: several machines, see :mod:`flight_md.bus`), a ``[bus]`` table says
how this node reaches it; ``flight-md serve`` and ``flight-md ingest`` read the same keys::

    [bus]
    url = "nats://127.0.0.1:4222"    # loopback unless told otherwise
    subjects = ["md.>"]              # serve: the rings this node holds (its shard)
    node_name = "s1"                 # default <host>-<8 hex of the data dir>
    advertise = "grpc://10.0.0.5:8815"   # serve: where other nodes send clients for them
    stream = "MD"
    user = "md"                      # with password_file (or $FLIGHT_MD_BUS_PASSWORD)
    password_file = "bus.password"   # or token_file (or $FLIGHT_MD_BUS_TOKEN), or creds
    creds = "node.creds"             # a NATS .creds file
    tls_ca = "ca.pem"                # tls_cert and tls_key for mutual TLS
    backlog_bytes = 67108864         # ingest: what it keeps while the bus is away
    backlog_messages = 100000

Every :class:`StreamConfig` field is a key of an ``[[exchanges]]`` entry, and every field's
default is defined there once (``flight-md serve`` reads its option defaults from it).

Secrets never live in this module's values as plain fields that print: :class:`Secret`
masks itself in ``repr`` and ``str``.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from flight_md.buffer import DEFAULT_BUFFER_SIZE
from flight_md.bus.backlog import DEFAULT_LIMITS, BacklogLimits
from flight_md.bus.options import BusOptions
from flight_md.bus.subjects import ALL_SUBJECTS as BUS_ALL_SUBJECTS
from flight_md.bus.subjects import validate_filter
from flight_md.core.decode import DecoderKind
from flight_md.errors import ConfigError, InvalidArgument
from flight_md.tickets import EXCHANGE_RE, SYMBOL_RE

__all__ = ["BUS_PASSWORD_ENV", "BUS_TOKEN_ENV", "DEMO_SYMBOLS", "DEMO_VENUE", "SERVE_INGEST_PROCESS",
           "STREAM_DEFAULTS", "IngestionMode", "Secret", "ServerConfig", "StreamConfig",
           "bus_options", "load_config"]

DEMO_SYMBOLS: Final = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT")
"""What plain ``--demo`` serves: the emulated Binance market's symbols."""
DEMO_VENUE: Final = "binance"
"""The venue plain ``--demo`` emulates."""
CHANNELS: Final = ("ticker", "bidask", "trades", "book")
"""What a stream's ``channel`` may name (a comma list of them: one stream per channel)."""
MODES: Final = ("auto", "websocket", "rest")
DECODERS: Final = tuple(kind.value for kind in DecoderKind)
"""What a stream's ``decoder`` may name."""
SERVE_INGEST_PROCESS: Final = True
"""``flight-md serve``'s default for ``ingest_process`` (and for the key when its ``--config``
file leaves it out): ingestion in a child process, which the benchmarks measure as at least as
fast as a thread on every serving figure (BENCHMARKS.md). :class:`ServerConfig` (the Python API)
keeps ``False``: callbacks and :class:`~flight_md.ingest.stream.MarketDataStream` run in the
caller's process."""


class IngestionMode(StrEnum):
    """Where ingestion runs, as ``status`` reports it (``server.ingestion_mode``)."""

    PROCESS = "process"
    """In child processes (``ingest_process``/``ingest_workers``): the ``flight-md serve`` default."""
    THREAD = "thread"
    """On a thread of the serving process (``--no-ingest-process``; the Python API's default)."""
    BUS = "bus"
    """On ingestion nodes elsewhere (``flight-md ingest``); this node reads the bus
    (``flight-md serve --bus``)."""


SECRET_CCXT_KEYS: Final = frozenset({"apiKey", "secret", "password", "uid", "privateKey",
                                     "walletAddress", "token"})
"""ccxt credentials: never accepted in ``ccxt_options`` (they would be printed with it)."""


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for handing to ccxt only."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """One exchange stream: every :class:`~flight_md.ingest.stream.MarketDataStream` option."""

    exchange: str
    symbols: tuple[str, ...] = ()
    channel: str = "ticker"
    mode: str = "auto"
    url: str | None = None
    testnet: bool = False
    buffer_size: int = DEFAULT_BUFFER_SIZE
    heartbeat_interval: float = 30.0
    reconnect_delay: float = 5.0
    max_reconnect_delay: float = 300.0
    poll_interval: float = 2.0
    max_reconnect_attempts: int | None = None
    rest_fallback_after: int = 3
    ws_probe_interval: float = 60.0
    decoder: str = DecoderKind.FAST.value
    """``fast``: the venue's own decoder for its hot channels where it has one; ``ccxt``: ccxt
    parses every frame (:class:`~flight_md.core.decode.DecoderKind`)."""
    urls: dict[str, Any] | None = field(default=None, hash=False)
    ccxt_options: dict[str, Any] | None = field(default=None, hash=False)
    api_key: Secret | None = None
    api_secret: Secret | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.exchange, str) or not EXCHANGE_RE.fullmatch(self.exchange):
            raise ConfigError(f"invalid exchange id {self.exchange!r}; expected a ccxt id such "
                              "as 'binance'")
        if not isinstance(self.symbols, tuple):
            raise ConfigError(must_be(f"symbols of {self.exchange}", "a list of symbols",
                                      self.symbols))
        for symbol in self.symbols:
            if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
                raise ConfigError(f"invalid symbol {symbol!r} for {self.exchange}; expected "
                                  "e.g. 'BTC/USDT'")
        if isinstance(self.channel, (list, tuple)) and all(isinstance(c, str) for c in self.channel):
            object.__setattr__(self, "channel", ",".join(self.channel))  # TOML list form
        if not isinstance(self.channel, str):
            raise ConfigError(must_be("channel", f"a comma list of {', '.join(CHANNELS)}",
                                      self.channel))
        names = [c.strip() for c in self.channel.split(",")]
        for name in names:
            if name not in CHANNELS:
                raise ConfigError(f"invalid channel {name!r}; allowed: {', '.join(CHANNELS)} "
                                  "(a comma list of them)")
        if len(set(names)) != len(names):
            raise ConfigError(f"channel {self.channel!r} names a channel twice")
        object.__setattr__(self, "channel", ",".join(names))
        if self.mode not in MODES:
            raise ConfigError(f"invalid mode {self.mode!r}; allowed: {', '.join(MODES)}")
        if self.decoder not in DECODERS:
            raise ConfigError(must_be("decoder", " or ".join(DECODERS), self.decoder))
        for name in ("heartbeat_interval", "reconnect_delay", "max_reconnect_delay",
                     "poll_interval", "ws_probe_interval"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(must_be(name, "a positive number", value))
        if self.max_reconnect_delay < self.reconnect_delay:
            raise ConfigError("max_reconnect_delay must be >= reconnect_delay")
        if not _positive_int(self.buffer_size):
            raise ConfigError(must_be("buffer_size", "a positive integer", self.buffer_size))
        if self.url is not None and not isinstance(self.url, str):
            raise ConfigError(must_be("url", "a string such as 'http://127.0.0.1:9000'",
                                      self.url))
        if not isinstance(self.testnet, bool):
            raise ConfigError(must_be("testnet", "true or false", self.testnet))
        attempts = self.max_reconnect_attempts
        if attempts is not None and (not isinstance(attempts, int) or isinstance(attempts, bool)
                                     or attempts < 0):
            raise ConfigError(must_be("max_reconnect_attempts", "an integer >= 0 (omit it to "
                                      "retry forever)", self.max_reconnect_attempts))
        if not _positive_int(self.rest_fallback_after):
            raise ConfigError(must_be("rest_fallback_after", "a positive integer",
                                      self.rest_fallback_after))
        for name in ("urls", "ccxt_options"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise ConfigError(must_be(name, "a table of ccxt settings", value))
        secret = sorted(SECRET_CCXT_KEYS & set(self.ccxt_options or {}))
        if secret:
            raise ConfigError(f"ccxt_options must not hold {secret[0]!r}: keys come from the "
                              "environment (api_key_env, api_secret_env), never from options")

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels of :attr:`channel`, in the order given: one stream each."""
        return tuple(self.channel.split(","))

    def stream_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``MarketDataStream`` (secrets revealed for ccxt only);
        ``channel`` is the first of :attr:`channels` (set it per stream)."""
        return {
            "testnet": self.testnet,
            "api_key": self.api_key.reveal() if self.api_key else None,
            "api_secret": self.api_secret.reveal() if self.api_secret else None,
            "heartbeat_interval": self.heartbeat_interval,
            "reconnect_delay": self.reconnect_delay,
            "max_reconnect_delay": self.max_reconnect_delay,
            "channel": self.channels[0],
            "mode": self.mode,
            "poll_interval": self.poll_interval,
            "url": self.url,
            "urls": self.urls,
            "max_reconnect_attempts": self.max_reconnect_attempts,
            "ccxt_options": self.ccxt_options,
            "rest_fallback_after": self.rest_fallback_after,
            "ws_probe_interval": self.ws_probe_interval,
            "decoder": self.decoder,
        }


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The whole server."""

    host: str = "127.0.0.1"
    port: int = 8815
    buffer_size: int = DEFAULT_BUFFER_SIZE
    streams: tuple[StreamConfig, ...] = ()
    demo: tuple[str, ...] = ()
    """Venues to emulate on loopback and stream from (``--demo [VENUE,...]``); ``True`` is
    ``("binance",)``, ``False`` none."""
    auth_tokens: tuple[Secret, ...] = ()
    read_only_tokens: tuple[Secret, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    follow_max_lag: int | None = None
    book_depth: int = 10
    """Levels a side the ``book`` channel stores (each venue subscribes the smallest depth
    it offers that is at least this)."""
    ingest_process: bool = False
    """Run ingestion in a child process (see :mod:`flight_md.ingest.process`). ``False`` here,
    so that an app built from Python keeps its ingestion (and any callbacks) in-process;
    ``flight-md serve`` defaults to ``True`` (:data:`SERVE_INGEST_PROCESS`)."""
    ingest_workers: int | None = None
    """Run ingestion in this many child processes, the streams' symbols spread over them (see
    :mod:`flight_md.ingest.workers`); setting it implies ``ingest_process`` (1 is the same as
    ``ingest_process``). ``None``: ``ingest_process`` decides (one child, or none)."""
    metrics_port: int | None = None
    """Serve Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` on this port of ``host``
    (0 picks one); ``None``: off (see :mod:`flight_md.metrics`)."""
    memory_only: bool = False
    """Keep nothing on disk (``--memory-only``): a restart starts empty."""
    data_dir: Path | None = None
    """Where the journal and history live (``None``: :func:`flight_md.persist.datadir.default_data_dir`,
    ``$XDG_DATA_HOME/flight-md``, or its ``demo/`` for ``--demo``)."""
    history_uri: str | None = None
    """The Parquet history elsewhere than ``DATA_DIR`` (a path or ``s3://bucket/prefix``)."""
    fsync: str = "interval"
    """``always`` | ``interval`` | ``never``: what survives a power cut (README "Data on disk")."""
    commit_interval: float = 0.2
    """Seconds between journal group commits: the most a ``kill -9`` loses."""
    seal_interval: float = 60.0
    """Seconds between moves of the journal into the Parquet history."""
    retention: str | None = None
    """How long history is kept, e.g. ``"30d"``, ``"12h"``, ``"none"`` (``None``: 30 days,
    1 day with ``--demo``)."""
    max_history_bytes: str | int | None = None
    """History size limit, e.g. ``"20GB"``, ``"none"`` (``None``: 20 GB)."""
    sql_timeout: float = 30.0
    """Seconds a Flight SQL query may run (start to last row) before it is cancelled."""
    sql_memory_limit: str = "1GB"
    """The SQL engine's memory limit, e.g. ``"1GB"``, ``"512MiB"``."""
    sql_max_concurrent: int = 4
    """Flight SQL queries running at once (more wait up to a second, then UNAVAILABLE)."""
    bus: BusOptions | None = None
    """The NATS JetStream bus (``--bus URL``, TOML ``[bus]``): a serving node reads its rings
    from it (no ingestion of its own), an ingestion node (``flight-md ingest``) publishes to it;
    ``None``: one process, no NATS (nats-py is not even imported)."""
    bus_subjects: tuple[str, ...] = (BUS_ALL_SUBJECTS,)
    """The subject filters a serving node consumes (``--bus-subjects``): its shard."""
    node_name: str | None = None
    """This node's name on the bus (``--node-name``; it names the durable consumer);
    ``None``: :meth:`resolved_node_name` derives one from the data dir."""
    advertise: str | None = None
    """The Flight location other nodes send clients to for the rings this node holds
    (``--advertise grpc://host:port``); ``None``: the server's own location."""
    bus_backlog_bytes: int = DEFAULT_LIMITS.max_bytes
    """An ingestion node's unacked publishes kept while the bus is away, in payload bytes."""
    bus_backlog_messages: int = DEFAULT_LIMITS.max_messages
    """... and in messages; beyond either, messages are dropped, counted, and the serving
    nodes record the gap."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(must_be("host", "an address such as '127.0.0.1'", self.host))
        if (not isinstance(self.port, int) or isinstance(self.port, bool)
                or not 0 <= self.port <= 65535):
            raise ConfigError(f"invalid port {self.port!r}; expected 0-65535")
        if not _positive_int(self.buffer_size):
            raise ConfigError(must_be("buffer_size", "a positive integer", self.buffer_size))
        if self.follow_max_lag is not None and not _positive_int(self.follow_max_lag):
            raise ConfigError(must_be("follow_max_lag", "a positive integer", self.follow_max_lag))
        if isinstance(self.sql_timeout, bool) or not isinstance(self.sql_timeout, (int, float)) \
                or not 0 < self.sql_timeout <= 86_400:
            raise ConfigError(must_be("sql_timeout", "a number of seconds > 0 (at most a day)",
                                      self.sql_timeout))
        if parse_bytes(self.sql_memory_limit, "sql_memory_limit") is None \
                or not isinstance(self.sql_memory_limit, str):
            raise ConfigError(must_be("sql_memory_limit", "a size such as 1GB or 512MiB",
                                      self.sql_memory_limit))
        if not _positive_int(self.sql_max_concurrent) or self.sql_max_concurrent > 64:
            raise ConfigError(must_be("sql_max_concurrent", "an integer from 1 to 64",
                                      self.sql_max_concurrent))
        if not _positive_int(self.book_depth) or self.book_depth > 1000:
            raise ConfigError(must_be("book_depth", "an integer from 1 to 1000", self.book_depth))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if not isinstance(self.ingest_process, bool):
            raise ConfigError(must_be("ingest_process", "true or false", self.ingest_process))
        if self.ingest_workers is not None:
            if not _positive_int(self.ingest_workers):
                raise ConfigError(must_be("ingest_workers", "an integer >= 1 (ingestion worker "
                                          "processes)", self.ingest_workers))
            object.__setattr__(self, "ingest_process", True)
        if self.metrics_port is not None and (
                not isinstance(self.metrics_port, int) or isinstance(self.metrics_port, bool)
                or not 0 <= self.metrics_port <= 65535):
            raise ConfigError(must_be("metrics_port", "a port 0-65535", self.metrics_port))
        demo: Any = self.demo
        if isinstance(demo, bool):
            object.__setattr__(self, "demo", (DEMO_VENUE,) if demo else ())
        elif isinstance(demo, str):
            object.__setattr__(self, "demo", tuple(v.strip() for v in demo.split(",") if v.strip()))
        elif isinstance(demo, (tuple, list)) and all(isinstance(v, str) for v in demo):
            object.__setattr__(self, "demo", tuple(demo))
        else:
            raise ConfigError(must_be("demo", "true, false or a list of venue ids", demo))
        from flight_md.venues import emulated

        unknown = [v for v in self.demo if v not in emulated()]
        if unknown:
            raise ConfigError(f"--demo: unknown venue {unknown[0]!r}; the emulator speaks: "
                              f"{', '.join(emulated())}")
        if len(set(self.demo)) != len(self.demo):
            raise ConfigError(f"--demo names a venue twice: {','.join(self.demo)}")
        if self.demo and self.streams:
            raise ConfigError("--demo runs its own emulated exchange; drop --exchange/--config "
                              "streams or drop --demo")
        if not isinstance(self.memory_only, bool):
            raise ConfigError(must_be("memory_only", "true or false", self.memory_only))
        if self.data_dir is not None and not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(str(self.data_dir)).expanduser())
        if self.fsync not in FSYNC_MODES:
            raise ConfigError(must_be("fsync", " or ".join(FSYNC_MODES), self.fsync))
        for name in ("commit_interval", "seal_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(must_be(name, "a positive number of seconds", value))
        self.persist_config()  # checks retention and max_history_bytes
        self._check_bus()

    def _check_bus(self) -> None:
        if self.bus is not None and not isinstance(self.bus, BusOptions):
            raise ConfigError(must_be("bus", "BusOptions (or none)", self.bus))
        subjects: Any = self.bus_subjects
        if isinstance(subjects, str):
            subjects = tuple(s.strip() for s in subjects.split(",") if s.strip())
        if not isinstance(subjects, (tuple, list)) or not subjects \
                or not all(isinstance(s, str) for s in subjects):
            raise ConfigError(must_be("bus_subjects", "a list of subject filters such as "
                                      f"{BUS_ALL_SUBJECTS!r}", self.bus_subjects))
        try:
            checked = tuple(validate_filter(s) for s in subjects)
        except InvalidArgument as exc:
            raise ConfigError(str(exc)) from None
        if len(set(checked)) != len(checked):
            raise ConfigError(f"bus_subjects names a filter twice: {', '.join(checked)}")
        object.__setattr__(self, "bus_subjects", checked)
        if self.node_name is not None and (not isinstance(self.node_name, str)
                                           or not NODE_NAME_RE.fullmatch(self.node_name)):
            raise ConfigError(must_be("node_name", "1 to 48 of A-Z a-z 0-9 _ -", self.node_name))
        if self.advertise is not None and (not isinstance(self.advertise, str)
                                           or not _LOCATION_RE.fullmatch(self.advertise)):
            raise ConfigError(must_be("advertise", "a Flight location such as "
                                      "'grpc://10.0.0.5:8815' (or grpc+tls://)", self.advertise))
        try:
            self.backlog_limits()  # building it checks both
        except ConfigError:
            raise ConfigError(must_be("bus_backlog_bytes and bus_backlog_messages",
                                      "positive integers",
                                      (self.bus_backlog_bytes, self.bus_backlog_messages))
                              ) from None
        if self.bus is None:
            given = [name for name in ("node_name", "advertise") if getattr(self, name)]
            if self.bus_subjects != (BUS_ALL_SUBJECTS,):
                given.append("bus_subjects")
            if given:
                raise ConfigError(f"{', '.join(given)} set a node of the bus; add --bus URL "
                                  "(or a [bus] table with its url)")

    def backlog_limits(self) -> BacklogLimits:
        """What an ingestion node's publisher keeps while the bus is away."""
        return BacklogLimits(self.bus_backlog_bytes, self.bus_backlog_messages)

    def resolved_node_name(self, port: int | None = None) -> str:
        """This node's name: :attr:`node_name`, or ``<short host>-<8 hex>`` of the resolved data
        dir (so that two nodes on one host, each with its own data dir, differ and a restarted
        node finds its durable consumer again); memory-only, ``<short host>-mem-<8 hex>`` of
        ``host:port`` (``port``: the port really bound, for ``port = 0``; with none known, the
        process id stands in: nothing of a memory-only node survives its restart anyway)."""
        if self.node_name is not None:
            return self.node_name
        import hashlib

        short = _short_host()
        persist = self.persist_config()
        if persist is not None:
            key = str(Path(persist.data_dir).expanduser().resolve())
            return f"{short}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
        bound = port if port is not None else self.port
        key = f"{self.host}:{bound}" if bound else f"{self.host}:0:{os.getpid()}"
        return f"{short}-mem-{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    def persist_config(self) -> Any:
        """The :class:`~flight_md.persist.store.PersistConfig` of this server, ``None`` with
        ``memory_only``."""
        from datetime import timedelta

        from flight_md.persist.datadir import default_data_dir
        from flight_md.persist.journal import FsyncMode
        from flight_md.persist.retention import (
            DEFAULT_MAX_HISTORY_BYTES,
            DEFAULT_RETENTION,
            DEMO_RETENTION,
            RetentionPolicy,
        )
        from flight_md.persist.store import PersistConfig

        if self.retention is None:
            max_age: timedelta | None = DEMO_RETENTION if self.demo else DEFAULT_RETENTION
        else:
            max_age = parse_duration(self.retention, "retention")
        max_bytes = (DEFAULT_MAX_HISTORY_BYTES if self.max_history_bytes is None
                     else parse_bytes(self.max_history_bytes, "max_history_bytes"))
        if self.memory_only:
            return None
        return PersistConfig(
            data_dir=self.data_dir or default_data_dir(demo=bool(self.demo)),
            history_uri=self.history_uri, fsync=FsyncMode(self.fsync),
            commit_interval=float(self.commit_interval), seal_interval=float(self.seal_interval),
            retention=RetentionPolicy(max_age, max_bytes))

    @property
    def workers(self) -> int:
        """Ingestion worker processes: :attr:`ingest_workers`, 1 with just
        :attr:`ingest_process`, 0 when ingestion runs on a thread of the serving process."""
        if self.ingest_workers is not None:
            return self.ingest_workers
        return 1 if self.ingest_process else 0

    @property
    def ingestion_mode(self) -> IngestionMode | None:
        """Where ingestion runs; ``None`` when there is nothing to ingest (no stream, no demo,
        no bus)."""
        if self.bus is not None:
            return IngestionMode.BUS
        if not (self.demo or self.streams):
            return None
        return IngestionMode.PROCESS if self.ingest_process else IngestionMode.THREAD

    @property
    def location(self) -> str:
        scheme = "grpc+tls" if self.tls_cert else "grpc"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


FSYNC_MODES: Final = ("always", "interval", "never")
NODE_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,48}")
"""A bus node's name (as :func:`flight_md.bus.consumer.validate_node_name` checks it; that
module needs nats-py, this one must not)."""
_LOCATION_RE: Final = re.compile(r"grpc(\+tls|\+tcp)?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}")
_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}
_BYTES_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_BYTE_UNITS: Final = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6,
                      "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10,
                      "mib": 2**20, "gib": 2**30, "tib": 2**40, "ki": 2**10, "mi": 2**20,
                      "gi": 2**30, "ti": 2**40}


def parse_duration(value: object, name: str) -> Any:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"3600s"``, ``"2w"`` or a number of days as a
    ``timedelta``; ``"none"`` (or ``"off"``) is ``None``: no limit."""
    from datetime import timedelta

    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return None
    match = _DURATION_RE.match(str(value)) if isinstance(value, (str, int, float)) \
        and not isinstance(value, bool) else None
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(must_be(name, "a positive duration such as 30d, 12h, 90m or none",
                                  value))
    return timedelta(seconds=float(match.group(1)) * _DURATION_UNITS[match.group(2)])


def parse_bytes(value: object, name: str) -> int | None:
    """``"20GB"``, ``"500MiB"`` or a number of bytes; ``"none"`` (or ``"off"``): no limit."""
    if isinstance(value, str) and value.strip().lower() in ("none", "off"):
        return None
    match = _BYTES_RE.match(str(value)) if isinstance(value, (str, int)) \
        and not isinstance(value, bool) else None
    if match is None or match.group(2).lower() not in _BYTE_UNITS or float(match.group(1)) <= 0:
        raise ConfigError(must_be(name, "a positive size such as 20GB, 500MiB or none", value))
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])


def _short_host() -> str:
    """This host's short name as node names use it (subject-safe, at most 26 characters)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:26] or "node"


def must_be(name: str, allowed: str, value: object) -> str:
    """The one phrasing of a setting with a wrong value: ``NAME must be ALLOWED, got VALUE``."""
    return f"{name} must be {allowed}, got {value!r}"


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _file_key(base: Path, table: dict[str, Any], key: str) -> Path:
    """Pop a file name from a TOML table, relative to the config file's directory."""
    value = table.pop(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(must_be(f"[server] {key}", "a file name", value))
    return base / value


def read_tokens(path: Path) -> tuple[Secret, ...]:
    """Read bearer tokens, one per line (blank lines and ``#`` comments ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {str(path)!r}: {exc.strerror}") from None
    tokens = tuple(Secret(line.strip()) for line in lines
                   if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise ConfigError(f"token file {str(path)!r} holds no tokens")
    return tokens


def secret_from_env(variable: str | None) -> Secret | None:
    """The value of an environment variable as a :class:`Secret` (None when unset)."""
    if not variable:
        return None
    value = os.environ.get(variable)
    if value is None:
        raise ConfigError(f"environment variable {variable!r} is not set")
    return Secret(value)


BUS_PASSWORD_ENV: Final = "FLIGHT_MD_BUS_PASSWORD"
"""The bus password when no password file is given (with a bus user)."""
BUS_TOKEN_ENV: Final = "FLIGHT_MD_BUS_TOKEN"
"""The bus token when no token file is given (and no user or creds file)."""
BUS_KEYS: Final = ("url", "subjects", "node_name", "advertise", "stream", "user",
                   "password_file", "token_file", "creds", "tls_ca", "tls_cert", "tls_key",
                   "backlog_bytes", "backlog_messages")
"""The keys of a ``[bus]`` table (``--bus``, ``--bus-subjects``, ... on the command line)."""
BUS_CONNECTION_KEYS: Final = ("url", "stream", "user", "password_file", "token_file", "creds",
                              "tls_ca", "tls_cert", "tls_key")
"""The keys that say how to reach the bus (the others say what this node does on it)."""


def read_secret(path: Path, what: str) -> str:
    """The secret in a file: its first line that is not blank (never shown in an error)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {str(path)!r}: {exc.strerror}") from None
    for line in lines:
        if line.strip():
            return line.strip()
    raise ConfigError(f"{what} file {str(path)!r} is empty")


def bus_options(settings: dict[str, Any], base: BusOptions | None = None) -> BusOptions:
    """The bus connection of ``settings`` (keys of :data:`BUS_CONNECTION_KEYS`, paths as
    ``Path``) over ``base`` (a ``[bus]`` table's, or none): a key given replaces the base's;
    a login given (user, token file or creds) replaces the base's whole login.

    Secrets come from files or the environment only (:data:`BUS_PASSWORD_ENV`,
    :data:`BUS_TOKEN_ENV`): a password in the URL is refused, as anything on a command line
    or in a shared config file is seen by whoever lists processes or reads the file.

    Raises:
        ConfigError: a setting is invalid or a secret file unreadable; no secret is quoted.
    """
    from dataclasses import replace
    from urllib.parse import urlsplit

    from flight_md.bus.options import DEFAULT_URL

    url = settings.get("url") or (base.url if base is not None else DEFAULT_URL)
    if not isinstance(url, str):
        raise ConfigError(must_be("bus url", "a URL such as 'nats://127.0.0.1:4222'", url))
    try:
        password_in_url = urlsplit(url).password is not None
    except ValueError:
        password_in_url = False  # BusOptions says what is wrong with it
    if password_in_url:
        raise ConfigError("the bus url must not hold a password: give --bus-user with "
                          f"--bus-password-file (or ${BUS_PASSWORD_ENV})")
    changes: dict[str, Any] = {"url": url}
    if settings.get("stream") is not None:
        changes["stream"] = settings["stream"]
    for key in ("tls_ca", "tls_cert", "tls_key"):
        if settings.get(key) is not None:
            changes[key] = Path(settings[key])
    user, token_file, creds = (settings.get(k) for k in ("user", "token_file", "creds"))
    password_file = settings.get("password_file")
    if password_file is not None and user is None and (base is None or base.user is None):
        raise ConfigError("--bus-password-file needs --bus-user")
    if user is not None or token_file is not None or creds is not None:
        changes.update(user=None, password=None, token=None, creds_file=None)
        if user is not None:
            if not isinstance(user, str) or not user:
                raise ConfigError(must_be("bus user", "a user name", user))
            changes["user"] = user
        if token_file is not None:
            changes["token"] = read_secret(Path(token_file), "bus token")
        if creds is not None:
            changes["creds_file"] = Path(creds)
            if not changes["creds_file"].is_file():
                raise ConfigError(f"bus creds file {str(creds)!r} does not exist")
    if password_file is not None:
        changes["password"] = read_secret(Path(password_file), "bus password")
    merged = replace(base, **changes) if base is not None else BusOptions(**changes)
    if merged.user is not None and merged.password is None and os.environ.get(BUS_PASSWORD_ENV):
        merged = replace(merged, password=os.environ[BUS_PASSWORD_ENV])
    if merged.user is None and merged.token is None and merged.creds_file is None \
            and os.environ.get(BUS_TOKEN_ENV):
        merged = replace(merged, token=os.environ[BUS_TOKEN_ENV])
    return merged


def _bus_table(table: Any, base: Path) -> dict[str, Any]:
    """A config file's ``[bus]`` table as :class:`ServerConfig` fields."""
    if not isinstance(table, dict):
        raise ConfigError(must_be("bus", "a table ([bus])", table))
    bad = sorted(set(table) - set(BUS_KEYS))
    if bad:
        raise ConfigError(f"unknown key {bad[0]!r} in [bus]; allowed: {', '.join(BUS_KEYS)}")
    connection: dict[str, Any] = {}
    for key in BUS_CONNECTION_KEYS:
        if key not in table:
            continue
        value = table[key]
        if not isinstance(value, str) or not value:
            raise ConfigError(must_be(f"[bus] {key}", "a non-empty string", value))
        is_file = key in ("password_file", "token_file", "creds", "tls_ca", "tls_cert", "tls_key")
        connection[key] = base / Path(value).expanduser() if is_file else value
    fields_: dict[str, Any] = {"bus": bus_options(connection)}
    if "subjects" in table:
        subjects = table["subjects"]
        fields_["bus_subjects"] = tuple(subjects) if isinstance(subjects, list) else subjects
    for key in ("node_name", "advertise"):
        if key in table:
            fields_[key] = table[key]
    for key in ("backlog_bytes", "backlog_messages"):
        if key in table:
            fields_[f"bus_{key}"] = table[key]
    return fields_


STREAM_DEFAULTS: Final[dict[str, Any]] = {f.name: f.default for f in fields(StreamConfig)
                                           if f.name != "exchange"}
"""Each stream setting's one default (the CLI and the TOML loader read them from here)."""
_STREAM_KEYS: Final = {f.name for f in fields(StreamConfig)} - {"exchange", "api_key",
                                                                 "api_secret"}


def load_config(path: Path, *, ingest_process: bool = False) -> ServerConfig:
    """Load a TOML config file (see the module docstring).

    Args:
        path: The file.
        ingest_process: ``ingest_process`` when ``[server]`` does not set it (``flight-md
            serve`` passes :data:`SERVE_INGEST_PROCESS`; the Python API's default is ``False``).

    Raises:
        ConfigError: The file is unreadable or invalid; the message names the key.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {str(path)!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"server", "exchanges", "bus"})
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r} in {str(path)!r}; allowed: server, "
                          "exchanges, bus")
    if not isinstance(data.get("server", {}), dict):
        raise ConfigError(must_be("server", "a table ([server])", data["server"]))
    entries = data.get("exchanges", [])
    if not isinstance(entries, list):
        raise ConfigError(must_be("exchanges", "an array of tables ([[exchanges]])", entries))
    server = dict(data.get("server", {}))
    base = path.parent
    tokens: tuple[Secret, ...] = ()
    read_only: tuple[Secret, ...] = ()
    if "auth_token_file" in server:
        tokens = read_tokens(_file_key(base, server, "auth_token_file"))
    if "read_only_token_file" in server:
        read_only = read_tokens(_file_key(base, server, "read_only_token_file"))
    for key in ("auth_tokens", "read_only_tokens"):
        values = server.pop(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise ConfigError(f"[server] {key} must be a list of non-empty strings")
        if key == "auth_tokens":
            tokens += tuple(Secret(v) for v in values)
        else:
            read_only += tuple(Secret(v) for v in values)
    paths = {k: _file_key(base, server, k) for k in ("tls_cert", "tls_key", "tls_client_ca")
             if k in server}
    allowed = {"host", "port", "buffer_size", "follow_max_lag", "ingest_process", "ingest_workers",
               "metrics_port",
               "book_depth", *_SQL_KEYS, *_PERSIST_KEYS}
    bad = sorted(set(server) - allowed)
    if bad:
        raise ConfigError(f"unknown key {bad[0]!r} in [server]; allowed: "
                          "host, port, buffer_size, follow_max_lag, book_depth, ingest_process, "
                          "ingest_workers, "
                          f"{', '.join(_SQL_KEYS)}, "
                          f"metrics_port, {', '.join(_PERSIST_KEYS)}, auth_token_file, "
                          "read_only_token_file, auth_tokens, read_only_tokens, tls_cert, "
                          "tls_key, tls_client_ca")
    if "data_dir" in server:
        value = server.pop("data_dir")
        if not isinstance(value, str) or not value:
            raise ConfigError(must_be("[server] data_dir", "a directory name", value))
        paths["data_dir"] = base / Path(value).expanduser()
    buffer_size = server.get("buffer_size", DEFAULT_BUFFER_SIZE)
    streams = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise ConfigError(f"[[exchanges]] entry {index + 1} needs an id")
        entry = dict(entry)
        exchange = entry.pop("id")
        if not isinstance(exchange, str):
            raise ConfigError(must_be(f"[[exchanges]] entry {index + 1} id",
                                      "a ccxt id such as 'binance'", exchange))
        for key in ("api_key_env", "api_secret_env"):
            if not isinstance(entry.get(key, ""), str):
                raise ConfigError(must_be(f"{key} of {exchange}", "a variable name", entry[key]))
        api_key = secret_from_env(entry.pop("api_key_env", None))
        api_secret = secret_from_env(entry.pop("api_secret_env", None))
        bad = sorted(set(entry) - _STREAM_KEYS)
        if bad:
            raise ConfigError(f"unknown key {bad[0]!r} for exchange {exchange!r}; allowed: id, "
                              f"{', '.join(sorted(_STREAM_KEYS))}, api_key_env, api_secret_env")
        entry.setdefault("buffer_size", buffer_size)
        if "symbols" in entry:
            if not isinstance(entry["symbols"], list):
                raise ConfigError(must_be(f"symbols of {exchange}",
                                          'a list such as ["BTC/USDT"]', entry["symbols"]))
            entry["symbols"] = tuple(entry["symbols"])
        try:
            streams.append(StreamConfig(exchange=exchange, api_key=api_key,
                                        api_secret=api_secret, **entry))
        except TypeError as exc:
            raise ConfigError(f"invalid settings for exchange {exchange!r}: {exc}") from None
    server.setdefault("ingest_process", ingest_process)
    bus = _bus_table(data["bus"], base) if "bus" in data else {}
    return ServerConfig(**bus, streams=tuple(streams), auth_tokens=tokens, read_only_tokens=read_only,
                        tls_cert=paths.get("tls_cert"), tls_key=paths.get("tls_key"),
                        tls_client_ca=paths.get("tls_client_ca"),
                        data_dir=paths.get("data_dir"), **server)


_SQL_KEYS: Final = ("sql_timeout", "sql_memory_limit", "sql_max_concurrent")
"""``[server]`` keys of the Flight SQL engine (``ServerConfig`` fields of the same name)."""
_PERSIST_KEYS: Final = ("memory_only", "data_dir", "history_uri", "fsync", "commit_interval",
                        "seal_interval", "retention", "max_history_bytes")
"""``[server]`` keys of persistence (``ServerConfig`` fields of the same name)."""

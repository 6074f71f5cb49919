"""The ``flight-md`` command.

``flight-md serve`` runs the server (``--bus``: a serving node of a NATS JetStream bus);
``flight-md ingest`` an ingestion node of the bus; ``flight-md emulator`` runs the exchange emulator alone;
``get``, ``status``, ``top`` and ``tail`` are terminal views over a running server. Errors
print as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, cast

from flight_md import __version__
from flight_md.config import (
    CHANNELS,
    DECODERS,
    FSYNC_MODES,
    MODES,
    SERVE_INGEST_PROCESS,
    STREAM_DEFAULTS,
    ServerConfig,
    StreamConfig,
    bus_options,
    load_config,
    read_tokens,
    secret_from_env,
)
from flight_md.core.channels import MAX_BOOK_DEPTH
from flight_md.errors import ConfigError, FlightMdError, StartupError

__all__ = ["add_bus_options", "build_config", "build_ingest_config", "main", "require_bus"]

logger = logging.getLogger("flight_md")

SHUTDOWN_TIMEOUT_S = 4.5
"""Seconds a signalled ``serve`` may spend shutting down before the watchdog forces it out."""
INGEST_SHUTDOWN_TIMEOUT_S = 10.0
"""Seconds a signalled ``ingest`` may spend stopping (its streams, then the bus backlog's
flush): longer than ``serve``'s, as unacked messages are worth waiting for."""
EXIT_FORCED = 1
"""Exit status when the shutdown watchdog fired: a hung shutdown must not look clean."""


def _force_exit(timeout: float) -> None:
    """The shutdown watchdog: log why, flush, and leave with :data:`EXIT_FORCED`."""
    logger.error("shutdown did not finish within %g s; forcing exit with status %d",
                 timeout, EXIT_FORCED)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_FORCED)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``flight-md serve: argument --port: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(kind: type[int | float], minimum: float, *, above: bool) -> Callable[[str], Any]:
    """An argparse type: a number ``> minimum`` (``above``) or ``>= minimum``."""
    bound = f"> {minimum:g}" if above else f">= {minimum:g}"
    what = "an integer" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}") from None
        if not math.isfinite(value) or (value <= minimum if above else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"
    return parse


_POSITIVE = _number(float, 0, above=True)
_POSITIVE_INT = _number(int, 0, above=True)
_COUNT = _number(int, 0, above=False)
_WORKERS = _number(int, 1, above=False)


def _port(text: str) -> int:
    value = _COUNT(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port 0-65535, got {text!r}")
    return int(value)


def _json_table(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a JSON object such as '{\"timeout\": 10000}'"
                                         ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object such as '{\"timeout\": 10000}'")
    return value


def _channel_list(text: str) -> str:
    """``--channel``: one channel or a comma list of them, each once (``ticker,trades``)."""
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in CHANNELS:
            raise argparse.ArgumentTypeError(
                f"invalid channel {name!r}; expected a comma list of: {', '.join(CHANNELS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a channel twice; name each once")
    return ",".join(names)


def _book_depth(text: str) -> int:
    """``--book-depth``: levels a side, 1 to :data:`MAX_BOOK_DEPTH`."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BOOK_DEPTH:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_BOOK_DEPTH}, "
                                         f"got {text!r}")
    return value


def _default(name: str) -> str:
    """The one default of a stream setting, as the option help shows it."""
    value = STREAM_DEFAULTS[name]
    return f"{value:g}" if isinstance(value, float) else str(value)


def _server_default(name: str) -> str:
    """The one default of a server setting (a ``ServerConfig`` field), as help shows it."""
    value = ServerConfig.__dataclass_fields__[name].default
    return f"{value:g}" if isinstance(value, float) else str(value)


def _demo_argument(add: Callable[..., Any]) -> None:
    add("--demo", nargs="?", const="binance", default=None, metavar="VENUE,...",
        help="stream from built-in emulated exchanges on loopback (offline): binance by "
             "default, or a comma list of venues such as coinbase,kraken")


def _stream_arguments(add: Callable[..., Any], *, config_help: str) -> None:
    """The options that say what to stream: ``serve`` and ``ingest`` share them (one parser
    code, one set of defaults, one :func:`_streams` reading them)."""
    add("--config", type=Path, metavar="FILE.toml", help=config_help)
    add("--exchange", metavar="ID", help="stream one exchange (a ccxt exchange id, e.g. binance)")
    add("--symbols", default="", metavar="A,B",
        help="comma-separated symbols of --exchange, e.g. BTC/USDT,ETH/USDT")
    add("--channel", type=_channel_list, default=None, metavar="CHANNEL,...",
        help=f"what to stream, a comma list of {', '.join(CHANNELS)}: ticker the full 24h "
        "ticker, bidask the real-time best bid/ask, trades every trade, book the top levels "
        f"after every update (e.g. ticker,trades,book) (default {_default('channel')})")
    add("--exchange-url", metavar="URL",
        help="point ccxt's REST and websocket URLs at this base URL, e.g. an emulator "
        "(http://127.0.0.1:9000); TOML key url")
    add("--urls", type=_json_table, default=None, metavar="JSON",
        help="a ccxt urls object merged over the exchange's own (e.g. a testnet or proxy)")
    add("--mode", choices=MODES, default=None,
        help="auto falls back to REST polling after repeated websocket failures and returns when "
        f"it recovers (default {_default('mode')})")
    add("--decoder", choices=DECODERS, default=None,
        help="fast decodes the hot channels' frames with the venue's own decoder where it has "
        "one (ccxt still runs connections, subscriptions and every other message); ccxt parses "
        f"every frame (default {_default('decoder')})")
    add("--poll-interval", type=_POSITIVE, default=None, metavar="S",
        help="pause between REST polls, seconds; ccxt's rate limiter may stretch it (Binance: "
        f"about 1.1 s) (default {_default('poll_interval')})")
    add("--buffer-size", type=_POSITIVE_INT, default=None, metavar="N",
        help=f"ticks kept per (exchange, symbol) (default {_default('buffer_size')})")
    add("--book-depth", type=_book_depth, default=None, metavar="N",
        help="book levels a side the book channel stores (1-1000); each venue subscribes the "
        f"smallest depth it offers that is at least N (default {_server_default('book_depth')})")
    add("--heartbeat-interval", type=_POSITIVE, default=None, metavar="S",
        help="seconds of silence after which a stream is stale and reconnected "
        f"(default {_default('heartbeat_interval')})")
    add("--reconnect-delay", type=_POSITIVE, default=None, metavar="S",
        help=f"first reconnect delay, doubled per failed attempt (default {_default('reconnect_delay')})")
    add("--max-reconnect-delay", type=_POSITIVE, default=None, metavar="S",
        help=f"cap of the reconnect delay (default {_default('max_reconnect_delay')})")
    add("--max-reconnect-attempts", type=_COUNT, default=None, metavar="N",
        help="failed attempts in a row before a stream gives up (state failed) (default: never)")
    add("--rest-fallback-after", type=_POSITIVE_INT, default=None, metavar="N",
        help="websocket failures in a row after which --mode auto polls over REST "
        f"(default {_default('rest_fallback_after')})")
    add("--ws-probe-interval", type=_POSITIVE, default=None, metavar="S",
        help="while --mode auto polls, seconds between websocket probes "
        f"(default {_default('ws_probe_interval')})")
    add("--testnet", action="store_true",
        help="use the exchange's sandbox URLs (ccxt); --exchange-url overrides them; an exchange "
        "without a sandbox is an error")
    add("--ccxt-options", type=_json_table, default=None, metavar="JSON",
        help="more ccxt exchange settings, e.g. '{\"timeout\": 20000}' (never keys: use "
        "--api-key-env)")
    add("--api-key-env", default=None, metavar="VAR",
        help="environment variable holding the exchange API key (never on the command line)")
    add("--api-secret-env", default=None, metavar="VAR",
        help="environment variable holding the exchange API secret")


def _subject_list(text: str) -> list[str]:
    """``--bus-subjects``: one subject filter or a comma list of them (checked by the config)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must name a subject filter such as 'md.>', got {text!r}")
    return names


def add_bus_options(add: Callable[..., Any], *, serving: bool) -> None:
    """The bus options: how a node reaches NATS JetStream and what it is on it. ``serving``:
    the ``serve`` set (its shard, its advertised location); otherwise ``ingest``'s (its
    backlog). Secrets are options naming files (or environment variables), never values."""
    if serving:
        add("--bus", default=None, metavar="URL",
            help="read the rings from this NATS JetStream bus (nats://host:4222, tls://...) "
            "instead of ingesting: flight-md ingest nodes publish to it; no --exchange, --demo "
            "or [[exchanges]] then; TOML [bus] url (default off: one process, no NATS)")
        add("--bus-subjects", type=_subject_list, action="append", default=None,
            metavar="FILTER,...",
            help="the subjects this node consumes, its shard, e.g. 'md.*.binance.>' or "
            "'md.trades.>' (repeat or comma list); GetFlightInfo of another ring names the node "
            "that holds it; TOML [bus] subjects (default md.>)")
    else:
        add("--bus", default=None, metavar="URL",
            help="publish to this NATS JetStream bus (nats://host:4222, tls://...); TOML [bus] "
            f"url (default {_bus_default_url()})")
    add("--node-name", default=None, metavar="NAME",
        help="this node's name on the bus (1-48 of A-Z a-z 0-9 _ -), stable across restarts"
        + (": it names the durable consumer; TOML [bus] node_name (default <host>-<8 hex of "
           "the data dir>; --memory-only: of host:port)" if serving else
           "; TOML [bus] node_name (default <host>-ingest-<8 hex of what it streams>)"))
    if serving:
        add("--advertise", default=None, metavar="LOCATION",
            help="the Flight location other nodes send clients to for the rings this node "
            "holds, e.g. grpc://10.0.0.5:8815; TOML [bus] advertise (default the server's own "
            "location)")
    add("--bus-user", default=None, metavar="USER",
        help="bus login user, with --bus-password-file (or $FLIGHT_MD_BUS_PASSWORD); "
        "TOML [bus] user")
    add("--bus-password-file", type=Path, default=None, metavar="F",
        help="file holding the bus password (never on the command line); TOML [bus] "
        "password_file")
    add("--bus-token-file", type=Path, default=None, metavar="F",
        help="file holding a bus token (or $FLIGHT_MD_BUS_TOKEN); TOML [bus] token_file")
    add("--bus-creds", type=Path, default=None, metavar="F",
        help="a NATS .creds file (JWT and NKey seed); TOML [bus] creds")
    add("--bus-tls-ca", type=Path, default=None, metavar="F",
        help="CA bundle of the bus server's certificate (TLS); TOML [bus] tls_ca")
    add("--bus-tls-cert", type=Path, default=None, metavar="F",
        help="client certificate for mutual TLS to the bus, with --bus-tls-key; TOML [bus] "
        "tls_cert")
    add("--bus-tls-key", type=Path, default=None, metavar="F",
        help="the client certificate's key; TOML [bus] tls_key")
    add("--bus-stream", default=None, metavar="NAME",
        help=f"the JetStream stream's name; TOML [bus] stream (default {_bus_default_stream()})")
    if not serving:
        add("--bus-backlog-bytes", type=_POSITIVE_INT, default=None, metavar="N",
            help="payload bytes of unacked publishes kept while the bus is away; beyond it "
            "messages are dropped, counted, and serving nodes record the gap; TOML [bus] "
            f"backlog_bytes (default {_server_default('bus_backlog_bytes')})")
        add("--bus-backlog-messages", type=_POSITIVE_INT, default=None, metavar="N",
            help="... and messages; TOML [bus] backlog_messages "
            f"(default {_server_default('bus_backlog_messages')})")


def _bus_default_url() -> str:
    from flight_md.bus.options import DEFAULT_URL

    return DEFAULT_URL


def _bus_default_stream() -> str:
    from flight_md.bus.options import DEFAULT_STREAM

    return DEFAULT_STREAM


def _shutdown_arguments(add: Callable[..., Any], *, ingest: bool = False) -> None:
    if ingest:
        add("--shutdown-timeout", type=_POSITIVE, default=INGEST_SHUTDOWN_TIMEOUT_S, metavar="S",
            help="after SIGINT/SIGTERM, the seconds the stop may take: the streams, then what "
            "the bus has not acked yet (flushed for at most 5 s of it; what is left is counted "
            f"as lost in the log) (default {INGEST_SHUTDOWN_TIMEOUT_S:g})")
    else:
        add("--shutdown-timeout", type=_POSITIVE, default=SHUTDOWN_TIMEOUT_S, metavar="S",
            help="after SIGINT/SIGTERM, force the process out (exit status 1) if shutdown has "
            f"not finished (default {SHUTDOWN_TIMEOUT_S:g})")
    add("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (default INFO)")


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the Flight server",
                       description="Run the Flight server. With --demo it streams from a built-in "
                       "exchange emulator (offline); with --exchange from a real exchange or an "
                       "emulator given by --exchange-url; with --config from several exchanges; "
                       "with --bus from the ingestion nodes of a NATS JetStream bus.")
    add = p.add_argument
    _demo_argument(add)
    add("--host", default=None, metavar="ADDR",
        help="address to listen on; beyond loopback is an explicit choice (default 127.0.0.1)")
    add("--port", type=_port, default=None, help="port to listen on; 0 picks one (default 8815)")
    _stream_arguments(add, config_help="several exchanges and server settings (see below); "
                      "server options (host, port, buffer size, tokens, TLS, ingestion process, "
                      "metrics) override the file's, and --exchange adds a stream beside the "
                      "file's, set by the stream options")
    add("--follow-max-lag", type=_POSITIVE_INT, default=None, metavar="N",
        help="ticks a live tail may fall behind before it is cancelled (default: --buffer-size)")
    add("--auth-token-file", type=Path, metavar="F",
        help="bearer tokens with full access, one per line")
    add("--read-only-token-file", type=Path, metavar="F",
        help="bearer tokens that may read but not subscribe/unsubscribe/clear")
    add("--tls-cert", type=Path, metavar="F", help="server certificate (PEM), with --tls-key")
    add("--tls-key", type=Path, metavar="F", help="server private key (PEM)")
    add("--tls-client-ca", type=Path, metavar="F",
        help="mutual TLS: require client certificates signed by this CA")
    add("--ingest-process", action=argparse.BooleanOptionalAction, default=None,
        help="run ingestion (ccxt) in a child process, so that queries and live tails do not "
        "wait for it: the default, as they measured faster so (BENCHMARKS.md); "
        "--no-ingest-process runs it on a thread of the server (one interpreter, less memory), "
        "whatever ingest_process in --config says; the Python API's ServerConfig stays "
        f"in-process (default {'on' if SERVE_INGEST_PROCESS else 'off'})")
    add("--ingest-workers", type=_WORKERS, default=None, metavar="N",
        help="run ingestion in N child processes, each exchange's symbols spread evenly over "
        "them, so that parsing can use N cores (implies --ingest-process, which is one); see "
        "the README on choosing N; TOML key ingest_workers (default 1, unless --no-ingest-process)")
    add("--metrics-port", type=_port, default=None, metavar="PORT",
        help="serve Prometheus /metrics, /healthz and /readyz over HTTP on this port of --host "
        "(0 picks one) (default off)")
    add("--data-dir", type=Path, default=None, metavar="DIR",
        help="where the journal and the Parquet history live; one server per directory "
        "(default $XDG_DATA_HOME/flight-md, i.e. ~/.local/share/flight-md; --demo: its demo/)")
    add("--memory-only", action="store_true", default=None,
        help="keep nothing on disk: a restart starts empty, ranges reach only as far back as "
        "the rings")
    add("--history-uri", default=None, metavar="URI",
        help="keep the Parquet history elsewhere: a directory or s3://bucket/prefix, gs://... "
        "(default DATA_DIR)")
    add("--fsync", choices=FSYNC_MODES, default=None,
        help="what survives a power cut: always fsyncs every commit, interval once per commit "
        "interval, never leaves it to the OS; kill -9 loses at most one commit interval in "
        f"every mode (default {_server_default('fsync')})")
    add("--commit-interval", type=_POSITIVE, default=None, metavar="S",
        help="seconds between journal group commits: the most a kill -9 loses "
        f"(default {_server_default('commit_interval')})")
    add("--seal-interval", type=_POSITIVE, default=None, metavar="S",
        help="seconds between moves of the journal into the Parquet history "
        f"(default {_server_default('seal_interval')})")
    add("--retention", default=None, metavar="DURATION",
        help="history older than this is removed by whole days, e.g. 30d, 12h, none "
        "(default 30d; --demo 1d)")
    add("--max-history-bytes", default=None, metavar="SIZE",
        help="history beyond this size is removed oldest day first, e.g. 20GB, 500MiB, none "
        "(default 20GB)")
    add("--sql-timeout", type=_POSITIVE, default=None, metavar="S",
        help="seconds a Flight SQL query may run, start to last row, before it is cancelled "
        f"(default {_server_default('sql_timeout')})")
    add("--sql-memory-limit", default=None, metavar="SIZE",
        help="memory the SQL engine may use, e.g. 1GB, 512MiB (a query beyond it is refused "
        f"UNAVAILABLE) (default {_server_default('sql_memory_limit')})")
    add("--sql-max-concurrent", type=_POSITIVE_INT, default=None, metavar="N",
        help="Flight SQL queries running at once; more wait up to 1 s, then UNAVAILABLE "
        f"(default {_server_default('sql_max_concurrent')})")
    add_bus_options(add, serving=True)
    _shutdown_arguments(add)
    p.set_defaults(func=_serve)


def _ingest_parser(sub: Any) -> None:
    p = sub.add_parser("ingest", help="run an ingestion node of a NATS JetStream bus",
                       description="Stream exchanges (the same options as serve: --demo, "
                       "--exchange, --config) and publish every batch to a NATS JetStream bus "
                       "(--bus), for flight-md serve --bus nodes to serve; no Flight port. "
                       "SIGINT/SIGTERM stop it after flushing what the bus has not acked "
                       "(bounded by --shutdown-timeout).")
    add = p.add_argument
    _demo_argument(add)
    _stream_arguments(add, config_help="several exchanges and the [bus] table (see flight-md "
                      "serve --help); options override the file's, and --exchange adds a "
                      "stream beside the file's, set by the stream options")
    add_bus_options(add, serving=False)
    _shutdown_arguments(add, ingest=True)
    p.set_defaults(func=_ingest)


_DEFAULT_RE = re.compile(r"\s*\(default:? ([^()]*)\)$")


def options_markdown(command: str = "serve") -> str:
    """The README's table of ``flight-md serve`` options (``command="ingest"``: of
    ``flight-md ingest``), made from the parser itself.

    ``tests/test_readme_truth.py`` checks that the README holds exactly this table; print it
    with ``python -c "from flight_md.cli import options_markdown; print(options_markdown())"``.
    """
    sub = _Parser(prog="flight-md").add_subparsers(dest="command")
    {"serve": _serve_parser, "ingest": _ingest_parser}[command](sub)
    actions = sub.choices[command]._actions
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for action in actions:
        if not action.option_strings or action.dest == "help":
            continue
        flags = " / ".join(f"`{flag}`" if action.nargs == 0 or isinstance(
            action, argparse.BooleanOptionalAction) else
            f"`{flag} {action.metavar or action.dest.upper()}`" for flag in action.option_strings)
        if action.choices is not None:
            flags = f"`{action.option_strings[0]} {'|'.join(str(c) for c in action.choices)}`"
        help_text = action.help or ""
        match = _DEFAULT_RE.search(help_text)
        default = match.group(1) if match else ""
        meaning = help_text[:match.start()] if match else help_text
        cells = (flags, default, meaning)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def _base(args: argparse.Namespace) -> ServerConfig:
    """The ``--config`` file's settings, or the defaults of ``flight-md serve``."""
    return (load_config(args.config, ingest_process=SERVE_INGEST_PROCESS) if args.config
            else ServerConfig(ingest_process=SERVE_INGEST_PROCESS))


def _streams(args: argparse.Namespace, base: ServerConfig,
             buffer_size: int) -> tuple[StreamConfig, ...]:
    """The file's streams and the one of ``--exchange`` (set by the stream options)."""
    streams = base.streams
    stream_options = {name: getattr(args, name) for name in _STREAM_OPTIONS
                      if getattr(args, name) is not None}
    if args.exchange:
        symbols = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
        streams = (*streams, StreamConfig(
            args.exchange, symbols, url=args.exchange_url, testnet=args.testnet,
            buffer_size=buffer_size, api_key=secret_from_env(args.api_key_env),
            api_secret=secret_from_env(args.api_secret_env), **stream_options))
    elif args.symbols or args.exchange_url or stream_options or args.testnet:
        given = ["--symbols" if args.symbols else "", "--exchange-url" if args.exchange_url else "",
                 "--testnet" if args.testnet else "",
                 *(f"--{name.replace('_', '-')}" for name in stream_options)]
        raise FlightMdError(f"{', '.join(g for g in given if g)} set a stream of --exchange; "
                            "add --exchange ID (streams of --config take their settings from "
                            "the file)")
    return streams


def _bus_fields(args: argparse.Namespace, base: ServerConfig, *,
                required: bool) -> dict[str, Any]:
    """The bus settings: the options over the file's ``[bus]`` (options win). ``required``
    (``ingest``): a bus even with neither, on the default (loopback) URL."""
    connection = {key: getattr(args, option, None) for key, option in _BUS_OPTIONS.items()}
    given = [f"--{_BUS_OPTIONS[k].replace('_', '-')}" for k, v in connection.items()
             if v is not None and k != "url"]
    subjects = getattr(args, "bus_subjects", None)
    if base.bus is None and args.bus is None and not required:
        given += [f"--{name.replace('_', '-')}" for name in ("bus_subjects", "advertise",
                                                             "node_name")
                  if getattr(args, name, None) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} set a node of the bus; add --bus URL "
                              "(or a [bus] table with its url in --config)")
        return {}
    fields: dict[str, Any] = {"bus": bus_options(connection, base.bus)}
    if subjects is not None:
        fields["bus_subjects"] = tuple(f for group in subjects for f in group)
    else:
        fields["bus_subjects"] = base.bus_subjects
    for name in ("node_name", "advertise", "bus_backlog_bytes", "bus_backlog_messages"):
        value = getattr(args, name, None)
        fields[name] = value if value is not None else getattr(base, name)
    return fields


_BUS_OPTIONS: Final = {"url": "bus", "stream": "bus_stream", "user": "bus_user",
                       "password_file": "bus_password_file", "token_file": "bus_token_file",
                       "creds": "bus_creds", "tls_ca": "bus_tls_ca", "tls_cert": "bus_tls_cert",
                       "tls_key": "bus_tls_key"}
"""``[bus]`` connection keys (:data:`flight_md.config.BUS_CONNECTION_KEYS`) and their options."""


def build_config(args: argparse.Namespace) -> ServerConfig:
    """Merge ``serve`` options over the config file (options win)."""
    base = _base(args)
    buffer_size = args.buffer_size if args.buffer_size is not None else base.buffer_size
    streams = _streams(args, base, buffer_size)
    tokens = base.auth_tokens + (read_tokens(args.auth_token_file) if args.auth_token_file else ())
    read_only = base.read_only_tokens + (
        read_tokens(args.read_only_token_file) if args.read_only_token_file else ())
    return ServerConfig(
        host=args.host or base.host, port=args.port if args.port is not None else base.port,
        buffer_size=buffer_size, streams=streams, demo=args.demo or (), auth_tokens=tokens,
        read_only_tokens=read_only, tls_cert=args.tls_cert or base.tls_cert,
        tls_key=args.tls_key or base.tls_key,
        tls_client_ca=args.tls_client_ca or base.tls_client_ca,
        follow_max_lag=args.follow_max_lag if args.follow_max_lag is not None
        else base.follow_max_lag,
        **_ingest_options(args, base),
        metrics_port=args.metrics_port if args.metrics_port is not None else base.metrics_port,
        **{name: getattr(args, name) if getattr(args, name) is not None else getattr(base, name)
           for name in _PERSIST_OPTIONS},
        **_bus_fields(args, base, required=False))


def build_ingest_config(args: argparse.Namespace) -> ServerConfig:
    """``ingest`` options over the config file: the streams (or demo venues), the book depth,
    and the bus (on the default URL unless told); nothing on disk, no Flight port. Without
    ``--node-name`` the node derives its name
    (:func:`flight_md.bus.ingest.default_node_name`)."""
    base = _base(args)
    buffer_size = args.buffer_size if args.buffer_size is not None else base.buffer_size
    config = ServerConfig(
        buffer_size=buffer_size, streams=_streams(args, base, buffer_size),
        demo=args.demo or (), memory_only=True,
        book_depth=args.book_depth if args.book_depth is not None else base.book_depth,
        **_bus_fields(args, base, required=True))
    if not config.demo and not config.streams:
        raise ConfigError("nothing to ingest: give --exchange ID, --demo or a --config file "
                          "with [[exchanges]]")
    return config


def _ingest_options(args: argparse.Namespace, base: ServerConfig) -> dict[str, Any]:
    """``ingest_process`` and ``ingest_workers``: the options over the file's (whose
    ``ingest_process`` is :data:`SERVE_INGEST_PROCESS` unless it sets it);
    ``--no-ingest-process`` runs ingestion on a thread whatever the file says."""
    if args.ingest_process is False:
        if args.ingest_workers is not None:
            raise ConfigError("--ingest-workers runs ingestion in worker processes; drop "
                              "--no-ingest-process")
        return {"ingest_process": False, "ingest_workers": None}
    return {"ingest_process": bool(args.ingest_process) or base.ingest_process,
            "ingest_workers": args.ingest_workers if args.ingest_workers is not None
            else base.ingest_workers}


_PERSIST_OPTIONS: Final = ("memory_only", "data_dir", "history_uri", "fsync", "commit_interval",
                           "seal_interval", "retention", "max_history_bytes", "book_depth",
                           "sql_timeout", "sql_memory_limit", "sql_max_concurrent")
"""``serve`` options that set the ServerConfig field of the same name (unset: the file's)."""


_STREAM_OPTIONS: Final = ("channel", "mode", "urls", "poll_interval", "heartbeat_interval",
                          "reconnect_delay", "max_reconnect_delay", "max_reconnect_attempts",
                          "rest_fallback_after", "ws_probe_interval", "ccxt_options", "decoder")
"""``serve`` options that set a StreamConfig field of the same name (unset: its default)."""


def _serve(args: argparse.Namespace) -> int:
    from flight_md.app import MarketDataApp, check_listen_address, check_serving_bus

    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = build_config(args)
    check_serving_bus(config)
    if config.bus is not None:
        require_bus()
    check_listen_address(config.host, config.port)  # before anything is logged or started
    if not config.demo and not config.streams and config.bus is None:
        logger.warning("no exchange configured: serving an empty store (try --demo, or "
                       "--exchange binance --symbols BTC/USDT)")
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.auth_tokens:
        logger.warning("listening on %s without --auth-token-file: anyone who can reach this "
                       "address can read and control the server", config.host)
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        logger.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    app = MarketDataApp(config)
    try:
        app.start()
        data = (f"data in {app.persistence.data_dir.path}" if app.persistence is not None
                else "memory only")
        if app.bus is not None and config.bus is not None:
            data = f"bus node {app.bus.node} on {config.bus.display_url}; {data}"
        print(f"flight-md serving on {app.location}"
              + (f" (demo: emulated {', '.join(config.demo)} market"
                 f"{'s' if len(config.demo) > 1 else ''}; {data})" if config.demo
                 else f" ({data})"), flush=True)
        while not stop.wait(0.5) and app.fatal is None:
            pass
    finally:
        # SIGINT/SIGTERM must stop the process within 5 s even with unread streams open.
        watchdog = threading.Timer(args.shutdown_timeout, _force_exit, (args.shutdown_timeout,))
        watchdog.daemon = True
        watchdog.start()
        app.stop(grace=1.5)
        watchdog.cancel()
    if app.fatal is not None:
        raise app.fatal  # one line, exit 2 (main)
    logger.info("stopped")
    return 0


def require_bus() -> None:
    """Fail with one line when the ``bus`` extra is not installed (nats-py)."""
    try:
        import nats  # noqa: F401 - only asked for with a bus
    except ImportError:
        raise ConfigError("the bus needs nats-py: install flight-md[bus]") from None


def _ingest(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = build_ingest_config(args)
    require_bus()
    from flight_md.bus.ingest import run_ingest_node

    return int(run_ingest_node(config, shutdown_timeout=args.shutdown_timeout) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flight-md",
                                     description="Live crypto market data over Arrow Flight.")
    parser.add_argument("--version", action="version", version=f"flight-md {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _serve_parser(sub)
    _ingest_parser(sub)
    from flight_md.emulator import command as emulator_command

    emulator = sub.add_parser("emulator", help="run the local exchange emulator",
                              description="Run an exchange emulator on loopback, speaking one venue's "
                              "real public protocol (--exchange): synthetic markets or recorded "
                              "sessions.")
    emulator_command.add_arguments(emulator)
    emulator.set_defaults(func=emulator_command.run)
    fault = sub.add_parser("emulator-fault", help="switch a fault on a running emulator",
                           description="Inject or clear faults on a running emulator.")
    emulator_command.add_fault_arguments(fault)
    fault.set_defaults(func=emulator_command.run_fault)
    from flight_md import record as record_command

    recorder = sub.add_parser("record", help="record a live exchange session for replay",
                              description="Record an exchange session (REST and websocket "
                              "frames) for flight-md emulator --replay.")
    record_command.add_arguments(recorder)
    recorder.set_defaults(func=record_command.run)
    try:
        from flight_md import terminal
    except ImportError:  # pragma: no cover
        pass
    else:
        terminal.register(cast(Any, sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flight-md`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StartupError as exc:
        print(f"flight-md: {exc}", file=sys.stderr)
        return 1
    except FlightMdError as exc:
        print(f"flight-md: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

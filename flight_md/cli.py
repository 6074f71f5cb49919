"""The ``flight-md`` command.

``flight-md serve`` runs the server; ``flight-md emulator`` runs the exchange emulator alone;
``get``, ``status``, ``top`` and ``tail`` are terminal views over a running server. Errors
print as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flight_md import __version__
from flight_md.config import ServerConfig, StreamConfig, load_config, read_tokens, secret_from_env
from flight_md.errors import FlightMdError, StartupError

__all__ = ["main"]

logger = logging.getLogger("flight_md")

SHUTDOWN_TIMEOUT_S = 4.5
"""Seconds a signalled ``serve`` may spend shutting down before the watchdog forces it out."""
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


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the Flight server",
                       description="Run the Flight server. With --demo it streams from a built-in "
                       "exchange emulator (offline); with --exchange from a real exchange or an "
                       "emulator given by --exchange-url; with --config from several exchanges.")
    p.add_argument("--demo", action="store_true",
                   help="stream from a built-in synthetic exchange on loopback (no network)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8815; 0 picks one)")
    p.add_argument("--config", type=Path, help="TOML file describing the server and exchanges")
    p.add_argument("--exchange", help="ccxt exchange id to stream, e.g. binance")
    p.add_argument("--symbols", default="", help="comma-separated symbols, e.g. BTC/USDT,ETH/USDT")
    p.add_argument("--channel", choices=("ticker", "bidask"), default="ticker",
                   help="ticker: full 24h ticker; bidask: real-time best bid/ask")
    p.add_argument("--exchange-url", help="point ccxt's REST and websocket URLs at this base URL "
                   "(e.g. an emulator: http://127.0.0.1:9000)")
    p.add_argument("--mode", choices=("auto", "websocket", "rest"), default="auto")
    p.add_argument("--poll-interval", type=float, default=2.0, help="REST polling seconds")
    p.add_argument("--buffer-size", type=int, default=None, help="ticks kept per symbol (10000)")
    p.add_argument("--heartbeat-interval", type=float, default=30.0,
                   help="seconds of silence before a stream is stale and reconnected")
    p.add_argument("--reconnect-delay", type=float, default=5.0)
    p.add_argument("--max-reconnect-delay", type=float, default=300.0)
    p.add_argument("--testnet", action="store_true", help="use the exchange's sandbox URLs")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="environment variable holding the exchange API key")
    p.add_argument("--api-secret-env", default=None, metavar="VAR",
                   help="environment variable holding the exchange API secret")
    p.add_argument("--auth-token-file", type=Path, help="bearer tokens with full access, one per line")
    p.add_argument("--read-only-token-file", type=Path,
                   help="bearer tokens that may read but not subscribe/unsubscribe/clear")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--tls-client-ca", type=Path, help="require client certificates from this CA")
    p.add_argument("--ingest-process", action=argparse.BooleanOptionalAction, default=None,
                   help="run ingestion (ccxt) in a child process, so that queries do not wait "
                   "for it (recommended under heavy ingest or query load); --no-ingest-process "
                   "overrides ingest_process = true in --config")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus /metrics, /healthz and /readyz over HTTP on this port "
                   "of --host (0 picks one; default: off)")
    p.add_argument("--shutdown-timeout", type=float, default=SHUTDOWN_TIMEOUT_S, metavar="S",
                   help="after SIGINT/SIGTERM, force the process to exit (status 1) if shutdown has "
                   f"not finished within S seconds (default {SHUTDOWN_TIMEOUT_S:g})")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(func=_serve)


def build_config(args: argparse.Namespace) -> ServerConfig:
    """Merge ``serve`` options over the config file (options win)."""
    base = load_config(args.config) if args.config else ServerConfig()
    streams = base.streams
    buffer_size = args.buffer_size if args.buffer_size is not None else base.buffer_size
    if args.exchange:
        symbols = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
        streams = (*streams, StreamConfig(
            args.exchange, symbols, channel=args.channel, mode=args.mode, url=args.exchange_url,
            testnet=args.testnet, buffer_size=buffer_size,
            heartbeat_interval=args.heartbeat_interval, reconnect_delay=args.reconnect_delay,
            max_reconnect_delay=args.max_reconnect_delay, poll_interval=args.poll_interval,
            api_key=secret_from_env(args.api_key_env),
            api_secret=secret_from_env(args.api_secret_env)))
    elif args.symbols or args.exchange_url:
        raise FlightMdError("--symbols and --exchange-url need --exchange")
    tokens = base.auth_tokens + (read_tokens(args.auth_token_file) if args.auth_token_file else ())
    read_only = base.read_only_tokens + (
        read_tokens(args.read_only_token_file) if args.read_only_token_file else ())
    return ServerConfig(
        host=args.host or base.host, port=args.port if args.port is not None else base.port,
        buffer_size=buffer_size, streams=streams, demo=args.demo, auth_tokens=tokens,
        read_only_tokens=read_only, tls_cert=args.tls_cert or base.tls_cert,
        tls_key=args.tls_key or base.tls_key,
        tls_client_ca=args.tls_client_ca or base.tls_client_ca,
        follow_max_lag=base.follow_max_lag,
        ingest_process=args.ingest_process if args.ingest_process is not None
        else base.ingest_process,
        metrics_port=args.metrics_port if args.metrics_port is not None else base.metrics_port)


def _serve(args: argparse.Namespace) -> int:
    from flight_md.app import MarketDataApp, check_listen_address

    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = build_config(args)
    if not args.shutdown_timeout > 0:
        raise FlightMdError(f"--shutdown-timeout must be > 0 seconds, got {args.shutdown_timeout:g}")
    check_listen_address(config.host, config.port)  # before anything is logged or started
    if not config.demo and not config.streams:
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
        print(f"flight-md serving on {app.location}"
              + (" (demo: emulated binance market)" if config.demo else ""), flush=True)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flight-md",
                                     description="Live crypto market data over Arrow Flight.")
    parser.add_argument("--version", action="version", version=f"flight-md {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _serve_parser(sub)
    from flight_md.emulator import command as emulator_command

    emulator = sub.add_parser("emulator", help="run the local exchange emulator",
                              description="Run an exchange emulator (Binance spot or Bybit v5 "
                              "protocol) on loopback: synthetic markets or recorded sessions.")
    emulator_command.add_arguments(emulator)
    emulator.set_defaults(func=emulator_command.run)
    fault = sub.add_parser("emulator-fault", help="switch a fault on a running emulator",
                           description="Inject or clear faults on a running emulator.")
    emulator_command.add_fault_arguments(fault)
    fault.set_defaults(func=emulator_command.run_fault)
    try:
        from flight_md import terminal
    except ImportError:  # pragma: no cover
        pass
    else:
        terminal.register(sub)
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

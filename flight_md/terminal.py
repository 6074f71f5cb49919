"""Terminal views over a running server: ``flight-md get``, ``status``, ``top`` and ``tail``.

:func:`register` adds the four subcommands to the ``flight-md`` parser (each sets
``func=handler``, ``handler(args) -> int``); :func:`main` runs them alone. They are views over
the analyst's client, :class:`flight_md_client.MarketDataClient`: its connection options, its
error mapping (:mod:`flight_md_client.errors`, the one translation of pyarrow's errors), its
live tail (:class:`flight_md_client.LiveTail`) and its time parser
(:func:`flight_md_client.to_ms`). What is the terminal's own: the options and where their
defaults come from, the text (tables, hints that name an option), and the exit codes. Tickets
are checked locally with :mod:`flight_md.tickets` before anything is sent, so a bad argument
is refused with the server's own message.

The client is a distribution of its own (``flight-md-client``, in ``clients/python``). Without
it the four commands still parse their options, then print one line that says how to install
it, and exit 1; ``flight-md serve`` and the emulator never need it.

Exit codes: 0 done (``q`` in ``top``, ``--count``/``--iterations`` reached, the server ended a
tail); 1 the server is unreachable or refused the request (or the client is not installed), as
one line on stderr and never a traceback; 2 a bad argument; 130 Ctrl-C.

``get`` and ``tail`` read any channel (``--channel ticker|bidask|trades|book``; without it the
symbol's ticker-like one) or bars of trades (``--bars 1m``); ``status`` and ``top`` show the
trades and book streams beside the ticks.

Every command takes ``--location`` (default ``$FLIGHT_MD_LOCATION`` or
``grpc://127.0.0.1:8815``), ``--token`` / ``--token-file`` / ``$FLIGHT_MD_TOKEN`` (bearer
token), ``--tls-root-certs FILE`` and ``--tls-cert FILE --tls-key FILE`` (mutual TLS), and
``--timeout`` (seconds per request; live tails have none).

Prices print with the market's precision, learnt from the data (there is no market metadata
on the wire yet): the quoted prices of a symbol (``bid``, ``ask``, ``open``, ``high``,
``low``, ``close``; a bar's prices are trade prices, quoted too) print as the exchange sent
them, and ``price`` (on the ``bidask`` channel the mid, an average of two quotes) and a bar's
``vwap`` with at most one decimal more than those, so float noise such as
``64781.759999999995`` never shows. See :class:`PricePrecision`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import select
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final, Self, TextIO

import pyarrow as pa

from flight_md.core.bars import BarInterval
from flight_md.errors import FlightMdError
from flight_md.normalize import Channel
from flight_md.tickets import Query, Target, format_ticket

CLIENT_MISSING: str | None = None
"""Why the client cannot be imported (one line for the user), or ``None`` when it can."""
try:
    from flight_md_client import (
        DEFAULT_LOCATION,
        FlightMdClientError,
        InvalidLocation,
        MarketDataClient,
        SlowConsumer,
        TailEnd,
        TimedOut,
        Unauthenticated,
        format_ms,
        to_ms,
        with_datetimes,
    )
except ImportError:  # `pip install .` alone: the client is a distribution of its own
    CLIENT_MISSING = ("needs the Python client (the flight-md-client distribution), which is "
                      "not installed; install it from the flight_md source tree with: "
                      "pip install ./clients/python")

__all__ = ["CLIENT_MISSING", "main", "register"]

DEFAULT_TIMEOUT_S: Final = 10.0
TABLE_LATEST: Final = 20
"""Rows ``get`` prints as a table when no ``--latest``/``--start``/``--end`` is given."""
TIME_COLUMNS: Final = ("timestamp", "receive_timestamp", "bar_start")
TAIL_COLUMNS: Final = ("price", "bid", "ask", "volume")
"""What ``tail`` shows of a tick by default; :data:`TAIL_DEFAULTS` for the other channels."""
TAIL_DEFAULTS: Final[dict[str, tuple[str, ...]]] = {
    Channel.TRADES: ("side", "price", "amount", "trade_id"),
    Channel.BOOK: ("bids", "asks", "nonce"),
    "bars": ("open", "high", "low", "close", "volume", "vwap", "trades"),
}
LEVELS_SHOWN: Final = 3
"""Book levels a side shows in a table cell or a tail line (CSV and Parquet keep them all)."""
TOP_COLUMNS: Final = ("symbol", "exchange", "price", "bid", "ask")
"""What ``top`` asks of the snapshot on every refresh."""
QUOTED_COLUMNS: Final = ("bid", "ask", "open", "high", "low", "close")
"""Prices as the exchange quoted them: their decimals are the market's display precision."""
AVERAGED_COLUMNS: Final = ("price", "vwap")
"""Prices that are averages of quoted ones (a mid, a bar's VWAP): one decimal more."""
PRICE_COLUMNS: Final = (*AVERAGED_COLUMNS, *QUOTED_COLUMNS)
MAX_PRICE_DECIMALS: Final = 12
"""A quoted price with more decimals than this is float noise itself, not precision."""
UNQUOTED_DIGITS: Final = 12
"""Significant digits of a price shown without any quoted price of its symbol to go by."""
EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


class CommandError(Exception):
    """A failure reported as one line on stderr (``flight-md: <message>``)."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- connection ------------------------------------------------------------------------------


def describe(error: FlightMdClientError, location: str) -> str:
    """One line for an error of the client: its message, and where the terminal has one, the
    hint a terminal user needs (the option to pass, who could not keep up)."""
    if isinstance(error, TimedOut):
        return f"{location} did not answer in time (see --timeout)"
    if isinstance(error, Unauthenticated):
        return f"{error.message} (pass --token, --token-file or set FLIGHT_MD_TOKEN)"
    if isinstance(error, SlowConsumer):
        return f"{error.message} (the terminal could not keep up)"
    return str(error)  # the client's message


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {what} {path!r}: {exc.strerror}", EXIT_USAGE) from None


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token).strip() or None
    if args.token_file:
        for line in _read_file(args.token_file, "--token-file").decode().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                return line
        raise CommandError(f"--token-file {args.token_file!r} holds no token", EXIT_USAGE)
    env = os.environ.get("FLIGHT_MD_TOKEN", "").strip()
    return env or None


def connect(args: argparse.Namespace) -> MarketDataClient:
    """A :class:`~flight_md_client.MarketDataClient` from the common options (nothing is sent
    yet); option errors are :class:`CommandError` with exit code 2, naming the option."""
    location = args.location or os.environ.get("FLIGHT_MD_LOCATION") or DEFAULT_LOCATION
    # The files are read here, not by the client, so that a bad one is named by its option.
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CommandError("mutual TLS needs both --tls-cert and --tls-key", EXIT_USAGE)
    root = _read_file(args.tls_root_certs, "--tls-root-certs") if args.tls_root_certs else None
    chain = _read_file(args.tls_cert, "--tls-cert") if args.tls_cert else None
    key = _read_file(args.tls_key, "--tls-key") if args.tls_key else None
    token = _token(args)
    try:
        return MarketDataClient(location, token=token, tls_root_certs=root, cert_chain=chain,
                                private_key=key, timeout=args.timeout)
    except InvalidLocation as exc:
        raise CommandError(f"invalid --location {exc.location!r}: {exc.reason}",
                           EXIT_USAGE) from None
    except ValueError as exc:  # TLS options with a grpc:// location: the client's own words
        raise CommandError(str(exc), EXIT_USAGE) from None


def _command(handler: Callable[[argparse.Namespace, MarketDataClient], int]
             ) -> Callable[[argparse.Namespace], int]:
    """Run a handler with a client; every failure becomes one line and an exit code."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        if CLIENT_MISSING is not None:
            print(f"flight-md: {getattr(args, 'command', None) or 'this command'} "
                  f"{CLIENT_MISSING}", file=sys.stderr)
            return EXIT_ERROR
        md: MarketDataClient | None = None
        try:
            md = connect(args)
            return handler(args, md)
        except CommandError as exc:
            print(f"flight-md: {exc}", file=sys.stderr)
            return exc.code
        except FlightMdClientError as exc:  # the server refused, or could not be reached
            where = md.location if md is not None else str(args.location)
            print(f"flight-md: {describe(exc, where)}", file=sys.stderr)
            return EXIT_ERROR
        except FlightMdError as exc:  # refused locally by the ticket grammar
            print(f"flight-md: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # e.g. `flight-md tail X | head`: the reader has had enough
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return EXIT_OK
        finally:
            if md is not None:
                md.close()

    return run


# -- formatting ------------------------------------------------------------------------------


def format_time(ms: int | None) -> str:
    """Unix ms as ISO-8601 UTC with milliseconds: ``2026-11-23T10:00:00.123Z``."""
    return "-" if ms is None else format_ms(ms)


def format_number(value: Any) -> str:
    """A float in plain positional notation, as short as round-trips (no ``1e-05``)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = format(Decimal(repr(value)), "f")
        return text.removesuffix(".0")
    return str(value)


def _decimals(value: float) -> int:
    """Decimals of the shortest text that round-trips ``value`` (``64781.7`` -> 1)."""
    exponent = Decimal(repr(value)).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


class PricePrecision:
    """Display decimals per (exchange, symbol), learnt from the quoted prices seen so far.

    A symbol's precision is the most decimals any of its quoted prices (:data:`QUOTED_COLUMNS`)
    has had: the market's tick size as the data shows it. ``price`` and ``vwap``
    (:data:`AVERAGED_COLUMNS`) get one decimal more (a mid of two quotes needs at most that;
    a VWAP is rounded as far), a quoted column its own precision; the text is the
    shortest one of the value rounded to that, so ``64781.759999999995`` prints as
    ``64781.76``. A price whose symbol has shown no quote yet prints with
    :data:`UNQUOTED_DIGITS` significant digits.
    """

    def __init__(self) -> None:
        self._decimals: dict[tuple[Any, Any], int] = {}

    def learn(self, row: dict[str, Any]) -> None:
        """Take the quoted prices of one row (a tick, or a snapshot row) into account."""
        key = (row.get("exchange"), row.get("symbol"))
        seen = [_decimals(v) for c in QUOTED_COLUMNS
                if isinstance(v := row.get(c), float) and math.isfinite(v)]
        seen = [d for d in seen if d <= MAX_PRICE_DECIMALS]
        if seen:
            self._decimals[key] = max(max(seen), self._decimals.get(key, 0))

    def format(self, row: dict[str, Any], name: str, value: Any) -> str:
        """``value`` of column ``name`` in ``row``: prices with the symbol's precision."""
        if name not in PRICE_COLUMNS or not isinstance(value, float) or not math.isfinite(value):
            return format_number(value)
        places = self._decimals.get((row.get("exchange"), row.get("symbol")))
        if places is None:
            return format_number(float(f"{value:.{UNQUOTED_DIGITS}g}"))
        return format_number(round(value, places + 1 if name in AVERAGED_COLUMNS else places))


def format_levels(levels: Sequence[dict[str, Any]], shown: int = LEVELS_SHOWN) -> str:
    """Book levels, best first, as ``amount@price`` (``0.5@64000.1 1.2@64000``), the first
    ``shown`` of them and how many more there are."""
    parts = [f"{format_number(level.get('amount'))}@{format_number(level.get('price'))}"
             for level in levels[:shown]]
    if len(levels) > shown:
        parts.append(f"(+{len(levels) - shown})")
    return " ".join(parts)


def format_age(ms: float | None) -> str:
    """A duration for humans: ``850ms``, ``12.3s``, ``3m04s``, ``2h05m``, ``3d04h``."""
    if ms is None:
        return "-"
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _cell(name: str, value: Any, row: dict[str, Any] | None = None,
          precision: PricePrecision | None = None) -> str:
    if value is None:
        return "-"
    if name in TIME_COLUMNS and isinstance(value, int):
        return format_time(value)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return format_levels(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if precision is not None and row is not None:
        return precision.format(row, name, value)
    return format_number(value)


def grid(headers: Sequence[str], rows: Sequence[Sequence[str]],
         right: Sequence[bool] | None = None, width: int | None = None) -> tuple[list[str], int]:
    """Align cells in columns two spaces apart.

    Args:
        right: Per column, whether to right-align (numbers).
        width: Drop trailing columns that do not fit in this many characters.

    Returns:
        The lines and the number of columns dropped.
    """
    sizes = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    keep = len(headers)
    if width is not None:
        total = 0
        for index, size in enumerate(sizes):
            total += size + (2 if index else 0)
            if total > width and index > 0:
                keep = index
                break
    right = right or [False] * len(headers)

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(sizes[i]) if right[i] else c.ljust(sizes[i])
               for i, c in enumerate(cells[:keep])]
        return "  ".join(out).rstrip()

    return [line(headers), *(line(r) for r in rows)], len(headers) - keep


def table_lines(table: pa.Table, width: int | None = None) -> tuple[list[str], int]:
    """A table as aligned text: ISO UTC times, plain numbers (prices with their market's
    precision, see :class:`PricePrecision`), ``-`` for nulls."""
    names = table.column_names
    records = table.to_pylist()
    precision = PricePrecision()
    for record in records:
        precision.learn(record)
    rows = [[_cell(n, record[n], record, precision) for n in names] for record in records]
    right = [(pa.types.is_integer(t) or pa.types.is_floating(t)) and n not in TIME_COLUMNS
             for n, t in zip(names, table.schema.types)]
    return grid(names, rows, right, width)


def with_times(table: pa.Table, as_text: bool) -> pa.Table:
    """Time columns typed ``timestamp[ms, UTC]`` (Parquet) or ISO-8601 text (CSV); list
    columns joined with commas, book sides as JSON ``[[price, amount], ...]`` (CSV has no
    lists)."""
    import pyarrow.compute as pc

    table = with_datetimes(table)
    if not as_text:
        return table
    for index, (name, kind) in enumerate(zip(table.column_names, table.schema.types)):
        if name in TIME_COLUMNS and pa.types.is_timestamp(kind):
            column = pc.strftime(table.column(index), format="%Y-%m-%dT%H:%M:%SZ")
        elif pa.types.is_list(kind) and pa.types.is_struct(kind.value_type):
            # Book sides: ccxt's [[price, amount], ...] as JSON text, which CSV can hold.
            column = pa.array([None if levels is None else json.dumps(
                [[level["price"], level["amount"]] for level in levels])
                for levels in table.column(index).to_pylist()], pa.string())
        elif pa.types.is_list(kind):
            column = pc.binary_join(table.column(index), ",")
        else:
            continue
        table = table.set_column(index, name, column)
    return table


# -- time arguments --------------------------------------------------------------------------


def parse_time_arg(text: str, now_ms: int | None = None) -> int:
    """``--start``/``--end``: Unix ms, ISO-8601 (no offset: UTC), ``now``, or an age such as
    ``90s``, ``5m``, ``2h``, ``1d`` (that long ago; ``5m ago`` and ``-5m`` also work): the
    forms of :func:`flight_md_client.to_ms`, which parses them."""
    try:
        return int(to_ms(text, "time", now_ms=now_ms))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}; expected Unix ms, ISO-8601 such as 2026-11-23T10:00:00Z, "
            "'now', or an age such as 90s, 5m, 2h, 1d") from None


def _columns(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


# -- get -------------------------------------------------------------------------------------


def _get_query(args: argparse.Namespace) -> Query:
    columns = _columns(args.columns)
    export = args.csv is not None or args.parquet is not None
    ranged = args.start is not None or args.end is not None
    latest = args.latest
    if args.target == "*":
        if latest is not None or ranged:
            raise CommandError("'*' (the market snapshot) takes no --latest, --start or --end",
                               EXIT_USAGE)
        if args.bars is not None:
            raise CommandError("'*' (the market snapshot) takes no --bars; ask a symbol for "
                               "its bars", EXIT_USAGE)
        return Query(Target.SNAPSHOT, exchange=args.exchange, columns=columns,
                     channel=args.channel)
    if latest is None and not ranged and not export:
        latest = TABLE_LATEST
    if args.target == "@events":
        given = [option for option, value in (("--columns", columns),
                                              ("--channel", args.channel),
                                              ("--bars", args.bars)) if value is not None]
        if given:
            raise CommandError(f"'@events' takes no {' or '.join(given)}", EXIT_USAGE)
        return Query(Target.EVENTS, exchange=args.exchange, latest=latest, start=args.start,
                     end=args.end)
    return Query(Target.TICKS, symbol=args.target, exchange=args.exchange, latest=latest,
                 start=args.start, end=args.end, columns=columns, channel=args.channel,
                 bars=args.bars)


@_command
def get_command(args: argparse.Namespace, md: MarketDataClient) -> int:
    """``flight-md get``: ticks as an aligned table, CSV or Parquet."""
    table = md.get(format_ticket(_get_query(args)))  # the ticket checked locally, as is
    if args.parquet is not None:
        import pyarrow.parquet as pq

        try:
            pq.write_table(with_times(table, as_text=False), args.parquet)
        except OSError as exc:
            raise CommandError(f"cannot write {args.parquet!r}: {exc}") from None
        print(f"wrote {table.num_rows} rows to {args.parquet}", file=sys.stderr)
        return EXIT_OK
    if args.csv is not None:
        import pyarrow.csv as pacsv

        text_table = with_times(table, as_text=True)
        if args.csv == "-":
            sys.stdout.flush()
            pacsv.write_csv(text_table, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            try:
                pacsv.write_csv(text_table, args.csv)
            except OSError as exc:
                raise CommandError(f"cannot write {args.csv!r}: {exc}") from None
            print(f"wrote {table.num_rows} rows to {args.csv}", file=sys.stderr)
        return EXIT_OK
    tty = sys.stdout.isatty()
    lines, hidden = table_lines(table, shutil.get_terminal_size().columns if tty else None)
    sys.stdout.write("\n".join(lines) + "\n")
    if hidden:
        print(f"({hidden} columns do not fit; choose with --columns, or use --csv)",
              file=sys.stderr)
    if table.num_rows == 0:
        print("(no rows)", file=sys.stderr)
    return EXIT_OK


# -- status ----------------------------------------------------------------------------------


def _ingestion(server: dict[str, Any]) -> str:
    """``off``, ``on`` (on a thread of the server, or not said), or ``out of process`` in
    child processes (``flight-md serve``'s default)."""
    if not server.get("ingestion"):
        return "off"
    return "out of process" if server.get("ingestion_mode") == "process" else "on"


def status_lines(status: dict[str, Any], location: str) -> list[str]:
    """The ``status`` action's result as text."""
    server = status.get("server", {})
    refused = server.get("refused_requests") or {}
    lines = [f"server {location}: up {format_age(server.get('uptime_s', 0) * 1000)}, "
             f"buffer {server.get('buffer_size', '-')} ticks per symbol, ingestion "
             f"{_ingestion(server)}, {server.get('events', 0)} events, "
             f"{sum(refused.values())} refused requests"
             + (f" ({', '.join(f'{k} {v}' for k, v in sorted(refused.items()))})"
                if refused else "")]
    exchanges = status.get("exchanges") or {}
    if exchanges:
        rows = []
        for name, ex in sorted(exchanges.items()):
            bad = sum((ex.get("bad_frames") or {}).values())
            rows.append([name, str(ex.get("state", "-")), str(ex.get("mode", "-")),
                         str(ex.get("channel", "-")), str(ex.get("reconnects", 0)),
                         str(len(ex.get("symbols") or [])), str(bad),
                         str(ex.get("last_error") or "-")])
        lines.append("")
        lines += grid(["EXCHANGE", "STATE", "MODE", "CHANNEL", "RECONNECTS", "SYMBOLS",
                       "BAD FRAMES", "LAST ERROR"], rows,
                      [False, False, False, False, True, True, True, False])[0]
    symbols = status.get("symbols") or []
    lines.append("")
    if not symbols:
        lines.append("no symbols buffered")
        return lines
    # A CHANNEL column once anything beside ticker-like ticks is streamed (trades, books).
    channels = any(s.get("channel") not in (None, Channel.TICKER, Channel.BIDASK)
                   for s in symbols)
    rows = [[s["exchange"], s["symbol"], *([str(s.get("channel") or "-")] if channels else []),
             "yes" if s.get("subscribed") else "no",
             str(s.get("ticks_stored", 0)), str(s.get("ticks_received", 0)),
             str(s.get("ticks_dropped", 0)), format_age(s.get("age_ms")),
             "STALE" if s.get("stale") else "ok", format_time(s.get("last_timestamp"))]
            for s in symbols]
    headers = ["EXCHANGE", "SYMBOL", *(["CHANNEL"] if channels else []), "SUBSCRIBED",
               "STORED", "RECEIVED", "DROPPED", "AGE", "FRESHNESS",
               "NEWEST " + ("ROW" if channels else "TICK") + " (EXCHANGE TIME)"]
    right = [False, False, *([False] if channels else []), False, True, True, True, True,
             False, False]
    lines += grid(headers, rows, right)[0]
    return lines


@_command
def status_command(args: argparse.Namespace, md: MarketDataClient) -> int:
    """``flight-md status``: connection states, reconnects, per-symbol counters and ages."""
    status = md.status()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print("\n".join(status_lines(status, md.location)))
    return EXIT_OK


# -- top -------------------------------------------------------------------------------------

_COLORS: Final = {"connected": "32", "streaming": "32", "polling": "32", "ok": "32",
                  "connecting": "33", "reconnecting": "33", "stale": "33",
                  "disconnected": "31", "failed": "31", "error": "31"}


@dataclass
class TopModel:
    """What ``top`` shows, updated from one ``status`` and one ``*`` snapshot per refresh."""

    location: str
    previous: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    rates: dict[tuple[str, str], float] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    prices: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    updated: float = 0.0
    precision: PricePrecision = field(default_factory=PricePrecision)
    trade_previous: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    trade_rates: dict[tuple[str, str], float] = field(default_factory=dict)
    traded: set[tuple[str, str]] = field(default_factory=set)
    """(exchange, symbol) pairs with a trades buffer: they get a TRADES/S column."""

    def update(self, status: dict[str, Any], snapshot: pa.Table, now: float) -> None:
        """Take a new status and snapshot; ticks/s and trades/s come from counter deltas."""
        for sym in _tick_symbols(status):
            key = (sym["exchange"], sym["symbol"])
            count = int(sym.get("ticks_appended", sym.get("ticks_received", 0)) or 0)
            _rate(self.previous, self.rates, key, count, now)
        for buffer in _trade_entries(status):
            key = (buffer["exchange"], buffer["symbol"])
            self.traded.add(key)
            _rate(self.trade_previous, self.trade_rates, key, _appended(buffer), now)
        self.status = status
        self.prices = {(r["exchange"], r["symbol"]): r for r in snapshot.to_pylist()}
        for row in self.prices.values():
            self.precision.learn(row)
        self.error = None
        self.updated = now

    def lines(self, width: int, height: int | None, color: bool) -> list[str]:
        """The frame: a header, exchange states, and one row per stream."""
        status = self.status
        server = status.get("server", {})
        symbols = _tick_symbols(status)
        exchanges = status.get("exchanges", {})
        total = sum(self.rates.get((s["exchange"], s["symbol"]), 0.0) for s in symbols)
        listed = {(s["exchange"], s["symbol"]) for s in symbols}
        # A symbol streamed for trades only has no ticker row in status: give it one.
        symbols += [{"exchange": e, "symbol": sym, "ticks_stored": "-", "ticks_dropped": "-"}
                    for e, sym in sorted(self.traded - listed)]
        trades = bool(self.traded)
        clock = datetime.now(UTC).strftime("%H:%M:%S UTC")
        head = [(f"flight-md top  {self.location}  {clock}  up "
                 f"{format_age(server.get('uptime_s', 0) * 1000)}  {len(symbols)} streams  "
                 f"{total:.1f} ticks/s"
                 + (f"  {sum(self.trade_rates.values()):.1f} trades/s" if trades else ""))]
        if exchanges:
            head.append("  ".join(
                f"{name}: {ex.get('state', '-')} ({ex.get('mode', '-')}, "
                f"{ex.get('reconnects', 0)} reconnects)" for name, ex in sorted(exchanges.items())))
        elif server:
            head.append("no ingestion on this server (serving stored ticks only)")
        if self.error:
            head.append(f"! {self.error} (retrying)")
        rows, states = [], []
        for sym in symbols:
            key = (sym["exchange"], sym["symbol"])
            ex = exchanges.get(sym["exchange"], {})
            state = str(ex.get("state", "idle"))
            if exchanges and not sym.get("subscribed", True):
                state = "unsubscribed"
            elif sym.get("stale"):
                state = "stale"
            tick = self.prices.get(key, {})
            rate = self.rates.get(key)
            trade_rate = self.trade_rates.get(key)
            rows.append([sym["exchange"], sym["symbol"], state,
                         "-" if rate is None else f"{rate:.1f}",
                         *(["-" if trade_rate is None else f"{trade_rate:.1f}"] if trades else []),
                         *(self.precision.format(tick, name, tick.get(name))
                           for name in ("price", "bid", "ask")),
                         format_age(sym.get("age_ms")),
                         str(ex.get("reconnects", "-")), str(sym.get("ticks_stored", 0)),
                         str(sym.get("ticks_dropped", 0))])
            states.append(state)
        headers = ["EXCHANGE", "SYMBOL", "STATE", "TICKS/S", *(["TRADES/S"] if trades else []),
                   "PRICE", "BID", "ASK", "AGE", "RECONNECTS", "STORED", "DROPPED"]
        right = [False, False, False] + [True] * (len(headers) - 3)
        body, _ = grid(headers, rows, right, width)
        if color:
            body = [body[0]] + [_paint(line, state) for line, state in zip(body[1:], states)]
        lines = [h[:width] for h in head] + [""] + body
        if not symbols:
            lines.append("(no streams yet)")
        if height is None:
            return lines
        return lines[:max(1, height - 1)] + ["q or Ctrl-C quits"]


def _rate(previous: dict[tuple[str, str], tuple[int, float]],
          rates: dict[tuple[str, str], float], key: tuple[str, str], count: int,
          now: float) -> None:
    """Per-second rate of a cumulative counter since the last refresh (never negative: a
    counter that went back, after a restart, reads as 0)."""
    before = previous.get(key)
    if before is not None and now > before[1]:
        rates[key] = max(0, count - before[0]) / (now - before[1])
    previous[key] = (count, now)


_APPENDED_KEYS: Final = ("ticks_appended", "appended", "rows_appended", "trades_appended",
                         "ticks_received", "received", "trades_received", "ticks_stored",
                         "stored", "trades_stored")
"""Where a status entry may hold its cumulative row count, most exact first (a ``stored``
count stops growing at the ring's capacity: the last resort)."""


def _entries(status: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The well-formed (exchange, symbol) entries of ``status[key]``: a list, or a dict of
    lists or entries; nothing where the key is missing or holds anything else."""
    found = status.get(key)
    if isinstance(found, dict):
        found = [e for value in found.values()
                 for e in (value if isinstance(value, list) else [value])]
    if not isinstance(found, list):
        return []
    return [e for e in found if isinstance(e, dict) and isinstance(e.get("exchange"), str)
            and isinstance(e.get("symbol"), str)]


def _tick_symbols(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``symbols`` entries of ticker-like streams: those with a ticker or bidask
    ``channel``, or none (a server from before channels)."""
    return [e for e in _entries(status, "symbols")
            if e.get("channel") in (None, Channel.TICKER, Channel.BIDASK)]


def _trade_entries(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The status entries of the trades channel: ``symbols`` entries with ``channel``
    trades (and ``buffers`` entries, the other shape a server may give); none from a server
    that streams no trades."""
    return [e for e in _entries(status, "symbols") + _entries(status, "buffers")
            if e.get("channel") == Channel.TRADES]


def _appended(buffer: dict[str, Any]) -> int:
    for key in _APPENDED_KEYS:
        value = buffer.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def _paint(line: str, state: str) -> str:
    code = _COLORS.get(state)
    if code is None:
        return line
    return line.replace(f"  {state}", f"  \x1b[{code}m{state}\x1b[0m", 1)


class _Keys:
    """``q`` from a terminal in cbreak mode (restored on exit); a no-op without a tty."""

    def __init__(self, stream: TextIO) -> None:
        self.fd: int | None = None
        self.saved: Any = None
        try:
            if stream.isatty():
                self.fd = stream.fileno()
        except (AttributeError, ValueError, OSError):
            self.fd = None

    def __enter__(self) -> Self:
        if self.fd is not None:
            import termios
            import tty

            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None and self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def wait_quit(self, seconds: float) -> bool:
        """Sleep ``seconds``; True as soon as ``q`` is pressed."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.fd is None:
                time.sleep(remaining)
                return False
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                data = os.read(self.fd, 64)
                if not data or b"q" in data.lower():
                    return True


@_command
def top_command(args: argparse.Namespace, md: MarketDataClient) -> int:
    """``flight-md top``: a live view of every stream, refreshed in place."""
    model = TopModel(md.location)
    out = sys.stdout
    interactive = out.isatty()
    color = interactive and not os.environ.get("NO_COLOR")

    def refresh() -> None:
        model.update(md.status(), md.snapshot(columns=TOP_COLUMNS), time.monotonic())

    refresh()  # an unreachable server fails here, with one line and exit 1
    frames = 0
    with _Keys(sys.stdin) as keys:
        if interactive:
            out.write("\x1b[?1049h\x1b[?25l")  # alternate screen, hide the cursor
        try:
            while True:
                size = shutil.get_terminal_size()
                lines = model.lines(size.columns if interactive else 10_000,
                                    size.lines if interactive else None, color)
                if interactive:
                    out.write("\x1b[H" + "\x1b[K\n".join(lines) + "\x1b[K\x1b[J")
                else:
                    out.write("\n".join(lines) + "\n\n")
                out.flush()
                frames += 1
                if args.iterations is not None and frames >= args.iterations:
                    return EXIT_OK
                if keys.wait_quit(args.interval):
                    return EXIT_OK
                try:
                    refresh()
                except FlightMdClientError as exc:
                    model.error = describe(exc, md.location)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        finally:
            if interactive:
                out.write("\x1b[?25h\x1b[?1049l")
                out.flush()


# -- tail ------------------------------------------------------------------------------------

def tail_line(row: dict[str, Any], columns: Sequence[str] | None,
              precision: PricePrecision | None = None) -> str:
    """One row as one line: time, exchange, symbol, then ``name=value`` pairs (prices with
    the precision ``precision`` has learnt, this row included; book sides as their best
    levels). ``columns`` ``None`` shows :data:`TAIL_COLUMNS`."""
    if precision is not None:
        precision.learn(row)
    parts = []
    for key in ("timestamp", "bar_start"):
        if key in row:
            parts.append(format_time(row[key]))
            break
    for key in ("exchange", "symbol"):
        if key in row:
            parts.append(str(row[key]))
    names = [c for c in (columns or TAIL_COLUMNS)
             if c not in ("timestamp", "bar_start", "exchange", "symbol") and c in row]
    parts += [f"{name}={_cell(name, row[name], row, precision)}" for name in names]
    return "  ".join(parts)


def _tail_defaults(args: argparse.Namespace) -> tuple[str, ...]:
    """What ``tail`` shows without ``--columns``: per channel (bars: the bar)."""
    if args.bars is not None:
        return TAIL_DEFAULTS["bars"]
    return TAIL_DEFAULTS.get(args.channel or "", TAIL_COLUMNS)


def _tail_writer(args: argparse.Namespace, out: IO[str]) -> Callable[[dict[str, Any]], None]:
    columns = _columns(args.columns) or _tail_defaults(args)
    precision = PricePrecision()

    def as_json(row: dict[str, Any]) -> None:
        out.write(json.dumps(row, separators=(",", ":")) + "\n")

    def as_text(row: dict[str, Any]) -> None:
        out.write(tail_line(row, columns, precision) + "\n")

    return as_json if args.json else as_text


@_command
def tail_command(args: argparse.Namespace, md: MarketDataClient) -> int:
    """``flight-md tail``: one line per tick as ticks arrive (the client's live tail)."""
    columns = _columns(args.columns)
    if columns is not None and not args.json:  # every line starts with time, exchange, symbol
        lead = ("bar_start",) if args.bars is not None else ("timestamp", "exchange", "symbol")
        columns = tuple(dict.fromkeys((*lead, *columns)))
    # Refused here, with the server's message and exit 2, before the tail is opened.
    Query(Target.TICKS, symbol=args.symbol, exchange=args.exchange, latest=args.backlog,
          columns=columns, follow=True, channel=args.channel, bars=args.bars)
    remaining: int | None = args.count
    write = _tail_writer(args, sys.stdout)
    with md.tail(args.symbol, exchange=args.exchange, columns=columns,
                 backlog=args.backlog, channel=args.channel, bars=args.bars) as live:
        if remaining == 0:
            return EXIT_OK
        for batch in live:  # a lost connection or a slow consumer raises here
            rows = batch.to_pylist()
            if remaining is not None:
                rows = rows[:remaining]
                remaining -= len(rows)
            for row in rows:
                write(row)
            sys.stdout.flush()
            if remaining == 0:
                return EXIT_OK
    if live.end_reason is TailEnd.SERVER_CLOSED:
        print("flight-md: the server ended the live tail (it is shutting down)",
              file=sys.stderr)
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def _default_location() -> str:
    return DEFAULT_LOCATION if CLIENT_MISSING is None else "the client's default"


def _time_type() -> Callable[[str], Any]:
    """How ``--start``/``--end`` are parsed: by the client, or (without it) not at all, so that
    the command reaches its one-line "not installed" error instead of argparse's."""
    return parse_time_arg if CLIENT_MISSING is None else str


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("--location", default=None, metavar="URI",
                       help="server location (default: $FLIGHT_MD_LOCATION or "
                            f"{_default_location()}; grpc+tls:// for TLS)")
    group.add_argument("--token", default=None,
                       help="bearer token (visible to other local users in `ps`: prefer "
                            "--token-file or $FLIGHT_MD_TOKEN)")
    group.add_argument("--token-file", default=None, metavar="FILE",
                       help="file whose first line is the bearer token")
    group.add_argument("--tls-root-certs", default=None, metavar="FILE",
                       help="CA certificate(s) to verify the server (PEM)")
    group.add_argument("--tls-cert", default=None, metavar="FILE",
                       help="client certificate for mutual TLS (PEM)")
    group.add_argument("--tls-key", default=None, metavar="FILE",
                       help="client private key for mutual TLS (PEM)")
    group.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT_S, metavar="S",
                       help=f"seconds to wait for each request (default {DEFAULT_TIMEOUT_S:g})")
    return common


def _channel_options(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--channel`` and ``--bars`` of ``get`` and ``tail`` (their values: the enums')."""
    parser.add_argument("--channel", choices=[c.value for c in Channel], default=None,
                        help=f"{verb} this channel: ticker, bidask, trades (every trade) or "
                             "book (top levels after every update) (default: the symbol's "
                             "ticker, else bidask)")
    parser.add_argument("--bars", choices=[b.value for b in BarInterval], default=None,
                        metavar="INTERVAL",
                        help=f"{verb} OHLCV bars of the symbol's trades: "
                             f"{', '.join(b.value for b in BarInterval)} (UTC-aligned)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``get``, ``status``, ``top`` and ``tail`` to a ``flight-md`` parser.

    Each subcommand sets ``func``: call ``args.func(args)`` and exit with its return value.
    """
    common = _common()
    time_help = ("Unix ms, ISO-8601 (no offset means UTC), 'now', or an age such as 90s, 5m, "
                 "2h, 1d")
    get = subparsers.add_parser(
        "get", parents=[common], help="print ticks as a table, CSV or Parquet",
        description="Print ticks of a symbol (or '*' for the market snapshot, '@events' for "
        "the event log). Without --latest/--start/--end the table shows the newest "
        f"{TABLE_LATEST} rows, and --csv/--parquet export the whole buffer. Times print as "
        "ISO-8601 UTC.")
    get.add_argument("target", metavar="SYMBOL", help="e.g. BTC/USDT, '*' or '@events'")
    get.add_argument("-n", "--latest", type=_positive, metavar="N", help="the newest N rows")
    get.add_argument("--start", type=_time_type(), metavar="TIME",
                     help=f"from this time, inclusive: {time_help}")
    get.add_argument("--end", type=_time_type(), metavar="TIME",
                     help="up to this time, exclusive (same forms)")
    get.add_argument("--exchange", help="ccxt exchange id, when the symbol is on several")
    _channel_options(get, "rows of")
    get.add_argument("--columns", help="comma-separated columns, e.g. timestamp,price,bid,ask "
                     "(names of the channel's columns; with --bars of the bars')")
    out = get.add_mutually_exclusive_group()
    out.add_argument("--csv", nargs="?", const="-", metavar="FILE",
                     help="write CSV to FILE, or to stdout without FILE (times as ISO-8601)")
    out.add_argument("--parquet", metavar="FILE",
                     help="write Parquet (times as timestamp[ms, UTC])")
    get.set_defaults(func=get_command)

    status = subparsers.add_parser(
        "status", parents=[common], help="connection states and per-symbol counters",
        description="Show each exchange's connection state and reconnects, and per symbol the "
        "ticks stored, received and dropped and the age of the newest tick.")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    status.set_defaults(func=status_command)

    top = subparsers.add_parser(
        "top", parents=[common], help="live view of every stream (q quits)",
        description="A live, in-place view of every stream: state, ticks/s (and trades/s where "
        "trades are streamed), last price, age of the newest tick, reconnects. q or Ctrl-C "
        "quits. Without a terminal it prints one frame per refresh.")
    top.add_argument("--interval", type=_seconds, default=1.0, metavar="S",
                     help="seconds between refreshes (default 1)")
    top.add_argument("--iterations", type=_positive, metavar="N",
                     help="stop after N frames (for scripts and non-interactive use)")
    top.set_defaults(func=top_command)

    tail = subparsers.add_parser(
        "tail", parents=[common], help="print ticks as they arrive",
        description="Follow a symbol live and print one line per tick until Ctrl-C.")
    tail.add_argument("symbol", metavar="SYMBOL", help="e.g. BTC/USDT")
    tail.add_argument("--exchange", help="ccxt exchange id, when the symbol is on several")
    _channel_options(tail, "follow")
    tail.add_argument("--backlog", type=_positive, default=0, metavar="N",
                      help="print the newest N stored ticks first (default 0)")
    tail.add_argument("--count", type=_positive, metavar="N", help="exit after N ticks")
    tail.add_argument("--columns",
                      help=f"columns to show (default {','.join(TAIL_COLUMNS)}; trades "
                           f"{','.join(TAIL_DEFAULTS[Channel.TRADES])}; book "
                           f"{','.join(TAIL_DEFAULTS[Channel.BOOK])}); also limits what the "
                           "server sends")
    tail.add_argument("--json", action="store_true",
                      help="one JSON object per line (times as Unix ms)")
    tail.set_defaults(func=tail_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one terminal command (``get``, ``status``, ``top``, ``tail``) without the rest of
    the ``flight-md`` command."""
    parser = argparse.ArgumentParser(prog="flight-md",
                                     description="Terminal views over a flight_md server.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

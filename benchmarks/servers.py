"""Flight servers in their own processes: flight_md, and the bare pyarrow.flight baseline.

``python -m benchmarks.servers flight_md ...`` runs a :class:`FlightMarketDataServer` over a
buffer filled with :mod:`benchmarks.ticks`, or, with ``--exchange-url``, a whole
:class:`~flight_md.app.MarketDataApp` that also ingests from an emulator through ccxt.

``python -m benchmarks.servers bare ...`` fills an identical buffer, answers each ticket given
with ``--ticket`` once through the buffer, and from then on serves that pre-built table from
memory with ``RecordBatchStream``: a Flight server with nothing between the request and the
bytes, the floor flight_md is compared against.

Both bind ``grpc://127.0.0.1:0`` and say where in their hello line.

Profiling aid: ``FLIGHT_MD_BENCH_SWITCH_INTERVAL=0.0005`` (seconds) makes a flight_md child
call ``sys.setswitchinterval`` first, to test how much of a figure is GIL hand-over delay
between the ingestion thread and the Flight threads. The standard run never sets it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pyarrow as pa
from pyarrow import flight

from benchmarks import ticks
from benchmarks.process import Child, serve
from flight_md.buffer import MarketDataBuffer
from flight_md.tickets import parse_ticket

__all__ = ["BareServer", "bare_server", "flight_md_server", "query_table"]

LOCATION = "grpc://127.0.0.1:0"


class BareServer(flight.FlightServerBase):  # type: ignore[misc]
    """DoGet of a known ticket streams its pre-built table; nothing else."""

    def __init__(self, location: str, tables: dict[bytes, pa.Table]) -> None:
        super().__init__(location)
        self.tables = tables

    def do_get(self, context: flight.ServerCallContext,
               ticket: flight.Ticket) -> flight.FlightDataStream:
        return flight.RecordBatchStream(self.tables[ticket.ticket])


def query_table(buffer: MarketDataBuffer, ticket: str) -> pa.Table:
    """What flight_md's DoGet answers for a symbol ticket (latest and/or range)."""
    query = parse_ticket(ticket.encode())
    assert query.symbol is not None, "only symbol tickets are supported"
    if query.start is None and query.end is None:
        limit = query.latest if query.latest is not None else buffer.buffer_size
        return buffer.get_latest_sync(query.symbol, limit, exchange=query.exchange,
                                      columns=query.columns)
    return buffer.get_range_sync(query.symbol, query.start, query.end, exchange=query.exchange,
                                 latest=query.latest, columns=query.columns)


def _fill(buffer: MarketDataBuffer, symbols: int, per_symbol: int) -> None:
    if symbols and per_symbol:
        ticks.fill(buffer, ticks.symbols(symbols), per_symbol)


def _counts(buffer: MarketDataBuffer) -> dict[str, Any]:
    stats = buffer.stats()
    return {"appended": {s.symbol: s.appended for s in stats},
            "stored": {s.symbol: s.stored for s in stats}}


def _run_flight_md(args: argparse.Namespace) -> None:
    interval = os.environ.get("FLIGHT_MD_BENCH_SWITCH_INTERVAL")
    if interval:
        sys.setswitchinterval(float(interval))
    if args.exchange_url:
        from flight_md.app import MarketDataApp
        from flight_md.config import ServerConfig, StreamConfig

        stream = StreamConfig("binance", tuple(ticks.symbols(args.ingest_symbols)),
                              channel=args.channel, mode="websocket", url=args.exchange_url,
                              buffer_size=args.buffer_size, heartbeat_interval=30.0,
                              reconnect_delay=0.5, max_reconnect_delay=5.0)
        app = MarketDataApp(ServerConfig(port=0, buffer_size=args.buffer_size,
                                         streams=(stream,), ingest_process=args.ingest_process))
        _fill(app.buffer, args.fill_symbols, args.fill_ticks)
        app.start()
        buffer = app.buffer
        hello = {"location": app.location}
        stop: Callable[[], object] = partial(app.stop, grace=0.5)
    else:
        from flight_md.service import FlightMarketDataServer

        buffer = MarketDataBuffer(args.buffer_size)
        _fill(buffer, args.fill_symbols, args.fill_ticks)
        server = FlightMarketDataServer(LOCATION, buffer)
        hello = {"location": f"grpc://127.0.0.1:{server.port}"}
        stop = partial(server.stop, grace=0.5)
    serve(hello, {"counts": lambda: _counts(buffer)}, args.max_seconds, on_exit=stop)


def _run_bare(args: argparse.Namespace) -> None:
    buffer = MarketDataBuffer(args.buffer_size)
    _fill(buffer, args.fill_symbols, args.fill_ticks)
    tables = {t.encode(): query_table(buffer, t) for t in args.ticket}
    del buffer
    server = BareServer(LOCATION, tables)
    hello = {"location": f"grpc://127.0.0.1:{server.port}",
             "rows": {t.decode(): table.num_rows for t, table in tables.items()},
             "nbytes": {t.decode(): table.nbytes for t, table in tables.items()}}
    serve(hello, {}, args.max_seconds, on_exit=server.shutdown)


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers")
    parser.add_argument("kind", choices=("flight_md", "bare"))
    parser.add_argument("--buffer-size", type=int, default=10_000)
    parser.add_argument("--fill-symbols", type=int, default=0)
    parser.add_argument("--fill-ticks", type=int, default=0)
    parser.add_argument("--ticket", action="append", default=[])
    parser.add_argument("--exchange-url")
    parser.add_argument("--ingest-symbols", type=int, default=20)
    parser.add_argument("--channel", default="bidask", choices=("bidask", "ticker"))
    parser.add_argument("--ingest-process", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    (_run_flight_md if args.kind == "flight_md" else _run_bare)(args)


def flight_md_server(*, buffer_size: int = 10_000, fill_symbols: int = 0, fill_ticks: int = 0,
                     exchange_url: str | None = None, ingest_symbols: int = 20,
                     channel: str = "bidask", name: str = "flight_md",
                     ingest_process: bool = False, max_seconds: float = 900) -> Child:
    """A flight_md server child (not started: use it in a ``with``)."""
    args = ["flight_md", "--buffer-size", str(buffer_size), "--fill-symbols", str(fill_symbols),
            "--fill-ticks", str(fill_ticks)]
    if exchange_url:
        args += ["--exchange-url", exchange_url, "--ingest-symbols", str(ingest_symbols),
                 "--channel", channel]
        if ingest_process:
            args.append("--ingest-process")
    return Child("benchmarks.servers", *args, name=name, start_timeout=120.0,
                 max_seconds=max_seconds)


def bare_server(tickets: Sequence[str], *, buffer_size: int = 10_000, fill_symbols: int = 0,
                fill_ticks: int = 0, name: str = "bare", max_seconds: float = 900) -> Child:
    """A bare-server child serving ``tickets`` as flight_md would answer them."""
    args = ["bare", "--buffer-size", str(buffer_size), "--fill-symbols", str(fill_symbols),
            "--fill-ticks", str(fill_ticks)]
    for ticket in tickets:
        args += ["--ticket", ticket]
    return Child("benchmarks.servers", *args, name=name, start_timeout=120.0,
                 max_seconds=max_seconds)


if __name__ == "__main__":
    _main()

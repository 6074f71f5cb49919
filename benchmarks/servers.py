"""Flight servers in their own processes: flight_md, and the bare pyarrow.flight baseline.

``python -m benchmarks.servers flight_md ...`` runs a :class:`FlightMarketDataServer` over a
buffer filled with :mod:`benchmarks.ticks`, or, with ``--exchange-url``, a whole
:class:`~flight_md.app.MarketDataApp` that also ingests from an emulator through ccxt.

Persistence is on by default in ``flight-md serve`` and ``MarketDataApp``: every ingesting
server child gets a data dir of its own (``--data-dir``), a temporary one that the parent
deletes when the child closes unless the caller names one, so that two servers never share a
data dir (its lock refuses the second) and nothing lands in ``$XDG_DATA_HOME``. ``--memory-only``
runs the app without persistence, for comparisons with it. ``--history`` runs a
``MarketDataApp`` with no ingestion over an existing data dir (a restart: recovery, then the
history and refilled rings served). The buffer-filled server without ``--exchange-url`` is a bare
:class:`FlightMarketDataServer`, which never persists.

``python -m benchmarks.servers bare ...`` is the floor flight_md is compared against: a Flight
server with nothing between the request and the bytes. For each ``--ticket`` it builds, at
start and without flight_md's buffer, the table that ticket asks for: the same deterministic
ticks (:mod:`benchmarks.ticks`), selected in plain Python and converted column by column
from plain lists into one contiguous table (one chunk). ``do_get`` streams it with
``RecordBatchStream`` and the very ``IpcWriteOptions`` object flight_md's service passes, so
the two servers differ only in what happens before the bytes. The harness checks that both
answer every ticket with equal tables before timing them (:func:`check_equal`).

How a table is cut into record batches changes how fast Flight streams it (one 100 MB
batch streams slower than sixteen of 6 MB), so the bare server also serves each table cut
into :data:`BARE_BATCH_ROWS`-row batches (zero-copy slices of the contiguous one) under the
ticket with :data:`BATCHED` appended; a measurement compares flight_md with the faster.

Both bind ``grpc://127.0.0.1:0`` and say where in their hello line.

Profiling aid: ``FLIGHT_MD_BENCH_SWITCH_INTERVAL=0.0005`` (seconds) makes a flight_md child
call ``sys.setswitchinterval`` first, to test how much of a figure is GIL hand-over delay
between the ingestion thread and the Flight threads. The standard run never sets it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyarrow import flight

from benchmarks import ticks
from benchmarks.process import Child, serve
from flight_md.buffer import MarketDataBuffer
from flight_md.core.decode import DecoderKind
from flight_md.schema import SCHEMA
from flight_md.service import _IPC_OPTIONS as FLIGHT_MD_IPC_OPTIONS
from flight_md.tickets import parse_ticket

__all__ = ["BARE_BATCH_ROWS", "BATCHED", "FLIGHT_MD_IPC_OPTIONS", "BareServer", "bare_server",
           "bare_table", "check_equal", "flight_md_server"]

LOCATION = "grpc://127.0.0.1:0"
BARE_BATCH_ROWS = 65_536
BATCHED = "#batched"
"""Appended to a ticket, asks the bare server for its table cut into BARE_BATCH_ROWS batches."""


class BareServer(flight.FlightServerBase):
    """DoGet of a known ticket streams its pre-built table; nothing else."""

    def __init__(self, location: str, tables: dict[bytes, pa.Table]) -> None:
        super().__init__(location)
        self.tables = tables

    def do_get(self, context: flight.ServerCallContext,
               ticket: flight.Ticket) -> flight.FlightDataStream:
        # The IPC options are flight_md's own object: both servers write the same way.
        return flight.RecordBatchStream(self.tables[ticket.ticket],
                                        options=FLIGHT_MD_IPC_OPTIONS)


def bare_table(ticket: str, *, capacity: int, symbols: int, per_symbol: int) -> pa.Table:
    """The table a symbol ticket (latest and/or range) asks for, built without the buffer.

    The ring of a symbol filled with ``per_symbol`` ticks holds the newest ``capacity`` of
    them; a range keeps ``start <= timestamp < end``, then ``latest`` keeps the newest rows.
    """
    query = parse_ticket(ticket.encode())
    if query.symbol is None or query.follow:
        raise ValueError(f"only symbol tickets without follow are supported, got {ticket!r}")
    kept = [row for row in ticks.full_rows(ticks.symbols(symbols), per_symbol)
            if row[0] == query.symbol][-capacity:]
    if query.start is not None or query.end is not None:
        lo = query.start if query.start is not None else -(2**63)
        hi = query.end if query.end is not None else 2**63
        kept = [row for row in kept if lo <= row[1] < hi]
    if query.latest is not None:
        kept = kept[len(kept) - min(query.latest, len(kept)):]
    names = list(query.columns) if query.columns else SCHEMA.names
    columns = list(zip(*kept, strict=True)) if kept else [() for _ in SCHEMA.names]
    return pa.Table.from_arrays(
        [pa.array(list(columns[SCHEMA.get_field_index(name)]), type=SCHEMA.field(name).type)
         for name in names],
        schema=pa.schema([SCHEMA.field(name) for name in names]))


def check_equal(clients: dict[str, tuple[flight.FlightClient, str]], *,
                values: bool = True) -> None:
    """Raise unless every server answers its ticket with an equal table.

    Args:
        clients: Name -> (client, ticket).
        values: Compare values too; otherwise only the schema and the row count (a server
            that ingests live ticks into the queried ring answers with other values).
    """
    tables = {name: client.do_get(flight.Ticket(ticket.encode())).read_all()
              for name, (client, ticket) in clients.items()}
    first_name, first = next(iter(tables.items()))
    for name, table in tables.items():
        same = table.equals(first) if values else (
            table.schema.equals(first.schema) and table.num_rows == first.num_rows)
        if not same:
            raise RuntimeError(f"{name} and {first_name} answer differently "
                               f"({table.num_rows} and {first.num_rows} rows): the comparison "
                               "would not be of the same bytes")


def _fill(buffer: MarketDataBuffer, symbols: int, per_symbol: int) -> None:
    if symbols and per_symbol:
        ticks.fill(buffer, ticks.symbols(symbols), per_symbol)


def _counts(buffer: MarketDataBuffer) -> dict[str, Any]:
    stats = buffer.stats()
    return {"appended": {s.symbol: s.appended for s in stats},
            "stored": {s.symbol: s.stored for s in stats}}


def _persist_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ServerConfig`` persistence fields the child's flags ask for."""
    if args.memory_only:
        return {"memory_only": True}
    if not args.data_dir:
        raise SystemExit("a persisting flight_md child needs --data-dir (or --memory-only)")
    options: dict[str, Any] = {"data_dir": Path(args.data_dir)}
    if args.seal_interval is not None:
        options["seal_interval"] = args.seal_interval
    return options


def _run_flight_md(args: argparse.Namespace) -> None:
    interval = os.environ.get("FLIGHT_MD_BENCH_SWITCH_INTERVAL")
    if interval:
        sys.setswitchinterval(float(interval))
    if args.exchange_url or args.history:
        from flight_md.app import MarketDataApp
        from flight_md.config import ServerConfig, StreamConfig

        streams: tuple[StreamConfig, ...] = ()
        if args.exchange_url:
            streams = (StreamConfig(
                args.exchange, tuple(ticks.venue_symbols(args.exchange, args.ingest_symbols)),
                channel=args.channel, mode="websocket", url=args.exchange_url,
                buffer_size=args.buffer_size, heartbeat_interval=30.0, reconnect_delay=0.5,
                max_reconnect_delay=5.0, decoder=args.decoder),)
        app = MarketDataApp(ServerConfig(port=0, buffer_size=args.buffer_size, streams=streams,
                                         ingest_process=args.ingest_process,
                                         ingest_workers=args.ingest_workers,
                                         **_persist_options(args)))
        _fill(app.buffer, args.fill_symbols, args.fill_ticks)
        app.start()
        # Counts are of the streamed channel's own rings (each channel has its buffer; the
        # filled rows are ticker rows).
        buffer = app.store.buffer(args.channel) if args.exchange_url else app.buffer
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
    tables = {t.encode(): bare_table(t, capacity=args.buffer_size, symbols=args.fill_symbols,
                                     per_symbol=args.fill_ticks) for t in args.ticket}
    for ticket, table in list(tables.items()):
        tables[ticket + BATCHED.encode()] = pa.Table.from_batches(
            table.to_batches(max_chunksize=BARE_BATCH_ROWS), table.schema)
    server = BareServer(LOCATION, tables)
    hello = {"location": f"grpc://127.0.0.1:{server.port}",
             "rows": {t.decode(): table.num_rows for t, table in tables.items()},
             "batches": {t.decode(): len(table.to_batches()) for t, table in tables.items()},
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
    parser.add_argument("--exchange", default="binance")
    parser.add_argument("--channel", default="bidask", choices=("bidask", "ticker"))
    parser.add_argument("--ingest-process", action="store_true")
    parser.add_argument("--ingest-workers", type=int)
    parser.add_argument("--decoder", default=DecoderKind.FAST.value,
                        choices=[kind.value for kind in DecoderKind])
    parser.add_argument("--data-dir")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--history", action="store_true")
    parser.add_argument("--seal-interval", type=float)
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    (_run_flight_md if args.kind == "flight_md" else _run_bare)(args)


class _ServerChild(Child):
    """A server child that owns a scratch data dir, deleted when the child closes."""

    def __init__(self, *args: str, scratch: Path | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scratch = scratch

    def close(self, grace: float = 10.0) -> None:
        try:
            super().close(grace)
        finally:
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)
                self.scratch = None


def flight_md_server(*, buffer_size: int = 10_000, fill_symbols: int = 0, fill_ticks: int = 0,
                     exchange_url: str | None = None, ingest_symbols: int = 20,
                     channel: str = "bidask", name: str = "flight_md",
                     ingest_process: bool = False, max_seconds: float = 900,
                     exchange: str = "binance", data_dir: Path | None = None,
                     memory_only: bool = False, history: bool = False,
                     seal_interval: float | None = None, decoder: str = DecoderKind.FAST.value,
                     ingest_workers: int | None = None) -> Child:
    """A flight_md server child (not started: use it in a ``with``); with ``exchange_url``
    it ingests :func:`benchmarks.ticks.venue_symbols` of ``exchange`` from there.

    An ingesting (or ``history``) server persists, with the default settings, into
    ``data_dir``, or into a scratch dir of its own that is deleted when the child closes;
    ``memory_only`` turns persistence off. ``history``: no ingestion, the data dir's history
    served (``data_dir`` required). ``decoder``: the stream's ``--decoder`` (``fast``, the
    product's default, or ``ccxt``); ``ingest_workers``: ``--ingest-workers N`` (implies
    process ingestion).
    """
    args = ["flight_md", "--buffer-size", str(buffer_size), "--fill-symbols", str(fill_symbols),
            "--fill-ticks", str(fill_ticks)]
    if exchange_url:
        args += ["--exchange-url", exchange_url, "--ingest-symbols", str(ingest_symbols),
                 "--channel", channel, "--exchange", exchange]
        if ingest_process:
            args.append("--ingest-process")
        if ingest_workers is not None:
            args += ["--ingest-workers", str(ingest_workers)]
        args += ["--decoder", DecoderKind(decoder).value]
    if history:
        if data_dir is None or memory_only:
            raise ValueError("a history server needs a data_dir and persistence")
        args.append("--history")
    scratch = None
    if exchange_url or history:
        if memory_only:
            args.append("--memory-only")
        else:
            if data_dir is None:
                data_dir = scratch = Path(tempfile.mkdtemp(prefix=f"flight_md-bench-{name}-"))
            args += ["--data-dir", str(data_dir)]
            if seal_interval is not None:
                args += ["--seal-interval", f"{seal_interval:g}"]
    return _ServerChild("benchmarks.servers", *args, name=name, start_timeout=120.0,
                        max_seconds=max_seconds, scratch=scratch)


def bare_server(tickets: Sequence[str], *, buffer_size: int = 10_000, fill_symbols: int = 0,
                fill_ticks: int = 0, name: str = "bare", max_seconds: float = 900) -> Child:
    """A bare-server child serving ``tickets`` from tables built without flight_md's buffer."""
    args = ["bare", "--buffer-size", str(buffer_size), "--fill-symbols", str(fill_symbols),
            "--fill-ticks", str(fill_ticks)]
    for ticket in tickets:
        args += ["--ticket", ticket]
    return Child("benchmarks.servers", *args, name=name, start_timeout=120.0,
                 max_seconds=max_seconds)


if __name__ == "__main__":
    _main()

"""Requests per second for latest=100 with 1, 8 and 32 concurrent clients, while ingesting.

Clients run in separate processes (at most ``settings.client_processes``, threads inside
each; every thread has its own Flight connection), so no client shares the server's GIL.
All client processes start together at an agreed wall-clock instant and count completed
``do_get(...).read_all()`` calls for a fixed time. flight_md ingests from the emulator
meanwhile; the bare server (idle) is measured in alternation under the same machine load.

Run as a child: ``python -m benchmarks.concurrency`` (driven by :func:`measure`).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from pyarrow import flight

from benchmarks.latency import MODES, LoadedServers, tickets
from benchmarks.process import Child, serve
from benchmarks.report import (
    DEFAULT_SERVE,
    THREAD_SERVE,
    ModeFigure,
    Section,
    Table,
    median,
    ratio,
    serve_mode_line,
    show,
)
from benchmarks.servers import check_equal
from benchmarks.settings import Settings

__all__ = ["measure"]

START_DELAY_S = 0.5


def _hammer(location: str, ticket: str, threads: int, start_at: float, seconds: float
            ) -> dict[str, Any]:
    """Run ``threads`` clients from ``start_at`` for ``seconds``; count completed calls."""
    t = flight.Ticket(ticket.encode())
    clients = [flight.connect(location) for _ in range(threads)]
    for client in clients:
        client.do_get(t).read_all()  # connect and warm up before the start
    counts = [0] * threads
    errors: list[str] = []
    end_at = start_at + seconds

    def work(i: int) -> None:
        client = clients[i]
        while time.time() < start_at:
            time.sleep(0.0005)
        n = 0
        try:
            while time.time() < end_at:
                client.do_get(t).read_all()
                n += 1
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(repr(exc))
        counts[i] = n

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    for client in clients:
        client.close()
    return {"count": sum(counts), "errors": errors[:3]}


def _child() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args()
    serve({"ready": True}, {"run": _hammer}, args.max_seconds)


def _split(clients: int, processes: int) -> list[int]:
    """Threads per process for ``clients`` spread over at most ``processes``."""
    used = min(clients, processes)
    return [clients // used + (1 if i < clients % used else 0) for i in range(used)]


def _rate(children: Sequence[Child], location: str, ticket: str, clients: int,
          seconds: float) -> tuple[float, list[str]]:
    start_at = time.time() + START_DELAY_S + 0.05 * clients
    split = _split(clients, len(children))
    for child, threads in zip(children, split):
        child.send("run", location=location, ticket=ticket, threads=threads,
                   start_at=start_at, seconds=seconds)
    total, errors = 0, []
    for child, _ in zip(children, split):
        reply = child.receive("run", timeout=seconds + 60)
        total += reply["count"]
        errors += reply["errors"]
    return total / seconds, errors


def measure(settings: Settings, loaded: LoadedServers | None = None) -> Section:
    """Requests/s of flight_md (ingesting) and the bare server at each client count.

    Args:
        loaded: Shared ingesting servers to use (started here otherwise).
    """
    repetitions = min(settings.repetitions, 3)
    seconds = settings.concurrency_seconds
    ticket = tickets(100)
    section = Section(
        "concurrency", "Concurrency: latest=100 requests/s while ingesting",
        f"""
`{ticket}` requested back to back by 1..N clients for {seconds:g} s; clients are threads with one
Flight connection each, spread over up to {settings.client_processes} client processes (never the
server's). **flight_md** ingests {settings.load_rate:,} bookTicker msg/s across
{settings.load_symbols} symbols from the emulator meanwhile (the same setup as the latency
section). **Baseline**: the bare `pyarrow.flight` server of the latency section (a contiguous
table built without flight_md's buffer, the same schema and row count, flight_md's IPC
options), measured in alternation under the same machine load. {repetitions} repetitions, medians. On 2 cores the
clients, the emulator, ingestion and the server share the CPU: the figures are for comparing the
two servers, not absolute capacity. Measured with ingestion in a child process (`ingest_process`,
`flight-md serve`'s default) and on a thread of the flight_md process (`--no-ingest-process`),
one at a time (the other's servers stopped).
""")
    table = Table(("Ingestion", "Clients", "flight_md req/s", "bare req/s", "Ratio"))
    ratios: dict[tuple[str, str], float] = {}  # (mode, clients) -> flight_md / bare req/s
    with ExitStack() as stack:
        if loaded is None:
            loaded = stack.enter_context(LoadedServers(settings))
        children = [Child("benchmarks.concurrency", name=f"clients-{i}")
                    for i in range(settings.client_processes)]
        for child in children:
            stack.callback(child.close)
            child.launch()
        for child in children:
            child.wait_ready()
        for ingest_process, _ in reversed(MODES):  # the latency section ended with a process
            if ingest_process not in settings.ingest_process_modes:
                continue
            servers = loaded.get(ingest_process)
            _rows(table, ratios, section, children, servers.flight_md.hello["location"],
                  servers.bare.hello["location"], settings, repetitions,
                  DEFAULT_SERVE if ingest_process else THREAD_SERVE)
    section.tables.append(table)
    figures = {(row[0], row[1]): row[4] for row in table.rows}
    most = str(max(settings.concurrency_clients))
    if (THREAD_SERVE, most) in figures and (DEFAULT_SERVE, most) in figures:
        section.readme["ingest-process"] = [
            (f"- `latest=100` requests/s with {most} concurrent clients while ingesting, vs a "
            f"bare Flight server (no goal): {figures[(DEFAULT_SERVE, most)]} with the default "
            f"serve (ingestion process), {figures[(THREAD_SERVE, most)]} with ingestion on a "
            "thread (`--no-ingest-process`).")]
    compared = [ModeFigure(f"req/s with {clients} clients vs bare", ratios[(DEFAULT_SERVE, clients)],
                           ratios[(THREAD_SERVE, clients)], higher_is_better=True)
                for clients in map(str, settings.concurrency_clients)
                if (DEFAULT_SERVE, clients) in ratios and (THREAD_SERVE, clients) in ratios]
    if compared:
        line = serve_mode_line("latest=100 requests/s while ingesting", compared)
        section.notes.append(line.removeprefix("- "))
        section.readme["serve-mode"] = [line]
    section.notes.append(
        "The flight_md process also runs ingestion (one asyncio thread parsing with ccxt) unless "
        "ingestion runs in a child process; the bare server's process does not. Why that costs "
        "request throughput is in the under-ingest latency finding (the GIL).")
    return section


def _rows(table: Table, ratios: dict[tuple[str, str], float], section: Section,
          children: list[Child], fm_location: str,
          bare_location: str, settings: Settings, repetitions: int, mode: str) -> None:
    seconds = settings.concurrency_seconds
    ticket = tickets(100)
    locations = {"flight_md": fm_location, "bare": bare_location}
    probes = {name: flight.connect(location) for name, location in locations.items()}
    try:
        # flight_md's ring holds live ticks: the same shape, other values.
        check_equal({name: (probe, ticket) for name, probe in probes.items()}, values=False)
    finally:
        for probe in probes.values():
            probe.close()
    for clients in settings.concurrency_clients:
        rates: dict[str, list[float]] = {name: [] for name in locations}
        for rep in range(repetitions):
            order = list(locations.items())
            if rep % 2:
                order.reverse()
            for name, location in order:
                rate, errors = _rate(children, location, ticket, clients, seconds)
                rates[name].append(rate)
                for error in errors:
                    section.notes.append(f"{name}, {clients} clients: {error}")
        fm, bare = median(rates["flight_md"]), median(rates["bare"])
        ratios[(mode, str(clients))] = ratio(fm, bare)
        table.add(mode, str(clients), show(fm, "/s"), show(bare, "/s"),
                  show(ratio(fm, bare), "x"))


if __name__ == "__main__":
    _child()

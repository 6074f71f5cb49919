"""A 1,000,000-row range pull over Flight, beside a bare server serving the same bytes."""

from __future__ import annotations

import time
from contextlib import ExitStack

from pyarrow import flight

from benchmarks import ticks
from benchmarks.report import Goal, Section, Table, median, ratio, show
from benchmarks.servers import bare_server, flight_md_server
from benchmarks.settings import Settings

__all__ = ["measure"]

GOAL_RATIO = 0.9


def _pull(client: flight.FlightClient, ticket: str) -> tuple[float, int, int]:
    """(seconds, rows, bytes) of one DoGet read to the end."""
    start = time.perf_counter()
    table = client.do_get(flight.Ticket(ticket.encode())).read_all()
    return time.perf_counter() - start, table.num_rows, table.nbytes


def measure(settings: Settings) -> Section:
    """MB/s of a full range pull from flight_md and from the bare server."""
    rows = settings.bulk_rows
    symbol = ticks.symbols(1)[0]
    ticket = f"{symbol}?start={ticks.START_MS}&end={ticks.START_MS + rows}"
    section = Section(
        "bulk", f"Bulk range pull: {rows:,} rows",
        f"""
flight_md serves a `MarketDataBuffer(buffer_size={rows:,})` holding {rows:,} ticks of one symbol;
the client (harness process) pulls `{ticket}` (every row) with `do_get(...).read_all()`.
**Baseline**: a bare `pyarrow.flight` server (own process) streaming the identical table
(built once through the same buffer) with `RecordBatchStream`. MB/s = Arrow bytes received
(`Table.nbytes`, 10^6 bytes per MB) / wall time of the call. {settings.bulk_repetitions} repetitions
alternating between the servers after one warm-up pull each; medians.
""")
    with ExitStack() as stack:
        fm = flight_md_server(buffer_size=rows, fill_symbols=1, fill_ticks=rows,
                              name="flight_md-bulk")
        bare = bare_server([ticket], buffer_size=rows, fill_symbols=1, fill_ticks=rows,
                           name="bare-bulk")
        for child in (fm, bare):
            stack.callback(child.close)
            child.launch()
        for child in (fm, bare):
            child.wait_ready()
        clients = {"flight_md": flight.connect(fm.hello["location"]),
                   "bare": flight.connect(bare.hello["location"])}
        results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in clients}
        try:
            for client in clients.values():
                _pull(client, ticket)
            for rep in range(settings.bulk_repetitions):
                order = list(clients.items())
                if rep % 2:
                    order.reverse()
                for name, client in order:
                    results[name].append(_pull(client, ticket))
        finally:
            for client in clients.values():
                client.close()
    speeds = {name: median([p[2] / p[0] / 1e6 for p in pulls]) for name, pulls in results.items()}
    speed_ratio = ratio(speeds["flight_md"], speeds["bare"])
    table = Table(("Server", "Rows", "MB", "Median seconds", "MB/s", "Ratio to bare"))
    for name, pulls in results.items():
        table.add(name, f"{pulls[0][1]:,}", show(pulls[0][2] / 1e6),
                  show(median([p[0] for p in pulls]), "s"), show(speeds[name], "MB/s"),
                  show(speed_ratio, "x") if name == "flight_md" else "1x")
    if results["flight_md"][0][1:] != results["bare"][0][1:]:
        section.notes.append("The two servers returned different row or byte counts: "
                             f"{results['flight_md'][0][1:]} vs {results['bare'][0][1:]}.")
    section.tables.append(table)
    section.goals.append(Goal("bulk.ratio", f"{rows:,}-row range pull, MB/s vs bare server",
                              f">= {GOAL_RATIO:g}x", show(speed_ratio, "x"),
                              speed_ratio >= GOAL_RATIO))
    return section

"""A 1,000,000-row range pull over Flight, beside a bare server serving the same bytes."""

from __future__ import annotations

import time
from contextlib import ExitStack

from pyarrow import flight

from benchmarks import ticks
from benchmarks.report import Goal, Section, Table, median, ratio, show
from benchmarks.servers import BARE_BATCH_ROWS, BATCHED, bare_server, check_equal, flight_md_server
from benchmarks.settings import Settings

__all__ = ["measure"]

GOAL_RATIO = 0.9


def _pull(client: flight.FlightClient, ticket: str) -> tuple[float, int, int]:
    """(seconds, rows, bytes) of one DoGet read to the end."""
    start = time.perf_counter()
    table = client.do_get(flight.Ticket(ticket.encode())).read_all()
    return time.perf_counter() - start, table.num_rows, table.nbytes


def measure(settings: Settings) -> Section:
    """MB/s of a full range pull from flight_md and from the bare server (both layouts)."""
    rows = settings.bulk_rows
    symbol = ticks.symbols(1)[0]
    ticket = f"{symbol}?start={ticks.START_MS}&end={ticks.START_MS + rows}"
    section = Section(
        "bulk", f"Bulk range pull: {rows:,} rows",
        f"""
flight_md serves a `MarketDataBuffer(buffer_size={rows:,})` holding {rows:,} ticks of one symbol;
the client (harness process) pulls `{ticket}` (every row) with `do_get(...).read_all()`.
**Baseline**: a bare `pyarrow.flight` server (own process) streaming, with `RecordBatchStream`
and the same `IpcWriteOptions` object flight_md's service uses, one contiguous table (a single
chunk) that it built at start from plain Python lists of the same deterministic ticks, without
flight_md's buffer; and the same table cut into {BARE_BATCH_ROWS:,}-row batches (zero-copy slices),
because how a table is cut into batches changes how fast Flight streams it. The floor is the
faster of the two; the goal is judged against it. Before timing, the harness checks that every
server answers with equal tables. MB/s = Arrow bytes received (`Table.nbytes`, 10^6 bytes per
MB) / wall time of the call. {settings.bulk_repetitions} repetitions alternating between the servers
after one warm-up pull each; medians.
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
        fm_client = flight.connect(fm.hello["location"])
        bare_client = flight.connect(bare.hello["location"])
        stack.callback(fm_client.close)
        stack.callback(bare_client.close)
        batches = bare.hello["batches"]
        servers = {"flight_md": (fm_client, ticket),
                   f"bare, contiguous ({batches[ticket]} batch)": (bare_client, ticket),
                   f"bare, {BARE_BATCH_ROWS:,}-row batches ({batches[ticket + BATCHED]})":
                       (bare_client, ticket + BATCHED)}
        check_equal(servers)  # also the warm-up pull of each
        results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in servers}
        for rep in range(settings.bulk_repetitions):
            order = list(servers.items())
            if rep % 2:
                order.reverse()
            for name, (client, wanted) in order:
                results[name].append(_pull(client, wanted))
    counts = {pulls[0][1:] for pulls in results.values()}
    if len(counts) != 1:
        raise RuntimeError(f"the servers returned different row or byte counts: {counts}")
    speeds = {name: median([p[2] / p[0] / 1e6 for p in pulls]) for name, pulls in results.items()}
    floor_name = max((n for n in speeds if n != "flight_md"), key=lambda n: speeds[n])
    table = Table(("Server", "Rows", "MB", "Median seconds", "MB/s", "flight_md / it"))
    for name, pulls in results.items():
        table.add(name, f"{pulls[0][1]:,}", show(pulls[0][2] / 1e6),
                  show(median([p[0] for p in pulls]), "s"), show(speeds[name], "MB/s"),
                  show(ratio(speeds["flight_md"], speeds[name]), "x"))
    section.tables.append(table)
    section.goals.append(Goal.judge(
        "bulk.ratio", f"{rows:,}-row range pull, MB/s vs bare server (the faster layout)",
        ratio(speeds["flight_md"], speeds[floor_name]), ">=", GOAL_RATIO, "x",
        measured_note=f"floor: {floor_name.removeprefix('bare, ')}"))
    return section

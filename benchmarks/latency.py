"""DoGet round trips for the newest 100 and 10,000 ticks, beside a bare Flight server.

The client is this process; each server runs in its own. Both servers answer the same
ticket with an equal table: flight_md assembles it from its ring per request, the bare
server streams one it built at start. Repetitions alternate between the two servers so
that machine noise falls on both. Then the same again while flight_md ingests from an
emulator through ccxt (the bare server idles meanwhile; the emulator and ingestion load the
machine for both), once with ingestion on a thread of the server process and once in a child
process, ``flight-md serve``'s default: the goals under ingest are judged on the default.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Self

from pyarrow import flight

from benchmarks import ticks
from benchmarks.exchange import exchange
from benchmarks.process import Child, wait_until
from benchmarks.report import (
    DEFAULT_SERVE,
    THREAD_SERVE,
    Goal,
    ModeFigure,
    Section,
    Table,
    median,
    percentile,
    ratio,
    serve_mode_line,
    show,
    verdict,
)
from benchmarks.servers import bare_server, check_equal, flight_md_server
from benchmarks.settings import Settings

__all__ = ["MODES", "Loaded", "LoadedServers", "loaded_servers", "measure", "round_trips"]

GOAL_RATIO = 1.3
CAPACITY = 10_000
WARMUP = 20


def tickets(latest: int) -> str:
    return f"{ticks.symbols(1)[0]}?latest={latest}"


def round_trips(client: flight.FlightClient, ticket: str, count: int) -> list[float]:
    """Microseconds of ``count`` DoGet-and-read-all round trips."""
    t = flight.Ticket(ticket.encode())
    out = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        client.do_get(t).read_all()
        out.append((clock() - start) / 1000)
    return out


@dataclass(frozen=True, slots=True)
class Loaded:
    """A flight_md server ingesting from an emulator, and an idle bare server beside it."""

    flight_md: Child
    bare: Child
    emulator: Child


@contextmanager
def loaded_servers(settings: Settings, ingest_process: bool = False) -> Iterator[Loaded]:
    """flight_md ingesting at ``settings.load_rate`` (its first symbol pre-filled to
    capacity), a bare server with the latest=100 and latest=10,000 tables; all cleaned up.

    Args:
        ingest_process: Run flight_md's ingestion in a child process (``--ingest-process``).
    """
    with ExitStack() as stack:
        bare = bare_server([tickets(100), tickets(CAPACITY)], buffer_size=CAPACITY,
                           fill_symbols=1, fill_ticks=CAPACITY)
        stack.callback(bare.close)
        bare.launch()  # starts while the emulator and flight_md do
        emulator = stack.enter_context(exchange(symbols=settings.load_symbols,
                                                rate=settings.load_rate))
        fm = stack.enter_context(flight_md_server(
            buffer_size=CAPACITY, fill_symbols=1, fill_ticks=CAPACITY,
            exchange_url=emulator.hello["url"], ingest_symbols=settings.load_symbols,
            ingest_process=ingest_process, name="flight_md-ingesting"))
        bare.wait_ready()

        def flowing() -> bool:
            appended = fm.call("counts")["appended"]
            return len(appended) >= settings.load_symbols and all(appended.values())

        if not wait_until(flowing, 60.0, 0.2):
            raise RuntimeError(f"ingestion did not reach all {settings.load_symbols} symbols "
                               f"within 60 s: {fm.call('counts')}")
        yield Loaded(fm, bare, emulator)


class LoadedServers:
    """The ingesting servers of one mode at a time, started on first use and shared by the
    latency and concurrency sections; asking for the other mode stops the running one, so
    that only one ingestion load is ever on the machine."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stack = ExitStack()
        self._mode: bool | None = None
        self._loaded: Loaded | None = None

    def get(self, ingest_process: bool = False) -> Loaded:
        if self._loaded is None or self._mode != ingest_process:
            self.close()
            self._loaded = self._stack.enter_context(
                loaded_servers(self._settings, ingest_process))
            self._mode = ingest_process
        return self._loaded

    def close(self) -> None:
        self._loaded = self._mode = None
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


MODES = ((False, f"under ingest, {THREAD_SERVE}"), (True, f"under ingest ({DEFAULT_SERVE})"))
"""(``ingest_process``, condition label) of the loaded measurements, in run order; the goal
keys stay ``latency.load.N`` (thread) and ``latency.process.N`` (the default serve)."""
_KEYS = {False: "load", True: "process"}
"""The goal key of each mode (``latency.<key>.<latest>``, read by benchmarks.findings)."""


def _compare(settings: Settings, fm: str, bare: str, *, live: bool = False
             ) -> dict[tuple[str, int], list[list[float]]]:
    """Per (server, latest): per-repetition [p50, p99] lists.

    Args:
        live: flight_md ingests into the queried ring, so its answers hold other values
            than the bare server's: only their schema and row count are checked.
    """
    clients = {"flight_md": flight.connect(fm), "bare": flight.connect(bare)}
    out: dict[tuple[str, int], list[list[float]]] = {}
    try:
        for latest in settings.latency_requests:
            check_equal({name: (client, tickets(latest)) for name, client in clients.items()},
                        values=not live)
            for client in clients.values():
                round_trips(client, tickets(latest), WARMUP)
        for rep in range(settings.repetitions):
            order = list(clients.items()) if rep % 2 == 0 else list(reversed(clients.items()))
            for latest, count in settings.latency_requests.items():
                for name, client in order:
                    samples = round_trips(client, tickets(latest), count)
                    entry = out.setdefault((name, latest), [[], []])
                    entry[0].append(median(samples))
                    entry[1].append(percentile(samples, 99))
    finally:
        for client in clients.values():
            client.close()
    return out


def measure(settings: Settings, loaded: LoadedServers | None = None) -> Section:
    """Round-trip p50 and p99 of flight_md and the bare server, idle and under ingestion.

    Args:
        loaded: Shared ingesting servers to use (started here otherwise).
    """
    section = Section(
        "latency", "Query latency: DoGet latest=N round trips",
        f"""
A `pyarrow.flight` client in the harness process times `do_get(ticket).read_all()` for
`{tickets(100)}` and `{tickets(CAPACITY)}` ({', '.join(f'{n:,} x latest={k:,}' for k, n in settings.latency_requests.items())}
round trips per repetition, {settings.repetitions} repetitions alternating between servers, after
{WARMUP} warm-up calls). **flight_md**: `FlightMarketDataServer` in its own process over a ring
filled to its {CAPACITY:,}-tick capacity. **Baseline**: a bare `pyarrow.flight` server in its own
process whose `do_get` returns `RecordBatchStream` (with flight_md's own `IpcWriteOptions`) of
a table it built at start from plain Python lists of the same ticks, one contiguous chunk,
without flight_md's buffer; before timing, the harness checks that both servers answer each
ticket with equal tables. **Under ingest**:
the flight_md process also runs a `MarketDataApp` ingesting {settings.load_rate:,} bookTicker
msg/s across {settings.load_symbols} symbols from the emulator (another process) through ccxt; the
queried symbol is one of them (so flight_md answers with live ticks: the same schema and row
count as the bare server's table, other values), with ingestion on a thread of the flight_md
process (`flight-md serve --no-ingest-process`). **Under ingest (default serve)**: the same
with `ingest_process`, `flight-md serve`'s default: ccxt parses in a child process and the
Flight process only appends the rows it forwards. p50 and p99 are per repetition; the table
shows their medians.
""")
    table = Table(("Request", "Condition", "flight_md p50", "bare p50", "p50 ratio",
                   "flight_md p99", "bare p99", "p99 ratio"))
    runs: list[tuple[bool | None, str, dict[tuple[str, int], list[list[float]]]]] = []
    with ExitStack() as stack:
        fm = flight_md_server(buffer_size=CAPACITY, fill_symbols=1, fill_ticks=CAPACITY)
        bare = bare_server([tickets(100), tickets(CAPACITY)], buffer_size=CAPACITY,
                           fill_symbols=1, fill_ticks=CAPACITY)
        for child in (fm, bare):
            stack.callback(child.close)
            child.launch()
        for child in (fm, bare):
            child.wait_ready()
        runs.append((None, "idle", _compare(settings, fm.hello["location"],
                                            bare.hello["location"])))
    with ExitStack() as stack:
        if loaded is None:
            loaded = stack.enter_context(LoadedServers(settings))
        for ingest_process, condition in MODES:
            if ingest_process not in settings.ingest_process_modes:
                continue
            servers = loaded.get(ingest_process)
            runs.append((ingest_process, condition, _compare(
                settings, servers.flight_md.hello["location"], servers.bare.hello["location"],
                live=True)))
    ratios: dict[tuple[bool | None, str], float] = {}  # (mode, figure) -> flight_md / bare
    for mode, condition, result in runs:
        for latest in settings.latency_requests:
            fm_p50, fm_p99 = (median(v) for v in result[("flight_md", latest)])
            bare_p50, bare_p99 = (median(v) for v in result[("bare", latest)])
            p50_ratio = ratio(fm_p50, bare_p50)
            ratios[(mode, f"latest={latest:,} p50")] = p50_ratio
            ratios[(mode, f"latest={latest:,} p99")] = ratio(fm_p99, bare_p99)
            table.add(f"latest={latest:,}", condition, show(fm_p50, "µs"), show(bare_p50, "µs"),
                      show(p50_ratio, "x"), show(fm_p99, "µs"), show(bare_p99, "µs"),
                      show(ratio(fm_p99, bare_p99), "x"))
            key = "idle" if mode is None else _KEYS[mode]
            section.goals.append(Goal.judge(
                f"latency.{key}.{latest}",
                f"DoGet latest={latest:,} p50 vs bare server, {condition}",
                p50_ratio, "<=", GOAL_RATIO, "x"))
    section.tables.append(table)
    by_key = {g.key: g for g in section.goals}
    thread, process = by_key.get("latency.load.100"), by_key.get("latency.process.100")
    if thread is not None and process is not None:
        section.readme["ingest-process"] = [
            (f"- `latest=100` DoGet p50 while ingesting {settings.load_rate:,} msg/s, vs a bare "
            f"Flight server (goal {process.target}): {process.measured} with the default serve "
            f"(ingestion process) ({verdict(process.met)}), {thread.measured} with ingestion on "
            f"a thread, `--no-ingest-process` ({verdict(thread.met)}).")]
    figures = [ModeFigure(f"{what} vs bare", value, ratios[(False, what)])
               for (mode, what), value in ratios.items() if mode is True and (False, what) in ratios]
    if figures:
        line = serve_mode_line("DoGet under ingest", figures)
        section.notes.append(line.removeprefix("- "))
        section.readme["serve-mode"] = [line]
    return section

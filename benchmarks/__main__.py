"""``python -m benchmarks``: measure flight_md beside its baselines and write BENCHMARKS.md.

Usage::

    python -m benchmarks [--smoke] [--out BENCHMARKS.md] [--only ingest,latency,...]
                         [--venues bybit,okx,...]

The full run takes about fifty-five minutes on an otherwise idle 2-core machine, some eight
of them the five venues' ticker runs and five or six the persistence section, plus three or
four for trades, books and bars, three or four for the ingest section's ``--decoder ccxt``
search, two for the decoders, three or four for the ingestion workers and five or six for
the bus (``--only bus``: a nats-server, ``flight-md ingest`` and a serving node; the searches'
length depends on where the lossless rates lie); ``--smoke`` runs tiny sizes in
about four minutes to prove the harness works
(its figures mean nothing). ``--venues`` runs only those venues' ticker measurements of the
ingest section (about a minute and a half each), without its Binance bidask search, and no
other section unless ``--only`` names some. Exit status 1 when a
measurement failed (the report still gets written, with the failure in it). Then
``python -m benchmarks.readme`` copies the report's quoted blocks into the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import (
    alternatives,
    buffer_micro,
    bulk,
    bus,
    channels,
    concurrency,
    decoders,
    freshness,
    ingest,
    latency,
    memory,
    peer,
    persist,
    sql,
    workers,
)
from benchmarks.findings import FINDINGS, PROFILED
from benchmarks.latency import LoadedServers
from benchmarks.report import Section, load_average, render
from benchmarks.settings import FULL, SMOKE, Settings

__all__ = ["MEASUREMENTS", "main"]

MEASUREMENTS: dict[str, tuple[str, Callable[..., Section]]] = {
    "ingest": ("Ingest: lossless rate through real ccxt", ingest.measure),
    "latency": ("Query latency: DoGet latest=N round trips", latency.measure),
    "concurrency": ("Concurrency: latest=100 requests/s while ingesting", concurrency.measure),
    "bulk": ("Bulk range pull", bulk.measure),
    "freshness": ("Freshness: emulator send -> live-tail client", freshness.measure),
    "memory": ("Memory per stored tick at capacity", memory.measure),
    "alternatives": ("Alternatives: DuckDB and pandas", alternatives.measure),
    "buffer": ("Buffer micro figures (in-process)", buffer_micro.measure),
    "persist": ("Persistence: journal and Parquet history", persist.measure),
    "channels": ("Trades, books and bars", channels.measure),
    "sql": ("Flight SQL through ADBC", sql.measure),
    "peer": ("Side by side with cryptofeed: lossless ingest", peer.measure),
    "decoders": ("Decoders: CPU per frame, --decoder fast vs ccxt", decoders.measure),
    "workers": ("Ingestion workers: total lossless rate with --ingest-workers N",
                workers.measure),
    "bus": ("The bus: ingest -> NATS JetStream -> serving node", bus.measure),
}
"""In run order. Latency and concurrency run back to back on one ingesting server."""
_LOADED = ("latency", "concurrency")


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited (user + system)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measure(name: str, settings: Settings, shared: LoadedServers | None) -> Section:
    """Run one measurement; a failure becomes a section that carries the traceback."""
    title, measure = MEASUREMENTS[name]
    begin = time.perf_counter()
    try:
        section = measure(settings, shared) if shared is not None else measure(settings)
    except Exception:  # noqa: BLE001 - any failure is reported in its section
        section = Section(name, title, "", error=traceback.format_exc(limit=12))
        print(section.error, file=sys.stderr, flush=True)
    section.seconds = time.perf_counter() - begin
    return section


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure flight_md beside baselines on this machine; write BENCHMARKS.md.")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, under a minute: checks the harness, not the figures")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help="report to write (default: BENCHMARKS.md)")
    parser.add_argument("--only", default="",
                        help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}")
    parser.add_argument("--venues",
                        help="comma-separated emulated venues whose ticker channel the ingest "
                        "section measures, skipping its Binance bidask search; implies --only "
                        "ingest unless --only is given (default: the search and every "
                        "emulated venue)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or (
        ["ingest"] if args.venues is not None else list(MEASUREMENTS))
    unknown = [n for n in names if n not in MEASUREMENTS]
    if unknown:
        parser.error(f"unknown measurement {unknown[0]!r}; known: {', '.join(MEASUREMENTS)}")
    settings = SMOKE if args.smoke else FULL
    if args.venues is not None:
        settings = dataclasses.replace(
            settings, venues=tuple(v.strip() for v in args.venues.split(",") if v.strip()),
            ingest_binance_search=False)
        try:
            ingest.selected_venues(settings)
        except ValueError as error:
            parser.error(str(error))
    command = "python -m benchmarks" + (f" {shlex.join(argv)}" if argv else
                                        f" {shlex.join(sys.argv[1:])}" if sys.argv[1:] else "")
    names.sort(key=list(MEASUREMENTS).index)
    started = time.perf_counter()
    load_at_start = load_average()
    sections: list[Section] = []
    shared = LoadedServers(settings)
    share = sum(n in names for n in _LOADED) > 1
    try:
        for number, name in enumerate(names, 1):
            print(f"[{number}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
            cpu = _cpu_seconds()
            section = _measure(name, settings, shared if share and name in _LOADED else None)
            if not any(n in _LOADED for n in names[number:]):
                shared.close()  # an ingesting server must not load later measurements
            # CPU includes the section's children once they have exited: on a shared machine
            # it says what the section costs better than the wall time does.
            print(f"[{number}/{len(names)}] {name}: {section.seconds:.0f} s "
                  f"(CPU {_cpu_seconds() - cpu:.0f} s)", file=sys.stderr, flush=True)
            sections.append(section)
    finally:
        shared.close()
    text = render(sections, command=command.strip(), smoke=settings.smoke,
                  seconds=time.perf_counter() - started, findings=FINDINGS,
                  load_at_start=load_at_start, findings_date=PROFILED)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 1 if any(s.error is not None for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())

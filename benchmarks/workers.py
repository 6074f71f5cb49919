"""Ingestion workers (``--ingest-workers N``): total lossless rate at N = 1 and 2, and the model.

Issue 15's goal: with N workers the total lossless rate ``R(N)`` reaches at least
``0.8 x N x R(1)`` where the machine has a core for each worker and for the load generator.
The lossless rate is found as the ingest section finds it (:func:`benchmarks.ingest._search`:
its rule :func:`~benchmarks.ingest.shortfalls` and search :func:`~benchmarks.ingest.next_rate`),
Binance bid/ask from one emulator process, flight_md with the default settings (persistence
on, ``--decoder fast``) and ``--ingest-workers N``, the counts N in turn in one run.

The verdict is *not measurable here* (no verdict, and the reason in the goal's cell) when the
machine has fewer than N + 2 cores: the emulator and the serving process need one each
besides the workers, so below that N = 2 measures contention, not scaling. The model for a
machine that has the cores (16) and its assumptions are in the section's method text
(:data:`MODEL`).
"""

from __future__ import annotations

import math
import os

from benchmarks.ingest import _RUN_HEADERS as RUN_HEADERS
from benchmarks.ingest import Run, _lossless_cell, _run_cells, _search, lossless_rate
from benchmarks.report import Goal, Section, Table, ratio, show
from benchmarks.settings import Settings

__all__ = ["GOAL_SCALING", "MODEL", "cores", "judge_scaling", "measure", "scaling"]

GOAL_SCALING = 0.8
"""Issue 15: R(N) >= this x N x R(1)."""

MODEL = """
**The model for a machine with the cores (16).** Let `r1` be one worker's lossless rate on a
core of its own (`r1 ~ u / c_w`: `c_w` the worker's CPU per tick -- receive, the venue's decoder
or ccxt's parse, the hand-off -- and `u ~ 0.85` the utilisation at which a worker still absorbs a
market's bursts without a backlog); `c_s` the serving process's CPU per tick for taking the
hand-off (reading the pipe, appending to the rings), paid on its one GIL for all workers
together, better written `m_s x messages/s + c_row x ticks/s` since every worker sends at most
one message per channel per flush interval; `b` the placement's balance, mean worker load /
busiest worker's (the rule spreads each exchange's symbols within one of each other, so with S
symbols of equal rates `b = (S / N) / ceil(S / N)`: S = 20 gives b = 1 for N = 2, 4, 5, 10, 0.83
for N = 8 and 0.63 for N = 16); `R_gen`, `R_net` what the load generator and the network
deliver. Then

    R(N) = min(N x b x r1,  u / c_s,  R_gen,  R_net)

and `R(N) >= 0.8 x N x r1` holds while (1) `b >= 0.8` (at least 4N symbols of similar rates, or S
a multiple of N), (2) `N x r1 <= u / c_s` (the serving process keeps up with all the workers
together), and (3) the load generator and the network are not the limit (cores of their own).

**Assumptions.** Each worker has a physical core (no SMT sibling busy with another worker) and
the serving process has one (two under heavy query load: its Flight handlers and the hand-off
share one GIL, so query load lowers `u / c_s`); the symbols' message rates are similar (the rule
balances symbol counts, not rates: one market ten times busier makes its worker the busiest and
`b` lower); the venue sends each connection only its subscribed symbols and its per-IP
connection limits leave room for N connections per channel; memory bandwidth, the pipe and the
kernel's socket path are not the bottleneck; persistence (on by default) adds its commit work
to the serving process, i.e. to `c_s`. `c_w` depends on the rate per worker (a socket read, a
loop iteration and a hand-off message carry more ticks at a higher rate), not on N, so a
saturated worker costs the same per tick with N = 1 or 16. Profiles on this 2-core machine
(helper D, 2026-12-01, under heavy contention, to be replaced by a quiet run's) gave `c_w` ~
20 µs at saturation, so `r1` ~ 40,000 msg/s on a core of its own, and the serving process ~50-140
µs a hand-off message: with ~1,000 messages/s per busy worker, ten workers take about one core
of the serving process for messages alone, which caps condition (2) near N ~ 6-8. On 16 cores,
with 1-2 cores for the serving process and 2-3 for the load generator (an emulator process
delivers ~30,000-40,000 msg/s on a core), about 10-12 workers have a core each: the model
predicts `R(N)` ~ 0.8-1.0 x N x r1 up to the serving process's cap (N ~ 6-8 today), for at least
4N symbols of similar rates, and less for fewer symbols or skewed rates. To measure it there: this
section with `workers_counts` 1, 2, 4, 8, 12 and the emulator split over enough processes that
`R_gen` is not the limit.
"""


def cores() -> int:
    """Cores this process may run on (its affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def scaling(rate_n: float, rate_1: float, n: int) -> float:
    """``R(N) / (N x R(1))``: 1.0 is perfect scaling (NaN when either is missing)."""
    return ratio(rate_n, n * rate_1) if n >= 1 else math.nan


def _rate(lossless: int | None) -> float:
    return float(lossless) if lossless is not None else math.nan


def judge_scaling(n: int, lossless: int | None, first: int, base: int | None,
                  available: int, *, lower_bound: bool = False) -> Goal:
    """The goal ``R(n) / (n x R(first)) >= GOAL_SCALING``, judged, or *not measurable here*
    (no verdict, the figure kept in the cell) when ``available`` cores are fewer than
    ``n + 2``. ``lower_bound``: ``n`` kept up at every rate probed."""
    value = scaling(_rate(lossless), _rate(base), n)
    measured = (f"{lossless:,} msg/s with N = {n}, {base:,} with N = {first}"
                if lossless is not None and base is not None else "a rate missing")
    if lower_bound:
        measured += f", a lower bound: N = {n} kept up at every rate probed"
    goal = Goal.judge(f"workers.scaling.{n}",
                      f"Total lossless rate with {n} ingestion workers vs {n} x one's",
                      value, ">=", GOAL_SCALING, "x", measured_note=measured,
                      conditions=f"on a machine with {n + 2} cores")
    if available >= n + 2:
        return goal
    return Goal(goal.key, goal.what, goal.target,
                f"not measurable here: {available} cores, {n + 2} needed "
                f"({show(value, 'x')}: {measured})", None)


def measure(settings: Settings) -> Section:
    """The lossless rate with each ``--ingest-workers`` count, and the scaling verdict."""
    counts = settings.workers_counts
    section = Section(
        "workers", "Ingestion workers: total lossless rate with --ingest-workers N",
        f"""
The ingest section's lossless rate (same rule and search: the fixed rates
{', '.join(f'{r:,}' for r in settings.workers_rates)} msg/s, then doubling and geometric bisection, at most
{settings.workers_search_steps} more runs, up to {settings.workers_max_rate:,} msg/s), Binance bid/ask over
{settings.workers_symbols} symbols from one emulator process, flight_md with the default settings
(persistence on, `--decoder fast`) and `--ingest-workers N` for N = {', '.join(map(str, counts))}, in that
order in this run. The goal: R(N) >= {GOAL_SCALING:g} x N x R(1) where the machine has a core for each
worker, the serving process and the load generator (N + 2 cores); with fewer this machine cannot
show the scaling (the emulator competes with the workers), and the verdict is *not measurable
here*. *CPU µs/tick* and *consumer CPU %* are of the serving process only (the workers are its
children).
{MODEL}""")
    available = cores()
    runs: dict[int, list[Run]] = {}
    kept: dict[int, dict[int, bool]] = {}
    for n in counts:
        runs[n] = []
        kept[n] = _search(settings.workers_symbols, settings, runs[n],
                          rates=settings.workers_rates, steps=settings.workers_search_steps,
                          max_rate=settings.workers_max_rate,
                          server={"ingest_workers": n})
    summary = Table(("--ingest-workers", "Cores needed (N + 2)", "Lossless rate (kept up)",
                     "Lowest rate that did not keep up", "R(N) / (N x R(1))"))
    table = Table(("--ingest-workers", *RUN_HEADERS))
    first = counts[0]
    base = lossless_rate(kept[first])
    for n in counts:
        lossless = lossless_rate(kept[n])
        failed = [r for r, ok in kept[n].items() if not ok]
        value = scaling(_rate(lossless), _rate(base), n)
        summary.add(str(n), str(n + 2), _lossless_cell(kept[n]),
                    f"{min(failed):,} msg/s" if failed else "none probed", show(value, "x"))
        for run in runs[n]:
            table.add(str(n), *_run_cells(run))
        if not failed:
            section.notes.append(f"N = {n}: kept up with every rate probed, up to "
                                 f"{max(kept[n]):,} msg/s: the lossless rate is at least that.")
        if n == first:
            continue
        section.goals.append(judge_scaling(n, lossless, first, base, available,
                                           lower_bound=not failed))
    section.tables += [summary, table]
    section.notes.append(f"This machine: {available} cores for this process.")
    return section

"""What a measurement returns and how BENCHMARKS.md is written from it.

Each measurement module returns one :class:`Section`: a paragraph on method, tables of
figures (flight_md beside its baseline and the ratio), and :class:`Goal` verdicts. The report
lists every goal with its verdict first, then each section, then for every missed goal
what limits it (from :mod:`benchmarks.findings`).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

__all__ = [
    "Goal",
    "Section",
    "Table",
    "load_average",
    "machine",
    "median",
    "percentile",
    "ratio",
    "render",
    "show",
]


@dataclass(frozen=True, slots=True)
class Table:
    """A markdown table: header cells and rows of already formatted cells."""

    headers: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.headers)}")
        self.rows.append(tuple(cells))


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal of the issue and whether this run met it.

    Attributes:
        key: Stable id, the key of its entry in :data:`benchmarks.findings.FINDINGS`.
        what: What is measured.
        target: The goal, e.g. ``"<= 1.3x bare"``.
        measured: The figure it is judged on, formatted.
        met: Whether the figure meets the target (``None``: not measured in this run).
    """

    key: str
    what: str
    target: str
    measured: str
    met: bool | None


@dataclass(slots=True)
class Section:
    """The result of one measurement module."""

    key: str
    title: str
    method: str
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


# -- statistics -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Median, NaN for no values."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation, NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratio(value: float, baseline: float) -> float:
    """``value / baseline``, NaN when either is missing or the baseline is 0."""
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline == 0:
        return math.nan
    return value / baseline


# -- formatting -------------------------------------------------------------------------------


def show(value: float | None, unit: str = "", digits: int = 3) -> str:
    """A figure with about ``digits`` significant digits and its unit; ``n/a`` when missing."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x" if abs(value) >= 0.1 else f"{value:.2g}x"
    if unit == "%":
        return f"{value:.2f} %" if value < 99.995 or value > 100 else "100 %"
    magnitude = abs(value)
    if magnitude >= 10 ** digits:
        text = f"{value:,.0f}"
    elif magnitude == 0:
        text = "0"
    else:
        decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
        text = f"{value:,.{decimals}f}"
    return f"{text} {unit}".strip()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, formatted."""
    try:
        return "{:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())
    except OSError:
        return "unknown"


def machine(load_at_start: str | None = None) -> dict[str, str]:
    """The machine and versions the run measured."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("pyarrow", "ccxt", "numpy", "pandas", "duckdb", "aiohttp", "psutil"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    memory = "unknown"
    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    return {
        "CPUs (os.cpu_count)": str(os.cpu_count()),
        "CPU model": model,
        "memory": memory,
        "load avg 1/5/15 min at start": load_at_start or "unknown",
        "at end": load_average(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": sys.version.split()[0],
        **versions,
    }


def _table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(table.headers) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.headers))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return lines


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def render(sections: Sequence[Section], *, command: str, smoke: bool, seconds: float,
           findings: dict[str, str], when: datetime | None = None,
           load_at_start: str | None = None) -> str:
    """The whole BENCHMARKS.md."""
    when = when or datetime.now(UTC)
    out = ["# flight_md benchmarks", ""]
    if smoke:
        out += [("> **Smoke run**: tiny sizes that only check the harness works. The figures "
                 "below mean nothing; run the full benchmark for real ones."), ""]
    out += [
        (f"Generated {when:%Y-%m-%d %H:%M} UTC by `{command}` in {seconds:.0f} s. Every figure "
         "is measured on this machine in this run, beside a baseline measured alongside it; "
         "ratios are flight_md / baseline. Timed figures are medians over repetitions (p99 "
         "where stated). The machine is small and may be shared (see the load averages): "
         "figures that involve several processes move by tens of percent between runs, "
         "in-process ones by a few percent."),
        "",
        "## Machine",
        "",
    ]
    info = machine(load_at_start)
    out += _table(Table(tuple(info), [tuple(info.values())]))
    out += ["", "## Goals", "",
            ("Verdicts of figures within about 15 % of their target can flip from run to run on "
             "a small shared machine; the sections give the baselines measured alongside."), ""]
    goals = Table(("Goal", "Target", "Measured", "Verdict"))
    for section in sections:
        for goal in section.goals:
            goals.add(goal.what, goal.target, goal.measured, _verdict(goal.met))
        if section.error is not None:
            goals.add(f"{section.title}: all figures", "-", "failed to run", "**failed**")
    out += _table(goals)
    for number, section in enumerate(sections, 1):
        out += ["", f"## {number}. {section.title}", "", section.method.strip(), ""]
        if section.error is not None:
            out += ["**This measurement failed in this run:**", "", "```",
                    section.error.strip(), "```", ""]
        for table in section.tables:
            out += _table(table)
            out.append("")
        for note in section.notes:
            out.append(f"- {note}")
        if section.notes:
            out.append("")
        out.append(f"_Took {section.seconds:.0f} s._")
    missed = [g for s in sections for g in s.goals if g.met is False]
    out += ["", "## Missed goals: what limits them", ""]
    if not missed:
        out.append("Every goal measured in this run was met.")
    groups: dict[str, list[Goal]] = {}  # one finding may explain several misses
    for goal in missed:
        groups.setdefault(findings.get(goal.key) or f"missing:{goal.key}", []).append(goal)
    for text, members in groups.items():
        for goal in members:
            out.append(f"### {goal.what}: {goal.measured} (goal {goal.target})")
        out.append("")
        out.append(text.strip() if not text.startswith("missing:") else
                   "No profile is recorded for this miss yet. Profile the flight_md process "
                   "during this measurement (`py-spy record --pid PID` or pyinstrument) and add "
                   f"the finding to `benchmarks/findings.py` under `{members[0].key!r}`.")
        out.append("")
    return "\n".join(out).rstrip() + "\n"

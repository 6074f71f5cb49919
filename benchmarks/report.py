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
import re
import statistics
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

__all__ = [
    "DEFAULT_SERVE",
    "FAILURE_SEPARATOR",
    "README_BLOCKS",
    "THREAD_SERVE",
    "Goal",
    "ModeFigure",
    "Section",
    "Table",
    "block",
    "blocks",
    "code_version",
    "holds",
    "load_average",
    "machine",
    "median",
    "percentile",
    "ratio",
    "render",
    "replace_block",
    "run_parts",
    "serve_mode_line",
    "show",
    "verdict",
]

README_BLOCKS = ("goals", "ingest-process", "serve-mode")
"""Blocks of BENCHMARKS.md that the README quotes verbatim (see :mod:`benchmarks.readme`)."""
DEFAULT_SERVE = "default serve: ingestion process"
"""How the sections name ``flight-md serve``'s default mode (ingestion in a child process)."""
THREAD_SERVE = "ingestion on a thread (--no-ingest-process)"
"""How the sections name the other mode (ingestion on a thread of the serving process)."""
_OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b}


@dataclass(frozen=True, slots=True)
class Table:
    """A markdown table: header cells and rows of already formatted cells."""

    headers: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"row has {len(cells)} cells, table has {len(self.headers)}")
        self.rows.append(tuple(cells))


def holds(value: float, op: str, limit: float) -> bool:
    """Whether ``value op limit`` holds (``op`` one of ``<``, ``<=``, ``>``, ``>=``); a
    missing (NaN) value never does."""
    if op not in _OPS:
        raise ValueError(f"unknown comparison {op!r}; expected one of: {', '.join(_OPS)}")
    return math.isfinite(value) and bool(_OPS[op](value, limit))


FAILURE_SEPARATOR = "; "
"""What introduces each failed condition of a goal after its measured figure."""


def _plain(text: str) -> str:
    """``text`` without the failure separator (its ``"; "`` written ``", "``)."""
    return text.replace(FAILURE_SEPARATOR, ", ")


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal of the issue and whether this run met it.

    Build it with :meth:`judge`, which computes the verdict from the measured figure, so
    that a verdict cannot disagree with the figure it is printed beside.

    Attributes:
        key: Stable id, the key of its entry in :data:`benchmarks.findings.FINDINGS`.
        what: What is measured.
        target: The goal, e.g. ``"<= 1.3x"``: the comparison, then the limit.
        measured: The figure it is judged on, formatted first; then, after ``"; "``, any
            condition of the goal that failed.
        met: Whether the figure meets the target (``None``: not measured in this run).
    """

    key: str
    what: str
    target: str
    measured: str
    met: bool | None

    @classmethod
    def judge(cls, key: str, what: str, value: float, op: str, limit: float, unit: str = "",
              *, failures: Sequence[str] = (), target_note: str = "",
              measured_note: str = "", conditions: str = "") -> Goal:
        """The goal ``value op limit`` (and no ``failures``), judged.

        Args:
            value: The measured figure (NaN: not measured, which misses).
            op: ``<``, ``<=``, ``>`` or ``>=``.
            limit: The goal's limit, in the unit of ``value``.
            unit: Unit for :func:`show`.
            failures: Other conditions of the goal that failed in this run, each said in a
                few words; any makes the goal missed.
            target_note: Shown after the limit, in parentheses.
            measured_note: Shown after the figure, in parentheses.
            conditions: The goal's other conditions, shown after the limit (e.g.
                ``"every tick delivered"``).
        """
        target = f"{op} {show(limit, unit)}" + (f" ({target_note})" if target_note else "") \
            + (f", {conditions}" if conditions else "")
        # "; " is what introduces a failed condition in the measured cell: a note that holds
        # one would read as a failure (and a failure's own "; " as two).
        measured = show(value, unit) + (f" ({_plain(measured_note)})" if measured_note else "")
        measured += "".join(FAILURE_SEPARATOR + _plain(failure) for failure in failures)
        return cls(key, what, target, measured, holds(value, op, limit) and not failures)


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
    readme: dict[str, list[str]] = field(default_factory=dict)
    """Lines this section contributes to the README blocks (:data:`README_BLOCKS`)."""


@dataclass(frozen=True, slots=True)
class ModeFigure:
    """One figure measured in both serve modes, for :func:`serve_mode_line`.

    Attributes:
        what: The figure, e.g. ``"latest=100 p50 vs bare"``.
        process: Its value with ingestion in a child process (the default serve).
        thread: Its value with ingestion on a thread (``--no-ingest-process``).
        higher_is_better: Throughput is; latencies and losses are not.
    """

    what: str
    process: float
    thread: float
    higher_is_better: bool = False

    @property
    def process_as_good(self) -> bool:
        """Whether the process mode's value is at least as good (a missing value is not)."""
        if not (math.isfinite(self.process) and math.isfinite(self.thread)):
            return False
        return (self.process >= self.thread if self.higher_is_better
                else self.process <= self.thread)

    def shown(self) -> str:
        """``what process/thread``: their ratio, or both values when it has none (a 0)."""
        value = ratio(self.process, self.thread)
        if math.isfinite(value):
            return f"{self.what} {show(value, 'x')}"
        return f"{self.what} {show(self.process)} vs {show(self.thread)}"


def serve_mode_line(title: str, figures: Sequence[ModeFigure]) -> str:
    """The section's line comparing the two serve modes: process / thread per figure, and
    whether the process mode (the default) is at least as good on every one (which not)."""
    worse = [figure.what for figure in figures if not figure.process_as_good]
    answer = "yes" if figures and not worse else (
        f"no ({', '.join(worse)})" if figures else "no (nothing measured in both)")
    return (f"- {title}, {DEFAULT_SERVE} / {THREAD_SERVE}: "
            f"{', '.join(figure.shown() for figure in figures)}; process at least as good as "
            f"thread on every figure: {answer}.")


def run_parts(section: Section, parts: Sequence[tuple[str, Callable[[], object]]], *,
              log: str) -> Section:
    """Run each ``(name, part)`` of ``section`` in turn; a part that raises is reported in
    the section (a note, its traceback in ``section.error``, on stdout after ``log``) and the
    rest still run."""
    for name, part in parts:
        try:
            part()
        except Exception as exc:  # noqa: BLE001 - one failed part is reported, the rest run
            text = traceback.format_exc(limit=8)
            print(f"{log}: {name} failed:\n{text}", flush=True)
            section.notes.append(f"The {name} measurement failed: "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[-1:]}")
            section.error = (section.error or "") + f"{name}:\n{text}\n"
    return section


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


def code_version(root: Path | None = None) -> str:
    """The commit the measured code is at, and whether the measured paths differ from it."""
    import subprocess

    root = root or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "flight_md", "benchmarks",
                                "pyproject.toml"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} + uncommitted changes" if dirty else commit


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
        "code (git)": code_version(),
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


def verdict(met: bool | None) -> str:
    """How a verdict is written: ``met``, ``**missed**`` or ``not measured``."""
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def block(name: str, lines: Sequence[str]) -> list[str]:
    """``lines`` between the markers of README block ``name``."""
    return [f"<!-- benchmarks:{name} -->", *lines, f"<!-- /benchmarks:{name} -->"]


def _block_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- benchmarks:{re.escape(name)} -->\n(.*?)\n?"
                      rf"<!-- /benchmarks:{re.escape(name)} -->", re.DOTALL)


def blocks(text: str) -> dict[str, str]:
    """The README blocks in ``text`` (BENCHMARKS.md or the README): name -> content."""
    out: dict[str, str] = {}
    for name in README_BLOCKS:
        found = _block_pattern(name).search(text)
        if found is not None:
            out[name] = found.group(1)
        elif f"<!-- benchmarks:{name} -->" in text:
            raise ValueError(f"block {name!r} is not closed")
    return out


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the content of its block ``name`` replaced by ``content``."""
    return _block_pattern(name).sub(lambda _: "\n".join(block(name, [content])), text, count=1)


def render(sections: Sequence[Section], *, command: str, smoke: bool, seconds: float,
           findings: dict[str, str], when: datetime | None = None,
           load_at_start: str | None = None, findings_date: str = "") -> str:
    """The whole BENCHMARKS.md."""
    when = when or datetime.now(UTC)
    out = ["# flight_md benchmarks", ""]
    if smoke:
        out += [("> **Smoke run**: tiny sizes that only check the harness works. The figures "
                 "below mean nothing; run the full benchmark for real ones."), ""]
    out += [
        (f"Generated {when:%Y-%m-%d %H:%M} UTC by `{command}` in {seconds:.0f} s. Every figure "
         "in the tables and the goals is measured on this machine in this run, beside a "
         "baseline measured alongside it; ratios are flight_md / baseline, both from this run. "
         "A figure from anywhere else is marked *quoted*. Timed figures are medians over "
         "repetitions (p99 where stated). The notes under \"Missed goals\" are written by hand "
         "from profiling sessions outside this run and are marked as such. The machine is "
         "small and may be shared (see the load averages): figures that involve several "
         "processes move by tens of percent between runs, in-process ones by a few percent."),
        "",
        "## Machine",
        "",
    ]
    info = machine(load_at_start)
    out += _table(Table(tuple(info), [tuple(info.values())]))
    out += ["", "## Goals", "",
            ("Each verdict is computed from the figure beside it; a goal with several "
             "conditions lists the ones that failed after the figure. Verdicts of figures "
             "within about 15 % of their target can flip from run to run on a small shared "
             "machine; the sections give the baselines measured alongside."), ""]
    goals = Table(("Goal", "Target", "Measured", "Verdict"))
    for section in sections:
        for goal in section.goals:
            goals.add(goal.what, goal.target, goal.measured, verdict(goal.met))
        if section.error is not None:
            goals.add(f"{section.title}: all figures", "-", "failed to run", "**failed**")
    out += block("goals", _table(goals))
    quoted: dict[str, list[str]] = {}
    for section in sections:
        for name, lines in section.readme.items():
            quoted.setdefault(name, []).extend(lines)
    if quoted:
        out += ["", "## Quoted by the README", "",
                ("The README copies these lines and the goals table above verbatim "
                 "(`python -m benchmarks.readme` copies them; `--check` fails when they differ)."),
                ""]
        for name in README_BLOCKS:
            if name in quoted:
                out += block(name, quoted[name])
                out.append("")
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
    else:
        out += [(f"**Notes, not measurements of this run.** Written by hand from profiling "
                 f"sessions{f' ({findings_date})' if findings_date else ''} of the flight_md "
                 "process during these measurements; the figures they quote come from those "
                 "sessions. Each miss above is judged on this run's figure only."), ""]
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

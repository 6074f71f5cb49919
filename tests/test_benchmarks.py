"""The benchmark harness runs and writes a well-formed report (no figure is asserted).

The smoke run starts real emulator, flight_md and bare-server processes with tiny sizes;
the full run (``python -m benchmarks``) is manual. Nothing here asserts a wall-clock figure:
speed is measured in ``benchmarks/`` and read in BENCHMARKS.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repo root off
    sys.path.insert(0, str(ROOT))

from benchmarks.concurrency import _split
from benchmarks.freshness import match
from benchmarks.report import Goal, Section, Table, percentile, render, show

MS = float(os.environ.get("FLIGHT_MD_TIME_SCALE", "1"))
SECTIONS = ("Ingest", "Query latency", "Concurrency", "Bulk range pull", "Freshness", "Memory",
            "Alternatives", "Buffer micro figures")


def _tables(text: str) -> list[list[str]]:
    tables: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def _assert_well_formed(text: str) -> None:
    assert text.startswith("# flight_md benchmarks\n")
    for table in _tables(text):
        assert len(table) >= 2, table
        assert re.fullmatch(r"\|(-{3}:?\|)+", table[1]), table[1]
        widths = {line.count("|") for line in table}
        assert len(widths) == 1, f"ragged table: {table}"


@pytest.mark.timeout(int(300 * MS))
def test_smoke_run_writes_a_well_formed_report(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)], cwd=ROOT,
        capture_output=True, text=True, timeout=280 * MS, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    text = out.read_text(encoding="utf-8")
    _assert_well_formed(text)
    assert "Smoke run" in text
    assert f"python -m benchmarks --smoke --out {out}" in text
    machine = _tables(text.split("## Machine", 1)[1])[0]
    for column in ("CPUs (os.cpu_count)", "Python", "pyarrow", "ccxt"):
        assert column in machine[0]
    for number, title in enumerate(SECTIONS, 1):
        assert re.search(rf"^## {number}\. {re.escape(title)}", text, re.MULTILINE), title
    assert "failed" not in text.split("## 1.", 1)[0]
    goals = _tables(text.split("## Goals", 1)[1])[0]
    assert len(goals) > 2
    assert all(row.rstrip(" |").endswith(("met", "**missed**")) for row in goals[2:])
    assert "## Missed goals: what limits them" in text


def test_report_renders_every_part() -> None:
    table = Table(("Figure", "flight_md", "Baseline", "Ratio"))
    table.add("append", show(1.234, "µs"), show(40, "µs"), show(1.234 / 40, "x"))
    section = Section("demo", "Demo", "How it was measured.", [table],
                      [Goal("demo.ok", "A met goal", "<= 2 µs", "1.23 µs", True),
                       Goal("demo.bad", "A missed goal", ">= 0.9x", "0.5x", False)],
                      ["A note."])
    section.goals.append(Goal("demo.bad2", "Another missed goal", "<= 1.3x", "2x", False))
    failed = Section("boom", "Broken", "", error="Traceback: boom")
    text = render([section, failed], command="python -m benchmarks", smoke=False, seconds=1.0,
                  findings={"demo.bad": "The ring lock, profiled.",
                            "demo.bad2": "The ring lock, profiled."})
    _assert_well_formed(text)
    assert "| append | 1.23 µs | 40.0 µs | 0.031x |" in text
    assert "### A missed goal: 0.5x (goal >= 0.9x)\n### Another missed goal" in text
    assert text.count("The ring lock, profiled.") == 1  # one finding, quoted once
    assert "Traceback: boom" in text and "**failed**" in text


def test_freshness_matches_frames_in_order() -> None:
    sent = [("BTCUSDT", 1_000_000, 1.0, 2.0), ("BTCUSDT", 2_000_000, 1.5, 2.5),
            ("BTCUSDT", 3_000_000, 1.0, 2.0), ("ETHUSDT", 1_500_000, 9.0, 9.5)]
    received = [("BTCUSDT", 1_500_000, 1.0, 2.0), ("ETHUSDT", 2_500_000, 9.0, 9.5),
                ("BTCUSDT", 4_000_000, 1.0, 2.0), ("BTCUSDT", 5_000_000, 7.0, 8.0)]
    latencies, unmatched = match(sent, received)
    # The second (1.0, 2.0) tick matches the *third* frame: matching never goes back.
    assert latencies == [0.5, 1.0, 1.0]
    assert unmatched == 1


def test_statistics_and_client_split() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert _split(32, 4) == [8, 8, 8, 8]
    assert _split(3, 4) == [1, 1, 1]
    assert _split(10, 4) == [3, 3, 2, 2]

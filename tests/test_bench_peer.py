"""The cryptofeed side by side (benchmarks/peer.py) runs end to end and reports what it measured.

Real parts: the project's Binance emulator, cryptofeed's own ``FeedHandler`` in a child process
and flight_md's ingesting server, at tiny sizes. No figure is asserted against a goal (speed is
read in BENCHMARKS.md); what is asserted is that each run is counted, that the report's ratio
and verdict are the ones its own printed rates give, and that a missing cryptofeed is reported
as not measured rather than as a failure.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) leaves the repo root off
    sys.path.insert(0, str(ROOT))

from benchmarks import peer
from benchmarks.report import Section, render
from benchmarks.settings import FULL, SMOKE

MS = float(os.environ.get("FLIGHT_MD_TIME_SCALE", "1"))
needs_cryptofeed = pytest.mark.skipif(
    not peer.available(),
    reason="cryptofeed is not installed: it is in the bench extra (pip install '.[bench]')")


def _tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of ``text`` as rows keyed by header."""
    out: list[list[dict[str, str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|(-{3}:?\|)+", line):
                current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            out.append([dict(zip(current[0], row, strict=True)) for row in current[1:]])
            current = []
    return out


def _number(cell: str) -> float:
    found = re.match(r"-?[\d,]+(\.\d+)?", cell)
    return float(found.group(0).replace(",", "")) if found else math.nan


def test_the_full_run_measures_the_goals_cases() -> None:
    assert set(FULL.peer_channels) == {str(c) for c in peer.PeerChannel}
    assert set(FULL.peer_symbols) == {20, 200}
    assert FULL.peer_repetitions >= 2  # medians over repetitions, alternating designs
    assert peer.GOAL_RATIO == 1.0 and peer.STRETCH_RATIO == 1.5


def test_a_later_repetition_starts_from_the_previous_bracket() -> None:
    assert peer._bracket({10_000: True, 20_000: False, 14_000: True, 17_000: False}) == \
        [14_000, 17_000]
    assert peer._bracket({10_000: True, 20_000: True}) == [20_000]
    assert peer._bracket({10_000: False}) == [10_000]


def test_only_a_loopback_emulator_is_accepted() -> None:
    for url in ("http://192.0.2.1:8765", "ws://127.0.0.1:8765", "http://127.0.0.1"):
        with pytest.raises(ValueError, match="is not a loopback http://host:port address"):
            peer._emulated_feed(url)


def test_without_cryptofeed_the_section_says_not_measured() -> None:
    section = peer._not_measured(Section("peer", "Side by side", ""), SMOKE,
                                 "cryptofeed is not installed (pip install '.[bench]')")
    assert not section.goals  # no verdict on what was not measured
    text = render([section], command="python -m benchmarks", smoke=True, seconds=1.0,
                  findings={})
    assert "**failed**" not in text
    assert "Not measured in this run (bidask x3, trades x3): cryptofeed is not installed " \
        "(pip install '.[bench]')." in text


@needs_cryptofeed
@pytest.mark.timeout(int(90 * MS))
@pytest.mark.parametrize("channel", list(peer.PeerChannel))
def test_cryptofeed_ingests_the_emulator_and_every_message_is_counted(
        channel: peer.PeerChannel) -> None:
    probe = peer.measure_one(peer.Design.CRYPTOFEED, channel, 300, 3, SMOKE)
    assert (probe.design, probe.channel, probe.symbols, probe.rate) == \
        (peer.Design.CRYPTOFEED, channel, 3, 300)
    # cryptofeed took what the emulator sent over the ws:// it was re-pointed at.
    assert probe.stored_per_s > 0 and probe.delivered_per_s > 0
    if channel is peer.PeerChannel.TRADES:
        assert not [f for f in probe.failures if " sent" in f and "of" in f
                    and "delivered" not in f], probe.failures  # every trade reached the callback


@needs_cryptofeed
@pytest.mark.soak  # ~25 s on an idle 2-core machine (75 s loaded): 2 designs x 2 channels
@pytest.mark.timeout(int(240 * MS))
def test_smoke_run_of_the_peer_section(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--only", "peer", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=220 * MS, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    text = out.read_text(encoding="utf-8")
    assert re.search(r"^## 1\. Side by side with cryptofeed: lossless ingest", text, re.MULTILINE)
    assert "This measurement failed" not in text
    (goals,) = _tables(text.split("## Goals", 1)[1].split("\n## ", 1)[0])
    summary, runs = _tables(text.split("## 1. ", 1)[1].split("\n## ", 1)[0])
    assert {(r["Channel"], r["Symbols"]) for r in summary} == {
        (c, str(s)) for c in SMOKE.peer_channels for s in SMOKE.peer_symbols}
    for row in summary:
        ours, theirs = _number(row["flight_md lossless (median)"]), \
            _number(row["cryptofeed lossless (median)"])
        goal = next(g for g in goals if g["Goal"] == (
            f"Lossless {row['Channel']} ingest vs cryptofeed, {row['Symbols']} symbols"))
        if math.isnan(ours) or math.isnan(theirs):  # a design kept up at no rate probed
            assert goal["Verdict"] == "**missed**" and "kept up at no rate probed" in goal["Measured"]
            continue
        assert _number(row["flight_md / cryptofeed"]) == pytest.approx(ours / theirs, rel=0.01)
        assert goal["Verdict"] == ("met" if ours / theirs >= peer.GOAL_RATIO else "**missed**")
    # Both designs ran on every channel, and each run's verdict is printed.
    assert {(r["Channel"], r["Design"]) for r in runs} == {
        (c, str(d)) for c in SMOKE.peer_channels for d in peer.Design}
    assert all(r["Kept up"] == "yes" or r["Kept up"].startswith("no: ") for r in runs)


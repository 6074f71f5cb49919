"""Freshness: from the emulator sending a frame to a live-tail client holding that tick.

The emulator (own process) logs ``time.time_ns()`` as it renders each frame of the followed
symbols and queues it for its sockets (see :mod:`benchmarks.exchange`). flight_md (own
process) ingests through ccxt. In this process, one thread per live tail holds a Flight
``SYMBOL?follow=true&latest=0`` stream of one followed symbol and stamps each batch on
arrival with the same clock.

Matching and judging
    Per symbol, received ticks are matched in order to the frames the emulator sent
    (:func:`match`): the first few ticks fix where the tail starts in the log (an exact
    run of equal (bid, ask) pairs), then each tick takes the next frame with its (bid, ask)
    sent no later than it arrived. A tick that matches no frame is a failure of the
    matching and is counted, never dropped. The window judged is every frame of the
    followed symbols sent between the tails being live and the end of the phase
    (:func:`judge`): each must have been delivered, and the percentiles are over them.
    After the window the emulator stalls and the receivers get what is in flight, so that
    a late tick is counted late, not lost.

Baseline, alongside: a raw websocket client (aiohttp, its own process, so that it shares
no interpreter with the tails) subscribed to the same symbols' frames straight from the
emulator and judged over the same symbols and window: the floor any consumer pays for the
websocket hop, with no ccxt, no store and no Flight.

Run as a child: ``python -m benchmarks.freshness raw --url URL --symbols A/B,C/D``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import psutil
import pyarrow as pa
from pyarrow import flight

from benchmarks import ticks
from benchmarks.exchange import exchange
from benchmarks.process import Child, serve, wait_until
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
from benchmarks.servers import flight_md_server
from benchmarks.settings import Settings

__all__ = ["GOAL_P99_MS", "GOAL_RATE", "GOAL_TAILS", "Judged", "Matching", "judge", "match",
           "measure", "raw_client"]

GOAL_P99_MS = 5.0
GOAL_RATE = 5_000
GOAL_TAILS = 8
"""The goal's case (issue "Performance"): 8 live tails at once at 5,000 msg/s."""
ALIGN = 8
"""Consecutive equal (bid, ask) pairs that fix where a receiver starts in the send log."""
LOOKBACK_NS = 1_000_000_000
"""A receiver's first tick is looked for among frames sent at most this long before it
subscribed (the tail or socket opened)."""
SETTLE_S = 0.3
GRACE_S = 0.2
"""After the window, the emulator keeps sending this long (frames of the window leave its
queue), then stalls; receivers get what is in flight until they are quiet for QUIET_S."""
QUIET_S = 0.5
DRAIN_TIMEOUT_S = 10.0
Arrival = tuple[str, int, float, float]  # market id, time_ns, bid, ask


@dataclass(slots=True)
class Matching:
    """Received ticks matched to sent frames.

    Attributes:
        latency_ms: (market id, send time_ns) of each matched frame -> its latency.
        unmatched: Received ticks that matched no sent frame.
        received: Received ticks.
    """

    latency_ms: dict[tuple[str, int], float] = field(default_factory=dict)
    unmatched: int = 0
    received: int = 0


def match(sent: Sequence[Arrival], received: Sequence[Arrival], since_ns: int = 0) -> Matching:
    """Match received ticks to the sent frames, per market, in order.

    Args:
        sent: The emulator's log, in send order: ``(market_id, time_ns, bid, ask)``.
        received: What one receiver got, in arrival order, same shape.
        since_ns: The receiver's first tick is a frame sent at or after this time.
    """
    frames: dict[str, list[Arrival]] = defaultdict(list)
    for entry in sent:
        frames[entry[0]].append(entry)
    got: dict[str, list[Arrival]] = defaultdict(list)
    for entry in received:
        got[entry[0]].append(entry)
    out = Matching(received=len(received))
    for market, ticks_ in got.items():
        log = frames.get(market, [])
        start = next((k for k, f in enumerate(log) if f[1] >= since_ns), len(log))
        cursor = _align(log, ticks_, start)
        for _, t_recv, bid, ask in ticks_:
            k = cursor
            while k < len(log) and log[k][1] <= t_recv:
                if log[k][2] == bid and log[k][3] == ask:
                    out.latency_ms[(market, log[k][1])] = (t_recv - log[k][1]) / 1e6
                    cursor = k + 1
                    break
                k += 1
            else:
                out.unmatched += 1
    return out


def _align(log: Sequence[Arrival], got: Sequence[Arrival], start: int) -> int:
    """Where in ``log`` (from ``start``) the run of ``got``'s first :data:`ALIGN` ticks
    begins, or ``start`` when there is no exact run (a tick lost among them)."""
    n = min(ALIGN, len(got))
    if n == 0:
        return start
    first = got[0]
    for k in range(start, len(log) - n + 1):
        if log[k][1] > first[1]:
            break
        if all(log[k + i][2] == got[i][2] and log[k + i][3] == got[i][3] for i in range(n)):
            return k
    return start


@dataclass(frozen=True, slots=True)
class Judged:
    """One receiver over one window: what it should have had, and how fast it got it."""

    expected: int
    latencies: list[float]
    unmatched: int

    @property
    def missing(self) -> int:
        return self.expected - len(self.latencies)


def judge(sent: Sequence[Arrival], matching: Matching, markets: Sequence[str], begin_ns: int,
          end_ns: int) -> Judged:
    """Every frame of ``markets`` sent in ``[begin_ns, end_ns]`` must have been delivered."""
    wanted = set(markets)
    window = [(m, t) for m, t, _, _ in sent if m in wanted and begin_ns <= t <= end_ns]
    latencies = [matching.latency_ms[key] for key in window if key in matching.latency_ms]
    return Judged(len(window), latencies, matching.unmatched)


# -- receivers ---------------------------------------------------------------------------------


class _Tail:
    """One live tail on a thread of this process."""

    def __init__(self, location: str, symbol: str) -> None:
        self.symbol = symbol
        self.market = symbol.replace("/", "")
        self.arrivals: list[Arrival] = []
        self.errors: list[str] = []
        self.opened_ns = 0
        self.reader: Any = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, args=(location,), daemon=True,
                                        name=f"tail-{symbol}")
        self._thread.start()

    def _run(self, location: str) -> None:
        try:
            client = flight.connect(location)
            self.opened_ns = time.time_ns()
            self.reader = client.do_get(
                flight.Ticket(f"{self.symbol}?follow=true&latest=0".encode()))
            while True:
                try:
                    chunk = self.reader.read_chunk()
                except StopIteration:
                    break
                now = time.time_ns()
                batch = chunk.data
                if batch is None or batch.num_rows == 0:
                    continue
                bids = batch.column("bid").to_pylist()
                asks = batch.column("ask").to_pylist()
                self.arrivals.extend((self.market, now, b, a) for b, a in zip(bids, asks,
                                                                              strict=True))
        except (flight.FlightCancelledError, pa.ArrowException) as exc:
            if not (self._cancelled and "cancel" in str(exc).lower()):
                self.errors.append(f"{self.symbol}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported with the section
            self.errors.append(f"{self.symbol}: {exc!r}")

    def close(self) -> None:
        self._cancelled = True
        if self.reader is not None:
            self.reader.cancel()
        self._thread.join(5)


def _raw_child(args: argparse.Namespace) -> None:
    symbols = [s for s in args.symbols.split(",") if s]

    def quote(frame: Any, now: int) -> Arrival | None:
        if isinstance(frame, dict) and "s" in frame and "b" in frame:
            return (frame["s"], now, float(frame["b"]), float(frame["a"]))
        return None

    raw_client(args.url, [f"{s.replace('/', '').lower()}@bookTicker" for s in symbols], quote,
               args.max_seconds)


def raw_client(url: str, streams: Sequence[str], entry: Callable[[Any, int], Any | None],
               max_seconds: float) -> None:
    """Serve a raw aiohttp websocket client of the Binance emulator at ``url`` (no ccxt, no
    store, no Flight) subscribed to ``streams``: ``entry(frame, arrival ns)`` of each JSON
    frame, where not ``None``, is kept until ``take`` (which hands them over) and counted by
    ``count``. The hello says when it subscribed (``subscribed_ns``)."""
    import aiohttp

    arrivals: list[Any] = []
    lock = threading.Lock()
    state: dict[str, Any] = {"subscribed_ns": 0, "error": None}
    subscribed = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run() -> None:
        ws_url = url.replace("http://", "ws://") + "/ws"
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
                state["subscribed_ns"] = time.time_ns()
                await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": list(streams),
                                              "id": 1}))
                subscribed.set()
                receive = asyncio.ensure_future(ws.receive())
                halt = asyncio.ensure_future(stop.wait())
                while True:
                    done, _ = await asyncio.wait({receive, halt},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if halt in done:
                        receive.cancel()
                        break
                    message = receive.result()
                    now = time.time_ns()
                    if message.type != aiohttp.WSMsgType.TEXT:
                        raise ConnectionError(f"websocket ended: {message.type!r}")
                    kept = entry(json.loads(message.data), now)
                    if kept is not None:
                        with lock:
                            arrivals.append(kept)
                    receive = asyncio.ensure_future(ws.receive())
        except Exception as exc:  # noqa: BLE001 - reported through "take"
            state["error"] = repr(exc)
            subscribed.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True, name="raw-loop")
    thread.start()
    task = asyncio.run_coroutine_threadsafe(run(), loop)
    subscribed.wait(30)

    def take() -> dict[str, Any]:
        with lock:
            entries = arrivals[:]
            del arrivals[:]
        return {"entries": entries, "error": state["error"]}

    def count() -> dict[str, Any]:
        with lock:
            return {"count": len(arrivals), "error": state["error"]}

    def close() -> None:
        loop.call_soon_threadsafe(stop.set)
        try:
            task.result(5)
        except Exception:  # noqa: BLE001, S110 - closing: the error was reported already
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    serve({"subscribed_ns": state["subscribed_ns"]}, {"take": take, "count": count},
          max_seconds, on_exit=close)


# -- one server session ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Phase:
    tails: int
    flight_md: Judged
    raw: Judged
    errors: list[str]
    cpu_pct: dict[str, float]
    """CPU % of one core in the window: ``server`` (flight_md and its children),
    ``tails`` (this process), ``raw``."""


def _cpu(server_pid: int, raw_pid: int) -> dict[str, float]:
    def seconds(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    server = psutil.Process(server_pid)
    return {"server": seconds(server) + sum(seconds(c) for c in server.children(recursive=True)),
            "tails": seconds(psutil.Process()), "raw": seconds(psutil.Process(raw_pid))}


def _run(settings: Settings, rate: int, ingest_process: bool) -> list[_Phase]:
    """One server session: a phase with one live tail, then one with several at once."""
    symbols = ticks.symbols(settings.freshness_symbols)
    followed = symbols[:settings.freshness_follow]
    markets = [s.replace("/", "") for s in followed]
    phases = [(1, settings.freshness_one_tail_seconds),
              (len(followed), settings.freshness_seconds)]
    out: list[_Phase] = []
    sent: list[Arrival] = []
    raw_got: list[Arrival] = []
    with ExitStack() as stack:
        emulator = stack.enter_context(exchange(symbols=len(symbols), rate=rate,
                                                log_symbols=followed))
        fm = stack.enter_context(flight_md_server(
            exchange_url=emulator.hello["url"], ingest_symbols=len(symbols),
            ingest_process=ingest_process, name="flight_md-freshness"))
        raw = stack.enter_context(Child("benchmarks.freshness", "raw", "--url",
                                        emulator.hello["url"], "--symbols", ",".join(followed),
                                        name="raw-websocket"))
        if not wait_until(lambda: len(fm.call("counts")["appended"]) >= len(symbols), 60, 0.2):
            raise RuntimeError("ingestion did not reach every symbol within 60 s")
        if not wait_until(lambda: raw.call("count")["count"] > 0, 30, 0.1):
            raise RuntimeError(f"the raw websocket client received nothing: {raw.call('count')}")
        raw_since = int(raw.hello["subscribed_ns"]) - LOOKBACK_NS
        for count, seconds in phases:
            tails = [_Tail(fm.hello["location"], symbol) for symbol in followed[:count]]

            def live(tails: list[_Tail] = tails) -> bool:
                return all(t.arrivals or t.errors for t in tails)

            try:
                if not wait_until(live, 10, 0.02):
                    raise RuntimeError("a live tail received nothing within 10 s")
                time.sleep(SETTLE_S)
                cpu0 = _cpu(fm.pid, raw.pid)
                begin = time.time_ns()
                time.sleep(seconds)
                end = time.time_ns()
                cpu1 = _cpu(fm.pid, raw.pid)
                # Then the emulator stops sending, and every receiver gets what is in flight:
                # a tick that is late is late, not lost.
                time.sleep(GRACE_S)
                emulator.call("stall")
                seen = [-1.0, time.monotonic()]

                def quiet(tails: list[_Tail] = tails, seen: list[float] = seen) -> bool:
                    now = sum(len(t.arrivals) for t in tails) + raw.call("count")["count"]
                    if now != seen[0]:
                        seen[:] = [now, time.monotonic()]
                    return time.monotonic() - seen[1] >= QUIET_S

                drained = wait_until(quiet, DRAIN_TIMEOUT_S, 0.05)
            finally:
                for tail in tails:
                    tail.close()
            # The raw client first: every frame it has by then is already in the send log.
            reply = raw.call("take", timeout=60)
            sent += [tuple(e) for e in emulator.call("sends", timeout=60)["entries"]]
            raw_got += [tuple(e) for e in reply["entries"]]
            emulator.call("resume")
            errors = [e for t in tails for e in t.errors]
            if reply["error"]:
                errors.append(f"raw websocket client: {reply['error']}")
            if not drained:
                errors.append(f"receivers were still receiving {DRAIN_TIMEOUT_S:g} s after the "
                              "emulator stopped")
            elapsed = (end - begin) / 1e9
            fm_matching = Matching()
            for tail in tails:
                one = match(sent, tail.arrivals, tail.opened_ns - LOOKBACK_NS)
                fm_matching.latency_ms.update(one.latency_ms)
                fm_matching.unmatched += one.unmatched
                fm_matching.received += one.received
            sample = markets[:count]
            raw_sample = [a for a in raw_got if a[0] in sample]
            out.append(_Phase(
                count, judge(sent, fm_matching, sample, begin, end),
                judge(sent, match(sent, raw_sample, raw_since), sample, begin, end), errors,
                {name: 100.0 * (cpu1[name] - cpu0[name]) / elapsed for name in cpu0}))
    return out


def measure(settings: Settings) -> Section:
    """p50/p99 send-to-client latency of flight_md live tails and of a raw websocket."""
    several = settings.freshness_follow
    section = Section(
        "freshness", "Freshness: emulator send -> live-tail client",
        f"""
The emulator (own process) sends bookTicker frames at each rate across {settings.freshness_symbols}
symbols and logs `time.time_ns()` as it renders each frame of {several} followed symbols, just
before queueing it for its sockets (so the figures include the emulator's own queueing, if any).
flight_md (own process, `MarketDataApp`) ingests them through ccxt. In the harness process one
thread per live tail reads a Flight `SYMBOL?follow=true&latest=0` stream of one followed symbol
and stamps each arriving batch with the same clock. Per rate, one server session runs two
phases with fresh tails: **one live tail** ({settings.freshness_one_tail_seconds:g} s), then
**{several} live tails at once** ({settings.freshness_seconds:g} s; the goal's case is {GOAL_TAILS} tails
at {GOAL_RATE:,} msg/s). Ticks are matched to frames in order per symbol: the first {ALIGN} ticks fix
where a tail starts in the send log, then each tick takes the next frame with its (bid, ask);
a tick that matches no frame is counted as *unmatched*, a failure of the matching. *Expected*
= every frame of the phase's symbols sent from {SETTLE_S:g} s after every tail had its first tick to
the end of the phase; each must be *delivered* (the rest are *not delivered*); percentiles are
over the delivered ones. After the window the emulator sends {GRACE_S:g} s more, then stalls,
and the receivers get what is in flight until they are quiet for {QUIET_S:g} s (at most
{DRAIN_TIMEOUT_S:g} s; then it resumes for the next phase): a late tick counts with its lateness, not as
lost. *Client CPU %* is the receiving process's (the harness for the tails), *server CPU %* the
flight_md process's with its children, both over the window, of one core. **Baseline**: a raw aiohttp websocket client in its own process,
subscribed to the followed symbols straight from the emulator (no ccxt, no store, no Flight),
judged over the same symbols and the same window. Each rate runs twice: ingestion on a thread
of the server process (`--no-ingest-process`), and in a child process (`ingest_process`,
`flight-md serve`'s default, which forwards rows to the server at most every 1 ms); the goal
is judged on the default.
""")
    table = Table(("Rate msg/s", "Ingestion", "Live tails", "Path", "Expected", "Delivered",
                   "Not delivered", "Unmatched", "p50", "p99", "max", "p50 ratio to raw",
                   "p99 ratio to raw", "Client CPU %", "Server CPU %"))
    goal_rate = max(settings.freshness_rates)
    judged: dict[tuple[bool, str], float] = {}  # (ingest_process, figure) -> value
    for rate, ingest_process in [(r, p) for r in settings.freshness_rates
                                 for p in settings.ingest_process_modes]:
        mode = DEFAULT_SERVE if ingest_process else THREAD_SERVE
        phases = _run(settings, rate, ingest_process)
        crowded = phases[-1].flight_md  # the phase of several tails
        for figure, value in ((f"p50 at {rate:,} msg/s", median(crowded.latencies)),
                              (f"p99 at {rate:,} msg/s", percentile(crowded.latencies, 99)),
                              (f"not delivered at {rate:,} msg/s", float(crowded.missing))):
            judged[(ingest_process, figure)] = value
        for phase in phases:
            fm, raw = phase.flight_md, phase.raw
            for path, seen in (("flight_md live tail", fm), ("raw websocket", raw)):
                lat = seen.latencies
                is_fm = seen is fm
                table.add(f"{rate:,}", mode, str(phase.tails), path, f"{seen.expected:,}",
                          f"{len(lat):,}", f"{seen.missing:,}", f"{seen.unmatched:,}",
                          show(median(lat), "ms"), show(percentile(lat, 99), "ms"),
                          show(max(lat) if lat else None, "ms"),
                          show(ratio(median(lat), median(raw.latencies)), "x") if is_fm else "1x",
                          show(ratio(percentile(lat, 99), percentile(raw.latencies, 99)), "x")
                          if is_fm else "1x",
                          show(phase.cpu_pct["tails" if is_fm else "raw"], "%"),
                          show(phase.cpu_pct["server"], "%") if is_fm else "")
            for error in phase.errors:
                section.notes.append(f"At {rate:,} msg/s ({mode}, {phase.tails} tails): {error}")
        if rate == goal_rate:
            goal = phases[-1]
            fm = goal.flight_md
            failures = []
            if fm.missing:
                failures.append(f"{fm.missing:,} of {fm.expected:,} ticks not delivered")
            if fm.unmatched:
                failures.append(f"{fm.unmatched:,} received ticks matched no frame")
            if not fm.expected:
                failures.append("no frame sent in the window")
            failures += [f"error: {e}" for e in goal.errors if not e.startswith("raw ")]
            section.goals.append(Goal.judge(
                "freshness.p99" + (".process" if ingest_process else ""),
                f"Freshness p99, {goal.tails} live tails at {rate:,} msg/s, {mode}",
                percentile(fm.latencies, 99), "<", GOAL_P99_MS, "ms",
                conditions="every tick delivered", failures=failures))
    section.tables.append(table)
    by_key = {g.key: g for g in section.goals}
    thread, process = by_key.get("freshness.p99"), by_key.get("freshness.p99.process")
    if thread is not None and process is not None:
        case = process.what.removeprefix("Freshness p99, ").removesuffix(f", {DEFAULT_SERVE}")
        section.readme["ingest-process"] = [
            (f"- Freshness p99 (emulator send to client), {case} (goal {process.target}): "
            f"{process.measured} with the default serve (ingestion process) "
            f"({verdict(process.met)}), {thread.measured} with ingestion on a thread, "
            f"`--no-ingest-process` ({verdict(thread.met)}).")]
    figures = [ModeFigure(figure, value, judged[(False, figure)])
               for (mode, figure), value in judged.items()
               if mode and (False, figure) in judged]
    if figures:
        line = serve_mode_line(f"Freshness, {several} live tails", figures)
        section.notes.append(line.removeprefix("- "))
        section.readme["serve-mode"] = [line]
    return section


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.freshness")
    parser.add_argument("role", choices=("raw",))
    parser.add_argument("--url", required=True)
    parser.add_argument("--symbols", required=True)
    parser.add_argument("--max-seconds", type=float, default=900)
    _raw_child(parser.parse_args(argv))


if __name__ == "__main__":
    _main()

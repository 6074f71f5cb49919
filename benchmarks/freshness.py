"""Freshness: from the emulator sending a frame to a live-tail client holding that tick.

The emulator (own process) logs ``time.time_ns()`` as it renders each frame of the followed
symbols and queues it for its sockets (see :mod:`benchmarks.exchange`). flight_md (own process) ingests
through ccxt. In this process, one thread per followed symbol holds a Flight
``SYMBOL?follow=true&latest=0`` stream and stamps each batch on arrival with the same clock.
Ticks and frames are matched by (bid, ask) in order per symbol.

Baseline, alongside: a raw websocket client (aiohttp, in this process) subscribed to the
same symbols' frames straight from the emulator: the floor any consumer pays for the
websocket hop, with no ccxt, no store and no Flight.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from pyarrow import flight

from benchmarks import ticks
from benchmarks.exchange import exchange
from benchmarks.process import wait_until
from benchmarks.report import Goal, Section, Table, median, percentile, ratio, show
from benchmarks.servers import flight_md_server
from benchmarks.settings import Settings

__all__ = ["match", "measure"]

GOAL_P99_MS = 5.0
GOAL_RATE = 1000
MATCH_WINDOW = 64
Arrival = tuple[str, int, float, float]  # market id, time_ns, bid, ask


def match(sent: Sequence[Arrival], received: Sequence[Arrival]) -> tuple[list[float], int]:
    """Latencies (ms) of received ticks matched in order to sent frames, and the unmatched.

    Both are ``(market_id, time_ns, bid, ask)``; per market, each received tick is matched
    to the first sent frame with equal (bid, ask) within :data:`MATCH_WINDOW` frames after
    the previous match.
    """
    by_market: dict[str, list[Arrival]] = defaultdict(list)
    for entry in sent:
        by_market[entry[0]].append(entry)
    cursor: dict[str, int] = defaultdict(int)
    latencies, unmatched = [], 0
    for market, t_recv, bid, ask in received:
        frames = by_market.get(market, [])
        j = cursor[market]
        for k in range(j, min(j + MATCH_WINDOW, len(frames))):
            if frames[k][2] == bid and frames[k][3] == ask:
                latencies.append((t_recv - frames[k][1]) / 1e6)
                cursor[market] = k + 1
                break
        else:
            unmatched += 1
    return latencies, unmatched


def _follow(location: str, symbol: str, readers: list[Any], out: list[Arrival],
            errors: list[str]) -> None:
    market = symbol.replace("/", "")
    try:
        client = flight.connect(location)
        reader = client.do_get(flight.Ticket(f"{symbol}?follow=true&latest=0".encode()))
        readers.append(reader)
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            now = time.time_ns()
            batch = chunk.data
            if batch is None or batch.num_rows == 0:
                continue
            bids = batch.column("bid").to_pylist()
            asks = batch.column("ask").to_pylist()
            out.extend((market, now, b, a) for b, a in zip(bids, asks))
    except (flight.FlightCancelledError, pa.ArrowException) as exc:
        if "cancel" not in str(exc).lower():
            errors.append(f"{symbol}: {exc}")
    except Exception as exc:  # noqa: BLE001 - reported with the section
        errors.append(f"{symbol}: {exc!r}")


async def _raw(url: str, symbols: Sequence[str], stop: asyncio.Event, out: list[Arrival]
               ) -> None:
    import aiohttp

    ws_url = url.replace("http://", "ws://") + "/ws"
    streams = [f"{s.replace('/', '').lower()}@bookTicker" for s in symbols]
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1}))
        receive = asyncio.ensure_future(ws.receive())
        halt = asyncio.ensure_future(stop.wait())
        while True:
            done, _ = await asyncio.wait({receive, halt}, return_when=asyncio.FIRST_COMPLETED)
            if halt in done:
                receive.cancel()
                break
            message = receive.result()
            now = time.time_ns()
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            if isinstance(frame, dict) and "s" in frame and "b" in frame:
                out.append((frame["s"], now, float(frame["b"]), float(frame["a"])))
            receive = asyncio.ensure_future(ws.receive())


def _run(settings: Settings, rate: int, ingest_process: bool = False) -> list[dict[str, Any]]:
    """Two phases on one server: one live tail (the goal's case), then several at once."""
    symbols = ticks.symbols(settings.freshness_symbols)
    followed = symbols[:settings.freshness_follow]
    phases = [(1, settings.freshness_seconds),
              (len(followed), max(1.0, settings.freshness_seconds / 2))]
    results: list[dict[str, Any]] = []
    with exchange(symbols=len(symbols), rate=rate, log_symbols=followed) as emulator, \
            flight_md_server(exchange_url=emulator.hello["url"], ingest_symbols=len(symbols),
                             ingest_process=ingest_process, name="flight_md-freshness") as fm:
        if not wait_until(lambda: len(fm.call("counts")["appended"]) >= len(symbols), 60, 0.2):
            raise RuntimeError("ingestion did not reach every symbol within 60 s")
        readers: list[Any] = []
        tails: list[Arrival] = []
        raw: list[Arrival] = []
        errors: list[str] = []
        threads: list[threading.Thread] = []
        loop = asyncio.new_event_loop()
        loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
        loop_thread.start()
        stop = asyncio.Event()
        raw_task = asyncio.run_coroutine_threadsafe(
            _raw(emulator.hello["url"], followed, stop, raw), loop)
        try:
            for count, seconds in phases:
                for symbol in followed[len(threads):count]:
                    thread = threading.Thread(target=_follow, daemon=True, args=(
                        fm.hello["location"], symbol, readers, tails, errors))
                    thread.start()
                    threads.append(thread)
                wait_until(lambda: len(readers) >= len(threads), 10)
                time.sleep(0.5)
                emulator.call("sends")  # start the log now that every receiver listens
                del tails[:]
                del raw[:]
                time.sleep(seconds)
                frames = emulator.call("sends", timeout=60)["entries"]
                fm_lat, fm_unmatched = match(frames, list(tails))
                raw_lat, raw_unmatched = match(frames, list(raw))
                results.append({"tails": count, "flight_md": fm_lat, "raw": raw_lat,
                                "fm_unmatched": fm_unmatched, "raw_unmatched": raw_unmatched,
                                "errors": errors})
        finally:
            loop.call_soon_threadsafe(stop.set)
            for reader in readers:
                reader.cancel()
            for thread in threads:
                thread.join(5)
            try:
                raw_task.result(5)
            except Exception as exc:  # noqa: BLE001 - reported with the section
                errors.append(f"raw websocket client: {exc!r}")
            loop.call_soon_threadsafe(loop.stop)
            loop_thread.join(5)
    return results


def measure(settings: Settings) -> Section:
    """p50/p99 send-to-client latency of flight_md live tails and of a raw websocket."""
    section = Section(
        "freshness", "Freshness: emulator send -> live-tail client",
        f"""
The emulator (own process) sends bookTicker frames at each rate across {settings.freshness_symbols}
symbols and logs `time.time_ns()` as it renders each frame of {settings.freshness_follow} followed
symbols, just before queueing it for its sockets (so the figures include the emulator's own
queueing, if any). flight_md (own process, `MarketDataApp`) ingests them through ccxt. In the
harness process one thread per followed symbol reads a Flight `SYMBOL?follow=true&latest=0`
stream and stamps each arriving batch with the same clock; ticks are matched to frames by
(bid, ask) in order. Per rate, one server session runs two phases: **one live tail**
({settings.freshness_seconds:g} s; the goal's case), then **{settings.freshness_follow} live tails** at
once ({max(1.0, settings.freshness_seconds / 2):g} s). **Baseline**: a raw aiohttp websocket
client in the harness subscribed to the followed symbols straight from the emulator (no ccxt,
no store, no Flight), matched the same way over the same phase. Percentiles over every matched
tick. Each rate runs twice: ingestion on a thread of the server process (the default), and in
a child process (`ingest_process`, which forwards rows to the server at most every 1 ms).
""")
    table = Table(("Rate msg/s", "Ingestion", "Live tails", "Path", "Ticks matched", "Unmatched",
                   "p50", "p99", "max", "p50 ratio to raw", "p99 ratio to raw"))
    for rate, ingest_process in [(r, p) for r in settings.freshness_rates for p in (False, True)]:
        mode = "child process" if ingest_process else "thread"
        phases = _run(settings, rate, ingest_process)
        for phase in phases:
            fm, raw = phase["flight_md"], phase["raw"]
            for path, lat, unmatched in (("flight_md live tail", fm, phase["fm_unmatched"]),
                                         ("raw websocket", raw, phase["raw_unmatched"])):
                is_fm = path.startswith("flight_md")
                table.add(f"{rate:,}", mode, str(phase["tails"]), path, f"{len(lat):,}",
                          f"{unmatched:,}", show(median(lat), "ms"),
                          show(percentile(lat, 99), "ms"), show(max(lat) if lat else None, "ms"),
                          show(ratio(median(lat), median(raw)), "x") if is_fm else "1x",
                          show(ratio(percentile(lat, 99), percentile(raw, 99)), "x")
                          if is_fm else "1x")
        for error in phases[-1]["errors"]:
            section.notes.append(f"At {rate:,} msg/s ({mode}): {error}")
        if rate == GOAL_RATE or (settings.smoke and rate == settings.freshness_rates[0]):
            p99 = percentile(phases[0]["flight_md"], 99)
            section.goals.append(Goal(
                "freshness.p99" + (".process" if ingest_process else ""),
                f"Freshness p99, one live tail at {rate:,} msg/s"
                + (", ingestion process" if ingest_process else ""),
                f"< {GOAL_P99_MS:g} ms", show(p99, "ms"), p99 < GOAL_P99_MS))
    section.tables.append(table)
    return section

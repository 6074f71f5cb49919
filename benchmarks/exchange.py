"""The exchange emulator in its own process, with a send-time log for freshness.

``python -m benchmarks.exchange --symbols N --rate R [--exchange ID] [--log-symbols A,B]``
runs :class:`flight_md.emulator.EmulatorThread` (synthetic; Binance spot unless ``--exchange``
names another emulated venue, whose symbols are then :func:`benchmarks.ticks.venue_symbols`)
and answers:

``sent``
    Intact data frames written so far, by channel (the emulator's own counters).
``counts``
    The same by channel only: the cheap form, for sampling.
``stall`` / ``resume``
    Stop and restart production and sending (the emulator's ``stall`` fault), so that
    "frames sent" is final while the receiver drains.
``sends``
    The send-time log since the last call: ``[market_id, time_ns, bid, ask]`` for every
    data frame of a logged symbol, stamped with ``time.time_ns()`` as the emulator renders
    the frame, right before it queues it for its sockets' writers (which write it within
    the same turn of the event loop unless a socket is backed up). A receiver on the same
    machine stamps arrival with the same clock and matches frames by (bid, ask) in order.
    The stamp is never later than the socket write, so latencies measured from it are, if
    anything, overstated.

The log is the only instrumentation: it wraps the Binance dialect's ``render`` (the
emulator's ``Dialect`` contract) in this process. It reads Binance frames, so it is
refused for other venues.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import ticks
from benchmarks.process import Child, serve

__all__ = ["exchange"]


class _SendLog:
    """Send times of data frames of selected symbols (market ids, e.g. ``BTCUSDT``)."""

    def __init__(self, market_ids: set[str]) -> None:
        self.market_ids = market_ids
        self.entries: list[tuple[str, int, float, float]] = []
        self.lock = threading.Lock()

    def install(self) -> None:
        from flight_md.emulator.dialects.binance import BinanceDialect

        original = BinanceDialect.render
        log = self

        def render(self: BinanceDialect, key: Any, market: Any, quote: Any, *,
                   snapshot: bool) -> str:
            text = original(self, key, market, quote, snapshot=snapshot)
            if market.id in log.market_ids:
                log.record(market.id, text, time.time_ns())
            return text

        BinanceDialect.render = render  # type: ignore[method-assign]

    def record(self, market_id: str, text: str, now: int) -> None:
        frame = json.loads(text)
        if isinstance(frame, dict) and "b" in frame and "a" in frame:
            with self.lock:
                self.entries.append((market_id, now, float(frame["b"]), float(frame["a"])))

    def take(self) -> list[tuple[str, int, float, float]]:
        with self.lock:
            entries, self.entries = self.entries, []
        return entries


def _main(argv: Sequence[str] | None = None) -> None:
    from flight_md.emulator import EmulatorThread, Fault

    parser = argparse.ArgumentParser(prog="python -m benchmarks.exchange")
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--exchange", default="binance")
    parser.add_argument("--log-symbols", default="")
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logged = [s for s in args.log_symbols.split(",") if s]
    if logged and args.exchange != "binance":
        parser.error(f"--log-symbols reads Binance frames; not available for {args.exchange!r}")
    log = _SendLog({s.replace("/", "") for s in logged})
    if logged:
        log.install()
    emulator = EmulatorThread(exchange=args.exchange,
                              symbols=tuple(ticks.venue_symbols(args.exchange, args.symbols)),
                              rate=args.rate, seed=args.seed)
    url = emulator.start()

    def sent() -> dict[str, Any]:
        by_channel: dict[str, int] = {}
        per_symbol: dict[str, dict[str, int]] = {}
        for key, count in emulator.stats.frames.items():
            by_channel[key.channel] = by_channel.get(key.channel, 0) + count
            per_symbol.setdefault(key.channel, {})[key.symbol] = count
        return {"by_channel": by_channel, "per_symbol": per_symbol, "time_ns": time.time_ns()}

    def counts() -> dict[str, Any]:
        """Data frames written per channel: the cheap form of ``sent``, for sampling."""
        by_channel: dict[str, int] = {}
        for key, count in list(emulator.stats.frames.items()):
            by_channel[key.channel] = by_channel.get(key.channel, 0) + count
        return {"by_channel": by_channel}

    def stall() -> dict[str, Any]:
        emulator.inject(Fault.STALL)
        return sent()

    def resume() -> dict[str, Any]:
        emulator.clear_faults()
        return {}

    def sends() -> dict[str, Any]:
        return {"entries": log.take()}

    serve({"url": url}, {"sent": sent, "counts": counts, "stall": stall, "resume": resume,
                         "sends": sends},
          args.max_seconds, on_exit=emulator.stop)


def exchange(*, symbols: int, rate: float, log_symbols: Sequence[str] = (), seed: int = 7,
             max_seconds: float = 900, venue: str = "binance") -> Child:
    """An emulator child of ``venue`` (not started: use it in a ``with``); its hello holds
    ``url``. It lists :func:`benchmarks.ticks.venue_symbols` of ``venue``."""
    return Child("benchmarks.exchange", "--symbols", str(symbols), "--rate", f"{rate:g}",
                 "--seed", str(seed), "--log-symbols", ",".join(log_symbols),
                 "--exchange", venue, name=f"exchange-{venue}-{rate:g}x{symbols}",
                 max_seconds=max_seconds)


if __name__ == "__main__":
    _main()

"""The ``flight-md emulator`` and ``flight-md emulator-fault`` commands.

``flight-md emulator --exchange binance --port 8765 [--symbols BTC/USDT,ETH/USDT]
[--rate N] [--replay [FILE]] [--speed X] [--loop] [--seed N] [--host 127.0.0.1]
[--ping-interval S] [--replay-gap S]`` runs an emulator until SIGINT or SIGTERM and
prints its URL on stdout (one line, flushed) once it listens, after a summary of what it
serves (each channel and its symbols; in replay, what the recording holds) on stderr.

``flight-md emulator-fault --url http://127.0.0.1:8765 reset [--count N]
[--duration S] [--retry-after S]`` switches a fault on a running emulator through its
control endpoint; ``clear`` disarms every fault and ``stats`` prints the counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.request

from flight_md.emulator.fault import Fault
from flight_md.emulator.recording import default_recording
from flight_md.emulator.server import EXCHANGES, Emulator

__all__ = ["add_arguments", "add_fault_arguments", "run", "run_fault"]

logger = logging.getLogger(__name__)

_DEFAULT_REPLAY = "default"
_FAULT_TIMEOUT = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``emulator`` command's arguments to a parser."""
    parser.add_argument("--exchange", choices=EXCHANGES, default="binance", help="exchange dialect to speak")
    parser.add_argument("--symbols", default="BTC/USDT,ETH/USDT",
                        help="comma-separated ccxt unified symbols for synthetic data (BTC/USDT spot, "
                        "BTC/USDT:USDT a linear perpetual where the venue lists them)")
    parser.add_argument("--rate", type=float, default=100.0, help="synthetic updates per second, in total")
    parser.add_argument("--replay", nargs="?", const=_DEFAULT_REPLAY, default=None, metavar="FILE",
                        help="replay a recording instead of synthetic data (default: ../shared/recordings/<exchange>)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed: 1 recorded, 0 as fast as possible")
    parser.add_argument("--loop", action="store_true", help="replay the recording in a loop")
    parser.add_argument("--replay-gap", type=float, default=0.0, help="minimum seconds between replayed frames")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic random walks")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--ping-interval", type=float, default=20.0, help="seconds between server pings (binance)")


def run(args: argparse.Namespace) -> int:
    """Run an emulator until SIGINT or SIGTERM.

    Args:
        args: Parsed arguments of :func:`add_arguments`.

    Returns:
        The process exit code.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    replay = None
    if args.replay is not None:
        replay = default_recording(args.exchange) if args.replay == _DEFAULT_REPLAY else args.replay
    try:
        emulator = Emulator(exchange=args.exchange, symbols=args.symbols, rate=args.rate, replay=replay,
                            speed=args.speed, loop=args.loop, seed=args.seed, host=args.host, port=args.port,
                            ping_interval=args.ping_interval, replay_gap=args.replay_gap)
    except (ValueError, OSError) as error:
        print(f"flight-md emulator: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(emulator))
    except OSError as error:
        print(f"flight-md emulator: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0


async def _serve(emulator: Emulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await emulator.start()
    try:
        for line in emulator.summary():
            print(f"flight-md emulator: {line}", file=sys.stderr)
        sys.stderr.flush()
        print(emulator.url, flush=True)
        await stop.wait()
    finally:
        await emulator.stop()


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``emulator-fault`` command's arguments to a parser."""
    parser.add_argument("--url", required=True, help="the emulator's base url, e.g. http://127.0.0.1:8765")
    parser.add_argument("fault", choices=[fault.value for fault in Fault] + ["clear", "stats"],
                        help="fault to inject; 'clear' disarms all, 'stats' prints the counters")
    parser.add_argument("--count", type=int, default=None, help="connections, frames or requests to hit")
    parser.add_argument("--duration", type=float, default=None, help="seconds the fault stays in force")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds for rest_429")


def run_fault(args: argparse.Namespace) -> int:
    """Switch a fault on a running emulator, or clear faults, or print its stats.

    Args:
        args: Parsed arguments of :func:`add_fault_arguments`.

    Returns:
        The process exit code.
    """
    base = args.url.rstrip("/") + "/_emulator/"
    if args.fault == "stats":
        request = urllib.request.Request(base + "stats", method="GET")
    elif args.fault == "clear":
        request = urllib.request.Request(base + "faults", method="DELETE")
    else:
        body = {"fault": args.fault, "count": args.count, "duration": args.duration, "retry_after": args.retry_after}
        request = urllib.request.Request(base + "faults", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=_FAULT_TIMEOUT) as response:
            print(response.read().decode())
    except urllib.error.HTTPError as error:
        print(f"flight-md emulator-fault: {error.read().decode()}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as error:
        print(f"flight-md emulator-fault: cannot reach {args.url!r}: {error}", file=sys.stderr)
        return 1
    return 0

"""What the reliability and security suites share: server processes, status codes, time scale.

Tests start ``python -m flight_md serve ...`` as a real process (so that signals, resident
memory and everything it prints can be observed) and talk to it with a real
``pyarrow.flight`` client. Every wait is a multiple of :data:`TIME_SCALE`, which
``FLIGHT_MD_TIME_SCALE`` stretches on a slow machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Self

import pyarrow as pa
import pyarrow.flight as flight

import flight_md
from flight_md.schema import MarketTick

__all__ = [
    "ALLOWED_REFUSALS",
    "REPO_ROOT",
    "TIME_SCALE",
    "ChildProcess",
    "ServerProcess",
    "assert_no_traceback",
    "bearer",
    "child_env",
    "status_code",
    "tick",
    "wait_until",
]

TIME_SCALE: Final = float(os.environ.get("FLIGHT_MD_TIME_SCALE", "1"))
"""Every timeout in these suites is multiplied by this (``FLIGHT_MD_TIME_SCALE``)."""
REPO_ROOT: Final = Path(flight_md.__file__).resolve().parent.parent
"""Where the ``flight_md`` under test was imported from (a checkout or site-packages)."""
START_TIMEOUT_S: Final = 30.0
READY_RE: Final = re.compile(r"flight-md serving on (\S+)")

# pyarrow raises these client-side for each gRPC status; checked in this order because
# several Flight errors share base classes.
_STATUS_BY_CLASS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    (flight.FlightUnauthorizedError, "PERMISSION_DENIED"),
    (flight.FlightUnavailableError, "UNAVAILABLE"),
    (flight.FlightTimedOutError, "DEADLINE_EXCEEDED"),
    (flight.FlightCancelledError, "CANCELLED"),
    (flight.FlightInternalError, "INTERNAL"),
    (pa.ArrowInvalid, "INVALID_ARGUMENT"),
    (pa.ArrowKeyError, "NOT_FOUND"),
    (pa.ArrowNotImplementedError, "UNIMPLEMENTED"),
    (flight.FlightServerError, "SERVER_ERROR"),  # RESOURCE_EXHAUSTED, UNKNOWN, ...
)
ALLOWED_REFUSALS: Final = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED",
                                     "UNAUTHENTICATED", "PERMISSION_DENIED"})
"""What bad input may be answered with (besides a success)."""
_TRACEBACK_MARKERS: Final = ("Traceback", 'File "', '.py"')


# pyarrow's client raises a plain OSError for Flight-specific codes of GetSchema (it checks
# that call's status with check_status, not check_flight_status); the Flight status detail
# it appends to the message still names the code.
_DETAIL_RE: Final = re.compile(r"Detail: (Unauthenticated|Unauthorized|Unavailable|Internal|"
                               r"TimedOut|Cancelled)\b")
_STATUS_BY_DETAIL: Final = {"Unauthenticated": "UNAUTHENTICATED", "Unauthorized": "PERMISSION_DENIED",
                            "Unavailable": "UNAVAILABLE", "Internal": "INTERNAL",
                            "TimedOut": "DEADLINE_EXCEEDED", "Cancelled": "CANCELLED"}


def status_code(exc: BaseException) -> str:
    """The gRPC status a pyarrow client exception stands for (``"OTHER:<type>"`` if unknown)."""
    for cls, code in _STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return code
    match = _DETAIL_RE.search(str(exc))
    if isinstance(exc, OSError) and match:
        return _STATUS_BY_DETAIL[match.group(1)]
    if type(exc) is pa.ArrowException and str(exc).startswith("Unknown error"):
        return "UNKNOWN"
    return f"OTHER:{type(exc).__name__}"


def assert_no_traceback(message: str) -> None:
    """Fail if a message that crossed the wire carries any trace of server source."""
    for marker in _TRACEBACK_MARKERS:
        assert marker not in message, f"{marker!r} leaked to the client: {message[:2000]!r}"


def bearer(token: str, timeout: float = 10.0) -> flight.FlightCallOptions:
    """Call options carrying ``authorization: Bearer <token>`` and a deadline."""
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())],
                                    timeout=timeout * TIME_SCALE)


def tick(symbol: str, n: int, exchange: str = "binance") -> MarketTick:
    """The ``n``-th tick of a made-up market (distinct values for every ``n``)."""
    return MarketTick(symbol, 1_700_000_000_000 + n, 100.0 + n, 1.0, 99.5 + n, 100.5 + n,
                      None, None, None, 100.0 + n, exchange, 1_700_000_000_100 + n)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout * TIME_SCALE`` seconds pass."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes: the same ``flight_md`` importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class ChildProcess:
    """A Python child process whose stdout and stderr are collected line by line.

    Args:
        argv: Arguments after ``python``.
        env: Extra environment variables.
        ready: A pattern on stdout that means the child is ready; its first group is kept
            as :attr:`ready_value`.
    """

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 ready: re.Pattern[str] | None = None) -> None:
        self.argv = [sys.executable, *argv]
        self._env = child_env(env)
        self._ready_re = ready
        self._ready = threading.Event()
        self.ready_value: str | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []

    def start(self, timeout: float = START_TIMEOUT_S) -> ChildProcess:
        """Start the child and wait until it prints its ready line.

        Raises:
            AssertionError: The child exited or stayed silent; its output is in the message.
        """
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=self._env, bufsize=1)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, lines, watch in ((self.proc.stdout, self.stdout, True),
                                     (self.proc.stderr, self.stderr, False)):
            reader = threading.Thread(target=self._collect, args=(stream, lines, watch),
                                      daemon=True)
            reader.start()
            self._readers.append(reader)
        if self._ready_re is None:
            return self
        deadline = time.monotonic() + timeout * TIME_SCALE
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{' '.join(self.argv[1:4])} did not start:\n{self.output}")
        return self

    def _collect(self, stream: object, lines: list[str], watch: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line)
            if watch and self._ready_re is not None and not self._ready.is_set():
                match = self._ready_re.search(line)
                if match:
                    self.ready_value = match.group(1) if match.groups() else match.group(0)
                    self._ready.set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def output(self) -> str:
        """Everything printed so far, stdout then stderr."""
        return "".join(self.stdout) + "".join(self.stderr)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """Wait for the exit code; ``None`` if still running after ``timeout`` seconds."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join(5 * TIME_SCALE)
        return code

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it is still running after ``timeout`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return self.wait(timeout) if self.proc is not None else None
        self.signal(signal.SIGTERM)
        code = self.wait(timeout * TIME_SCALE)
        if code is None:
            self.kill()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ServerProcess(ChildProcess):
    """``python -m flight_md serve --port 0 ARGS...``, ready once it prints its location."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(["-m", "flight_md", "serve", "--port", "0", *args], env=env,
                         ready=READY_RE)

    @property
    def location(self) -> str:
        assert self.ready_value is not None, "server not started"
        return self.ready_value

"""The one test-support module: the time scale, condition waits, and child processes.

Every wait in the suite is a condition polled until it holds, for at most a timeout multiplied
by :data:`MS` (``FLIGHT_MD_TIME_SCALE``, default 1, which stretches every wait on a slow
machine): never a bare sleep followed by an exact count, never a wall-clock assertion
(speed is measured in ``benchmarks/``, not asserted here).

Servers and emulators started as real processes bind port 0 and report the port they got
(``flight-md serve`` prints ``flight-md serving on grpc://HOST:PORT``, ``flight-md emulator``
prints its URL), so no test races another for a port picked in advance. Signals go to those
child processes, never to the test runner itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, Self

import flight_md

__all__ = [
    "MS",
    "REPO_ROOT",
    "TIME_SCALE",
    "ChildProcess",
    "EmulatorProcess",
    "ServerProcess",
    "async_until",
    "child_env",
    "until",
    "wait_until",
]

MS: Final = float(os.environ.get("FLIGHT_MD_TIME_SCALE", "1"))
"""Time-scale factor: every timeout in the suite is multiplied by it."""
TIME_SCALE: Final = MS
"""The same factor, under the name the reliability suites use."""
REPO_ROOT: Final = Path(flight_md.__file__).resolve().parent.parent
"""Where the ``flight_md`` under test was imported from (a checkout or site-packages)."""
CLIENT_DIR: Final = Path(__file__).resolve().parent.parent / "clients" / "python"
START_TIMEOUT_S: Final = 30.0
READY_RE: Final = re.compile(r"flight-md serving on (\S+)")
EMULATOR_READY_RE: Final = re.compile(r"^(http://\S+)")


def until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``predicate()`` until it returns something true, and return that.

    Raises:
        AssertionError: ``timeout * MS`` seconds passed first; the message names ``what``.
    """
    deadline = time.monotonic() + timeout * MS
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * MS:g} s waiting for {what}")
        time.sleep(interval)


async def async_until(predicate: Callable[[], Any], timeout: float, what: str,
                      interval: float = 0.01) -> Any:
    """:func:`until` for asyncio code: polls without blocking the loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout * MS
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout * MS:g} s waiting for {what}")
        await asyncio.sleep(interval)


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
    """Environment for child processes: the same ``flight_md`` (and client) importable,
    output unbuffered, no token inherited from the developer's shell."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(CLIENT_DIR), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env.pop("FLIGHT_MD_TOKEN", None)
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


class EmulatorProcess(ChildProcess):
    """``python -m flight_md emulator --port 0 ARGS...``, ready once it prints its URL."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(["-m", "flight_md", "emulator", "--port", "0", *args], env=env,
                         ready=EMULATOR_READY_RE)

    @property
    def url(self) -> str:
        assert self.ready_value is not None, "emulator not started"
        return self.ready_value


def emulator_fault(emulator_url: str, fault: dict[str, Any] | None) -> None:
    """Switch a fault on an emulator process through its control endpoint (``None``: clear
    every fault and end a stall)."""
    request = urllib.request.Request(
        f"{emulator_url}/_emulator/faults", method="DELETE" if fault is None else "POST",
        data=None if fault is None else json.dumps(fault).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10 * TIME_SCALE) as response:
        assert json.loads(response.read())["ok"]

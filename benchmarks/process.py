"""Benchmark subprocesses: start, talk to and always clean up.

A child is ``python -m benchmarks.<module> ...`` that speaks one JSON object per line:
it writes a *hello* line when ready, then answers each request line from the parent with
one reply line. The parent side is :class:`Child`; the child side is :func:`serve`.

Cleanup is layered so that no process outlives a run, even one that fails:

* :class:`Child` is a context manager: on exit it asks the child to stop, waits, then
  terminates, then kills it (by its pid, nothing broader).
* Every live child is also registered for ``atexit``.
* A child exits when its stdin reaches end of file (the parent died or closed it) and when
  its ``--max-seconds`` lifetime runs out, whatever it is doing.

A child's stdout carries only protocol lines: :func:`serve` moves the original stdout to a
private descriptor and points file descriptor 1 at stderr, so library output cannot corrupt
the protocol. Its stderr goes to a log file whose tail is quoted when the child fails.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TextIO

__all__ = ["Child", "ChildError", "serve", "wait_until"]

DEFAULT_MAX_SECONDS: Final = 900.0
_live: dict[int, subprocess.Popen[str]] = {}
_live_lock = threading.Lock()


class ChildError(RuntimeError):
    """A benchmark subprocess failed, timed out or answered with an error."""


def _reap_all() -> None:
    with _live_lock:
        procs = list(_live.values())
    for proc in procs:
        _stop(proc, 1.0)


atexit.register(_reap_all)


def _stop(proc: subprocess.Popen[str], grace: float) -> None:
    """Wait ``grace`` seconds for ``proc`` to exit, then terminate, then kill it."""
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    with _live_lock:
        _live.pop(proc.pid, None)


class Child:
    """The parent's handle on one benchmark subprocess.

    Args:
        module: Module run with ``python -m``, e.g. ``"benchmarks.exchange"``.
        args: Command-line arguments for it.
        name: Short name for errors and the log file.
        start_timeout: Seconds to wait for the hello line.
        max_seconds: Lifetime after which the child exits on its own.

    Attributes:
        hello: The child's hello object (ports, pid, ...).
    """

    def __init__(self, module: str, *args: str, name: str, start_timeout: float = 60.0,
                 max_seconds: float = DEFAULT_MAX_SECONDS) -> None:
        self.module = module
        self.args = [*args, "--max-seconds", f"{max_seconds:g}"]
        self.name = name
        self.start_timeout = start_timeout
        self.hello: dict[str, Any] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log_file: Any = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "child not started"
        return self._proc.pid

    def start(self) -> Child:
        """Spawn the child and wait for its hello line.

        Raises:
            ChildError: It exited or said nothing within ``start_timeout``.
        """
        return self.launch().wait_ready()

    def launch(self) -> Child:
        """Spawn the child without waiting for it (then :meth:`wait_ready`)."""
        self._log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close()
            "w+", prefix=f"flight_md-bench-{self.name}-", suffix=".log", delete=False)
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log_file, text=True, bufsize=1, env=env,
            cwd=root)
        with _live_lock:
            _live[self._proc.pid] = self._proc
        threading.Thread(target=self._pump, name=f"bench-{self.name}-stdout",
                         daemon=True).start()
        return self

    def wait_ready(self) -> Child:
        """Wait for the hello line of a launched child (closing it on failure)."""
        try:
            self.hello = self._read(self.start_timeout, "start")
        except BaseException:
            self.close(grace=1.0)
            raise
        return self

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ChildError(f"{self.name}: no answer to {what!r} within {timeout:g} s"
                             f"{self._log_tail()}") from None
        if line is None:
            raise ChildError(f"{self.name}: exited during {what!r}{self._log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if "_failed" in reply:
            raise ChildError(f"{self.name}: {what!r} failed: {reply['_failed']}")
        return reply

    def call(self, command: str, timeout: float = 120.0, **params: Any) -> dict[str, Any]:
        """Send one request and wait for its reply.

        Raises:
            ChildError: The child failed, died or did not answer in time.
        """
        self.send(command, **params)
        return self.receive(command, timeout)

    def send(self, command: str, **params: Any) -> None:
        """Send one request without waiting (pair it with :meth:`receive`)."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise ChildError(f"{self.name}: not running")
        try:
            proc.stdin.write(json.dumps({"cmd": command, **params}) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise ChildError(f"{self.name}: exited before {command!r}{self._log_tail()}") from None

    def receive(self, command: str, timeout: float = 120.0) -> dict[str, Any]:
        """The reply to the request sent last."""
        return self._read(timeout, command)

    def _log_tail(self, chars: int = 3000) -> str:
        if self._log_file is None:
            return ""
        try:
            text = Path(self._log_file.name).read_text(errors="replace")
        except OSError:
            return ""
        return f"\n--- {self.name} log tail ---\n{text[-chars:]}" if text.strip() else ""

    def close(self, grace: float = 10.0) -> None:
        """Ask the child to exit, then make sure it has (terminate, then kill)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                try:
                    proc.stdin.write('{"cmd": "exit"}\n')
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
            _stop(proc, grace)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            if os.environ.get("FLIGHT_MD_BENCH_KEEP_LOGS") is None:
                Path(self._log_file.name).unlink(missing_ok=True)
            self._log_file = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(grace=2.0 if exc is not None else 10.0)


Handler = Callable[..., dict[str, Any]]


def serve(hello: dict[str, Any], handlers: dict[str, Handler], max_seconds: float,
          on_exit: Callable[[], object] | None = None) -> None:
    """Run the child side of the protocol until ``exit``, end of input or the lifetime ends.

    Args:
        hello: Sent once, first (the child's pid is added).
        handlers: Request name -> function of the request's parameters returning the reply.
        max_seconds: Lifetime; past it the process exits with status 3.
        on_exit: Cleanup run before returning (not on a hard lifetime exit).
    """
    protocol = _protocol_stream()
    timer = threading.Timer(max_seconds, _expire, args=(max_seconds,))
    timer.daemon = True
    timer.start()
    _send(protocol, {**hello, "pid": os.getpid()})
    try:
        for line in sys.stdin:
            request = json.loads(line)
            command = request.pop("cmd")
            if command == "exit":
                break
            handler = handlers.get(command)
            try:
                if handler is None:
                    raise ValueError(f"unknown request {command!r}; known: {', '.join(handlers)}")
                reply = handler(**request)
            except Exception:  # noqa: BLE001 - the parent gets the traceback
                reply = {"_failed": traceback.format_exc(limit=8)}
            _send(protocol, reply)
    finally:
        timer.cancel()
        if on_exit is not None:
            on_exit()


def _protocol_stream() -> TextIO:
    """A private copy of stdout for protocol lines; fd 1 then points at stderr."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1)


def _send(stream: TextIO, obj: dict[str, Any]) -> None:
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def _expire(max_seconds: float) -> None:
    sys.stderr.write(f"benchmark child {os.getpid()} reached its {max_seconds:g} s lifetime; "
                     "exiting\n")
    sys.stderr.flush()
    os._exit(3)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)

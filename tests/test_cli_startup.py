"""Start-up problems of ``flight-md serve`` are one line on stderr, never a traceback.

A port in use or a host that is not an address of this machine: exit 1, one line saying what
is wrong and what to do. Bad option values: exit 2, one line (argument errors).
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.support import MS, ServerProcess, child_env

GRPC_NOISE = ("Traceback", "E0000", "absl", "Server did not start properly", "add_port")


def serve(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``flight-md serve ARGS`` to completion (it must not start serving)."""
    return subprocess.run([sys.executable, "-m", "flight_md", "serve", *args],
                          check=False, capture_output=True, text=True, env=child_env(),
                          timeout=timeout * MS,
                          stdin=subprocess.DEVNULL)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    for noise in GRPC_NOISE:
        assert noise not in stderr, stderr
    return lines[0]


def test_a_port_in_use_is_one_line_and_exit_1():
    with ServerProcess() as first:
        port = first.location.rsplit(":", 1)[1]
        result = serve("--port", port, "--demo")
    assert result.returncode == 1, result
    line = one_line(result.stderr)
    assert line == (f"flight-md: port {port} is in use; is another flight-md serve running? "
                    "choose another with --port")
    assert result.stdout == ""


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", [
    "192.0.2.1",
    pytest.param("2001:db8::1", marks=pytest.mark.skipif(not _has_ipv6(),
                                                         reason="this machine has no IPv6")),
])
def test_a_host_that_is_not_an_address_of_this_machine_is_one_line_and_exit_1(host):
    # Only bind() is tried (documentation-range addresses): nothing is sent anywhere.
    result = serve("--host", host, "--port", "0")
    assert result.returncode == 1, result
    line = one_line(result.stderr)
    assert line == (f"flight-md: cannot listen on {host!r}: not an address of this machine; "
                    "choose one with --host (127.0.0.1 for this machine only, 0.0.0.0 for all)")


def test_nothing_is_started_when_the_port_is_taken():
    """The check runs before ingestion: a --demo that cannot listen leaves no child behind
    and returns promptly (no emulator or ccxt session was started to be torn down)."""
    with ServerProcess() as first:
        port = first.location.rsplit(":", 1)[1]
        result = serve("--port", port, "--demo", "--ingest-process")
    assert result.returncode == 1
    assert "is in use" in one_line(result.stderr)

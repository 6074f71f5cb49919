"""The server listens on loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import psutil
import pytest
from reliability.harness import ServerProcess, wait_until

from flight_md.cli import _parser as cli_parser
from flight_md.cli import build_config
from flight_md.config import ServerConfig, load_config
from flight_md.service import DEFAULT_LOCATION


def test_defaults_are_loopback(tmp_path: Path) -> None:
    assert ServerConfig().host == "127.0.0.1"
    assert ServerConfig().location == "grpc://127.0.0.1:8815"
    assert DEFAULT_LOCATION == "grpc://127.0.0.1:8815"
    assert build_config(cli_parser().parse_args(["serve"])).location == "grpc://127.0.0.1:8815"
    config = tmp_path / "server.toml"
    config.write_text("[server]\nport = 9999\n", encoding="utf-8")
    assert load_config(config).host == "127.0.0.1"
    args = cli_parser().parse_args(["serve", "--config", str(config)])
    assert build_config(args).location == "grpc://127.0.0.1:9999"


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    # gRPC listens on an IPv6 socket bound to the IPv4-mapped loopback, ::ffff:127.0.0.1.
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _listening(pid: int) -> list[str]:
    return sorted(c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet")
                  if c.status == psutil.CONN_LISTEN)


@pytest.mark.parametrize("args", [(), ("--demo",)], ids=["empty", "demo"])
def test_serve_listens_on_loopback_only(args: tuple[str, ...]) -> None:
    with ServerProcess(*args) as server:
        assert server.location.startswith("grpc://127.0.0.1:")
        # gRPC may open its listener a moment after the line is printed in demo mode.
        assert wait_until(lambda: _listening(server.pid), 5)
        addresses = _listening(server.pid)
        # In demo mode the built-in exchange emulator listens too: on loopback as well.
        assert len(addresses) == (2 if args else 1), addresses
        assert all(_is_loopback(a) for a in addresses), addresses

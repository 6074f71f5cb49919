"""TLS and mutual TLS, with certificates made by trustme at test time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.flight as flight
import pytest
from reliability.harness import TIME_SCALE, ServerProcess, bearer, status_code, tick

from flight_md.app import MarketDataApp
from flight_md.config import Secret, ServerConfig

from .conftest import Identity, TlsFiles

Connect = Callable[..., flight.FlightClient]
OPTIONS = flight.FlightCallOptions(timeout=10 * TIME_SCALE)


def _identity(identity: Identity | None) -> dict[str, Any]:
    return {} if identity is None else {"cert_chain": identity.chain,
                                        "private_key": identity.key}


def _pull(client: flight.FlightClient, options: flight.FlightCallOptions = OPTIONS) -> int:
    return client.do_get(flight.Ticket(b"BTC/USDT?latest=10"), options).read_all().num_rows


def _refused(client: flight.FlightClient) -> str:
    """The status of a request on a connection whose handshake must fail."""
    with pytest.raises(flight.FlightError) as info:
        client.list_actions(OPTIONS)
    return status_code(info.value)


@pytest.fixture(scope="module")
def tls_app(tls_files: TlsFiles,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketDataApp]:
    # Each server of the module its own data dir: two cannot share one.
    config = ServerConfig(port=0, tls_cert=tls_files.cert, tls_key=tls_files.key,
                          data_dir=tmp_path_factory.mktemp("tls-data"))
    with MarketDataApp(config) as app:
        app.buffer.extend(tick("BTC/USDT", n) for n in range(20))
        yield app


@pytest.fixture(scope="module")
def mtls_app(tls_files: TlsFiles,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketDataApp]:
    config = ServerConfig(port=0, tls_cert=tls_files.cert, tls_key=tls_files.key,
                          tls_client_ca=tls_files.ca, data_dir=tmp_path_factory.mktemp("mtls-data"))
    with MarketDataApp(config) as app:
        app.buffer.extend(tick("BTC/USDT", n) for n in range(20))
        yield app


def test_location_says_tls(tls_app: MarketDataApp) -> None:
    assert tls_app.location.startswith("grpc+tls://127.0.0.1:")


def test_client_trusting_the_ca_works(tls_app: MarketDataApp, tls_files: TlsFiles,
                                      connect: Connect) -> None:
    client = connect(tls_app.location, tls_root_certs=tls_files.ca_pem)
    assert _pull(client) == 10


def test_client_trusting_another_ca_fails_the_handshake(tls_app: MarketDataApp,
                                                        tls_files: TlsFiles,
                                                        connect: Connect) -> None:
    client = connect(tls_app.location, tls_root_certs=tls_files.stranger_ca_pem)
    assert _refused(client) == "UNAVAILABLE"


def test_plaintext_client_to_a_tls_server_fails(tls_app: MarketDataApp, connect: Connect) -> None:
    client = connect(tls_app.location.replace("grpc+tls://", "grpc://"))
    assert _refused(client) == "UNAVAILABLE"


def test_mutual_tls_admits_a_client_certificate_from_the_ca(mtls_app: MarketDataApp,
                                                            tls_files: TlsFiles,
                                                            connect: Connect) -> None:
    client = connect(mtls_app.location, tls_root_certs=tls_files.ca_pem,
                     **_identity(tls_files.client))
    assert _pull(client) == 10


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_mutual_tls_refuses_other_clients(mtls_app: MarketDataApp, tls_files: TlsFiles,
                                          connect: Connect, who: str) -> None:
    identity = None if who == "no certificate" else tls_files.stranger
    client = connect(mtls_app.location, tls_root_certs=tls_files.ca_pem, **_identity(identity))
    assert _refused(client) == "UNAVAILABLE"
    # The server is unharmed: a proper client still gets through.
    good = connect(mtls_app.location, tls_root_certs=tls_files.ca_pem,
                   **_identity(tls_files.client))
    assert _pull(good) == 10


def test_tls_and_tokens_together(tls_files: TlsFiles, connect: Connect) -> None:
    config = ServerConfig(port=0, tls_cert=tls_files.cert, tls_key=tls_files.key,
                          auth_tokens=(Secret("tls-and-token"),))
    with MarketDataApp(config) as app:
        app.buffer.extend(tick("BTC/USDT", n) for n in range(20))
        client = connect(app.location, tls_root_certs=tls_files.ca_pem)
        with pytest.raises(flight.FlightError) as info:
            _pull(client)
        assert status_code(info.value) == "UNAUTHENTICATED"
        assert _pull(client, bearer("tls-and-token")) == 10


def test_command_line_mutual_tls(tls_files: TlsFiles, connect: Connect) -> None:
    with ServerProcess("--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key),
                       "--tls-client-ca", str(tls_files.ca)) as server:
        assert server.location.startswith("grpc+tls://127.0.0.1:")
        good = connect(server.location, tls_root_certs=tls_files.ca_pem,
                       **_identity(tls_files.client))
        assert {name for name, _ in good.list_actions(OPTIONS)} >= {"status"}
        for identity in (None, tls_files.stranger):
            client = connect(server.location, tls_root_certs=tls_files.ca_pem,
                             **_identity(identity))
            assert _refused(client) == "UNAVAILABLE"
        plain = connect(server.location.replace("grpc+tls://", "grpc://"))
        assert _refused(plain) == "UNAVAILABLE"
        untrusting = connect(server.location, tls_root_certs=tls_files.stranger_ca_pem,
                             **_identity(tls_files.client))
        assert _refused(untrusting) == "UNAVAILABLE"

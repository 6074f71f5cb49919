"""Fixtures of the security suite: certificates made at test time with trustme, token files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.flight as flight
import pytest
import trustme


@dataclass(frozen=True)
class Identity:
    """A certificate chain and key, as PEM bytes."""

    chain: bytes
    key: bytes


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate for 127.0.0.1 from one CA, and client identities from two CAs.

    Attributes:
        ca: PEM file of the CA that issued the server certificate and :attr:`client`.
        cert: The server's certificate chain (PEM file).
        key: The server's private key (PEM file).
        ca_pem: :attr:`ca` as bytes, for clients.
        client: A client identity issued by :attr:`ca`.
        stranger: A client identity issued by another CA, which also signed
            :attr:`stranger_ca_pem`.
    """

    ca: Path
    cert: Path
    key: Path
    ca_pem: bytes
    client: Identity
    stranger: Identity
    stranger_ca_pem: bytes


def _identity(cert: trustme.LeafCert) -> Identity:
    return Identity(b"".join(pem.bytes() for pem in cert.cert_chain_pems),
                    cert.private_key_pem.bytes())


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem",
                     key=directory / "server.key", ca_pem=ca.cert_pem.bytes(),
                     client=_identity(ca.issue_cert("analyst@example.org")),
                     stranger=_identity(other.issue_cert("mallory@example.org")),
                     stranger_ca_pem=other.cert_pem.bytes())
    ca.cert_pem.write_to_path(str(files.ca))
    server.private_key_pem.write_to_path(str(files.key))
    files.cert.write_bytes(_identity(server).chain)
    return files


@pytest.fixture
def connect() -> Iterator[object]:
    """``connect(location, **kwargs)`` -> a Flight client closed after the test."""
    clients: list[flight.FlightClient] = []

    def _connect(location: str, **kwargs: object) -> flight.FlightClient:
        client = flight.connect(location, **kwargs)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()

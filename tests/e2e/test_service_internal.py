"""An unexpected error reaches the client as INTERNAL with an incident id; its traceback stays in
the server log.

README, Errors: "unexpected errors reach the client as ``INTERNAL`` with an incident id, and the
traceback stays in the server log". No request makes the real server fail unexpectedly (that
would be a bug to fix), so, like pyarrow's own ``ErrorFlightServer`` tests, a purpose-built
subclass of the real server raises a plain ``RuntimeError`` inside one handler; everything else
(the error mapping, the wire, the client, the log) is the product's own.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pytest
from pyarrow import flight

from flight_md.buffer import MarketDataBuffer
from flight_md.schema import MarketTick
from flight_md.service import FlightMarketDataServer

SECRET_DETAIL = "disk on fire at /var/lib/flight_md/ring-7"
"""The unexpected error's own message: it must reach the log and never the client."""

INCIDENT_RE = re.compile(r"internal error in (\S+) \(incident (\d+)\); details are in the "
                         r"server log")


def tick(i: int) -> MarketTick:
    return MarketTick("BTC/USDT", 1_000 + i, 100.0 + i, 1.0, 99.5 + i, 100.5 + i, None, None,
                      None, None, "binance", 1_000 + i)


class _FailingFollower:
    """A live cursor that delivers its first read, then fails unexpectedly."""

    def __init__(self, follower: Any) -> None:
        self._follower = follower
        self.exchange, self.symbol = follower.exchange, follower.symbol

    def read(self, timeout: float, max_rows: int = 4096) -> Any:
        raise RuntimeError(SECRET_DETAIL)

    def close(self) -> None:
        self._follower.close()


class _Buffer(MarketDataBuffer):
    def follow(self, *args: Any, **kwargs: Any) -> Any:
        table, follower = super().follow(*args, **kwargs)
        return table, _FailingFollower(follower)


class BrokenServer(FlightMarketDataServer):
    """The real server, with a bug planted in the handler named by ``broken``."""

    def __init__(self, broken: str) -> None:
        buffer = _Buffer(100)
        buffer.extend(tick(i) for i in range(10))
        super().__init__("grpc://127.0.0.1:0", buffer)
        self.broken = broken

    def _table(self, query: Any, buffer: Any = None) -> Any:
        if self.broken == "table":
            raise RuntimeError(SECRET_DETAIL)
        return super()._table(query, buffer)

    def status(self) -> dict[str, Any]:
        if self.broken == "status":
            raise RuntimeError(SECRET_DETAIL)
        return super().status()

    def _descriptor_query(self, descriptor: Any) -> Any:  # type: ignore[override]
        if self.broken == "descriptor":
            raise RuntimeError(SECRET_DETAIL)
        return FlightMarketDataServer._descriptor_query(descriptor)


def _do_get(client: flight.FlightClient) -> None:
    client.do_get(flight.Ticket(b"BTC/USDT?latest=5")).read_all()


def _tail(client: flight.FlightClient) -> None:
    reader = client.do_get(flight.Ticket(b"BTC/USDT?latest=3&follow=true"))
    assert reader.read_chunk().data.num_rows == 3  # the backlog arrives; then the bug
    while True:
        reader.read_chunk()


def _info(client: flight.FlightClient) -> None:
    client.get_flight_info(flight.FlightDescriptor.for_path("BTC/USDT"))


def _schema(client: flight.FlightClient) -> None:
    client.get_schema(flight.FlightDescriptor.for_path("BTC/USDT"))


def _status(client: flight.FlightClient) -> None:
    list(client.do_action(flight.Action("status", b"")))


# pyarrow's GetSchema handler (pyarrow 26, ``_flight.pyx``) alone does not turn a raised
# FlightError into its status: every error raised there reaches the client as gRPC UNKNOWN
# (``ArrowException("Unknown error: ...")``), so INTERNAL cannot be sent from GetSchema. The
# incident id and the clean message still hold; the README's table needs that exception.
UNKNOWN: type[Exception] = pa.ArrowException

CASES: dict[str, tuple[str, str, Callable[[flight.FlightClient], None], type[Exception]]] = {
    # name: (where the bug is planted, the RPC the message names, the call, what the client gets)
    "DoGet": ("table", "DoGet", _do_get, flight.FlightInternalError),
    "live tail": ("follower", "DoGet(follow)", _tail, flight.FlightInternalError),
    "GetFlightInfo": ("table", "GetFlightInfo", _info, flight.FlightInternalError),
    "GetSchema": ("descriptor", "GetSchema", _schema, UNKNOWN),
    "DoAction": ("status", "DoAction", _status, flight.FlightInternalError),
}


@pytest.fixture
def broken_server(request: pytest.FixtureRequest) -> Iterator[BrokenServer]:
    server = BrokenServer(request.param)
    try:
        yield server
    finally:
        assert server.stop(2.0)


@pytest.mark.parametrize("broken_server, rpc, call, expected",
                         [pytest.param(*case, id=name) for name, case in CASES.items()],
                         indirect=["broken_server"])
def test_internal_error_has_an_incident_id_and_its_traceback_is_in_the_log(
        broken_server: BrokenServer, rpc: str, call: Callable[[flight.FlightClient], None],
        expected: type[Exception], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="flight_md.service")
    with flight.connect(f"grpc://127.0.0.1:{broken_server.port}") as client:
        with pytest.raises(pa.ArrowException) as failure:
            call(client)
        assert type(failure.value) is expected, repr(failure.value)
        message = str(failure.value)
        match = INCIDENT_RE.search(message)
        assert match and match.group(1) == rpc, message
        incident = match.group(2)
        # Nothing of the failure itself crosses the wire: no message, no traceback, no path.
        assert SECRET_DETAIL not in message and "/var/lib" not in message
        assert "Traceback" not in message and ".py" not in message and "RuntimeError" not in message

        records = [r for r in caplog.records
                   if f"(incident {incident})" in r.getMessage()]
        assert len(records) == 1, [r.getMessage() for r in caplog.records]
        record = records[0]
        assert record.levelno == logging.ERROR and record.exc_info is not None
        assert record.getMessage() == f"{rpc} failed unexpectedly (incident {incident})"
        logged = "".join(traceback.format_exception(*record.exc_info))
        assert logged.startswith("Traceback (most recent call last):")
        assert f"RuntimeError: {SECRET_DETAIL}" in logged
        assert "test_service_internal.py" in logged  # the frame that raised is in the log

        # The server counted it and goes on serving.
        status = broken_server.status if broken_server.broken != "status" else None
        if status is not None:
            assert status()["server"]["refused_requests"] == {"internal": 1}
        assert [(f.descriptor.path, f.total_records) for f in client.list_flights()] == \
            [([b"binance", b"BTC/USDT"], 10)]

"""Against the real exchange: skipped unless ``pytest --live`` (README, "Live exchanges":
"Tests that need real exchanges are marked ``live`` and skipped unless ``pytest --live``")."""

from __future__ import annotations

import json

import pytest
from pyarrow import flight

from tests.support import MS, ServerProcess, until

pytestmark = [pytest.mark.live, pytest.mark.timeout(180 * MS)]


def test_serve_binance_receives_ticks_from_the_real_exchange() -> None:
    """``flight-md serve --exchange binance --symbols BTC/USDT`` stores real BTC/USDT ticks."""
    with ServerProcess("--exchange", "binance", "--symbols", "BTC/USDT") as server:
        client = flight.connect(server.location)
        try:
            def stored() -> int:
                result = next(client.do_action(flight.Action("status", b"")))
                status = json.loads(result.body.to_pybytes())
                return sum(s["ticks_stored"] for s in status["symbols"]
                           if s["symbol"] == "BTC/USDT" and s["exchange"] == "binance")

            until(lambda: stored() >= 3, 60, "ticks from binance", interval=0.5)
            table = client.do_get(flight.Ticket(b"BTC/USDT?latest=3")).read_all()
            rows = table.to_pylist()
            assert len(rows) == 3
            assert all(r["exchange"] == "binance" and r["symbol"] == "BTC/USDT" for r in rows)
            assert all(r["price"] > 0 and r["bid"] <= r["ask"] for r in rows)
        finally:
            client.close()

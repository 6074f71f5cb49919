"""``flight_md.ingest.endpoints``: every URL ccxt would use is replaced, nothing points at the internet."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ccxt.pro as ccxtpro
import pytest

from flight_md.ingest.endpoints import apply_url_overrides, url_overrides

BASE = "http://127.0.0.1:8765"


def urls(tree: Any) -> Iterator[str]:
    if isinstance(tree, dict):
        for value in tree.values():
            yield from urls(value)
    elif isinstance(tree, str):
        yield tree


@pytest.mark.parametrize("exchange_id", ["binance", "bybit"])
def test_every_api_url_points_at_the_base(exchange_id: str) -> None:
    exchange = getattr(ccxtpro, exchange_id)(url_overrides(exchange_id, BASE))
    api = list(urls(exchange.urls["api"]))
    assert api and all(url.startswith((BASE, "ws://127.0.0.1:8765/")) for url in api), api


def test_websocket_urls_use_the_ws_scheme_and_exchange_paths() -> None:
    binance = url_overrides("binance", BASE)
    assert binance["urls"]["api"]["ws"]["spot"] == "ws://127.0.0.1:8765/ws"
    assert binance["urls"]["api"]["public"] == "http://127.0.0.1:8765/api/v3"
    assert binance["options"]["fetchMarkets"]["types"] == ["spot"]
    bybit = url_overrides("bybit", "https://example.test:443")
    assert bybit["urls"]["api"]["ws"]["public"]["linear"] == "wss://example.test:443/v5/public/linear"
    assert bybit["options"]["fetchMarkets"]["types"] == ["spot", "linear"]


def test_apply_url_overrides_on_a_built_exchange() -> None:
    exchange = ccxtpro.bybit()
    apply_url_overrides(exchange, BASE)
    assert all("bybit.com" not in url for url in urls(exchange.urls["api"]))


def test_unsupported_exchanges_and_bad_urls_are_refused() -> None:
    from flight_md.ingest.endpoints import SUPPORTED_EXCHANGES

    assert set(SUPPORTED_EXCHANGES) >= {"binance", "bybit"}
    with pytest.raises(ValueError, match=f"supported: {', '.join(SUPPORTED_EXCHANGES)}"):
        url_overrides("bitfinex", BASE)  # a ccxt exchange without a venue module
    with pytest.raises(ValueError, match="http://host:port"):
        url_overrides("binance", "127.0.0.1:8765")

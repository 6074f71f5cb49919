"""The one place that knows how to point a ccxt exchange at another base URL.

:func:`url_overrides` returns the constructor config that replaces every REST and
websocket URL ccxt uses for an exchange's public market data with ones on ``base_url``
(``http`` becomes ``ws`` for websockets, ``https`` becomes ``wss``); paths are kept, so
the local emulator (:mod:`flight_md.emulator`) serves them as the exchange does.

Binance
    ``urls.api``: every REST key (``public``, ``private``, ``v1``, ``sapi*``, ``fapi*``,
    ``dapi*``, ``eapi*``, ``papi*``) keeps its path (``/api/v3``, ``/fapi/v1``, ...);
    ``urls.api.ws``: ``spot``, ``margin`` -> ``/ws``; ``linear`` -> ``/ws`` (ccxt
    rewrites it to ``/public/ws`` or ``/market/ws``); ``inverse`` -> ``/dws``;
    ``option*``, ``stock``, ``papi``, ``ws-api.*`` keep their paths. Options:
    ``fetchMarkets.types = ["spot"]``, so ``load_markets`` calls only
    ``GET /api/v3/exchangeInfo`` (``fetchCurrencies`` needs API keys and is skipped
    without them). Spot only also keeps market ids unambiguous: ccxt tells a spot
    stream by ``/stream`` in the host name, which a local URL lacks.
Bybit
    ``urls.api``: ``spot``, ``futures``, ``v2``, ``public``, ``private`` -> ``base_url``
    (``{hostname}`` templates are replaced); ``urls.api.ws.public.{spot,linear,
    inverse,option}`` -> ``/v5/public/<category>``; private websockets keep their
    paths. Options: ``fetchMarkets.types = ["spot", "linear"]``, so ``load_markets``
    calls only ``GET /v5/market/instruments-info`` for ``category=spot`` and
    ``category=linear`` (twice: ``status=PreLaunch`` too, then cursor pages);
    ``fetchCurrencies`` needs API keys and is skipped without them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

__all__ = ["SUPPORTED_EXCHANGES", "apply_url_overrides", "url_overrides"]

SUPPORTED_EXCHANGES = ("binance", "bybit")

_BINANCE_REST = {
    "public": "/api/v3",
    "private": "/api/v3",
    "v1": "/api/v1",
    "sapi": "/sapi/v1",
    "sapiV2": "/sapi/v2",
    "sapiV3": "/sapi/v3",
    "sapiV4": "/sapi/v4",
    "fapiPublic": "/fapi/v1",
    "fapiPublicV2": "/fapi/v2",
    "fapiPublicV3": "/fapi/v3",
    "fapiPrivate": "/fapi/v1",
    "fapiPrivateV2": "/fapi/v2",
    "fapiPrivateV3": "/fapi/v3",
    "fapiData": "/futures/data",
    "dapiPublic": "/dapi/v1",
    "dapiPrivate": "/dapi/v1",
    "dapiPrivateV2": "/dapi/v2",
    "dapiData": "/futures/data",
    "eapiPublic": "/eapi/v1",
    "eapiPrivate": "/eapi/v1",
    "papi": "/papi/v1",
    "papiV2": "/papi/v2",
}
_BINANCE_WS = {
    "spot": "/ws",
    "margin": "/ws",
    "linear": "/ws",
    "inverse": "/dws",
    "stock": "/equity/ws",
    "option": "/public/ws",
    "optionMarket": "/market/ws",
    "optionPrivate": "/private/ws",
    "papi": "/pm/ws",
}
_BINANCE_WS_API = {"spot": "/ws-api/v3", "linear": "/ws-fapi/v1", "inverse": "/ws-dapi/v1"}
_BYBIT_REST_KEYS = ("spot", "futures", "v2", "public", "private")
_BYBIT_CATEGORIES = ("spot", "linear", "inverse", "option")


def url_overrides(exchange_id: str, base_url: str) -> dict[str, Any]:
    """Config for a ccxt constructor that sends all public market-data traffic to ``base_url``.

    Args:
        exchange_id: ccxt exchange id: ``binance`` or ``bybit``.
        base_url: ``http://host:port`` (or ``https://...``), without a path.

    Returns:
        ``{"urls": {"api": {...}}, "options": {...}}``; ccxt deep-merges it into its
        description, so pass it as (part of) the constructor config.

    Raises:
        ValueError: If the exchange is not supported or the URL is not http(s).
    """
    rest, ws = _bases(base_url)
    if exchange_id == "binance":
        api: dict[str, Any] = {key: rest + path for key, path in _BINANCE_REST.items()}
        api["ws"] = {key: ws + path for key, path in _BINANCE_WS.items()}
        api["ws"]["ws-api"] = {key: ws + path for key, path in _BINANCE_WS_API.items()}
        return {"urls": {"api": api}, "options": {"fetchMarkets": {"types": ["spot"]}}}
    if exchange_id == "bybit":
        api = {key: rest for key in _BYBIT_REST_KEYS}
        api["ws"] = {
            "public": {category: f"{ws}/v5/public/{category}" for category in _BYBIT_CATEGORIES},
            "private": {
                "spot": {"unified": f"{ws}/v5/private", "nonUnified": f"{ws}/spot/private/v3"},
                "contract": f"{ws}/v5/private",
                "usdc": f"{ws}/trade/option/usdc/private/v1",
                "trade": f"{ws}/v5/trade",
            },
        }
        return {"urls": {"api": api}, "options": {"fetchMarkets": {"types": ["spot", "linear"]}}}
    raise ValueError(f"cannot point {exchange_id!r} at a local url; supported: {', '.join(SUPPORTED_EXCHANGES)}")


def apply_url_overrides(exchange: Any, base_url: str) -> None:
    """Point an already constructed ccxt exchange at ``base_url``.

    Prefer passing :func:`url_overrides` to the constructor; this is for exchanges
    built elsewhere. Call it before ``load_markets`` and before any websocket opens.

    Args:
        exchange: A ``ccxt`` or ``ccxt.pro`` exchange instance.
        base_url: As for :func:`url_overrides`.

    Raises:
        ValueError: As for :func:`url_overrides`.
    """
    overrides = url_overrides(str(exchange.id), base_url)
    exchange.urls = exchange.deep_extend(exchange.urls, overrides["urls"])
    exchange.options = exchange.deep_extend(exchange.options, overrides["options"])


def _bases(base_url: str) -> tuple[str, str]:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"bad base url {base_url!r}; expected http://host:port")
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{parts.scheme}://{parts.netloc}", f"{ws_scheme}://{parts.netloc}"

"""Point a ccxt exchange at another base URL (the emulator, a proxy), through its venue.

:func:`url_overrides` returns the constructor config that replaces every REST and websocket
URL ccxt uses for an exchange's public market data with ones on ``base_url`` (``http``
becomes ``ws`` for websockets, ``https`` becomes ``wss``); paths are kept, so the local
emulator (:mod:`flight_md.emulator`) serves them as the exchange does. Which keys each venue
overrides is written in its module under :mod:`flight_md.venues`.
"""

from __future__ import annotations

from typing import Any

from flight_md.venues import VENUES

__all__ = ["SUPPORTED_EXCHANGES", "apply_url_overrides", "url_overrides"]

SUPPORTED_EXCHANGES = tuple(name for name, item in VENUES.items() if item.url_overrides is not None)
"""Venues whose URLs can be redirected."""


def url_overrides(exchange_id: str, base_url: str) -> dict[str, Any]:
    """Config for a ccxt constructor that sends all public market-data traffic to ``base_url``.

    Args:
        exchange_id: A registered venue's ccxt id (:data:`SUPPORTED_EXCHANGES`).
        base_url: ``http://host:port`` (or ``https://...``), without a path.

    Returns:
        ``{"urls": {"api": {...}}, "options": {...}}``; ccxt deep-merges it into its
        description, so pass it as (part of) the constructor config.

    Raises:
        ValueError: If the exchange is not supported or the URL is not http(s).
    """
    found = VENUES.get(exchange_id)
    if found is None or found.url_overrides is None:
        raise ValueError(f"cannot point {exchange_id!r} at a local url; supported: "
                         f"{', '.join(SUPPORTED_EXCHANGES)}")
    return found.overrides(base_url)


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

"""Building a stream's ccxt exchange, and keeping the stream's secrets out of what it says.

Secrets (``api_key``, ``api_secret``) are handed to ccxt and kept nowhere else on the
stream but in the :func:`redactor` that scrubs them from every error text the stream logs,
records or reports; ccxt is given a logger of ours whose records (request headers at DEBUG
carry the API key) are scrubbed the same way (:class:`RedactingFilter`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro

from flight_md.errors import InvalidArgument
from flight_md.ingest import ccxt_compat
from flight_md.ingest.endpoints import apply_url_overrides, url_overrides
from flight_md.ingest.state import Mode
from flight_md.normalize import Channel
from flight_md.venues import has_key
from flight_md.venues.base import ChannelMethods, Venue

__all__ = ["RedactingFilter", "build_exchange", "channel_support", "deep_merge", "redactor"]


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``, nested mappings merged rather than replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def redactor(secrets: Iterable[str | None]) -> Callable[[str], str]:
    """A function that replaces each of ``secrets`` (``None`` and empty ones skipped) by ``***``."""
    values = tuple(sorted((s for s in secrets if s), key=len, reverse=True))

    def redact(text: str) -> str:
        for value in values:
            text = text.replace(value, "***")
        return text

    return redact


class RedactingFilter(logging.Filter):
    """Removes a stream's secrets from the records of the logger ccxt is given."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self._redact(message)
        if clean != message:
            record.msg = clean
            record.args = None
        return True


def build_exchange(venue: Venue, *, testnet: bool, api_key: str | None, api_secret: str | None,
                   url: str | None, urls: Mapping[str, Any] | None,
                   ccxt_options: Mapping[str, Any] | None, logger: logging.Logger) -> Any:
    """A ccxt exchange for a stream: ccxt.pro (guarded by
    :func:`~flight_md.ingest.ccxt_compat.guarded_class`) where ccxt has it, else REST only.

    The config is merged in this order, later winning: flight_md's defaults, the venue's
    ``ccxt_config``, ``url`` (:func:`~flight_md.ingest.endpoints.url_overrides`), ``urls``,
    ``ccxt_options``, the credentials.

    Raises:
        InvalidArgument: ``url`` cannot be applied to the venue, or ``testnet`` and ccxt has
            no sandbox for it.
    """
    exchange_id = venue.id
    # Currencies are never needed for market data, and loading them is a private call on
    # Binance and Bybit: with API keys set it would be made, and fail on a public-only host.
    config: dict[str, Any] = {"enableRateLimit": True, "has": {"fetchCurrencies": False},
                              "logger": logger}
    config = deep_merge(config, venue.ccxt_config)
    if url is not None:
        try:
            config = deep_merge(config, url_overrides(exchange_id, url))
        except ValueError as error:
            raise InvalidArgument(str(error)) from None
    if urls:
        config = deep_merge(config, {"urls": urls})
    if ccxt_options:
        config = deep_merge(config, ccxt_options)
    if api_key:
        config["apiKey"] = api_key
    if api_secret:
        config["secret"] = api_secret
    if exchange_id in ccxt_pro.exchanges:
        cls = ccxt_compat.guarded_class(getattr(ccxt_pro, exchange_id))
    else:
        cls = getattr(ccxt_async, exchange_id)
    exchange = cls(config)
    if testnet:
        try:
            exchange.set_sandbox_mode(True)
        except (ccxt_async.NotSupported, TypeError, KeyError):
            # ccxt raises NotSupported, or for an exchange whose urls['test'] is None
            # (kraken), a TypeError: either way there is no sandbox.
            raise InvalidArgument(f"{exchange_id} has no testnet (sandbox) in ccxt") from None
        if url is not None:
            apply_url_overrides(exchange, url)
    return exchange


def channel_support(exchange: Any, venue: Venue, channel: Channel,
                    mode: Mode) -> tuple[ChannelMethods, bool, str | None]:
    """How ``exchange`` can stream ``channel``: the venue's methods, whether ccxt.pro
    streams it, and the first REST method ccxt has for it (``None``: none).

    Raises:
        InvalidArgument: The venue has no such channel, ccxt cannot serve it in ``mode``, or
            not at all.
    """
    exchange_id = venue.id
    methods = venue.channels.get(channel)
    if methods is None:
        raise InvalidArgument(f"{exchange_id} has no {channel} channel; it has: "
                              f"{', '.join(venue.channels)}")
    has = exchange.has
    websocket = exchange_id in ccxt_pro.exchanges and bool(has.get(methods.has_key))
    rest = next((name for name in methods.rest if has.get(has_key(name))), None)
    if mode is Mode.WEBSOCKET and not websocket:
        raise InvalidArgument(f"{exchange_id} has no websocket {channel} channel in ccxt; "
                              "use mode='rest' or 'auto'")
    if mode is Mode.REST and rest is None:
        raise InvalidArgument(f"{exchange_id} cannot fetch {channel} over REST in ccxt")
    if not websocket and rest is None:
        raise InvalidArgument(f"{exchange_id} offers no {channel} data in ccxt")
    return methods, websocket, rest

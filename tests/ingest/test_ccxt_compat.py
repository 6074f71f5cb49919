"""The ccxt internals ingestion relies on are checked at start, and a broken one fails loudly.

:mod:`flight_md.ingest.ccxt_compat` lists every assumption. The installed ccxt passes the
check for every registered venue and channel; exchanges that break one assumption each
(subclasses of a real ccxt.pro exchange, or a real exchange configured so) fail it with an
error that names the assumption and the ccxt version; and a stream whose exchange fails it
raises, records an ``error`` event and reports ``FAILED`` with that reason, never a stream
that merely looks stale. No test here opens a connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ccxt
import ccxt.pro as ccxt_pro
import pytest
import pytest_asyncio

from flight_md.errors import StartupError
from flight_md.events import EventKind
from flight_md.ingest import ccxt_compat
from flight_md.ingest.state import ConnectionState
from flight_md.ingest.stream import MarketDataStream
from flight_md.normalize import Channel
from flight_md.venues import VENUES, venue

UNREACHABLE = "http://127.0.0.1:9"  # never contacted: the check runs before any request


@pytest_asyncio.fixture
async def exchanges() -> AsyncIterator[list[Any]]:
    """Exchanges made by a test, closed at teardown."""
    made: list[Any] = []
    yield made
    for exchange in made:
        await exchange.close()


def _guarded(made: list[Any], cls: type, config: dict[str, Any] | None = None) -> Any:
    exchange = ccxt_compat.guarded_class(cls)(config or {})
    made.append(exchange)
    return exchange


@pytest.mark.parametrize("venue_id", sorted(VENUES))
@pytest.mark.asyncio
async def test_the_installed_ccxt_passes_for_every_venue_and_channel(
        venue_id: str, exchanges: list[Any]) -> None:
    exchange = _guarded(exchanges, getattr(ccxt_pro, venue_id))
    for channel, methods in venue(venue_id).channels.items():
        websocket = bool(exchange.has.get(methods.has_key))
        ccxt_compat.check(exchange, methods, websocket=websocket)
        assert channel in Channel
    assert not exchange.clients  # the client the check made is unregistered again


class _NoDialDelay(ccxt_pro.binance):  # type: ignore[misc,name-defined]
    ws_dial_delay = None  # renamed away in a future ccxt


class _NarrowOnClose(ccxt_pro.binance):  # type: ignore[misc,name-defined]
    def on_close(self, client: Any) -> None:  # type: ignore[override]
        super().on_close(client, None)


class _UnregisteredClient(ccxt_pro.binance):  # type: ignore[misc,name-defined]
    def client(self, url: str) -> Any:
        made = super().client(url)
        del self.clients[url]  # a ccxt that keys its registry differently
        return made


@pytest.mark.parametrize(("cls", "assumption"), [
    (_NoDialDelay, "ws_dial_delay"),
    (_NarrowOnClose, "on_close"),
    (_UnregisteredClient, "client"),
])
@pytest.mark.asyncio
async def test_an_exchange_breaking_an_assumption_fails_the_check_naming_it(
        cls: type, assumption: str, exchanges: list[Any]) -> None:
    exchange = _guarded(exchanges, cls)
    with pytest.raises(StartupError) as raised:
        ccxt_compat.check(exchange, venue("binance").channels[Channel.TICKER], websocket=True)
    message = str(raised.value)
    assert f": {assumption}: " in message
    assert f"ccxt {ccxt.__version__}" in message


@pytest.mark.asyncio
async def test_a_cache_that_is_not_a_dict_fails_the_check(exchanges: list[Any]) -> None:
    exchange = _guarded(exchanges, ccxt_pro.binance, {"tickers": []})
    with pytest.raises(StartupError, match=r": cache: exchange\.tickers is list, not a dict"):
        ccxt_compat.check(exchange, venue("binance").channels[Channel.TICKER], websocket=True)


@pytest.mark.asyncio
async def test_a_cache_ccxt_never_stores_into_fails_the_check(exchanges: list[Any]) -> None:
    # ccxt.pro coinbase keeps no bidsasks cache: a venue entry claiming it would tap nothing.
    exchange = _guarded(exchanges, ccxt_pro.coinbase)
    methods = venue("binance").channels[Channel.BIDASK]
    assert methods.cache == "bidsasks"
    with pytest.raises(StartupError, match=r": cache: coinbase does not store tickers by key in "
                                           r"self\.bidsasks"):
        ccxt_compat.check(exchange, methods, websocket=True)


@pytest.mark.asyncio
async def test_a_rest_only_channel_is_not_held_to_the_websocket_assumptions(
        exchanges: list[Any]) -> None:
    exchange = _guarded(exchanges, _NoDialDelay, {"tickers": []})
    ccxt_compat.check(exchange, venue("binance").channels[Channel.TICKER], websocket=False)


@pytest.mark.parametrize(("version", "supported"), [
    ("4.5.90", True), ("4.5.91", True), ("4.5.200", True), ("4.5.89", False),
    ("4.6.0", False), ("5.0.0", False), ("4.4.99", False), ("4.5", False), ("", False),
    ("4.5.90.dev1", False),
])
def test_the_supported_ccxt_versions_are_the_pinned_minor_line_from_the_pin(
        version: str, supported: bool) -> None:
    assert ccxt_compat.supported_version(version) is supported


@pytest.mark.parametrize("how", ["connect", "start"])
@pytest.mark.asyncio
async def test_a_stream_on_an_incompatible_exchange_fails_loudly(how: str) -> None:
    stream = MarketDataStream("binance", url=UNREACHABLE, ccxt_options={"tickers": []})
    try:
        with pytest.raises(StartupError) as raised:
            if how == "connect":
                await stream.connect()
            else:
                await stream.start(["BTC/USDT"])
        reason = str(raised.value)
        assert ": cache: " in reason and f"ccxt {ccxt.__version__}" in reason
        assert stream.state is ConnectionState.FAILED
        (status,) = stream.status().exchanges
        assert status.state == "failed" and status.last_error == reason
        errors = [e for e in stream.events.events() if e.kind is EventKind.ERROR]
        assert [e.detail for e in errors] == [reason]
        with pytest.raises(StartupError):  # and again: it never limps on
            await stream.connect()
    finally:
        await stream.disconnect()


def test_the_replicas_of_ccxt_functions_match_the_installed_ccxt() -> None:
    assert ccxt_compat.changed_replicas() == ()
    name = "ccxt.base.exchange.Exchange.safe_string"
    assert ccxt_compat.changed_replicas(((name, "0" * 16),)) == (name,)
    assert ccxt_compat.changed_replicas((("ccxt.base.exchange.Exchange.gone", "0" * 16),)) == (
        "ccxt.base.exchange.Exchange.gone",)


@pytest.mark.asyncio
async def test_a_changed_replica_makes_the_stream_parse_with_ccxt(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ccxt patch that changed a function the fast decoders copy: ccxt's parse is used."""
    def changed() -> tuple[str, ...]:
        return ("ccxt.base.exchange.Exchange.safe_string",)

    monkeypatch.setattr(ccxt_compat, "changed_replicas", changed)  # flight_md's own check
    stream = MarketDataStream("binance", url=UNREACHABLE, channel="bidask")
    try:
        assert [e.decoder for e in stream.status().exchanges] == ["ccxt"]
    finally:
        await stream.disconnect()
    monkeypatch.undo()
    stream = MarketDataStream("binance", url=UNREACHABLE, channel="bidask")
    try:
        assert [e.decoder for e in stream.status().exchanges] == ["fast"]
    finally:
        await stream.disconnect()

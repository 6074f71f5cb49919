"""What flight_md knows about one exchange, as data: :class:`Venue`.

A venue module (``flight_md/venues/<id>.py``) defines one :class:`Venue` and nothing that does
I/O. Ingestion reads which ccxt methods serve each channel, how many symbols fit in one
subscribe message, the ccxt options the venue needs and where its URLs live; the emulator
reads which dialect speaks its protocol; the CLI reads the registered ids; the tests read the
venues' emulator symbols and recordings. Nothing outside ``venues/`` and the emulator's
dialects names an exchange.

This module imports neither asyncio, ccxt nor pyarrow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from flight_md.core.decode import DecoderFactory
from flight_md.normalize import Channel

__all__ = ["BOOKS_CACHE", "BOOK_METHODS", "GENERIC_CHANNELS", "TRADES_CACHE", "TRADES_METHODS",
           "ChannelMethods", "Venue", "has_key", "ws_bases"]

UrlOverrides = Callable[[str, str], dict[str, Any]]
"""``(rest_base, ws_base) -> {"urls": {...}, "options": {...}}`` for a ccxt constructor."""


@dataclass(frozen=True, slots=True)
class ChannelMethods:
    """Which ccxt calls serve one channel of one venue.

    Attributes:
        watch: The ``ccxt.pro`` method that subscribes (``watch_tickers``).
        unwatch: The method that unsubscribes, or ``None`` where ccxt has none (the stream
            then restarts its session to drop a symbol).
        cache: The exchange attribute ccxt stores every parsed update in (``tickers``,
            ``bidsasks``): flight_md taps it to see every update exactly once.
        per_symbol: ``watch``/``unwatch`` take one symbol (``watch_ticker``) rather than a
            list of symbols.
        rest: ``fetch_*`` methods that poll the channel, in order of preference; the first
            the exchange has is used.
        params: Extra ``params`` passed to ``watch``.
    """

    watch: str
    unwatch: str | None
    cache: str
    per_symbol: bool = False
    rest: tuple[str, ...] = ("fetch_tickers", "fetch_ticker")
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def has_key(self) -> str:
        """The ccxt ``has`` key of ``watch`` (``watch_tickers`` -> ``watchTickers``)."""
        return has_key(self.watch)


def has_key(name: str) -> str:
    """The ccxt ``has`` key of a method name (``fetch_bids_asks`` -> ``fetchBidsAsks``)."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


TRADES_CACHE = "trades"
"""ccxt's attribute of parsed trades: ``{symbol: ArrayCache}`` (tapped per append)."""
BOOKS_CACHE = "orderbooks"
"""ccxt's attribute of order books: ``{symbol: OrderBook}`` (books are captured per frame)."""

TRADES_METHODS: Final = ChannelMethods(
    "watch_trades_for_symbols", "un_watch_trades_for_symbols", TRADES_CACHE, rest=("fetch_trades",))
"""``trades`` where ccxt subscribes many symbols in one call (every registered venue)."""
BOOK_METHODS: Final = ChannelMethods(
    "watch_order_book_for_symbols", "un_watch_order_book_for_symbols", BOOKS_CACHE, rest=())
"""``book`` where ccxt subscribes many symbols in one call. No REST: a polled book would be a
snapshot now and then, not the book after every update, so a book stream only streams."""

GENERIC_CHANNELS: Mapping[Channel, ChannelMethods] = MappingProxyType({
    Channel.TICKER: ChannelMethods("watch_tickers", "un_watch_tickers", "tickers"),
    Channel.BIDASK: ChannelMethods("watch_bids_asks", "un_watch_bids_asks", "bidsasks",
                                   rest=("fetch_bids_asks", "fetch_tickers", "fetch_ticker")),
    Channel.TRADES: TRADES_METHODS,
    Channel.BOOK: BOOK_METHODS,
})
"""What ingestion uses for a ccxt exchange that has no venue module."""


@dataclass(frozen=True, slots=True)
class Venue:
    """One exchange: everything flight_md needs to know about it, as data.

    Attributes:
        id: The ccxt exchange id (``binance``).
        title: Its name for people (``Binance spot``).
        channels: ccxt methods per channel.
        symbols_per_message: Symbols in one subscribe message (a subscription group).
        streams_per_connection: Streams one websocket may carry (``None``: no limit known).
        control_per_second: Control messages a connection may send a second (``None``: no limit).
        connection_per_group: ccxt opens one websocket per subscription group.
        ccxt_config: Constructor config merged into every ccxt instance of the venue.
        url_overrides: Builds the constructor config that points every public REST and
            websocket URL at a local base (the emulator, a proxy); ``None``: the venue cannot
            be redirected.
        raw_numeric_fields: Raw payload fields that must be numbers: ccxt maps a
            non-numeric string to ``None``, which these let the normaliser tell apart from a
            field the venue did not send.
        dialect: ``module:Class`` of the emulator dialect that speaks the venue's protocol
            (``None``: not emulated). A string, so the core never imports the emulator.
        demo_symbols: Symbols ``--demo`` serves for the venue.
        test_symbols: Symbols the venue suite subscribes against the synthetic emulator.
        recording: File name of the venue's session in the recordings directory.
        quirks: What users should know: what its ticker lacks, how a channel is derived.
        live_hosts: URL path prefix -> the real base URL serving it (``"/api/v3":
            "https://api.binance.com"``, ``"/ws": "wss://stream.binance.com:9443"``), longest
            prefix first: where ``flight-md record`` forwards what ccxt sends to the
            redirected URLs of :meth:`overrides`.
        alias_of: Given a ccxt market, the id of the market it streams as when the venue
            serves it as an alias of another (Coinbase's ``BTC-USDC`` streams ``BTC-USD``),
            else ``None``; such a symbol is refused at subscribe with the one to use.
        book_depths: The order-book depths the venue's stream offers, ascending (Bybit: 1,
            50, 200, 1000); a ``book`` stream of depth N subscribes the smallest that is at
            least N (:meth:`book_limit`) and stores the top N. Empty: the venue streams its
            whole book whatever is asked (Coinbase ``level2``), and no depth is passed to ccxt.
        sequential_trade_ids: The venue numbers its trades one by one per market (Binance
            ``t``, OKX ``tradeId``): a jump between two consecutive ids is a gap of missed
            trades, recorded and backfilled.
        trade_id_span: Given a trade's raw payload (ccxt's ``info``), how many consecutive ids
            it stands for, its id being the last of them (OKX aggregates the fills of one
            taker order: ``count``); ``None``: one each.
        maker_side_trades: The venue's trade side is the maker's (Coinbase), which ccxt passes
            on unchanged: the stored side (the taker's) is the other one.
        trade_backfill: ``(ccxt options, first missing id) -> fetch_trades params`` that fetch
            trades from that id on (Binance ``fromId``); ``None``: a backfill asks
            ``fetch_trades(since=...)`` from the last stored trade's time.
        decoders: The venue's fast decoders (:mod:`flight_md.core.decode`) by channel: each
            makes the decoder of one websocket connection; a channel without one (and any
            stream with ``decoder="ccxt"``) is parsed by ccxt.
    """

    id: str
    title: str
    channels: Mapping[Channel, ChannelMethods] = field(default_factory=lambda: GENERIC_CHANNELS)
    symbols_per_message: int = 20
    streams_per_connection: int | None = None
    control_per_second: int | None = None
    connection_per_group: bool = False
    ccxt_config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    url_overrides: UrlOverrides | None = None
    raw_numeric_fields: frozenset[str] = frozenset()
    dialect: str | None = None
    demo_symbols: tuple[str, ...] = ()
    test_symbols: tuple[str, ...] = ()
    recording: str | None = None
    quirks: tuple[str, ...] = ()
    live_hosts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    alias_of: Callable[[Mapping[str, Any]], str | None] | None = None
    book_depths: tuple[int, ...] = ()
    sequential_trade_ids: bool = False
    trade_id_span: Callable[[Mapping[str, Any]], int] | None = None
    maker_side_trades: bool = False
    trade_backfill: Callable[[Mapping[str, Any], int], Mapping[str, Any]] | None = None
    decoders: Mapping[Channel, DecoderFactory] = field(
        default_factory=lambda: MappingProxyType({}))

    def book_limit(self, depth: int) -> int | None:
        """The depth a ``book`` stream storing ``depth`` levels asks ccxt for: the smallest the
        venue offers that is at least ``depth`` (the largest if none is), ``None`` where the
        venue streams its whole book (:attr:`book_depths` empty)."""
        if not self.book_depths:
            return None
        return next((d for d in self.book_depths if d >= depth), self.book_depths[-1])

    def overrides(self, base_url: str) -> dict[str, Any]:
        """Constructor config that sends all public market-data traffic to ``base_url``.

        Raises:
            ValueError: If the venue cannot be redirected or the URL is not ``http(s)://host:port``.
        """
        if self.url_overrides is None:
            raise ValueError(f"cannot point {self.id!r} at a local url")
        rest, ws = ws_bases(base_url)
        return self.url_overrides(rest, ws)


def ws_bases(base_url: str) -> tuple[str, str]:
    """``(http base, websocket base)`` of ``http://host:port`` (``https`` gives ``wss``).

    Raises:
        ValueError: If ``base_url`` is not ``http(s)://host[:port]``.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"bad base url {base_url!r}; expected http://host:port")
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{parts.scheme}://{parts.netloc}", f"{ws_scheme}://{parts.netloc}"

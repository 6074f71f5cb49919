"""The analyst's client: :class:`MarketDataClient`.

It speaks flight_md's ticket and action protocol over plain ``pyarrow.flight`` (the protocol is
written out in the server's README and in ``clients/examples/raw_flight.py``), returns
``pyarrow.Table`` everywhere, and raises the typed errors of :mod:`flight_md_client.errors`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import quote, unquote

import pyarrow as pa
from pyarrow import flight

from flight_md_client.errors import (
    ConnectionFailed,
    FlightMdClientError,
    InvalidLocation,
    translate,
)
from flight_md_client.frames import to_pandas, to_polars
from flight_md_client.tail import LiveTail, aiterate
from flight_md_client.times import TimeLike, to_ms

if TYPE_CHECKING:
    import pandas
    import polars

__all__ = ["BAR_INTERVALS", "CHANNELS", "DEFAULT_LOCATION", "MarketDataClient", "SymbolInfo"]

DEFAULT_LOCATION: Final = "grpc://127.0.0.1:8815"
DEFAULT_TIMEOUT: Final = 30.0
_SAFE: Final = "/,:-_."  # characters the server's ticket formatter leaves unescaped
CHANNELS: Final = ("ticker", "bidask", "trades", "book")
"""The channels a flight_md server stores (``channel=`` of the reads and tails)."""
BAR_INTERVALS: Final = ("1s", "1m", "5m", "15m", "1h", "1d")
"""The bar lengths :meth:`MarketDataClient.bars` takes."""

Columns = str | Sequence[str] | None
"""A projection: ``"timestamp,price"`` or ``["timestamp", "price"]``; ``None`` for all."""
PemLike = bytes | str | os.PathLike[str] | None
"""PEM text (``bytes`` or a ``str`` starting with ``-----BEGIN``) or the path of a PEM file."""


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    """One buffered (exchange, symbol), as listed by :meth:`MarketDataClient.symbols`.

    Attributes:
        exchange: ccxt exchange id, e.g. ``"binance"``.
        symbol: Unified symbol, e.g. ``"BTC/USDT"``.
        records: Rows currently stored.
        ticket: A ticket that reads the whole buffer.
        channel: The flight's channel (``"trades"``, ``"book"``, ...), or ``None`` where the
            server does not name one: the symbol's ticker-like channel.
    """

    exchange: str
    symbol: str
    records: int
    ticket: str
    channel: str | None = None


def _pem(value: PemLike, name: str) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        with open(value, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {os.fspath(value)!r}: {exc.strerror}") from None


def _columns(columns: Columns) -> str | None:
    if columns is None:
        return None
    if isinstance(columns, str):
        return columns
    names = list(columns)
    if not all(isinstance(c, str) for c in names):
        raise TypeError(f"columns must be names (str), got {names!r}")
    return ",".join(names)


def _count(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def _name(value: str | None, name: str, allowed: Sequence[str]) -> str | None:
    """A channel or interval name: checked for type here, for meaning by the server (which
    names what it allows), so a newer server's names work with this client."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str such as {allowed[-2]!r}, got {value!r}")
    return value


def _channel_of(path: Sequence[str], ticket_text: str) -> str | None:
    """A listed flight's channel: the third path element, else the ticket's ``channel=``."""
    if len(path) == 3:
        return path[2]
    _, _, query = ticket_text.partition("?")
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "channel":
            return unquote(value)
    return None


def _symbol_list(symbols: str | Iterable[str], name: str) -> list[str]:
    items = [symbols] if isinstance(symbols, str) else list(symbols)
    if not all(isinstance(s, str) for s in items):
        raise TypeError(f"{name} must be a symbol or a list of symbols, got {symbols!r}")
    return items


def ticket(target: str, **params: Any) -> str:
    """Format a ticket: ``target`` (a symbol, ``"*"`` or ``"@events"``) and its parameters.

    Parameters that are ``None`` are left out; values are percent-encoded like the server's own
    formatter (so ``+01:00`` in an ISO time becomes ``%2B01:00``).
    """
    parts = []
    for key, value in params.items():
        if value is None or value is False:
            continue
        text = "true" if value is True else str(value)
        parts.append(f"{key}={quote(text, safe=_SAFE)}")
    return target + ("?" + "&".join(parts) if parts else "")


class MarketDataClient:
    """A connection to a flight_md server.

    Args:
        location: ``grpc://host:port`` (``grpc+tls://`` for TLS); a bare ``host:port`` means
            ``grpc://`` (``grpc+tls://`` when TLS options are given).
        token: Bearer token sent as ``authorization: Bearer <token>`` on every call.
        tls_root_certs: CA certificate(s) to verify the server (PEM text or a file path).
        cert_chain: Client certificate for mutual TLS (PEM text or path).
        private_key: The client certificate's key (PEM text or path).
        override_hostname: Expect this name in the server certificate.
        timeout: Deadline in seconds for every call except live tails (``None``: none).

    Raises:
        InvalidLocation: A location pyarrow cannot use (a ``ValueError``).
        ValueError: An unreadable PEM file, TLS options with a plaintext location, only one
            of ``cert_chain``/``private_key``, or an empty token.

    The constructor does not connect; the first call does (use :meth:`wait_ready` to wait for
    a server that is starting). Calls are thread-safe. Use it as a context manager, or call
    :meth:`close`, which also stops this client's live tails.
    """

    def __init__(self, location: str = DEFAULT_LOCATION, *, token: str | None = None,
                 tls_root_certs: PemLike = None, cert_chain: PemLike = None,
                 private_key: PemLike = None, override_hostname: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        root = _pem(tls_root_certs, "tls_root_certs")
        chain = _pem(cert_chain, "cert_chain")
        key = _pem(private_key, "private_key")
        if (chain is None) != (key is None):
            raise ValueError("mutual TLS needs both cert_chain and private_key")
        tls = root is not None or chain is not None
        if "://" not in location:
            location = ("grpc+tls://" if tls else "grpc://") + location
        if tls and not location.startswith("grpc+tls://"):
            raise ValueError(f"TLS options need a grpc+tls:// location, got {location!r}")
        self.location = location
        self.timeout = timeout
        self._headers: list[tuple[bytes, bytes]] = []
        if token is not None:
            token = token.strip()
            if not token:
                raise ValueError("token is empty")
            self._headers.append((b"authorization", b"Bearer " + token.encode()))
        options: dict[str, Any] = {}
        if root is not None:
            options["tls_root_certs"] = root
        if chain is not None:
            options["cert_chain"] = chain
            options["private_key"] = key
        if override_hostname is not None:
            options["override_hostname"] = override_hostname
        try:
            self._client = flight.FlightClient(location, **options)
        except (pa.ArrowException, flight.FlightError) as exc:
            raise InvalidLocation(location, translate(exc, location).message) from None
        self._closed = False
        self._tails: weakref.WeakSet[LiveTail] = weakref.WeakSet()

    # -- plumbing --------------------------------------------------------------------------

    def _options(self, timeout: float | None | bool = True) -> flight.FlightCallOptions:
        """Call options: the bearer header, and the deadline unless ``timeout`` says otherwise."""
        deadline = self.timeout if timeout is True else (None if timeout is False else timeout)
        return flight.FlightCallOptions(timeout=deadline, headers=self._headers)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """Every pyarrow error leaves as a :class:`FlightMdClientError` (the only place)."""
        if self._closed:
            raise RuntimeError("this MarketDataClient is closed")
        try:
            yield
        except FlightMdClientError:
            raise
        except (pa.ArrowException, flight.FlightError) as exc:
            raise translate(exc, self.location) from None

    def get(self, ticket_text: str) -> pa.Table:
        """Read one ticket (any ticket of the grammar) into a table: the escape hatch."""
        with self._translated():
            reader = self._client.do_get(flight.Ticket(ticket_text.encode()), self._options())
            return reader.read_all()

    def action(self, name: str, body: dict[str, Any] | None = None) -> Any:
        """Run any action with a JSON body and return its decoded JSON result: the escape hatch.

        Raises:
            Unimplemented: The server has no such action.
        """
        payload = json.dumps(body).encode() if body else b""
        with self._translated():
            results = list(self._client.do_action(flight.Action(name, payload), self._options()))
        if not results:
            return None
        return json.loads(results[0].body.to_pybytes())

    # -- reads -----------------------------------------------------------------------------

    def symbols(self, exchange: str | None = None, *,
                channel: str | None = None) -> list[SymbolInfo]:
        """Every buffered (exchange, symbol, channel) with its record count, sorted.

        Args:
            exchange: Only this exchange.
            channel: Only flights of this channel (e.g. ``"trades"``).
        """
        out = []
        with self._translated():
            for info in self._client.list_flights(b"", self._options()):
                path = [p.decode() if isinstance(p, bytes) else p
                        for p in (info.descriptor.path or [])]
                if len(path) not in (2, 3):
                    continue  # @markets and other non-symbol flights
                ticket_text = info.endpoints[0].ticket.ticket.decode() if info.endpoints else ""
                out.append(SymbolInfo(path[0], path[1], info.total_records, ticket_text,
                                      _channel_of(path, ticket_text)))
        order = {name: i for i, name in enumerate(CHANNELS)}
        return sorted((s for s in out if (exchange is None or s.exchange == exchange)
                       and (channel is None or s.channel == channel)),
                      key=lambda s: (s.exchange, s.symbol, order.get(s.channel or "", -1),
                                     s.channel or ""))

    def schema(self, symbol: str, *, channel: str | None = None, bars: str | None = None,
               exchange: str | None = None, columns: Columns = None) -> pa.Schema:
        """The Arrow schema a read of ``symbol`` returns (GetSchema), without reading rows.

        Args:
            symbol: Unified symbol, or ``"*"`` for the snapshot.
            channel: ``"ticker"``, ``"bidask"``, ``"trades"`` or ``"book"``; ``None``: the
                symbol's ticker-like channel.
            bars: A bar interval (the schema of :meth:`bars`).
            exchange: ccxt exchange id, when needed.
            columns: A projection.
        """
        text = ticket(symbol, exchange=exchange, columns=_columns(columns),
                      channel=_name(channel, "channel", CHANNELS),
                      bars=_name(bars, "bars", BAR_INTERVALS))
        with self._translated():
            result = self._client.get_schema(flight.FlightDescriptor.for_command(text.encode()),
                                             self._options())
        schema: pa.Schema = result.schema
        return schema

    def latest(self, symbol: str, n: int = 100, *, exchange: str | None = None,
               columns: Columns = None, channel: str | None = None) -> pa.Table:
        """The newest ``n`` ticks of ``symbol``, oldest first.

        Args:
            symbol: Unified symbol, e.g. ``"BTC/USDT"``.
            n: Rows wanted (more than the server's buffer returns what is stored).
            exchange: ccxt exchange id; needed only when the symbol is on several exchanges.
            columns: A projection, e.g. ``["timestamp", "price"]``.
            channel: Rows of this channel (``"ticker"``, ``"bidask"``, ``"trades"``,
                ``"book"``); ``None``: the symbol's ticker-like channel.

        Raises:
            NotFound: Unknown symbol or exchange (the message lists what is buffered).
            InvalidRequest: A bad column name, or an ambiguous symbol without ``exchange``.
        """
        return self.get(ticket(symbol, latest=_count(n, "n"), exchange=exchange,
                               columns=_columns(columns),
                               channel=_name(channel, "channel", CHANNELS)))

    def _read(self, symbol: str, start: TimeLike | None, end: TimeLike | None, *,
              exchange: str | None, columns: Columns, latest: int | None,
              channel: str | None = None, bars: str | None = None) -> pa.Table:
        """One ranged read: every public read of rows comes through here."""
        now = time.time_ns() // 1_000_000
        start_ms = None if start is None else to_ms(start, "start", now_ms=now)
        end_ms = None if end is None else to_ms(end, "end", now_ms=now)
        return self.get(ticket(symbol, latest=_count(latest, "latest"), start=start_ms,
                               end=end_ms, exchange=exchange, columns=_columns(columns),
                               channel=_name(channel, "channel", CHANNELS),
                               bars=_name(bars, "bars", BAR_INTERVALS)))

    def range(self, symbol: str, start: TimeLike | None = None, end: TimeLike | None = None,
              *, exchange: str | None = None, columns: Columns = None,
              latest: int | None = None, channel: str | None = None) -> pa.Table:
        """Ticks with ``start <= timestamp < end`` (exchange time), in arrival order.

        Args:
            symbol: Unified symbol.
            start: Inclusive bound: a ``datetime`` (naive means UTC), an ISO-8601 string, Unix
                ms (int), or a ``timedelta`` before now (``timedelta(minutes=5)``: five
                minutes ago). ``None``: from the oldest stored tick.
            end: Exclusive bound, same forms. ``None``: up to the newest.
            exchange: ccxt exchange id, when needed.
            columns: A projection.
            latest: Keep only the newest ``latest`` rows of the range.
            channel: Rows of this channel (see :meth:`latest`).

        Raises:
            ValueError, TypeError: ``start``/``end`` is not a time (checked before sending).
            InvalidRequest: ``start`` after ``end``, bad columns.
            NotFound: Unknown symbol or exchange.
        """
        return self._read(symbol, start, end, exchange=exchange, columns=columns,
                          latest=latest, channel=channel)

    def trades(self, symbol: str, start: TimeLike | None = None, end: TimeLike | None = None,
               *, latest: int | None = None, exchange: str | None = None,
               columns: Columns = None) -> pa.Table:
        """Every stored trade of ``symbol`` with ``start <= timestamp < end``, in arrival order.

        Columns: ``symbol, exchange, timestamp`` (exchange trade time, Unix ms), ``trade_id``
        (the exchange's, as a string; null where it has none), ``price``, ``amount`` (base
        units on spot markets, contracts on derivatives), ``side`` (the taker's: ``buy`` or
        ``sell``; null where the venue does not say), ``receive_timestamp``. Arguments as in
        :meth:`range` (``latest``: only the newest N trades).

        Raises:
            NotFound: The symbol has no trades channel here (the message lists its channels).
        """
        return self._read(symbol, start, end, exchange=exchange, columns=columns,
                          latest=latest, channel="trades")

    def book(self, symbol: str, start: TimeLike | None = None, end: TimeLike | None = None,
             *, latest: int | None = None, exchange: str | None = None,
             columns: Columns = None) -> pa.Table:
        """Stored order-book updates of ``symbol``: the top N levels after each update.

        Columns: ``symbol, exchange, timestamp``, ``bids`` and ``asks`` (lists of
        ``{price, amount}``, best first), ``nonce`` (the venue's sequence number or update id;
        null where it has none), ``receive_timestamp``. ``book(symbol, latest=1)`` is the book
        now. Arguments as in :meth:`range`.
        """
        return self._read(symbol, start, end, exchange=exchange, columns=columns,
                          latest=latest, channel="book")

    def bars(self, symbol: str, interval: str, start: TimeLike | None = None,
             end: TimeLike | None = None, *, latest: int | None = None,
             exchange: str | None = None, columns: Columns = None) -> pa.Table:
        """OHLCV bars of ``symbol``'s trades, computed by the server, oldest first.

        Args:
            symbol: Unified symbol.
            interval: ``"1s"``, ``"1m"``, ``"5m"``, ``"15m"``, ``"1h"`` or ``"1d"``; bars are
                aligned to UTC (``1d`` bars start at 00:00Z).
            start: Trades from this time (the forms of :meth:`range`).
            end: Trades before this time.
            latest: Only the newest N bars.
            exchange: ccxt exchange id, when needed.
            columns: A projection of ``bar_start, open, high, low, close, volume, vwap,
                trades``.

        Only bars that hold trades are returned: ``bar_start`` (Unix ms), the OHLC prices,
        ``volume`` (sum of amounts), ``vwap`` and ``trades`` (how many).

        Raises:
            InvalidRequest: An interval the server does not offer (it lists those it does).
        """
        if not isinstance(interval, str):
            raise TypeError(f"interval must be a str such as '1m', got {interval!r}")
        return self._read(symbol, start, end, exchange=exchange, columns=columns,
                          latest=latest, bars=interval)

    def snapshot(self, exchange: str | None = None, *, columns: Columns = None,
                 channel: str | None = None) -> pa.Table:
        """The market now: one row per buffered symbol, its newest tick (of ``channel``, if
        given: e.g. each symbol's last trade, or its book now)."""
        return self.get(ticket("*", exchange=exchange, columns=_columns(columns),
                               channel=_name(channel, "channel", CHANNELS)))

    def events(self, exchange: str | None = None, start: TimeLike | None = None,
               end: TimeLike | None = None, latest: int | None = None) -> pa.Table:
        """The ingestion event log (connects, reconnects, stale streams, subscribes, clears).

        Columns: ``timestamp`` (Unix ms), ``exchange``, ``kind``, ``symbols``, ``detail``.
        ``start``/``end`` take the same forms as in :meth:`range`.
        """
        now = time.time_ns() // 1_000_000
        return self.get(ticket(
            "@events", latest=_count(latest, "latest"),
            start=None if start is None else to_ms(start, "start", now_ms=now),
            end=None if end is None else to_ms(end, "end", now_ms=now), exchange=exchange))

    # -- data frames -----------------------------------------------------------------------

    def latest_pandas(self, symbol: str, n: int = 100, *, exchange: str | None = None,
                      columns: Columns = None, channel: str | None = None) -> pandas.DataFrame:
        """:meth:`latest` as a pandas DataFrame indexed by a tz-aware UTC ``timestamp``.

        ``receive_timestamp`` is a tz-aware UTC column too. Needs
        ``pip install 'flight-md-client[pandas]'``.
        """
        return to_pandas(self.latest(symbol, n, exchange=exchange, columns=columns,
                                     channel=channel))

    def latest_polars(self, symbol: str, n: int = 100, *, exchange: str | None = None,
                      columns: Columns = None, channel: str | None = None) -> polars.DataFrame:
        """:meth:`latest` as a polars DataFrame (``Datetime("ms", "UTC")`` times).

        Needs ``pip install 'flight-md-client[polars]'``.
        """
        return to_polars(self.latest(symbol, n, exchange=exchange, columns=columns,
                                     channel=channel))

    def range_pandas(self, symbol: str, start: TimeLike | None = None,
                     end: TimeLike | None = None, *, exchange: str | None = None,
                     columns: Columns = None, latest: int | None = None,
                     channel: str | None = None) -> pandas.DataFrame:
        """:meth:`range` as a pandas DataFrame indexed by a tz-aware UTC ``timestamp``."""
        return to_pandas(self.range(symbol, start, end, exchange=exchange, columns=columns,
                                    latest=latest, channel=channel))

    def range_polars(self, symbol: str, start: TimeLike | None = None,
                     end: TimeLike | None = None, *, exchange: str | None = None,
                     columns: Columns = None, latest: int | None = None,
                     channel: str | None = None) -> polars.DataFrame:
        """:meth:`range` as a polars DataFrame (``Datetime("ms", "UTC")`` times)."""
        return to_polars(self.range(symbol, start, end, exchange=exchange, columns=columns,
                                    latest=latest, channel=channel))

    def trades_pandas(self, symbol: str, start: TimeLike | None = None,
                      end: TimeLike | None = None, *, latest: int | None = None,
                      exchange: str | None = None, columns: Columns = None) -> pandas.DataFrame:
        """:meth:`trades` as a pandas DataFrame indexed by a tz-aware UTC ``timestamp``."""
        return to_pandas(self.trades(symbol, start, end, latest=latest, exchange=exchange,
                                     columns=columns))

    def trades_polars(self, symbol: str, start: TimeLike | None = None,
                      end: TimeLike | None = None, *, latest: int | None = None,
                      exchange: str | None = None, columns: Columns = None) -> polars.DataFrame:
        """:meth:`trades` as a polars DataFrame (``Datetime("ms", "UTC")`` times)."""
        return to_polars(self.trades(symbol, start, end, latest=latest, exchange=exchange,
                                     columns=columns))

    def book_pandas(self, symbol: str, start: TimeLike | None = None,
                    end: TimeLike | None = None, *, latest: int | None = None,
                    exchange: str | None = None, columns: Columns = None) -> pandas.DataFrame:
        """:meth:`book` as a pandas DataFrame indexed by a tz-aware UTC ``timestamp``;
        ``bids``/``asks`` hold lists of ``{"price", "amount"}`` dicts, best first."""
        return to_pandas(self.book(symbol, start, end, latest=latest, exchange=exchange,
                                   columns=columns))

    def book_polars(self, symbol: str, start: TimeLike | None = None,
                    end: TimeLike | None = None, *, latest: int | None = None,
                    exchange: str | None = None, columns: Columns = None) -> polars.DataFrame:
        """:meth:`book` as a polars DataFrame; ``bids``/``asks`` are
        ``List(Struct({"price", "amount"}))`` (``.list.first().struct.field("price")`` is the
        best price)."""
        return to_polars(self.book(symbol, start, end, latest=latest, exchange=exchange,
                                   columns=columns))

    def bars_pandas(self, symbol: str, interval: str, start: TimeLike | None = None,
                    end: TimeLike | None = None, *, latest: int | None = None,
                    exchange: str | None = None, columns: Columns = None) -> pandas.DataFrame:
        """:meth:`bars` as a pandas DataFrame indexed by a tz-aware UTC ``bar_start``."""
        return to_pandas(self.bars(symbol, interval, start, end, latest=latest,
                                   exchange=exchange, columns=columns), index="bar_start")

    def bars_polars(self, symbol: str, interval: str, start: TimeLike | None = None,
                    end: TimeLike | None = None, *, latest: int | None = None,
                    exchange: str | None = None, columns: Columns = None) -> polars.DataFrame:
        """:meth:`bars` as a polars DataFrame (``bar_start`` as ``Datetime("ms", "UTC")``)."""
        return to_polars(self.bars(symbol, interval, start, end, latest=latest,
                                   exchange=exchange, columns=columns))

    # -- live tails ------------------------------------------------------------------------

    def tail(self, symbol: str, *, exchange: str | None = None, columns: Columns = None,
             backlog: int = 0, start: TimeLike | None = None, channel: str | None = None,
             bars: str | None = None) -> LiveTail:
        """Follow ``symbol`` live: an iterator of record batches as ticks arrive.

        Args:
            symbol: Unified symbol.
            exchange: ccxt exchange id, when needed.
            columns: A projection.
            backlog: Newest stored ticks to receive first (0: only new ticks).
            start: Instead (or on top) of ``backlog``, first every stored tick since this time.
            channel: Follow this channel (``"trades"``: every trade as it arrives; ``"book"``:
                the book after every update); ``None``: the ticker-like channel.
            bars: Follow bars of this interval instead: each bar is sent once, when it closes
                (``backlog``: that many closed bars first).

        Returns:
            A :class:`~flight_md_client.LiveTail`: iterate it; ``close()`` it from any thread
            (or leave a ``with`` block) to stop. Iteration stops cleanly when the server shuts
            down (``end_reason == TailEnd.SERVER_CLOSED``); Ctrl-C closes the stream and
            re-raises ``KeyboardInterrupt``; a lost connection raises ``ConnectionFailed``; a
            reader that falls too far behind gets ``SlowConsumer``.

        Raises:
            NotFound, InvalidRequest: Raised here, before iterating.
        """
        backlog_rows = _count(backlog, "backlog")
        text = ticket(symbol, latest=backlog_rows if start is None or backlog_rows else None,
                      start=None if start is None else to_ms(start, "start"),
                      exchange=exchange, columns=_columns(columns), follow=True,
                      channel=_name(channel, "channel", CHANNELS),
                      bars=_name(bars, "bars", BAR_INTERVALS))
        with self._translated():
            reader = self._client.do_get(flight.Ticket(text.encode()), self._options(False))
        live = LiveTail(reader, symbol, self.location, on_close=self._tails.discard)
        self._tails.add(live)
        return live

    async def atail(self, symbol: str, *, exchange: str | None = None, columns: Columns = None,
                    backlog: int = 0, start: TimeLike | None = None,
                    channel: str | None = None, bars: str | None = None
                    ) -> AsyncIterator[pa.RecordBatch]:
        """:meth:`tail` for asyncio: ``async for batch in client.atail("BTC/USDT"): ...``.

        The stream is read on a thread; the event loop never blocks. Cancelling the task (or
        leaving the loop) closes the stream. Ends like :meth:`tail`.
        """
        import asyncio

        live = await asyncio.to_thread(self.tail, symbol, exchange=exchange, columns=columns,
                                       backlog=backlog, start=start, channel=channel, bars=bars)
        async for batch in aiterate(live):
            yield batch

    # -- actions ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Connection state per exchange, counters per symbol, server counters.

        Returns:
            ``{"server": {...}, "exchanges": {id: {"state", "mode", "reconnects", ...}},
            "symbols": [{"exchange", "symbol", "ticks_stored", "ticks_received",
            "ticks_dropped", "age_ms", "stale", ...}]}``.
        """
        result = self.action("status")
        assert isinstance(result, dict)
        return result

    def subscribe(self, symbols: str | Iterable[str], exchange: str | None = None
                  ) -> dict[str, Any]:
        """Start streaming symbols; returns ``{"exchange": ..., "subscribed": [...]}``.

        Raises:
            Unavailable: The server runs without ingestion.
            PermissionDenied: The token is read-only.
        """
        body: dict[str, Any] = {"symbols": _symbol_list(symbols, "symbols")}
        if exchange is not None:
            body["exchange"] = exchange
        result = self.action("subscribe", body)
        assert isinstance(result, dict)
        return result

    def unsubscribe(self, symbols: str | Iterable[str], exchange: str | None = None
                    ) -> dict[str, Any]:
        """Stop streaming symbols (stored ticks stay); returns ``{"unsubscribed": [...]}``."""
        body: dict[str, Any] = {"symbols": _symbol_list(symbols, "symbols")}
        if exchange is not None:
            body["exchange"] = exchange
        result = self.action("unsubscribe", body)
        assert isinstance(result, dict)
        return result

    def clear(self, symbols: str | Iterable[str] | None = None,
              exchange: str | None = None) -> int:
        """Drop stored ticks: of ``symbols``, or of everything (of ``exchange`` if given).

        Returns:
            The number of ticks dropped.
        """
        body: dict[str, Any] = {}
        if symbols is not None:
            body["symbols"] = _symbol_list(symbols, "symbols")
        if exchange is not None:
            body["exchange"] = exchange
        result = self.action("clear", body)
        return int(result["cleared"])

    def flush(self) -> dict[str, Any]:
        """Write everything the server journalled to its Parquet history now.

        Returns:
            ``{"segments", "rows", "files", "bytes", "events", "skipped_rows", "seconds"}``:
            what this flush wrote. A ``--memory-only`` server answers UNAVAILABLE.
        """
        result = self.action("flush")
        assert isinstance(result, dict)
        return result

    def actions(self) -> dict[str, str]:
        """The server's actions and their descriptions."""
        with self._translated():
            return {a.type: a.description
                    for a in self._client.list_actions(self._options())}

    def wait_ready(self, timeout: float = 10.0) -> MarketDataClient:
        """Wait until the server answers (e.g. right after starting it).

        Raises:
            ConnectionFailed: Still unreachable after ``timeout`` seconds.
            Unauthenticated: The server is up but refuses the token.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._translated():
                    list(self._client.list_actions(self._options(min(2.0, timeout))))
                return self
            except (ConnectionFailed, TimeoutError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop this client's live tails and close the connection (idempotent)."""
        if self._closed:
            return
        for live in list(self._tails):
            live.close()
        self._closed = True
        with contextlib.suppress(Exception):
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        auth = ", token=***" if self._headers else ""
        state = " closed" if self._closed else ""
        return f"<MarketDataClient {self.location}{auth}{state}>"

"""Ticket and descriptor grammar: parse and format, pure.

A ticket is UTF-8 text of at most 4 KiB::

    ticket   = target [ "?" params ]
    target   = symbol / "*" / "@events" / "@markets"
    symbol   = 1*64( ALPHA / DIGIT / "/" / "-" / "_" / ":" / "." )
    params   = param *( "&" param )          ; each key at most once
    param    = key "=" value                 ; value is percent-encoded UTF-8
    key      = "latest" / "start" / "end" / "exchange" / "columns" / "follow" / "channel"
             / "bars" / "symbol"

    latest   = 1*DIGIT                       ; 0 .. 2^31-1, newest N rows (oldest first);
                                             ; above the buffer capacity it clamps
    start    = time                          ; inclusive
    end      = time                          ; exclusive
    time     = 1*DIGIT                       ; Unix milliseconds
             / iso8601                       ; e.g. 2026-11-23T10:00:00Z or ...+01:00,
                                             ; no offset means UTC
    exchange = 1*32( LOWER / DIGIT / "_" / "-" )   ; a ccxt exchange id
    columns  = column *( "," column )        ; names from the answer's schema, no repeats
                                             ; (see "Columns" below)
    follow   = "true" / "false"              ; live tail after the backlog
    channel  = "ticker" / "bidask" / "trades" / "book"
                                             ; flight_md.normalize.Channel; absent: the
                                             ; symbol's ticker-like channel (see below)
    bars     = "1s" / "1m" / "5m" / "15m" / "1h" / "1d"
                                             ; OHLCV bars from trades
                                             ; (flight_md.core.bars.BarInterval)
    symbol   = glob                          ; @markets only: symbols matching it (see below)

Targets and the keys they accept:

* ``SYMBOL``: ``latest``, ``start``, ``end``, ``exchange``, ``columns``, ``follow``,
  ``channel``, ``bars``. With no ``latest``/``start``/``end`` the whole buffer; with a range
  *and* ``latest``, the newest rows of the range. ``follow=true`` takes no ``end``.
* ``*``: market snapshot, one row per buffered symbol (of ``channel``, if given; its newest
  row): ``exchange``, ``columns``, ``channel``.
* ``@events``: the ingestion event log: ``exchange``, ``start``, ``end``, ``latest``.
* ``@markets``: every market the served exchanges list, as ccxt loaded them (not only the
  subscribed ones; :data:`flight_md.control.MARKET_SCHEMA`): ``exchange``, ``symbol`` (a glob
  such as ``BTC/*`` or ``*/USDT:USDT``, matched as in ``ListFlights``), ``columns``. E.g.
  ``@markets?exchange=binance&symbol=BTC/*&columns=symbol,price_tick``.

Channels and bars:

* ``channel`` picks the stream a symbol's rows come from: ``ticker`` and ``bidask``
  (:data:`flight_md.schema.SCHEMA`), ``trades`` (one row per trade) and ``book`` (the top N
  levels after every update) (their schemas: :func:`flight_md.core.channels.schema_for`).
  Without ``channel`` a ticket means what it always has: the symbol's ticker-like channel
  (``ticker`` where it is subscribed, else ``bidask``), e.g. ``BTC/USDT?latest=100``; so
  ``BTC/USDT?channel=trades&latest=1000`` is the newest 1,000 trades.
* ``bars=1m`` turns the symbol's trades into OHLCV bars (:data:`flight_md.core.bars.BAR_SCHEMA`)
  over the ticket's range: it is allowed with ``channel=trades`` or with no ``channel``, which
  then means ``trades`` (``BTC/USDT?bars=1m`` and ``BTC/USDT?channel=trades&bars=1m`` ask for
  the same bars, and stay two distinct tickets so that formatting is the exact inverse of
  parsing: :attr:`Query.effective_channel` is the channel either way). ``latest`` counts bars,
  ``start``/``end`` bound the trades' exchange time; with ``follow=true`` each bar is sent
  when it closes.

Columns
    ``columns`` names columns of the schema the answer has: with ``bars``,
    :data:`~flight_md.core.bars.BAR_SCHEMA`; with ``channel``, that channel's schema; without
    either, :data:`~flight_md.schema.SCHEMA` (``@markets``:
    :data:`flight_md.control.MARKET_SCHEMA`). :func:`answer_schema` gives it.

A descriptor is a path ``[symbol]``, ``[exchange, symbol]`` or ``[exchange, symbol, channel]``
(the third element a channel name such as ``trades``: the form ``ListFlights`` gives a flight
of a channel), or a command whose body is a ticket or a JSON object ``{"symbol", "exchange",
"latest", "start", "end", "columns", "channel", "bars"}`` (``"symbol"`` is the target: a symbol,
``"*"``, ``"@events"`` or ``"@markets"``; a glob over markets is given in ticket form,
``@markets?symbol=BTC/*``).

``ListFlights`` criteria (at most 4 KiB, checked by :func:`parse_criteria`)::

    criteria = ""                            ; every flight
             / exchange                      ; an exchange the server knows: its flights
             / glob                          ; otherwise a symbol glob, e.g. BTC/* or */USDT
    glob     = 1*64( ALPHA / DIGIT / "/" / "-" / "_" / ":" / "." / "*" / "?" / "[" / "]" / "!" )

A glob matches whole symbols, case-sensitively (``fnmatch.fnmatchcase``); one that matches
nothing, like an exchange the server does not know, lists nothing.

:func:`format_ticket` is the inverse of :func:`parse_ticket`: ``parse_ticket(format_ticket(q))
== q`` for every valid :class:`Query`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final
from urllib.parse import quote, unquote

import pyarrow as pa

from flight_md.control import MARKET_SCHEMA
from flight_md.core.bars import BAR_SCHEMA, BarInterval, parse_interval
from flight_md.core.channels import schema_for
from flight_md.errors import InvalidCriteria, InvalidDescriptor, InvalidTicket, RequestTooLarge
from flight_md.normalize import Channel
from flight_md.schema import SCHEMA

__all__ = [
    "EXCHANGE_RE",
    "GLOB_RE",
    "MAX_LATEST",
    "MAX_REQUEST_BYTES",
    "SYMBOL_RE",
    "Query",
    "Target",
    "answer_schema",
    "check_size",
    "format_ticket",
    "parse_criteria",
    "parse_descriptor",
    "parse_ticket",
    "parse_time",
    "show_json",
    "start_after_end",
]

MAX_REQUEST_BYTES: Final = 4096
MAX_LATEST: Final = 2**31 - 1
MAX_TIME_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
EVENTS: Final = "@events"
MARKETS: Final = "@markets"
SNAPSHOT: Final = "*"

SYMBOL_RE: Final = re.compile(r"[A-Za-z0-9/_:.\-]{1,64}")
"""What a symbol may look like (ccxt unified symbols such as ``BTC/USDT:USDT``)."""
EXCHANGE_RE: Final = re.compile(r"[a-z0-9_\-]{1,32}")
"""What an exchange id may look like (ccxt ids such as ``binance``)."""
_DIGITS_RE: Final = re.compile(r"[0-9]{1,19}")
_KEYS: Final = ("latest", "start", "end", "exchange", "columns", "follow", "channel", "bars",
                 "symbol")
_ALLOWED: Final = {
    "ticks": frozenset(_KEYS) - {"symbol"},  # the symbol is the target itself
    "snapshot": frozenset({"exchange", "columns", "channel"}),
    "events": frozenset({"exchange", "start", "end", "latest"}),
    "markets": frozenset({"exchange", "columns", "symbol"}),
}
GLOB_RE: Final = re.compile(r"[A-Za-z0-9/_:.\-*?\[\]!]{1,64}")
"""What a symbol glob may look like (``ListFlights`` criteria, ``@markets?symbol=``)."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_JSON_KEYS: Final = frozenset({"symbol", "exchange", "latest", "start", "end", "columns",
                               "channel", "bars"})


class Target(StrEnum):
    """What a ticket asks for."""

    TICKS = "ticks"
    SNAPSHOT = "snapshot"
    EVENTS = "events"
    MARKETS = "markets"


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed ticket.

    Attributes:
        target: Ticks of one symbol, the market snapshot, the event log or the market list.
        symbol: The symbol for :attr:`Target.TICKS`; for :attr:`Target.MARKETS` a glob over
            symbols or ``None`` (every market); else ``None``.
        exchange: Exchange id, or ``None`` to let the server pick the only one.
        latest: Newest N rows, or ``None``.
        start: Inclusive lower bound on exchange timestamp, Unix ms, or ``None``.
        end: Exclusive upper bound, Unix ms, or ``None``.
        columns: Projection in the order given, or ``None`` for every column (names from
            :func:`answer_schema`: the channel's, the bars', or
            :data:`~flight_md.schema.SCHEMA`; for ``@markets``
            :data:`~flight_md.control.MARKET_SCHEMA`).
        follow: Keep the stream open and push new rows (with ``bars``: each closed bar).
        channel: The :class:`~flight_md.normalize.Channel` to read (``SYMBOL`` and ``*``), or
            ``None`` for the symbol's ticker-like channel (trades, with ``bars``). A valid
            name given as ``str`` is stored as its ``Channel``.
        bars: A :class:`~flight_md.core.bars.BarInterval` to aggregate trades into OHLCV bars
            (``SYMBOL`` only, with ``channel`` trades or ``None``), or ``None``. A valid name
            given as ``str`` is stored as its ``BarInterval``.
    """

    target: Target
    symbol: str | None = None
    exchange: str | None = None
    latest: int | None = None
    start: int | None = None
    end: int | None = None
    columns: tuple[str, ...] | None = None
    follow: bool = False
    channel: str | None = None
    bars: str | None = None

    def __post_init__(self) -> None:
        # The enums are what the rest of the code compares with; a str naming one is the
        # same value (StrEnum), so equality and hashing do not change.
        if self.channel is not None:
            object.__setattr__(self, "channel", _channel(self.channel))
        if self.bars is not None:
            object.__setattr__(self, "bars", _interval(self.bars))
        _validate(self)

    @property
    def effective_channel(self) -> Channel | None:
        """The channel the query reads: :attr:`channel`, or trades for ``bars`` without one;
        ``None`` means the symbol's ticker-like channel (the server resolves it)."""
        if self.channel is not None:
            return Channel(self.channel)
        return Channel.TRADES if self.bars is not None else None


_CHANNEL_NAMES: Final = ", ".join(c.value for c in Channel)


def _channel(value: object) -> Channel:
    if isinstance(value, str):
        try:
            return Channel(value)
        except ValueError:
            pass
    raise InvalidTicket(f"invalid channel {_show(value)}; expected one of: {_CHANNEL_NAMES}")


def _interval(value: object) -> BarInterval:
    if isinstance(value, str):
        return parse_interval(value)
    return parse_interval(_show(value))


def answer_schema(query: Query) -> pa.Schema:
    """The schema :attr:`Query.columns` are names of (the answer before projection) for a
    ``SYMBOL``, ``*`` or ``@markets`` query: the bars', the channel's,
    :data:`~flight_md.schema.SCHEMA` when neither is given, or
    :data:`~flight_md.control.MARKET_SCHEMA`. (``@events`` has its own, in
    :mod:`flight_md.events`.)"""
    if query.target is Target.MARKETS:
        return MARKET_SCHEMA
    if query.bars is not None:
        return BAR_SCHEMA
    if query.channel is not None:
        return schema_for(Channel(query.channel))
    return SCHEMA


def _show(value: object, limit: int = 80) -> str:
    """``repr`` of a client-supplied value, cut short so errors stay short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def show_json(value: object, limit: int = 80) -> str:
    """A value from a client's JSON as the client wrote it: strings quoted as ``!r`` does,
    anything else as JSON (``null``, ``true``, ``[1]``), never a Python repr or type name."""
    if isinstance(value, str):
        return _show(value, limit)
    try:
        text = json.dumps(value, separators=(", ", ": "))
    except (TypeError, ValueError):  # pragma: no cover - json.loads output always dumps
        text = "?"
    return text if len(text) <= limit else text[:limit] + "..."


def start_after_end(start: str, end: str) -> str:
    """The one phrasing of a range whose start lies after its end, with the bounds as given."""
    return f"start {start} is after end {end}; start must be <= end"


_TARGET_NAMES: Final = {Target.SNAPSHOT: SNAPSHOT, Target.EVENTS: EVENTS,
                        Target.MARKETS: MARKETS}
_HEADS: Final = {text: target for target, text in _TARGET_NAMES.items()}


def _validate(q: Query) -> None:
    if not isinstance(q.target, Target):
        raise InvalidTicket(f"invalid target {_show(q.target)}; expected one of: "
                            f"{', '.join(Target)}")
    given = {k for k in _KEYS if _param_value(q, k) is not None}
    allowed = _ALLOWED[q.target.value]
    extra = sorted(given - allowed)
    name = q.symbol if q.target is Target.TICKS else _TARGET_NAMES[q.target]
    if extra:
        raise InvalidTicket(f"parameter {extra[0]!r} is not allowed for {name!r}; allowed: "
                            f"{', '.join(k for k in _KEYS if k in allowed)}")
    if q.target is Target.TICKS:
        if q.symbol is None:
            raise InvalidTicket("no symbol given; expected one such as 'BTC/USDT'")
        if not isinstance(q.symbol, str) or not SYMBOL_RE.fullmatch(q.symbol):
            raise InvalidTicket(f"invalid symbol {_show(q.symbol)}; expected 1-64 characters from "
                                "A-Z a-z 0-9 / - _ : . (e.g. 'BTC/USDT')")
    elif q.target is Target.MARKETS:
        if q.symbol is not None and (not isinstance(q.symbol, str)
                                     or not GLOB_RE.fullmatch(q.symbol)):
            raise InvalidTicket(f"invalid symbol glob {_show(q.symbol)} for {MARKETS!r}; "
                                "expected 1-64 characters from A-Z a-z 0-9 / - _ : . * ? [ ] ! "
                                "(e.g. 'BTC/*' or '*/USDT')")
    elif q.symbol is not None:
        raise InvalidTicket(f"{name!r} takes no symbol")
    if q.exchange is not None and (not isinstance(q.exchange, str)
                                   or not EXCHANGE_RE.fullmatch(q.exchange)):
        raise InvalidTicket(f"invalid exchange {_show(q.exchange)}; expected a ccxt exchange id "
                            "such as 'binance' (lowercase letters, digits, _ and -)")
    if q.latest is not None and (isinstance(q.latest, bool) or not isinstance(q.latest, int)
                                 or not 0 <= q.latest <= MAX_LATEST):
        raise InvalidTicket(f"invalid latest {_show(q.latest)}; expected an integer from 0 to "
                            f"{MAX_LATEST}")
    for key in ("start", "end"):
        value = getattr(q, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= MAX_TIME_MS):
            raise InvalidTicket(f"invalid {key} {_show(value)}; expected Unix milliseconds from 0 "
                                f"to {MAX_TIME_MS} or an ISO-8601 time")
    if q.start is not None and q.end is not None and q.start > q.end:
        raise InvalidTicket(start_after_end(str(q.start), str(q.end)))
    if q.bars is not None and q.channel is not None and q.channel != Channel.TRADES:
        raise InvalidTicket(f"bars={q.bars} needs trades; channel {str(q.channel)!r} has no "
                            "bars (use channel=trades, or no channel)")
    if q.columns is not None:
        names = answer_schema(q).names
        of = ("" if q.target is Target.MARKETS or (q.channel is None and q.bars is None)
              else " for bars" if q.bars is not None else f" for channel {str(q.channel)!r}")
        if not q.columns:
            raise InvalidTicket(f"columns is empty; name at least one{of} of: "
                                + ", ".join(names))
        for column in q.columns:
            if column not in names:
                raise InvalidTicket(f"unknown column {_show(column)}{of}; allowed: "
                                    f"{', '.join(names)}")
        if len(set(q.columns)) != len(q.columns):
            raise InvalidTicket(f"columns {_show(','.join(q.columns))} repeat a column")
    if q.follow and q.end is not None:
        raise InvalidTicket("follow=true cannot have an end; drop end or follow")


def _param_value(q: Query, key: str) -> Any:
    if key == "symbol" and q.target is not Target.MARKETS:
        return None  # a symbol target is the head of the ticket, not a parameter
    value = getattr(q, key)
    if key == "follow":
        return True if value else None
    return value


def check_size(data: bytes, what: str) -> None:
    """Refuse oversized input before any parsing.

    Raises:
        RequestTooLarge: ``data`` is over :data:`MAX_REQUEST_BYTES`.
    """
    if len(data) > MAX_REQUEST_BYTES:
        raise RequestTooLarge(f"{what} is {len(data)} bytes; the limit is {MAX_REQUEST_BYTES}")


def parse_time(text: str, key: str = "time") -> int:
    """Parse Unix milliseconds or an ISO-8601 time (no offset means UTC) to Unix ms.

    Raises:
        InvalidTicket: The text is neither.
    """
    if _DIGITS_RE.fullmatch(text):
        value = int(text)
        if value > MAX_TIME_MS:
            raise InvalidTicket(f"invalid {key} {text!r}; Unix milliseconds must be <= "
                                f"{MAX_TIME_MS}")
        return value
    try:
        if len(text) > 40:
            raise ValueError(text)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidTicket(f"invalid {key} {text!r}; expected Unix milliseconds or ISO-8601 "
                            "such as '2026-11-23T10:00:00Z'") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - _EPOCH
    value = delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    if value < 0:
        raise InvalidTicket(f"invalid {key} {text!r}; must be at or after 1970-01-01T00:00:00Z")
    if value > MAX_TIME_MS:
        raise InvalidTicket(f"invalid {key} {text!r}; must be at or before "
                            "9999-12-31T23:59:59.999Z")
    return value


def _parse_int(text: str, key: str) -> int:
    if not _DIGITS_RE.fullmatch(text):
        raise InvalidTicket(f"invalid {key} {text!r}; expected a non-negative integer")
    return int(text)


def parse_ticket(data: bytes | str) -> Query:
    """Parse a ticket (see the module docstring for the grammar).

    Clients repeat the same tickets, so the last :data:`TICKET_CACHE` valid ones are
    remembered (a :class:`Query` is immutable); bad tickets are parsed, and refused, every
    time.

    Raises:
        InvalidTicket: The ticket is not valid UTF-8 or breaks the grammar.
        RequestTooLarge: The ticket is over 4 KiB.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    check_size(data, "ticket")
    return _parse_ticket(data)


TICKET_CACHE: Final = 512
"""Valid tickets :func:`parse_ticket` remembers."""


@lru_cache(maxsize=TICKET_CACHE)
def _parse_ticket(data: bytes) -> Query:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidTicket("ticket is not valid UTF-8 text; expected e.g. "
                            "'BTC/USDT?latest=100'") from None
    if not text:
        raise InvalidTicket("ticket is empty; expected SYMBOL[?PARAMS], '*', '@events' or "
                            "'@markets', e.g. 'BTC/USDT?latest=100'")
    head, sep, query = text.partition("?")
    symbol: str | None = None
    if head in _HEADS:
        target = _HEADS[head]
    else:
        if not SYMBOL_RE.fullmatch(head):
            raise InvalidTicket(f"invalid symbol {head[:80]!r}; expected 1-64 characters from "
                                "A-Z a-z 0-9 / - _ : . (e.g. 'BTC/USDT'), '*', '@events' or "
                                "'@markets'")
        target, symbol = Target.TICKS, head
    values: dict[str, Any] = {}
    typed: dict[str, str] = {}
    if sep:
        if not query:
            raise InvalidTicket("ticket ends with '?' but has no parameters; expected "
                                "key=value pairs joined by '&'")
        for part in query.split("&"):
            key, eq, raw = part.partition("=")
            if not eq:
                raise InvalidTicket(f"parameter {part[:80]!r} has no '='; expected key=value")
            if key not in _KEYS:
                raise InvalidTicket(f"unknown parameter {key[:40]!r}; allowed: {', '.join(_KEYS)}")
            if key in values:
                raise InvalidTicket(f"parameter {key!r} is given twice; give it once")
            try:
                value = unquote(raw, errors="strict")
            except UnicodeDecodeError:
                raise InvalidTicket(f"parameter {key!r} is not valid percent-encoded UTF-8") from None
            values[key] = _convert(key, value)
            typed[key] = value
    if "start" in values and "end" in values and values["start"] > values["end"]:
        raise InvalidTicket(start_after_end(_show(typed["start"]), _show(typed["end"])))
    if "symbol" in values:
        if target is not Target.MARKETS:
            allowed = _ALLOWED[target.value]
            raise InvalidTicket(f"parameter 'symbol' is not allowed for "
                                f"{head if symbol is not None else _TARGET_NAMES[target]!r}; "
                                f"allowed: {', '.join(k for k in _KEYS if k in allowed)}")
        symbol = values.pop("symbol")
    try:
        return Query(target=target, symbol=symbol, **values)
    except TypeError as exc:  # pragma: no cover - keys are checked above
        raise InvalidTicket(str(exc)) from None


def _convert(key: str, value: str) -> Any:
    if key == "latest":
        return _parse_int(value, key)
    if key in ("start", "end"):
        return parse_time(value, key)
    if key == "columns":
        return tuple(value.split(",")) if value else ()
    if key == "follow":
        if value not in ("true", "false"):
            raise InvalidTicket(f"invalid follow {value!r}; expected 'true' or 'false'")
        return value == "true"
    if key == "channel":
        return _channel(value)
    if key == "bars":
        return parse_interval(value)
    if not value:
        raise InvalidTicket(f"parameter {key!r} is empty")
    return value


def format_ticket(query: Query) -> str:
    """Format a :class:`Query` as ticket text (the inverse of :func:`parse_ticket`)."""
    if query.target is Target.TICKS:
        assert query.symbol is not None
        head = query.symbol
    else:
        head = _TARGET_NAMES[query.target]
    parts = []
    for key in _KEYS:
        value = _param_value(query, key)
        if value is None:
            continue
        if key == "columns":
            text = ",".join(value)
        elif key == "follow":
            text = "true"
        else:
            text = str(value)
        parts.append(f"{key}={quote(text, safe='/,:-_.*')}")
    return head + ("?" + "&".join(parts) if parts else "")


def parse_criteria(data: bytes) -> str | None:
    """Check ``ListFlights`` criteria: empty (everything), an exchange id or a symbol glob.

    Which of the last two a criteria is depends on the server (is it a known exchange?), so
    the text is returned as given; :func:`fnmatch.fnmatchcase` matches it against symbols.

    Returns:
        The criteria text, or ``None`` for empty criteria.

    Raises:
        RequestTooLarge: The criteria are over 4 KiB.
        InvalidCriteria: They are not UTF-8 text of 1-64 glob characters.
    """
    check_size(data, "criteria")
    if not data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidCriteria("criteria are not valid UTF-8 text; expected an exchange id "
                              "such as 'binance' or a symbol glob such as 'BTC/*'") from None
    if not GLOB_RE.fullmatch(text):
        raise InvalidCriteria(f"invalid criteria {_show(text)}; expected an exchange id such as "
                              "'binance' or a symbol glob such as 'BTC/*' (1-64 characters "
                              "from A-Z a-z 0-9 / - _ : . * ? [ ] !)")
    return text


def parse_descriptor(descriptor_type: str, path: list[bytes] | None,
                     command: bytes | None) -> Query:
    """Turn a Flight descriptor into a :class:`Query`.

    Args:
        descriptor_type: ``"path"`` or ``"cmd"``.
        path: Path elements for a path descriptor.
        command: Command bytes for a command descriptor.

    Raises:
        InvalidDescriptor: The descriptor is neither form.
        RequestTooLarge: The command or path is over 4 KiB.
    """
    if descriptor_type == "path":
        elements = path or []
        check_size(b"/".join(elements), "descriptor path")
        try:
            names = [e.decode("utf-8") for e in elements]
        except UnicodeDecodeError:
            raise InvalidDescriptor("descriptor path is not valid UTF-8") from None
        channel: str | None = None
        if len(names) == 1:
            exchange, symbol = None, names[0]
        elif len(names) == 2:
            exchange, symbol = names
        elif len(names) == 3:
            exchange, symbol, channel = names
        else:
            raise InvalidDescriptor(f"descriptor path has {len(names)} elements; expected "
                                    "[symbol], [exchange, symbol] or [exchange, symbol, channel]")
        try:
            return Query(Target.TICKS, symbol=symbol, exchange=exchange, channel=channel)
        except InvalidTicket as exc:
            raise InvalidDescriptor(f"descriptor path: {exc}") from None
    command = command or b""
    check_size(command, "descriptor command")
    stripped = command.lstrip()
    if stripped.startswith(b"{"):
        return _parse_json_command(stripped)
    try:
        query = parse_ticket(command)
    except InvalidTicket as exc:
        raise InvalidDescriptor(f"descriptor command: {exc}") from None
    if query.follow:
        raise InvalidDescriptor("follow=true has no finite answer to describe; use it in a "
                                "DoGet ticket, not a descriptor")
    return query


def _parse_json_command(data: bytes) -> Query:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidDescriptor("descriptor command is not valid JSON; expected a ticket or "
                                '{"symbol": "BTC/USDT", "latest": 100, ...}') from None
    if not isinstance(body, dict):
        raise InvalidDescriptor("descriptor command must be a JSON object")
    unknown = sorted(set(body) - _JSON_KEYS)
    if unknown:
        raise InvalidDescriptor(f"unknown key {unknown[0]!r} in descriptor command; allowed: "
                                f"{', '.join(sorted(_JSON_KEYS))}")
    symbol = body.get("symbol")
    if not isinstance(symbol, str):
        raise InvalidDescriptor('descriptor command needs "symbol" as a string such as '
                                f"'BTC/USDT', '*' or '@events', got {show_json(symbol)}")
    exchange = body.get("exchange")
    if exchange is not None and not isinstance(exchange, str):
        raise InvalidDescriptor('"exchange" must be a string or null, such as \'binance\', '
                                f"got {show_json(exchange)}")
    latest = body.get("latest")
    if latest is not None and (isinstance(latest, bool) or not isinstance(latest, int)):
        raise InvalidDescriptor(f'"latest" must be an integer, got {show_json(latest)}')
    times: dict[str, int | None] = {}
    for key in ("start", "end"):
        value = body.get(key)
        if value is None:
            times[key] = None
        elif isinstance(value, bool) or not isinstance(value, (int, str)):
            raise InvalidDescriptor(f'"{key}" must be Unix ms or an ISO-8601 string, got '
                                    f"{show_json(value)}")
        elif isinstance(value, int):
            times[key] = value
        else:
            try:
                times[key] = parse_time(value, key)
            except InvalidTicket as exc:
                raise InvalidDescriptor(str(exc)) from None
    start, end = times["start"], times["end"]
    if start is not None and end is not None and start > end:
        raise InvalidDescriptor(start_after_end(show_json(body["start"]), show_json(body["end"])))
    columns = body.get("columns")
    if columns is not None:
        if isinstance(columns, str):
            columns = columns.split(",")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise InvalidDescriptor('"columns" must be an array of column names or one '
                                    f"comma-separated string, got {show_json(body['columns'])}")
        columns = tuple(columns)
    names: dict[str, str | None] = {}
    for key, example in (("channel", "trades"), ("bars", "1m")):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidDescriptor(f'"{key}" must be a string or null, such as {example!r}, '
                                    f"got {show_json(value)}")
        names[key] = value
    target = _HEADS.get(symbol, Target.TICKS)
    try:
        return Query(target, symbol=symbol if target is Target.TICKS else None,
                     exchange=exchange, latest=latest, start=times["start"], end=times["end"],
                     columns=columns, channel=names["channel"], bars=names["bars"])
    except InvalidTicket as exc:
        raise InvalidDescriptor(str(exc)) from None

"""Order-book integrity per venue: sequence numbers and checksums, checked from the raw frames.

ccxt keeps the books (snapshot + deltas), but in 4.5.90 it verifies only Binance's update ids
and OKX's ``prevSeqId``; Kraken's checksum option is off (and crashes when turned on), Bybit's
``u`` and Coinbase's ``sequence_num`` are never read. A :class:`BookVerifier` checks what each
venue offers, from the websocket frames flight_md already guards before ccxt parses them, and
says per book whether it may be stored, or must be resynchronised and why. It keeps only the
state the check needs: the last sequence number per book, and for the checksum venues the
levels the checksum is computed from.

One verifier per websocket connection (Coinbase numbers every message of a connection;
Bybit's spot and linear books of ``BTCUSDT`` arrive on different connections under one id),
fed every parsed frame of that connection, in order::

    verifier = verifier_for("kraken", depth=10, precision={"BTC/USD": Precision(1, 8)})
    for verdict in verifier.verify(json.loads(text)):
        if verdict.status is Status.RESYNC:
            ...  # resubscribe the book, record a book_resync event with verdict.detail
        elif verdict.storable:
            ...  # store ccxt's book of verdict.symbol

:meth:`BookVerifier.verify` returns one :class:`Verdict` per book the frame touches (none for
tickers, trades, heartbeats and replies). After a ``RESYNC`` the book is ``AWAITING`` its next
snapshot: every delta until then is refused without a new event. ``symbol`` is the venue's
market id as the frame spells it (``BTCUSDT``, ``BTC-USD``, ``BTC/USD``, ``BTC-USDT-SWAP``).

Venue rules (from each venue's websocket documentation):

``binance`` (spot diff depth, ``depthUpdate``, raw or in a combined-stream envelope)
    The snapshot is REST (``lastUpdateId``): :meth:`BinanceVerifier.on_rest_snapshot`, for
    the books :meth:`~BookVerifier.pending_snapshots` names (``rest_snapshot`` is true).
    Deltas before it are chained among themselves and are ``AWAITING``; the first delta
    applied must have ``U <= lastUpdateId + 1 <= u`` (older ones are dropped, ``OK``), every
    later one ``U == previous u + 1``. ccxt checks the same; this is for completeness.
``bybit`` (``orderbook.<depth>.<symbol>``)
    ``data.u`` is the book's update id, one more per message of a topic; a ``snapshot``
    resets it (including the ``u == 1`` snapshot Bybit sends after a service restart).
``coinbase`` (Advanced Trade)
    ``sequence_num`` numbers every message of a connection, whatever its channel; a gap
    means some message was lost, possibly an ``l2_data`` one, so every book of the
    connection is resynchronised. An ``l2_data`` ``snapshot`` event resets its product.
``kraken`` (websocket v2 ``book``)
    No sequence numbers: a CRC32 ``checksum`` of the top 10 asks then bids, each price and
    quantity formatted to the pair's precision (:class:`Precision`) without the point and
    the leading zeros. The book is truncated to the subscribed depth after every update
    (Kraken sends no delete for a level pushed out), so the verifier keeps the whole
    subscribed depth: the 11th level becomes the 10th when one above it goes.
``okx`` (v5 ``books``, ``books-l2-tbt``, ``books50-l2-tbt``)
    ``prevSeqId`` of an update equals the previous message's ``seqId`` (also across OKX's
    sequence resets, where ``seqId`` drops); ``checksum`` is the signed CRC32 of
    ``bid1px:bid1sz:ask1px:ask1sz:...`` over the top 25 levels as sent. OKX deprecated the
    field in June 2026: it is then always 0, and 0 is not checked. The verifier keeps the
    channel's depth (400, or 50), since the 26th level moves up when one above it goes.

A kept book is also checked for :func:`crossed` after every frame; for the sequence-only
venues :meth:`BookVerifier.check_book` applies the same check to ccxt's book. Every venue's
levels must be numbers (a level ccxt cannot parse leaves its book wrong whatever the sequence
says), and a book frame that names no book (no symbol, no product, no ``instId``) fails every
book of the connection, since it may have been any one's: both are ``MALFORMED``. When ccxt
raises on a frame the verifier passed, :meth:`BookVerifier.invalidate` fails that book.

Kept books (``verifier_for(venue, keep=True)``: every venue; :func:`keeps_books`): the
verifier also keeps every book it checks (:meth:`BookVerifier.kept`, a :class:`KeptBook`)
exactly as ccxt 4.5.90's would be after the same frames, so the fast book path
(:mod:`flight_md.ingest.books`) stores it instead of ccxt's. Its verdicts are the same with
or without ``keep``.

This module is pure: no asyncio, ccxt, pyarrow or disk.
"""

from __future__ import annotations

import bisect
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, ClassVar, Final, TypeGuard

from flight_md.core.ccxt_parse import parse8601, safe_integer, safe_string

__all__ = [
    "KRAKEN_CHECKSUM_LEVELS",
    "OKX_CHECKSUM_LEVELS",
    "VERIFIERS",
    "BinanceVerifier",
    "BookVerifier",
    "BybitVerifier",
    "CoinbaseVerifier",
    "KeptBook",
    "KrakenVerifier",
    "OkxVerifier",
    "Precision",
    "Reason",
    "Status",
    "Verdict",
    "crossed",
    "keeps_books",
    "kraken_checksum",
    "okx_checksum",
    "verifier_for",
]

KRAKEN_CHECKSUM_LEVELS: Final = 10
"""Levels per side Kraken's book checksum covers (asks, then bids), whatever the depth."""
OKX_CHECKSUM_LEVELS: Final = 25
"""Levels per side OKX's book checksum covers (bid and ask interleaved)."""
_UNLIMITED: Final = 1 << 62
"""The depth of a kept book the venue never cuts (Bybit: ccxt keeps every level)."""
_KRAKEN_DEPTHS: Final = frozenset({10, 25, 100, 500, 1000})
_OKX_DEPTHS: Final = {"books": 400, "books-l2-tbt": 400, "books50-l2-tbt": 50}


class Status(StrEnum):
    """What a frame means for one book."""

    OK = "ok"
    """Consistent with every check the venue allows: the book may be stored."""
    UNCHECKED = "unchecked"
    """A book frame that cannot be checked (a Kraken pair without its precision): store it, unverified."""
    RESYNC = "resync"
    """This frame shows the book is out of sync: resynchronise it, record ``book_resync``, store nothing."""
    AWAITING = "awaiting_snapshot"
    """The book has no snapshot since it was started or failed: store nothing (no new event)."""


class Reason(StrEnum):
    """Why a book must be resynchronised."""

    GAP = "gap"
    CHECKSUM = "checksum"
    CROSSED = "crossed"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one frame for one book.

    Attributes:
        symbol: The venue's market id, as the frame names it.
        status: What to do with the book.
        reason: Why, when ``status`` is ``RESYNC``.
        detail: The failure in words (``gap: expected u 101 got 103``), else empty.
        sequence: The venue's sequence number after this frame, where it has one (Binance
            and Bybit ``u``, OKX ``seqId``, Coinbase ``sequence_num``).
    """

    symbol: str
    status: Status
    reason: Reason | None = None
    detail: str = ""
    sequence: int | None = None

    @property
    def storable(self) -> bool:
        """Whether the book may be stored after this frame (``OK`` or ``UNCHECKED``)."""
        return self.status is Status.OK or self.status is Status.UNCHECKED


@dataclass(frozen=True, slots=True)
class Precision:
    """A pair's decimals, which Kraken's checksum formats every number to.

    Attributes:
        price: Decimals of a price (Kraken ``pair_decimals``, v2 ``price_precision``).
        qty: Decimals of a quantity (``lot_decimals``, v2 ``qty_precision``).
    """

    price: int
    qty: int

    def __post_init__(self) -> None:
        for name, value in (("price", self.price), ("qty", self.qty)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"precision {name} must be a whole number of decimals >= 0, got {value!r}")

    @classmethod
    def from_steps(cls, price_step: float | str, qty_step: float | str) -> Precision:
        """The decimals of tick sizes, as ccxt's ``market["precision"]`` gives them (``0.1``, ``1e-08``).

        Raises:
            ValueError: If a step is not a positive power of ten at most 1.
        """
        return cls(_decimals(price_step), _decimals(qty_step))


def _decimals(step: float | str) -> int:
    try:
        value = Decimal(repr(step) if isinstance(step, float) else str(step)).normalize()
    except InvalidOperation:
        value = Decimal(0)
    sign, digits, exponent = value.as_tuple()
    if sign or digits != (1,) or not isinstance(exponent, int) or exponent > 0:
        raise ValueError(f"a precision step must be a power of ten at most 1 (0.01, 1e-08), got {step!r}")
    return -exponent


# -- the phrasing of each fact -------------------------------------------------------------


def _gap(field: str, expected: int, got: int) -> str:
    return f"gap: expected {field} {expected} got {got}"


def _mismatch(expected: int, computed: int) -> str:
    return f"checksum mismatch: expected {expected} computed {computed}"


def _crossed(bid: object, ask: object) -> str:
    return f"crossed book: best bid {bid} >= best ask {ask}"


def _malformed(what: str) -> str:
    return f"malformed book frame: {what}"


# -- pure checks ---------------------------------------------------------------------------


def crossed(bids: Sequence[Sequence[Any]], asks: Sequence[Sequence[Any]]) -> bool:
    """Whether a book's best bid is at or above its best ask (locked counts: one venue never shows it).

    Args:
        bids: ``[price, amount, ...]`` levels, best (highest) first, as ccxt's book sides.
        asks: Likewise, best (lowest) first.

    Returns:
        ``False`` when either side is empty.
    """
    if not bids or not asks:
        return False
    return float(bids[0][0]) >= float(asks[0][0])


def _checksum_digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


def kraken_checksum(asks: Iterable[tuple[str, str]], bids: Iterable[tuple[str, str]]) -> int:
    """Kraken's book checksum: CRC32 of the top 10 asks (best first), then the top 10 bids.

    Each level is its price then its quantity, each already formatted to the pair's
    precision (v2; v1: the strings as sent), with the point and then the leading zeros
    removed; the strings are concatenated.

    Args:
        asks: ``(price, qty)`` strings, best (lowest) first; only the first 10 count.
        bids: ``(price, qty)`` strings, best (highest) first; only the first 10 count.

    Returns:
        The unsigned 32-bit checksum, as Kraken sends it.
    """
    parts: list[str] = []
    for side in (asks, bids):
        for number, (price, qty) in enumerate(side):
            if number == KRAKEN_CHECKSUM_LEVELS:
                break
            parts.append(_checksum_digits(price) + _checksum_digits(qty))
    return zlib.crc32("".join(parts).encode())


def okx_checksum(bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> int:
    """OKX's book checksum: CRC32 of the top 25 levels, as a signed 32-bit integer.

    The string is ``bid1px:bid1sz:ask1px:ask1sz:bid2px:...`` over the price and size texts
    exactly as OKX sent them (best first); where one side is shorter the other continues alone.
    """
    parts: list[str] = []
    for index in range(OKX_CHECKSUM_LEVELS):
        if index < len(bids):
            parts += (bids[index][0], bids[index][1])
        if index < len(asks):
            parts += (asks[index][0], asks[index][1])
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


# -- kept levels ---------------------------------------------------------------------------


class _Side:
    """One side of a kept book: levels by price, best first, each kept as it arrived."""

    __slots__ = ("_amounts", "_keys", "_levels", "_rendered", "_sign")

    def __init__(self, *, bids: bool) -> None:
        self._sign = -1.0 if bids else 1.0
        self._keys: list[float] = []  # sign * price, ascending: best first
        self._levels: dict[float, tuple[Any, Any]] = {}
        self._amounts: dict[float, float] = {}  # float(qty): a stored row's amount, made once
        # A level's checksum text, made when the level first reaches the top: the top levels
        # stay for many frames, and formatting them anew every frame was most of the cost.
        self._rendered: dict[float, str] = {}

    def set(self, price: Any, qty: Any) -> None:
        """Set a level (quantity 0 removes it); ``ValueError`` if either is not a number."""
        key = self._sign * float(price)
        self._rendered.pop(key, None)
        amount = float(qty)
        if amount == 0:
            if self._levels.pop(key, None) is not None:
                del self._amounts[key]
                del self._keys[bisect.bisect_left(self._keys, key)]
            return
        if key not in self._levels:
            bisect.insort(self._keys, key)
        self._levels[key] = (price, qty)
        self._amounts[key] = amount

    def truncate(self, depth: int) -> None:
        for key in self._keys[depth:]:
            del self._levels[key]
            del self._amounts[key]
            self._rendered.pop(key, None)
        del self._keys[depth:]

    def top(self, count: int) -> list[tuple[Any, Any]]:
        return [self._levels[key] for key in self._keys[:count]]

    def floats(self, count: int) -> list[tuple[float, float]]:
        """The top ``count`` levels as ``(price, amount)`` floats, best first: ``float`` of the
        texts as sent, which is what ccxt stores (``safe_float``, or ``parse_number`` of
        ``safe_string``: the same float for every number text and JSON number)."""
        sign, amounts = self._sign, self._amounts
        # sign * key is the price's float again: negation is exact.
        return [(sign * key, amounts[key]) for key in self._keys[:count]]

    def rendered(self, count: int, render: Callable[[Any, Any], str]) -> list[str]:
        """``render(price, qty)`` of the top ``count`` levels, each made once while the level stands."""
        texts = []
        for key in self._keys[:count]:
            text = self._rendered.get(key)
            if text is None:
                text = self._rendered[key] = render(*self._levels[key])
            texts.append(text)
        return texts

    def best(self) -> float | None:
        return self._sign * self._keys[0] if self._keys else None

    def __len__(self) -> int:
        return len(self._keys)


class KeptBook:
    """A book a verifier keeps: both sides, levels as sent, plus what ccxt's book would carry.

    Attributes:
        depth: Levels a side kept (the rest are cut after every frame, as the venue does).
        timestamp: The book's exchange time as ccxt parses it from the last frame applied
            (``None`` where that frame carries none).
        nonce: ccxt's book nonce after that frame, where ccxt sets one.
    """

    __slots__ = ("asks", "bids", "depth", "nonce", "timestamp")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.bids = _Side(bids=True)
        self.asks = _Side(bids=False)
        self.timestamp: int | None = None
        self.nonce: int | None = None

    def rows(self, count: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The top ``count`` bids and asks as ccxt's book would give them (floats, best first)."""
        return self.bids.floats(count), self.asks.floats(count)

    def truncate(self) -> None:
        self.bids.truncate(self.depth)
        self.asks.truncate(self.depth)

    def crossing(self) -> str | None:
        """The crossed-book detail, or ``None`` when the book is not crossed."""
        bid, ask = self.bids.best(), self.asks.best()
        if bid is None or ask is None or bid < ask:
            return None
        return _crossed(self.bids.top(1)[0][0], self.asks.top(1)[0][0])


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad_level(levels: object, price: int | str, qty: int | str) -> str | None:
    """Why a list of levels cannot be applied (not a list, a level without numbers), or ``None``.

    The sequence-only venues' levels are checked too: ccxt stores a level it cannot parse as
    ``None`` or raises half way through a frame, and either way the book is no longer the venue's.
    """
    if not isinstance(levels, list):
        return _malformed(f"levels {levels!r}")
    try:
        for level in levels:
            float(level[price])
            float(level[qty])
    except (IndexError, KeyError, TypeError, ValueError) as error:
        return _malformed(f"level {error!r}")
    return None


# -- the verifiers -------------------------------------------------------------------------


class BookVerifier(ABC):
    """The integrity checks of one venue's books on one websocket connection (sans I/O).

    Feed it every parsed frame of the connection, in arrival order, with :meth:`verify`.
    """

    venue: ClassVar[str]
    """The venue id (``flight_md.venues``) the verifier speaks."""
    rest_snapshot: ClassVar[bool] = False
    """Whether the venue's snapshots come over REST, not in the frames (Binance): the caller
    reports each one with ``on_rest_snapshot`` once :meth:`pending_snapshots` names its book."""
    can_keep: ClassVar[bool] = False
    """Whether the verifier can keep every book it checks for its caller (``keep=True``)."""

    def __init__(self, *, keep: bool = False) -> None:
        if keep and not self.can_keep:
            raise ValueError(f"the {self.venue} verifier cannot keep its books")
        self._awaiting: set[str] = set()  # books that failed and wait for their next snapshot
        # keep=True: the books as this connection's frames built them (the venues whose
        # checksum needs the levels keep their own, and override kept()).
        self._kept: dict[str, KeptBook] = {}
        self.keeps = keep
        """Whether :meth:`kept` gives the books (the fast book path stores them instead of ccxt's)."""

    @abstractmethod
    def verify(self, frame: object) -> tuple[Verdict, ...]:
        """Check one parsed websocket frame (a ``json.loads`` result, as it arrived).

        Returns:
            One verdict per book the frame touches; none for frames of other channels.
        """

    def check_book(self, symbol: str, bids: Sequence[Sequence[Any]], asks: Sequence[Sequence[Any]]) -> Verdict:
        """Check a book built from this connection's frames (ccxt's) for :func:`crossed`.

        A crossed book fails like any other check: ``RESYNC`` once, then ``AWAITING``.
        """
        if symbol in self._awaiting:
            return Verdict(symbol, Status.AWAITING)
        if crossed(bids, asks):
            return self._fail(symbol, Reason.CROSSED, _crossed(bids[0][0], asks[0][0]))
        return Verdict(symbol, Status.OK)

    def invalidate(self, symbol: str, detail: str) -> Verdict:
        """Fail a book for a reason found outside the verifier (ccxt raised on one of its frames).

        Returns:
            ``RESYNC`` (reason ``MALFORMED``, ``detail`` as given), or ``AWAITING`` when the
            book already waits for its snapshot.
        """
        if symbol in self._awaiting:
            return Verdict(symbol, Status.AWAITING)
        return self._fail(symbol, Reason.MALFORMED, detail)

    def pending_snapshots(self) -> set[str]:
        """The books seen in frames that wait for a REST snapshot (none unless :attr:`rest_snapshot`)."""
        return set()

    def kept(self, symbol: str) -> KeptBook | None:
        """The book of ``symbol`` as this connection's frames built it, levels as sent, with the
        ``timestamp`` and ``nonce`` ccxt's book would carry; ``None`` without ``keep=True``, or
        while the book has no snapshot (it is then never storable either)."""
        return self._kept.get(symbol)

    def named(self, frame: object) -> tuple[str, ...]:
        """The market ids whose book ccxt's own handler would change with this frame, as the
        frame names them to ccxt (none for other frames, and where the venue does not keep
        books): the fast path makes ccxt's book the kept one before ccxt handles such a frame."""
        return ()

    def claims(self, frame: Mapping[str, Any]) -> bool:
        """Whether the fast path may take this book frame (a book decoder's), ccxt never seeing
        it; ``False`` where ccxt's path raises on it for want of a book (ccxt's error is then
        counted as on that path: the frame goes to ccxt). Every frame, but where a venue says."""
        return True

    def on_rest_snapshot(self, symbol: str, last_update_id: int) -> Verdict:
        """The REST snapshot a book was rebuilt from (only where :attr:`rest_snapshot`)."""
        raise TypeError(f"{self.venue} books have no REST snapshot")

    def reset(self, symbol: str | None = None) -> None:
        """Forget what is known of one book (or of all): its next frame starts it afresh."""
        if symbol is None:
            self._awaiting.clear()
            self._kept.clear()
        else:
            self._awaiting.discard(symbol)
            self._kept.pop(symbol, None)
        self._forget(symbol)

    @abstractmethod
    def _forget(self, symbol: str | None) -> None:
        """Drop the venue-specific state of a book (every book when ``None``)."""

    @abstractmethod
    def _held(self) -> set[str]:
        """The books with state on this connection (in sync, or before their first snapshot)."""

    def _fail(self, symbol: str, reason: Reason, detail: str, sequence: int | None = None) -> Verdict:
        self._awaiting.add(symbol)
        self._forget(symbol)
        return Verdict(symbol, Status.RESYNC, reason, detail, sequence)

    def _fail_all(self, detail: str, reason: Reason = Reason.MALFORMED, sequence: int | None = None,
                  keep: frozenset[str] | set[str] = frozenset()) -> list[Verdict]:
        """Fail every held book (but ``keep``): a book frame that names none may be any one's."""
        return [self._fail(symbol, reason, detail, sequence) for symbol in sorted(self._held() - self._awaiting - keep)]


class BinanceVerifier(BookVerifier):
    """Binance spot diff-depth update ids (``U``/``u``) against the REST snapshot's ``lastUpdateId``."""

    venue = "binance"
    rest_snapshot = True
    can_keep = True

    def __init__(self, *, keep: bool = False) -> None:
        super().__init__(keep=keep)
        self._chain_first: dict[str, int] = {}  # U of the oldest delta of the unbroken chain
        self._next: dict[str, int] = {}  # the update id the next delta must start at (or cover)
        self._bridging: dict[str, bool] = {}  # snapshot taken, first delta to apply not seen yet
        self._synced: set[str] = set()
        self._applied = False  # whether the last delta checked is one ccxt applies

    def seed(self, symbol: str, bids: Iterable[Sequence[Any]], asks: Iterable[Sequence[Any]],
             nonce: int | None, timestamp: int | None) -> None:
        """``keep=True``: the book ccxt built from its REST snapshot and the deltas it buffered
        (its levels, ``nonce``, ``timestamp``), which the kept book starts from; the deltas
        after it are kept here. Call it once :meth:`on_rest_snapshot` said ``OK``."""
        book = KeptBook(_UNLIMITED)
        for level in bids:
            book.bids.set(level[0], level[1])
        for level in asks:
            book.asks.set(level[0], level[1])
        book.nonce, book.timestamp = nonce, timestamp
        self._kept[symbol] = book

    # kept() (seeded from ccxt's book by seed()): ccxt 4.5.90 binance.handle_order_book_message:
    # levels by safe_float (float()), the book's nonce u and timestamp safe_integer(message,
    # 'E') of the last delta applied.

    def named(self, frame: object) -> tuple[str, ...]:
        frame = _binance_event(frame)
        symbol = frame.get("s") if frame is not None else None
        return (symbol,) if isinstance(symbol, str) else ()

    def claims(self, frame: Mapping[str, Any]) -> bool:
        # Only a book seeded from ccxt's REST snapshot: until then ccxt buffers the deltas.
        found = _binance_event(frame)
        return found is not None and found.get("s") in self._kept

    def on_rest_snapshot(self, symbol: str, last_update_id: int) -> Verdict:
        """The REST depth snapshot ccxt built the book of ``symbol`` from (its ``lastUpdateId``).

        ``OK`` when the deltas seen since the chain began reach back to it (or none came yet),
        else ``RESYNC``: the updates between the snapshot and the oldest delta are lost.
        """
        if not _is_int(last_update_id):
            return self._fail(symbol, Reason.MALFORMED, _malformed(f"lastUpdateId {last_update_id!r}"))
        self._awaiting.discard(symbol)
        wanted = last_update_id + 1
        first = self._chain_first.get(symbol)
        if first is not None and first > wanted:
            # The snapshot is too old, not the deltas: keep their chain for the next snapshot.
            self._awaiting.add(symbol)
            self._synced.discard(symbol)
            self._bridging.pop(symbol, None)
            return Verdict(symbol, Status.RESYNC, Reason.GAP, _gap("U", wanted, first), last_update_id)
        self._synced.add(symbol)
        following = self._next.get(symbol)
        if following is None or wanted >= following:
            # Every delta seen is older than the snapshot: the next one must bridge it.
            self._next[symbol] = wanted
            self._bridging[symbol] = True
        else:
            self._bridging[symbol] = False  # a delta already seen covers lastUpdateId + 1
        return Verdict(symbol, Status.OK, sequence=last_update_id)

    def verify(self, frame: object) -> tuple[Verdict, ...]:
        found = _binance_event(frame)
        if found is None:
            return ()
        frame = found
        symbol = frame.get("s")
        if not isinstance(symbol, str):
            return tuple(self._fail_all(_malformed(f"symbol {symbol!r}")))
        first, last = frame.get("U"), frame.get("u")
        if not _is_int(first) or not _is_int(last) or first > last:
            return (self._fail(symbol, Reason.MALFORMED, _malformed(f"update ids U={first!r} u={last!r}")),)
        bad = _bad_level(frame.get("b"), 0, 1) or _bad_level(frame.get("a"), 0, 1)
        if bad is not None:
            return (self._fail(symbol, Reason.MALFORMED, bad, last),)
        self._applied = False
        verdict = self._delta(symbol, first, last)
        if self._applied and self.keeps:
            book = self._kept.get(symbol)
            if book is not None:
                for level in frame["a"]:
                    book.asks.set(level[0], level[1])
                for level in frame["b"]:
                    book.bids.set(level[0], level[1])
                book.nonce, book.timestamp = last, safe_integer(frame.get("E"))
        return (verdict,)

    def _delta(self, symbol: str, first: int, last: int) -> Verdict:
        expected = self._next.get(symbol)
        if symbol not in self._synced:
            # Before the snapshot (or after a failure): keep the chain; a break restarts it.
            if expected is None or first != expected:
                self._chain_first[symbol] = first
            self._next[symbol] = last + 1
            return Verdict(symbol, Status.AWAITING, sequence=last)
        assert expected is not None  # a synced book always expects an update id
        if self._bridging.get(symbol):
            if last < expected:
                return Verdict(symbol, Status.OK, sequence=last)  # older than the snapshot: dropped
            if first > expected:
                return self._fail(symbol, Reason.GAP, _gap("U", expected, first), last)
            self._bridging[symbol] = False
        elif first != expected:
            return self._fail(symbol, Reason.GAP, _gap("U", expected, first), last)
        self._next[symbol] = last + 1
        self._applied = True
        return Verdict(symbol, Status.OK, sequence=last)

    def _forget(self, symbol: str | None) -> None:
        for state in (self._chain_first, self._next, self._bridging, self._kept):
            if symbol is None:
                state.clear()
            else:
                state.pop(symbol, None)
        if symbol is None:
            self._synced.clear()
        else:
            self._synced.discard(symbol)

    def _held(self) -> set[str]:
        return set(self._next) | self._synced

    def pending_snapshots(self) -> set[str]:
        return set(self._next) - self._synced


def _binance_event(frame: object) -> Mapping[str, Any] | None:
    """A ``depthUpdate`` event, raw or in a combined stream's envelope, else ``None``."""
    if isinstance(frame, Mapping) and isinstance(frame.get("stream"), str) and isinstance(frame.get("data"), Mapping):
        frame = frame["data"]
    if not isinstance(frame, Mapping) or frame.get("e") != "depthUpdate":
        return None
    return frame


class BybitVerifier(BookVerifier):
    """Bybit v5 ``orderbook.<depth>.<symbol>`` update ids: ``u`` one more per delta, reset by a snapshot."""

    venue = "bybit"
    can_keep = True

    def __init__(self, *, keep: bool = False) -> None:
        super().__init__(keep=keep)
        self._last: dict[str, int] = {}

    def named(self, frame: object) -> tuple[str, ...]:
        # ccxt's handle_order_book: any topic containing "orderbook", the book of data.s.
        if not isinstance(frame, Mapping):
            return ()
        topic, data = frame.get("topic"), frame.get("data")
        if not isinstance(topic, str) or "orderbook" not in topic or not isinstance(data, Mapping):
            return ()
        symbol = data.get("s")
        return (symbol,) if isinstance(symbol, str) else ()

    def _keep(self, book: KeptBook, frame: Mapping[str, Any], data: Mapping[str, Any]) -> None:
        """Apply a checked frame's levels (all numbers: ``_bad_level``) to the kept book.

        ccxt 4.5.90 ``bybit.handle_order_book``: the snapshot's levels, or the deltas, stored by
        price (an amount of 0 removes), no depth limit; the book's timestamp is
        ``safe_integer(message, 'ts')``; its nonce is not read (the row's is ``u``).
        """
        bids, asks = book.bids, book.asks
        for level in data["b"]:
            bids.set(level[0], level[1])
        for level in data["a"]:
            asks.set(level[0], level[1])
        book.timestamp = safe_integer(frame.get("ts"))

    def verify(self, frame: object) -> tuple[Verdict, ...]:
        if not isinstance(frame, Mapping):
            return ()
        topic = frame.get("topic")
        if not isinstance(topic, str) or not topic.startswith("orderbook."):
            return ()
        # The topic names the book; ccxt reads data.s, so a frame without it is lost to ccxt's book.
        symbol = topic.rsplit(".", 1)[-1]
        data = frame.get("data")
        if not isinstance(data, Mapping) or data.get("s") != symbol:
            named = data.get("s") if isinstance(data, Mapping) else data
            return (self._fail(symbol, Reason.MALFORMED, _malformed(f"data.s {named!r} is not the topic's")),)
        kind, update_id = frame.get("type"), data.get("u")
        if kind not in ("snapshot", "delta") or not _is_int(update_id):
            return (self._fail(symbol, Reason.MALFORMED, _malformed(f"type {kind!r}, u {update_id!r}")),)
        bad = _bad_level(data.get("b"), 0, 1) or _bad_level(data.get("a"), 0, 1)
        if bad is not None:
            return (self._fail(symbol, Reason.MALFORMED, bad, update_id),)
        if kind == "snapshot":
            self._awaiting.discard(symbol)
            self._last[symbol] = update_id
            if self.keeps:
                book = self._kept[symbol] = KeptBook(_UNLIMITED)
                self._keep(book, frame, data)
            return (Verdict(symbol, Status.OK, sequence=update_id),)
        if self.keeps:  # ccxt applies every delta, to a new book if it has none
            found = self._kept.get(symbol)
            if found is None:
                found = self._kept[symbol] = KeptBook(_UNLIMITED)
            self._keep(found, frame, data)
        last = self._last.get(symbol)
        if last is None:
            return (Verdict(symbol, Status.AWAITING, sequence=update_id),)
        if update_id != last + 1:
            return (self._fail(symbol, Reason.GAP, _gap("u", last + 1, update_id), update_id),)
        self._last[symbol] = update_id
        return (Verdict(symbol, Status.OK, sequence=update_id),)

    def _forget(self, symbol: str | None) -> None:
        # A failed book's kept one stays and takes every delta, as ccxt's does (the rows wait
        # for the next snapshot): ccxt's handler, handed a declined frame, meets the same book.
        if symbol is None:
            self._last.clear()
        else:
            self._last.pop(symbol, None)

    def _held(self) -> set[str]:
        return set(self._last)


class CoinbaseVerifier(BookVerifier):
    """Coinbase Advanced Trade: ``sequence_num`` of the connection, ``l2_data`` snapshots per product."""

    venue = "coinbase"
    can_keep = True

    def __init__(self, *, keep: bool = False) -> None:
        super().__init__(keep=keep)
        self._next: int | None = None
        self._books: set[str] = set()  # products with a snapshot on this connection
        self._timestamp: int | None = None  # of the frame being verified (keep=True)

    # kept(): ccxt 4.5.90 coinbase.handle_order_book: every event's updates stored by side
    # (bid, offer) at safe_number(price_level) and safe_number(new_quantity), no depth
    # limit, whatever the sequence says, once a snapshot made the book; a snapshot resets
    # it; the timestamp is parse8601 of the frame's timestamp; no nonce (the row's is
    # sequence_num). A failed book's kept one stays and takes every update, as ccxt's.

    def named(self, frame: object) -> tuple[str, ...]:
        if not isinstance(frame, Mapping) or frame.get("channel") != "l2_data":
            return ()
        events = frame.get("events")
        named = [event.get("product_id") for event in events if isinstance(event, Mapping)] \
            if isinstance(events, list) else []
        return tuple(dict.fromkeys(name for name in named if isinstance(name, str)))

    def _keep(self, product: str, event: Mapping[str, Any], snapshot: bool) -> None:
        book = KeptBook(_UNLIMITED) if snapshot else self._kept.get(product)
        if book is None:
            return
        bids, asks = book.bids, book.asks
        for update in event["updates"]:
            (bids if update.get("side") == "bid" else asks).set(update["price_level"], update["new_quantity"])
        book.timestamp = self._timestamp
        self._kept[product] = book

    def verify(self, frame: object) -> tuple[Verdict, ...]:
        if not isinstance(frame, Mapping):
            return ()
        events = frame.get("events") if frame.get("channel") == "l2_data" else None
        events = events if isinstance(events, list) else []
        snapshots = {event.get("product_id") for event in events
                     if isinstance(event, Mapping) and event.get("type") == "snapshot"}
        verdicts: list[Verdict] = []
        number = frame.get("sequence_num")
        sequence = number if _is_int(number) else None
        if self.keeps and events:
            self._timestamp = parse8601(safe_string(frame.get("timestamp")))
        if sequence is not None:
            expected, self._next = self._next, sequence + 1
            if expected is not None and sequence != expected:
                detail = _gap("sequence_num", expected, sequence)
                # The lost message may have been any product's l2_data: every book is suspect
                # (but one this frame snapshots again).
                verdicts += self._fail_all(detail, Reason.GAP, sequence, keep={s for s in snapshots if isinstance(s, str)})
        failed = {verdict.symbol for verdict in verdicts}
        for event in events:
            product = event.get("product_id") if isinstance(event, Mapping) else None
            if not isinstance(product, str):
                verdicts += self._fail_all(_malformed(f"l2_data event without a product_id: {event!r:.80}"),
                                           sequence=sequence)
                failed = {verdict.symbol for verdict in verdicts}
                continue
            kind = event.get("type")
            bad = _bad_level(event.get("updates"), "price_level", "new_quantity")
            if self.keeps and bad is None and kind in ("snapshot", "update"):
                self._keep(product, event, kind == "snapshot")
            if bad is not None or kind not in ("snapshot", "update"):
                detail = bad if bad is not None else _malformed(f"l2_data event type {kind!r}")
                if product not in self._awaiting:
                    verdicts.append(self._fail(product, Reason.MALFORMED, detail, sequence))
                failed.add(product)
            elif kind == "snapshot":
                self._awaiting.discard(product)
                self._books.add(product)
                verdicts.append(Verdict(product, Status.OK, sequence=sequence))
            elif product not in failed:
                ready = product in self._books and product not in self._awaiting
                verdicts.append(Verdict(product, Status.OK if ready else Status.AWAITING, sequence=sequence))
        return tuple(verdicts)

    def _forget(self, symbol: str | None) -> None:
        if symbol is None:
            self._books.clear()
            self._next = None
        else:
            self._books.discard(symbol)

    def _held(self) -> set[str]:
        return set(self._books)


def _kraken_text(value: Any, decimals: int) -> str:
    """A v2 number (JSON number as parsed: float, int, Decimal or str) at the pair's precision."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"{value:.{decimals}f}"
    return format(Decimal(str(value)).quantize(Decimal(1).scaleb(-decimals)), "f")


class KrakenVerifier(BookVerifier):
    """Kraken websocket v2 ``book``: the CRC32 of the top 10 levels, over the book truncated to the depth.

    Args:
        precision: Each pair's decimals by v2 symbol (``BTC/USD``); may be a dict updated as
            pairs are subscribed. A pair missing from it is ``UNCHECKED``.
        depth: The subscribed depth (10, 25, 100, 500 or 1000); a snapshot with more levels
            widens it, as ccxt does.
    """

    venue = "kraken"
    can_keep = True

    def __init__(self, precision: Mapping[str, Precision], depth: int = 10, *, keep: bool = False) -> None:
        super().__init__(keep=keep)
        if depth not in _KRAKEN_DEPTHS:
            raise ValueError(f"kraken book depth must be one of {sorted(_KRAKEN_DEPTHS)}, got {depth!r}")
        self._precision = precision
        self._depth = depth
        self._books: dict[str, KeptBook] = {}

    def verify(self, frame: object) -> tuple[Verdict, ...]:
        if not isinstance(frame, Mapping) or frame.get("channel") != "book":
            return ()
        kind, data = frame.get("type"), frame.get("data")
        if kind not in ("snapshot", "update") or not isinstance(data, list):
            return ()
        verdicts = []
        for row in data:
            symbol = row.get("symbol") if isinstance(row, Mapping) else None
            if isinstance(symbol, str):
                assert isinstance(row, Mapping)
                verdicts.append(self._row(symbol, kind == "snapshot", row))
            else:
                verdicts += self._fail_all(_malformed(f"book row without a symbol: {row!r:.80}"))
        return tuple(verdicts)

    def kept(self, symbol: str) -> KeptBook | None:
        # ccxt 4.5.90 kraken.handle_order_book: levels by safe_number of price and qty (float()
        # of the JSON number, as the kept side's), cut to the depth after every frame (limit()),
        # no nonce; the timestamp is parse8601 of an update's timestamp, None after a snapshot
        # (reset({})). ccxt applies only a frame's first row and sizes a snapshot's book by its
        # asks (max(limit, len(asks))); the book decoder declines a frame of several rows, and a
        # snapshot with more bids than both is not Kraken's (it sends the subscribed depth).
        return self._books.get(symbol) if self.keeps else None

    def named(self, frame: object) -> tuple[str, ...]:
        # ccxt's handle_order_book: channel "book", the first row's symbol only.
        if not isinstance(frame, Mapping) or frame.get("channel") != "book":
            return ()
        data = frame.get("data")
        row = data[0] if isinstance(data, list) and data else None
        symbol = row.get("symbol") if isinstance(row, Mapping) else None
        return (symbol,) if isinstance(symbol, str) else ()

    def claims(self, frame: Mapping[str, Any]) -> bool:
        # ccxt raises (KeyError) on an update of a book it has no snapshot of; so does its
        # path while the book never had one here, and the frame goes to ccxt to do so. A book
        # that failed and waits for its snapshot is refused on both paths: claimed.
        if frame.get("type") != "update":
            return True
        books, awaiting = self._books, self._awaiting
        for row in frame.get("data") or ():
            symbol = row.get("symbol") if isinstance(row, Mapping) else None
            if symbol not in books and symbol not in awaiting:
                return False
        return True

    def _row(self, symbol: str, snapshot: bool, row: Mapping[str, Any]) -> Verdict:
        bids, asks = row.get("bids", []), row.get("asks", [])
        if not isinstance(bids, list) or not isinstance(asks, list):
            return self._fail(symbol, Reason.MALFORMED, _malformed("bids and asks must be lists"))
        if snapshot:
            book = KeptBook(max(self._depth, len(bids), len(asks)))
        else:
            found = self._books.get(symbol)
            if found is None or symbol in self._awaiting:
                return Verdict(symbol, Status.AWAITING)
            book = found
        try:
            for side, levels in ((book.bids, bids), (book.asks, asks)):
                for level in levels:
                    side.set(level["price"], level["qty"])
        except (KeyError, TypeError, ValueError) as error:
            return self._fail(symbol, Reason.MALFORMED, _malformed(f"level {error!r}"))
        book.truncate()
        if snapshot:
            self._awaiting.discard(symbol)
            self._books[symbol] = book
        if self.keeps:
            book.timestamp = None if snapshot else parse8601(safe_string(row.get("timestamp")))
        precision = self._precision.get(symbol)
        if precision is None:
            crossing = book.crossing()
            if crossing is not None:
                return self._fail(symbol, Reason.CROSSED, crossing)
            return Verdict(symbol, Status.UNCHECKED)
        expected = row.get("checksum")
        if not _is_int(expected):
            return self._fail(symbol, Reason.MALFORMED, _malformed(f"checksum {expected!r}"))
        p, q = precision.price, precision.qty

        def render(price: Any, qty: Any) -> str:
            return _checksum_digits(_kraken_text(price, p)) + _checksum_digits(_kraken_text(qty, q))

        try:
            # kraken_checksum's string, from the cached level texts.
            payload = "".join(book.asks.rendered(KRAKEN_CHECKSUM_LEVELS, render)
                              + book.bids.rendered(KRAKEN_CHECKSUM_LEVELS, render))
            computed = zlib.crc32(payload.encode())
        except (InvalidOperation, ValueError) as error:
            return self._fail(symbol, Reason.MALFORMED, _malformed(f"number {error!r}"))
        if computed != expected:
            return self._fail(symbol, Reason.CHECKSUM, _mismatch(expected, computed))
        crossing = book.crossing()
        if crossing is not None:
            return self._fail(symbol, Reason.CROSSED, crossing)
        return Verdict(symbol, Status.OK)

    def _forget(self, symbol: str | None) -> None:
        if symbol is None:
            self._books.clear()
        else:
            self._books.pop(symbol, None)

    def _held(self) -> set[str]:
        return set(self._books)


class OkxVerifier(BookVerifier):
    """OKX v5 order books: ``prevSeqId`` chained to the last ``seqId``, and the top-25 CRC32 ``checksum``."""

    venue = "okx"
    can_keep = True

    def __init__(self, *, keep: bool = False) -> None:
        super().__init__(keep=keep)
        self._books: dict[str, KeptBook] = {}
        self._seq: dict[str, int | None] = {}

    def kept(self, symbol: str) -> KeptBook | None:
        # ccxt 4.5.90 okx.handle_order_book_message: levels by safe_float (float() of each,
        # as the kept side's), the book's nonce seqId and timestamp safe_integer(row, 'ts') of
        # the last row applied. Both sides are cut to the channel's depth here after every
        # row, by ccxt only when a watch call returns (limit()): the top levels agree while
        # fewer than depth - stored depth levels go at once.
        return self._books.get(symbol) if self.keeps else None

    def named(self, frame: object) -> tuple[str, ...]:
        # ccxt's handle_order_book: the depth channels, the book of arg.instId.
        if not isinstance(frame, Mapping):
            return ()
        arg = frame.get("arg")
        channel = arg.get("channel") if isinstance(arg, Mapping) else None
        symbol = arg.get("instId") if isinstance(channel, str) and channel in _OKX_DEPTHS else None  # type: ignore[union-attr]
        return (symbol,) if isinstance(symbol, str) else ()

    def verify(self, frame: object) -> tuple[Verdict, ...]:
        if not isinstance(frame, Mapping):
            return ()
        arg, action, data = frame.get("arg"), frame.get("action"), frame.get("data")
        channel = arg.get("channel") if isinstance(arg, Mapping) else None
        symbol = arg.get("instId") if isinstance(arg, Mapping) else None
        if not isinstance(channel, str) or channel not in _OKX_DEPTHS or not isinstance(data, list):
            return ()
        if not isinstance(symbol, str):
            return tuple(self._fail_all(_malformed(f"arg without an instId: {arg!r:.80}")))
        if action not in ("snapshot", "update"):
            return (self._fail(symbol, Reason.MALFORMED, _malformed(f"action {action!r}")),)
        return tuple(self._row(symbol, _OKX_DEPTHS[channel], action == "snapshot", row) for row in data)

    def _row(self, symbol: str, depth: int, snapshot: bool, row: object) -> Verdict:
        if not isinstance(row, Mapping):
            return self._fail(symbol, Reason.MALFORMED, _malformed(f"data row {row!r}"))
        bids, asks = row.get("bids", []), row.get("asks", [])
        seq, prev = row.get("seqId"), row.get("prevSeqId")
        sequence = seq if _is_int(seq) else None
        if not isinstance(bids, list) or not isinstance(asks, list):
            return self._fail(symbol, Reason.MALFORMED, _malformed("bids and asks must be lists"), sequence)
        if snapshot:
            book = KeptBook(max(depth, len(bids), len(asks)))
        else:
            found = self._books.get(symbol)
            if found is None or symbol in self._awaiting:
                return Verdict(symbol, Status.AWAITING, sequence=sequence)
            book = found
            last = self._seq.get(symbol)
            if _is_int(prev) and last is not None and prev != last:
                return self._fail(symbol, Reason.GAP, _gap("prevSeqId", last, prev), sequence)
        try:
            for side, levels in ((book.bids, bids), (book.asks, asks)):
                for level in levels:
                    side.set(level[0], level[1])
        except (IndexError, KeyError, TypeError, ValueError) as error:
            return self._fail(symbol, Reason.MALFORMED, _malformed(f"level {error!r}"), sequence)
        book.truncate()
        if snapshot:
            self._awaiting.discard(symbol)
            self._books[symbol] = book
        self._seq[symbol] = sequence
        if self.keeps:
            book.timestamp, book.nonce = safe_integer(row.get("ts")), safe_integer(seq)
        expected = row.get("checksum")
        if _is_int(expected) and expected != 0:  # 0: OKX no longer sends it (deprecated June 2026)
            computed = okx_checksum(book.bids.top(OKX_CHECKSUM_LEVELS), book.asks.top(OKX_CHECKSUM_LEVELS))
            if computed != expected:
                return self._fail(symbol, Reason.CHECKSUM, _mismatch(expected, computed), sequence)
        crossing = book.crossing()
        if crossing is not None:
            return self._fail(symbol, Reason.CROSSED, crossing, sequence)
        return Verdict(symbol, Status.OK, sequence=sequence)

    def _forget(self, symbol: str | None) -> None:
        for state in (self._books, self._seq):
            if symbol is None:
                state.clear()
            else:
                state.pop(symbol, None)

    def _held(self) -> set[str]:
        return set(self._books)


def _kraken(depth: int | None, precision: Mapping[str, Precision] | None, keep: bool = False) -> BookVerifier:
    if precision is None:
        raise ValueError("kraken's book checksum needs each pair's precision: pass precision={symbol: Precision}")
    return KrakenVerifier(precision, 10 if depth is None else depth, keep=keep)


VERIFIERS: Final[Mapping[str, Callable[[int | None, Mapping[str, Precision] | None], BookVerifier]]] = {
    "binance": lambda depth, precision: BinanceVerifier(),
    "bybit": lambda depth, precision: BybitVerifier(),
    "coinbase": lambda depth, precision: CoinbaseVerifier(),
    "kraken": _kraken,
    "okx": lambda depth, precision: OkxVerifier(),
}
"""Venue id -> ``factory(depth, precision)`` of its verifier; only Kraken reads either."""
_KEEPING: Final[Mapping[str, Callable[[int | None, Mapping[str, Precision] | None], BookVerifier]]] = {
    "binance": lambda depth, precision: BinanceVerifier(keep=True),
    "bybit": lambda depth, precision: BybitVerifier(keep=True),
    "coinbase": lambda depth, precision: CoinbaseVerifier(keep=True),
    "kraken": lambda depth, precision: _kraken(depth, precision, keep=True),
    "okx": lambda depth, precision: OkxVerifier(keep=True),
}
"""The verifiers that keep their books (``verifier_for(..., keep=True)``), by venue id."""


def verifier_for(venue_id: str, *, depth: int | None = None,
                 precision: Mapping[str, Precision] | None = None,
                 keep: bool = False) -> BookVerifier | None:
    """A new verifier for one connection of a venue, or ``None`` for a venue without checks.

    Args:
        venue_id: The ccxt id (``flight_md.venues``).
        depth: The subscribed book depth where the check depends on it (Kraken; default 10).
        precision: Each pair's decimals by symbol (Kraken: required).
        keep: Keep every book for the caller (:meth:`BookVerifier.kept`): the fast book path.

    Raises:
        ValueError: For Kraken without ``precision``, a depth Kraken does not offer, or
            ``keep`` for a venue whose verifier cannot keep its books (:func:`keeps_books`).
    """
    if keep:
        keeping = _KEEPING.get(venue_id)
        if keeping is None:
            raise ValueError(f"the {venue_id!r} book verifier cannot keep its books; "
                             f"those that can: {', '.join(sorted(_KEEPING))}")
        return keeping(depth, precision)
    factory = VERIFIERS.get(venue_id)
    return None if factory is None else factory(depth, precision)


def keeps_books(venue_id: str) -> bool:
    """Whether the venue's verifier can keep its books (``verifier_for(..., keep=True)``)."""
    return venue_id in _KEEPING

"""Exact replicas of the few ccxt parse helpers the fast decoders need; pure.

A fast decoder (:mod:`flight_md.core.decode`) must give the values ccxt's parse would have
given, to the bit. Most of ccxt's per-field work is ``float(text)``, which a decoder does
itself, but two helpers are not: ``Exchange.parse8601`` (ISO-8601 text to Unix ms: Coinbase
and Kraken stamp their frames so) and ``Precise``, ccxt's decimal string arithmetic, which
``safe_ticker`` uses to derive the open Coinbase and Kraken do not send (``last - change``,
``last / (1 + percentage / 100)`` at 18 decimals, truncated) and ``safe_trade`` / Bybit's
``safe_ticker`` multiply with. Both are copied here from ccxt 4.5.90 (``ccxt/base/exchange.py``,
``ccxt/base/precise.py``, MIT licence) with their rounding and their failures:
:func:`precise` raises :class:`ValueError` exactly where ccxt's ``Precise`` constructor
raises, which a decoder takes as "ccxt's parser would raise on this frame" and declines the
frame.

This is the one checked place of ccxt's parse internals (STYLE.md): every replica's docstring
names the ccxt 4.5.90 function it copies, and :data:`REPLICATED` holds a hash of each such
function's source as 4.5.90 ships it; ``tests/ingest/test_decode_replicas.py`` hashes the
installed ccxt's and fails on any that changed, so a ccxt upgrade (``ccxt_compat`` accepts
later 4.5 patches) cannot change a replica's original unseen.

:func:`safe_string`, :func:`safe_integer`, :func:`number`, :func:`safe_number`,
:func:`quote` and :func:`omit_zero` are ccxt's ``safe_string`` (of one value),
``safe_integer``, ``parse_number``, ``safe_number``, ``parse_number(omit_zero(...))`` and
``omit_zero``. :func:`precise_text` is the check a decoder makes of a value ccxt hands to
``Precise``: :class:`Decline` (the frame goes to ccxt) where ``Precise`` would raise, and
:class:`Unparseable` where it would stall (the decoders' one departure from ccxt).

:func:`ticker_row` and :func:`bidask_row` are the decoders' common case:
:func:`flight_md.normalize.to_row`'s row of a ccxt ticker whose values pass every check,
built without the checks' work (``None`` where any value would need one: the decoder then
calls ``to_row``, which says why).

This module imports neither asyncio, ccxt nor pyarrow.
"""

from __future__ import annotations

import calendar
import datetime
import math
import re
from typing import Any, Final

from flight_md.normalize import MAX_FUTURE_MS, MIN_TIMESTAMP_MS

__all__ = ["LONGEST", "MAX_EXPONENT", "REPLICATED", "Decline", "ExponentTooLarge", "Unparseable",
           "bidask_row", "number", "omit_zero", "open_from_change", "open_from_percentage",
           "parse8601", "precise", "precise_add", "precise_div", "precise_mul", "precise_sub",
           "precise_text", "quote", "safe_integer", "safe_number", "safe_string", "ticker_row"]

REPLICATED: Final = {
    "ccxt.base.exchange.Exchange.safe_string": "6d6e77962d36d496",
    "ccxt.base.exchange.Exchange.safe_integer": "f1c99cd827baebd9",
    "ccxt.base.exchange.Exchange.safe_number": "412c3763fec6f792",
    "ccxt.base.exchange.Exchange.parse_number": "4c337c339f2f91fe",
    "ccxt.base.exchange.Exchange.omit_zero": "bd8a7db456562305",
    "ccxt.base.exchange.Exchange.parse8601": "34404c283aaa4478",
    "ccxt.base.exchange.Exchange.safe_ticker": "df007246c74c12f6",
    "ccxt.base.exchange.Exchange.get_object_value_from_key_list": "d02994c84c2768d2",
    "ccxt.base.exchange.Exchange.safe_integer_n": "02d905afbd18944a",
    "ccxt.base.exchange.Exchange.safe_string_n": "b866e36c51a3e2d0",
    "ccxt.base.precise.Precise.__init__": "b6c032ef0a5f50da",
    "ccxt.base.precise.Precise.__str__": "fee33b7c1d1475de",
    "ccxt.base.precise.Precise.reduce": "c6098824065636e5",
    "ccxt.base.precise.Precise.add": "86e2945f4fe70711",
    "ccxt.base.precise.Precise.sub": "6403dbbfc28e2547",
    "ccxt.base.precise.Precise.mul": "c99041b4c9a4d338",
    "ccxt.base.precise.Precise.div": "fa490a1171685b06",
    "ccxt.base.precise.Precise.string_add": "27c37670f1050e5a",
    "ccxt.base.precise.Precise.string_sub": "9346b0a9a83f4d88",
    "ccxt.base.precise.Precise.string_mul": "43c81f3c26f7b282",
    "ccxt.base.precise.Precise.string_div": "d53ddbdd60af4dd8",
}
"""ccxt 4.5.90's functions the replicas here (and the decoders' use of them) copy: qualified
name -> the first 16 hex digits of the SHA-256 of ``inspect.getsource`` of it. A different hash
in an installed ccxt means the original changed and its replica must be checked again."""


class Decline(Exception):
    """Raised inside a decoder where ccxt's parse would raise, or where the decoder cannot
    prove its result equal (the frame goes to ccxt, which counts it): the decoder catches it
    and returns ``False``, having delivered nothing."""


class Unparseable(Decline):
    """Raised inside a decoder for a frame it drops as ``unparseable_frame`` itself (a
    :data:`MAX_EXPONENT` beyond which ccxt's parse would stall)."""


class ExponentTooLarge(ValueError):
    """:func:`precise` of text whose exponent is beyond :data:`MAX_EXPONENT`."""


LONGEST: Final = 64
"""Characters of the longest number text a decoder takes to ``Precise`` (no venue sends more;
longer text could make ``Precise``'s intermediates outgrow Python's int <-> str limit, where
ccxt raises)."""
MAX_EXPONENT: Final = 1000
"""An exponent beyond which ccxt's ``Precise`` builds integers of that many digits
(``"1e-999999999"`` stalls ccxt's parse for minutes): the one place the decoders depart from
ccxt, dropping such a frame as ``unparseable_frame``."""


def safe_string(value: Any) -> str | None:
    """ccxt 4.5.90 ``Exchange.safe_string`` of one value: a non-empty string as it is, an
    ``int`` or ``float`` (not a ``bool``) as ``str()``, anything else ``None``."""
    kind = type(value)
    if kind is str:
        return value if value else None
    if kind is float or kind is int:
        return str(value)
    return None


def number(text: str | None) -> float | None:
    """ccxt 4.5.90 ``Exchange.parse_number``: ``float(text)``, ``None`` where that fails or
    ``text`` is ``None``."""
    if text is None:
        return None
    try:
        return float(text)
    except (ValueError, TypeError, OverflowError):
        return None


def safe_number(value: Any) -> float | None:
    """ccxt 4.5.90 ``Exchange.safe_number`` of one value: ``parse_number(safe_string(value))``
    (a zero stays zero). A float is itself (``float(str(x))`` is ``x``: what Kraken sends)."""
    if type(value) is float:
        return value
    return number(safe_string(value))


def quote(value: Any) -> float | None:
    """``parse_number(omit_zero(safe_string(value)))``: how ccxt 4.5.90's ``safe_ticker`` turns
    a raw price into a number (``None`` for missing, zero or unparseable; ``"nan"`` is NaN)."""
    found = safe_number(value)
    return None if found == 0.0 else found


def omit_zero(text: str | None) -> str | None:
    """ccxt 4.5.90 ``Exchange.omit_zero``: ``None`` for ``None``, ``""`` or a number equal to 0; other text as it is
    (text that is not a number too)."""
    if text is None or text == "":
        return None
    try:
        if float(text) == 0:
            return None
    except (ValueError, TypeError, OverflowError):
        pass
    return text


def safe_integer(value: Any) -> int | None:
    """ccxt 4.5.90 ``Exchange.safe_integer`` of one value: ``int(float(value))``, ``None`` where
    that fails."""
    try:
        return int(float(value))
    except Exception:  # noqa: BLE001 - ccxt catches everything here too
        return None


# -- parse8601 ------------------------------------------------------------------------------

_ISO8601: Final = re.compile(
    r'([0-9]{4})-?([0-9]{2})-?([0-9]{2})(?:T|[\s])?'
    r'([0-9]{2}):?([0-9]{2}):?([0-9]{2})'
    r'(\.[0-9]+)?'
    r'(?:(\+|\-)([0-9]{2})\:?([0-9]{2})|Z)?',
    re.IGNORECASE,
)
_EPOCH_SECONDS: dict[str, int] = {}
"""``YYYY-MM-DDTHH:MM:SS`` -> its Unix seconds, for the fast path (a frame's second repeats)."""
_EPOCH_CACHE_MAX: Final = 4096
_DIGITS: Final = frozenset("0123456789")


def _parse8601_slow(text: Any) -> int | None:
    """ccxt 4.5.90's ``Exchange.parse8601``, line for line."""
    if text is None:
        return None
    try:
        match = _ISO8601.search(text)
        if match is None:
            return None
        yyyy, mm, dd, h, m, s, ms, sign, hours, minutes = match.groups()
        msint = int((ms[1:] + "00")[:3]) if ms else 0
        if sign:
            offset_sign = -1 if sign == "+" else 1
            offset_hours = int(hours) * offset_sign
            offset_minutes = int(minutes) * offset_sign
        else:
            offset_hours = 0
            offset_minutes = 0
        dt = datetime.datetime(int(yyyy), int(mm), int(dd), int(h), int(m), int(s))
        dt = dt + datetime.timedelta(hours=offset_hours, minutes=offset_minutes)
        return calendar.timegm(dt.utctimetuple()) * 1000 + msint
    except (TypeError, OverflowError, OSError, ValueError):
        return None


def parse8601(text: Any) -> int | None:
    """ccxt 4.5.90 ``Exchange.parse8601``: ISO-8601 text -> Unix ms (``None`` where ccxt gives ``None``).

    The common shape, ``YYYY-MM-DDTHH:MM:SS.f...Z`` (Coinbase's nanoseconds, Kraken's
    microseconds), takes a fast path: the seconds are looked up (frames of one second share
    them) and the milliseconds are the fraction's first three digits, as ccxt takes them;
    anything else goes through ccxt's own regex.
    """
    if (type(text) is str and len(text) > 21 and text[-1] == "Z" and text[19] == "."
            and text[4] == "-" and text[7] == "-" and text[10] == "T" and text[13] == ":"
            and text[16] == ":" and _DIGITS.issuperset(text[20:-1])):
        head = text[:19]
        seconds = _EPOCH_SECONDS.get(head)
        if seconds is None:
            whole = _parse8601_slow(head + "Z")
            if whole is None:
                return _parse8601_slow(text)
            seconds = whole // 1000
            if len(_EPOCH_SECONDS) >= _EPOCH_CACHE_MAX:
                _EPOCH_SECONDS.clear()
            _EPOCH_SECONDS[head] = seconds
        return seconds * 1000 + int((text[20:-1] + "00")[:3])
    return _parse8601_slow(text)


# -- Precise --------------------------------------------------------------------------------

_Precise = tuple[int, int]
"""``(integer, decimals)``: ``integer * 10 ** -decimals``, as ccxt's ``Precise`` holds it."""


_POW10: Final = tuple(10 ** exponent for exponent in range(129))


def _pow10(exponent: int) -> int:
    return _POW10[exponent] if exponent < 129 else int(10 ** exponent)


def precise(text: str) -> _Precise:
    """ccxt 4.5.90 ``Precise.__init__(text)``.

    Raises:
        ValueError: Where ccxt's constructor raises (text that is not a decimal number).
        ExponentTooLarge: An exponent beyond :data:`MAX_EXPONENT` (where ccxt stalls).
    """
    modifier = 0
    if "e" in text or "E" in text:
        text = text.lower()
        text, exponent = text.split("e")  # ValueError for two exponent markers, as ccxt
        modifier = int(exponent)
        if abs(modifier) > MAX_EXPONENT:
            raise ExponentTooLarge(exponent)
    point = text.find(".")
    if point > -1:
        return int(text.replace(".", "")), len(text) - point - 1 - modifier
    return int(text), -modifier


def _str(value: _Precise) -> str:
    """ccxt 4.5.90 ``Precise.__str__`` (after ``Precise.reduce``: trailing zeros reduced)."""
    integer, decimals = value
    digits = str(integer)
    if digits == "0":
        decimals = 0
    else:
        reduced = digits.rstrip("0")
        decimals -= len(digits) - len(reduced)
        digits = reduced
    sign = ""
    if digits[0] == "-":
        sign, digits = "-", digits[1:]
    if decimals <= 0:
        return sign + digits + "0" * (-decimals)
    length = len(digits)
    if length > decimals:
        return sign + digits[:length - decimals] + "." + digits[length - decimals:]
    if length < decimals:
        return sign + "0." + "0" * (decimals - length) + digits
    return sign + "0." + digits


def _add(a: _Precise, b: _Precise, sign: int) -> _Precise:
    """ccxt 4.5.90 ``Precise.add`` (``sign`` -1: ``Precise.sub``)."""
    (ai, ad), (bi, bd) = a, b
    bi *= sign
    if ad == bd:
        return ai + bi, ad
    if ad > bd:
        return ai + bi * _pow10(ad - bd), ad
    return ai * _pow10(bd - ad) + bi, bd


def precise_add(left: str | None, right: str | None) -> str | None:
    """ccxt 4.5.90 ``Precise.string_add``."""
    if left is None or right is None:
        return None
    return _str(_add(precise(left), precise(right), 1))


def precise_sub(left: str | None, right: str | None) -> str | None:
    """ccxt 4.5.90 ``Precise.string_sub``."""
    if left is None or right is None:
        return None
    return _str(_add(precise(left), precise(right), -1))


def precise_div(left: str | None, right: str | None, precision: int = 18) -> str | None:
    """ccxt 4.5.90 ``Precise.string_div``: truncated (towards zero) at ``precision`` decimals;
    ``None`` for a zero divisor."""
    if left is None or right is None:
        return None
    divisor = precise(right)
    if divisor[0] == 0:
        return None  # before the dividend is read, as ccxt
    result = _div(precise(left), divisor, precision)
    assert result is not None
    return _str(result)


def precise_mul(left: str | None, right: str | None) -> str | None:
    """ccxt 4.5.90 ``Precise.string_mul`` (``Precise.mul``: integers multiplied, decimals added)."""
    if left is None or right is None:
        return None
    (ai, ad), (bi, bd) = precise(left), precise(right)
    return _str((ai * bi, ad + bd))


def precise_text(value: Any) -> str | None:
    """A raw value ccxt's parse hands to ``Precise``: ``safe_string(value)``, which ``Precise``
    reads without raising or stalling; ``None`` when absent.

    Raises:
        Unparseable: An exponent beyond :data:`MAX_EXPONENT` (ccxt's parse would stall).
        Decline: Text ``Precise`` raises on, text longer than :data:`LONGEST`, or a value that
            is not finite (the frame goes to ccxt).
    """
    text = safe_string(value)
    if text is not None:
        if "e" in text or "E" in text:
            try:
                huge = abs(int(text.lower().partition("e")[2])) > MAX_EXPONENT
            except ValueError:
                raise Decline from None  # Precise raises on it too
            if huge:
                raise Unparseable
        if len(text) > LONGEST:
            raise Decline  # Precise's intermediates could outgrow int <-> str (ccxt raises)
        try:
            if not math.isfinite(float(text)):
                raise Decline
        except ValueError:
            raise Decline from None
    return text


# The derived opens, computed on (integer, decimals) pairs: each intermediate ccxt turns into
# text and parses again is put in the form that round trip gives (_reparsed), so the result
# is ccxt's to the last digit without the text; float(str(x)) of ccxt's result is
# integer / 10 ** decimals, which Python's int division rounds correctly too.


def _reparsed(value: _Precise) -> _Precise:
    """``precise(_str(value))``: trailing zeros stripped, never negative decimals."""
    integer, decimals = value
    if integer == 0:
        return 0, 0
    digits = str(integer)
    reduced = digits.rstrip("0")
    if len(reduced) != len(digits):
        decimals -= len(digits) - len(reduced)
        integer = int(reduced)
    if decimals < 0:
        return integer * _pow10(-decimals), 0
    return integer, decimals


def _div(left: _Precise, right: _Precise, precision: int = 18) -> _Precise | None:
    """ccxt 4.5.90 ``Precise.div`` (``None`` for a zero divisor, as ``string_div``)."""
    (ai, ad), (bi, bd) = left, right
    if bi == 0:
        return None
    distance = precision - ad + bd
    if distance == 0:
        numerator = ai
    elif distance < 0:
        numerator = ai // _pow10(-distance)
    else:
        numerator = ai * _pow10(distance)
    result, mod = divmod(numerator, bi)
    if result < 0 and mod:
        result += 1  # Python floors; ccxt truncates
    return result, precision


def _float(value: _Precise) -> float:
    """``float()`` of the value's decimal text, as ccxt's ``parse_number`` reads it: correctly
    rounded, and an infinity (not an error) beyond the float range."""
    integer, decimals = value
    try:
        return integer / _pow10(decimals) if decimals > 0 else float(integer * _pow10(-decimals))
    except OverflowError:
        return math.inf if integer > 0 else -math.inf


_HUNDRED: Final = (100, 0)
_ONE: Final = (1, 0)


def open_from_percentage(close: str, percentage: str) -> float | None:
    """``parse_number(precise_div(close, precise_add("1", precise_div(percentage, "100"))))``:
    the open ``safe_ticker`` derives from a close and a 24 h change in percent; ``None`` for a
    change of -100 %.

    Raises:
        ValueError: Where ccxt's ``Precise`` raises (text that is not a decimal number).
    """
    ratio = _div(precise(percentage), _HUNDRED)
    assert ratio is not None
    denominator = _reparsed(_add(_ONE, _reparsed(ratio), 1))
    result = _div(precise(close), denominator)
    return None if result is None else _float(result)


def open_from_change(close: str, change: str) -> float:
    """``parse_number(precise_sub(close, change))``: the open ``safe_ticker`` derives from a
    close and a 24 h change.

    Raises:
        ValueError: Where ccxt's ``Precise`` raises (text that is not a decimal number).
    """
    return _float(_add(precise(close), precise(change), -1))


# -- rows of good values ----------------------------------------------------------------------

_NAN: Final = math.nan
_INF: Final = math.inf


def _stamp(timestamp: int | None, receive_ms: int) -> int | None:
    if timestamp is None:
        return receive_ms
    if type(timestamp) is int and MIN_TIMESTAMP_MS <= timestamp <= receive_ms + MAX_FUTURE_MS:
        return timestamp
    return None


def bidask_row(timestamp: int | None, bid: float | None, ask: float | None,
               receive_ms: int) -> tuple[float, ...] | None:
    """``to_row``'s ``bidask`` row of a ccxt ticker with these values, if they pass every
    check (a positive, finite, uncrossed bid and ask; no timestamp, or one in range), else
    ``None``."""
    stamp = _stamp(timestamp, receive_ms)
    if (stamp is None or type(bid) is not float or type(ask) is not float
            or not 0.0 < bid <= ask < _INF):
        return None
    return (stamp, (bid + ask) / 2.0, _NAN, bid, ask, _NAN, _NAN, _NAN, _NAN, receive_ms)


def ticker_row(timestamp: int | None, last: float | None, volume: float | None,
               bid: float | None, ask: float | None, high: float | None, low: float | None,
               open_: float | None, close: float | None,
               receive_ms: int) -> tuple[float, ...] | None:
    """``to_row``'s ``ticker`` row of a ccxt ticker with these values, if every one is there
    and passes every check (prices positive and finite, bid not above ask, volume not
    negative; no timestamp, or one in range), else ``None``."""
    stamp = _stamp(timestamp, receive_ms)
    if (stamp is None or type(last) is not float or type(volume) is not float
            or type(bid) is not float or type(ask) is not float or type(high) is not float
            or type(low) is not float or type(open_) is not float or type(close) is not float
            or not (0.0 < bid <= ask < _INF and 0.0 < last < _INF and 0.0 <= volume < _INF
                    and 0.0 < high < _INF and 0.0 < low < _INF and 0.0 < open_ < _INF
                    and 0.0 < close < _INF)):
        return None
    return (stamp, last, volume, bid, ask, high, low, open_, close, receive_ms)

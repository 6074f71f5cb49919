"""Time arguments: everything ``start=``/``end=`` accept, turned into Unix milliseconds.

=====================  ===========================================================
argument               meaning
=====================  ===========================================================
``datetime`` (aware)   that instant
``datetime`` (naive)   **UTC** (never the machine's local zone)
``date``               midnight UTC of that day
``str``                ISO-8601 (``"2026-11-23T10:00:00Z"``, ``"...+01:00"``; no offset
                       means UTC), a string of digits (Unix ms), ``"now"``, or an age:
                       a number and a unit ``ms``, ``s``, ``m``, ``h``, ``d``
                       (``"90s"``, ``"5m"``, ``"1.5h"``, ``"1d"``) meaning that long
                       **before now** (``"5m ago"`` and ``"-5m"`` mean the same)
``int``                Unix milliseconds (not seconds)
``timedelta``          that long **before now**: ``timedelta(minutes=5)`` is five
                       minutes ago (a negative one is in the future)
``pandas.Timestamp``   as ``datetime``
``numpy.datetime64``   UTC
=====================  ===========================================================

These are the forms ``flight-md get --start/--end`` accepts too: the terminal parses its time
arguments with :func:`to_ms`.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, TypeAlias

__all__ = ["TimeLike", "format_ms", "to_ms"]

TimeLike: TypeAlias = datetime | date | timedelta | str | int
"""What ``start=`` and ``end=`` accept (see the module docstring)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the server's limit
_AGE_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
AGE_UNITS_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
"""The units of an age string (``"5m"``) and their length in milliseconds."""


def _datetime_ms(value: datetime) -> int:
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def to_ms(value: Any, name: str = "time", *, now_ms: int | None = None) -> int:
    """Turn a time argument into Unix milliseconds.

    Args:
        value: See the module docstring for what is accepted.
        name: The argument's name, for error messages.
        now_ms: "Now" for ``timedelta`` values, ``"now"`` and ages (default: the wall clock).

    Raises:
        TypeError: ``value`` is none of the accepted types (floats are refused: seconds or
            milliseconds would be a guess).
        ValueError: A string is none of ISO-8601, digits, ``"now"`` or an age, or the time
            is out of range.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r} is a bool; pass a datetime, an ISO-8601 string, "
                        "Unix milliseconds (int) or a timedelta before now")
    if isinstance(value, datetime):
        ms = _datetime_ms(value)
    elif isinstance(value, date):
        ms = _datetime_ms(datetime(value.year, value.month, value.day))
    elif isinstance(value, timedelta):
        ms = _now(now_ms) - (value.days * 86_400_000 + value.seconds * 1000
                             + value.microseconds // 1000)
    elif isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        ms = _parse_string(value, name, now_ms)
    elif type(value).__name__ == "datetime64":
        import numpy as np

        ms = int(value.astype("datetime64[ms]").astype(np.int64))
    else:
        raise TypeError(f"{name}={value!r} has type {type(value).__name__}; pass a datetime, an "
                        "ISO-8601 string, Unix milliseconds (int) or a timedelta before now")
    if not 0 <= ms <= MAX_MS:
        raise ValueError(f"{name}={value!r} is {ms} Unix ms; expected a time between "
                         "1970-01-01 and 9999-12-31 UTC")
    return ms


def _now(now_ms: int | None) -> int:
    return time.time_ns() // 1_000_000 if now_ms is None else now_ms


def _parse_string(text: str, name: str, now_ms: int | None) -> int:
    stripped = text.strip()
    if stripped.isascii() and stripped.isdigit():
        return int(stripped)
    # "5m ago" and "-5m" are how people write an age on a command line; both mean before now.
    relative = stripped.lower().removesuffix(" ago").lstrip("-")
    if relative == "now":
        return _now(now_ms)
    age = _AGE_RE.fullmatch(relative)
    if age is not None:
        return _now(now_ms) - int(float(age.group(1)) * AGE_UNITS_MS[age.group(2)])
    candidate = stripped[:-1] + "+00:00" if stripped[-1:] in ("Z", "z") else stripped
    try:
        parsed = datetime.fromisoformat(candidate)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a time; expected ISO-8601 such as "
                         "'2026-11-23T10:00:00Z', Unix milliseconds, 'now', or an age such "
                         "as '90s', '5m', '2h', '1d' (that long ago)") from None
    return _datetime_ms(parsed)


def format_ms(ms: int) -> str:
    """Unix milliseconds as ISO-8601 UTC with milliseconds, e.g. ``2026-11-23T10:00:00.123Z``."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

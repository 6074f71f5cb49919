"""Bus subjects: where each ring's batches travel on NATS, and the filters a serving node takes.

Grammar (one subject a ring; NATS tokens are separated by ``.``)::

    subject = "md" "." channel "." exchange "." token(symbol)
    channel = one of flight_md.core.channels.CHANNELS
    exchange = token(exchange id)
    filter  = "md" ( "." part )* [ "." ">" ]      at most 4 tokens, ">" only last
    part    = "*" | a literal token (the channel token must name a channel)

``token(text)`` makes any non-empty text subject-safe and is reversible (:func:`decode_token`):
the characters ``A-Z a-z 0-9 - _ / :`` stand for themselves (so ``BTC/USDT`` and
``ETH/USD:ETH`` stay readable in ``nats sub`` output); every other character, ``%`` included, is
written as ``%XX`` per UTF-8 byte (upper-case hex). So ``.``, ``*``, ``>``, spaces and control
characters, which NATS gives meaning to or refuses, never appear in a token, and a token has
exactly one spelling (``decode_token`` refuses lower-case hex and escapes of safe characters, so
that two subjects never name one ring).

This module is pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

from flight_md.core.channels import CHANNELS
from flight_md.errors import InvalidArgument

__all__ = [
    "ALL_SUBJECTS",
    "PREFIX",
    "InvalidSubject",
    "RingSubject",
    "decode_token",
    "encode_token",
    "parse_subject",
    "subject_for",
    "validate_filter",
]

PREFIX: Final = "md"
"""The first token of every market-data subject."""
ALL_SUBJECTS: Final = f"{PREFIX}.>"
"""Every market-data subject: the stream's subjects and a serving node's default filter."""
_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_/:")
_ESCAPE: Final = re.compile(r"%([0-9A-F]{2})")
_TOKENS: Final = 4


class InvalidSubject(InvalidArgument):
    """A bus subject or subject filter does not follow the grammar in :mod:`flight_md.bus.subjects`."""


@dataclass(frozen=True, slots=True)
class RingSubject:
    """The ring a subject names."""

    channel: str
    exchange: str
    symbol: str


def encode_token(text: str) -> str:
    """``text`` as one subject-safe NATS token (see the module docstring).

    Raises:
        InvalidSubject: ``text`` is empty.
    """
    if not text:
        raise InvalidSubject("a subject token must not be empty")
    if all(c in _SAFE for c in text):
        return text
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
                   for c in text)


def decode_token(token: str) -> str:
    """The text :func:`encode_token` made ``token`` from.

    Raises:
        InvalidSubject: ``token`` is not the one spelling ``encode_token`` gives of any text.
    """
    if not token:
        raise InvalidSubject("a subject token must not be empty")
    if all(c in _SAFE for c in token):
        return token
    raw = bytearray()
    at = 0
    for match in _ESCAPE.finditer(token):
        _take_safe(token, at, match.start(), raw)
        raw.append(int(match.group(1), 16))
        at = match.end()
    _take_safe(token, at, len(token), raw)
    try:
        text = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise InvalidSubject(f"subject token {token!r} escapes bytes that are not UTF-8") from None
    if encode_token(text) != token:
        raise InvalidSubject(f"subject token {token!r} is not in its one spelling "
                             f"{encode_token(text)!r}")
    return text


def _take_safe(token: str, start: int, end: int, into: bytearray) -> None:
    part = token[start:end]
    bad = next((c for c in part if c not in _SAFE), None)
    if bad is not None:
        raise InvalidSubject(f"subject token {token!r} has {bad!r} outside an escape; "
                             f"expected A-Z a-z 0-9 - _ / : or %XX")
    into += part.encode("ascii")


def _channel(channel: str) -> str:
    if channel not in CHANNELS:
        raise InvalidSubject(f"unknown channel {channel!r} in a subject; expected one of: "
                             f"{', '.join(CHANNELS)}")
    return channel


@functools.lru_cache(maxsize=8192)  # per message on both sides; a few hundred rings
def subject_for(channel: str, exchange: str, symbol: str) -> str:
    """The subject of the ring ``(exchange, symbol)`` of ``channel``: ``md.<channel>.<exchange>.<symbol>``.

    Raises:
        InvalidSubject: an unknown channel, or an empty exchange or symbol.
    """
    return f"{PREFIX}.{_channel(channel)}.{encode_token(exchange)}.{encode_token(symbol)}"


@functools.lru_cache(maxsize=8192)  # bounded: subjects come from the bus
def parse_subject(subject: str) -> RingSubject:
    """The ring :func:`subject_for` made ``subject`` for.

    Raises:
        InvalidSubject: ``subject`` is not ``md.<channel>.<exchange>.<symbol>`` with valid tokens.
    """
    tokens = subject.split(".")
    if len(tokens) != _TOKENS or tokens[0] != PREFIX:
        raise InvalidSubject(f"subject {subject!r} is not {PREFIX}.<channel>.<exchange>.<symbol>")
    return RingSubject(_channel(tokens[1]), decode_token(tokens[2]), decode_token(tokens[3]))


def validate_filter(text: str) -> str:
    """``text`` if it is a valid subject filter (``md.>``, ``md.trades.binance.>``,
    ``md.*.*.BTC/USDT``; see the module docstring), for a serving node's ``--bus-subjects``.

    Raises:
        InvalidSubject: it is not; the message says which token and what is allowed.
    """
    tokens = text.split(".")
    if tokens[0] != PREFIX:
        raise InvalidSubject(f"subject filter {text!r} must start with {PREFIX!r} "
                             f"(e.g. {ALL_SUBJECTS!r} or 'md.trades.binance.>')")
    if len(tokens) > _TOKENS:
        raise InvalidSubject(f"subject filter {text!r} has {len(tokens)} tokens; "
                             f"at most {_TOKENS}: {PREFIX}.<channel>.<exchange>.<symbol>")
    if len(tokens) == 1:
        raise InvalidSubject(f"subject filter {text!r} matches nothing; "
                             f"did you mean {ALL_SUBJECTS!r}?")
    for index, token in enumerate(tokens[1:], start=1):
        if token == ">":
            if index != len(tokens) - 1:
                raise InvalidSubject(f"subject filter {text!r}: '>' may only be the last token")
            continue
        if token == "*":
            continue
        if "*" in token or ">" in token:
            raise InvalidSubject(f"subject filter {text!r}: wildcard in token {token!r}; "
                                 f"'*' and '>' stand alone as a whole token")
        if index == 1:
            _channel(token)
        else:
            decode_token(token)  # a literal must be a token encode_token could have made
    if len(tokens) < _TOKENS and tokens[-1] != ">":
        raise InvalidSubject(f"subject filter {text!r} is too short to match a subject; "
                             f"end it with '.>' or give all of "
                             f"{PREFIX}.<channel>.<exchange>.<symbol>")
    return text

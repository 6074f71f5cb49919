"""The venue registry: one module per exchange, registered by its ccxt id.

``VENUES`` maps each registered ccxt id to its :class:`~flight_md.venues.base.Venue`. Adding a
venue is one module here (``flight_md/venues/<id>.py`` defining ``VENUE``; every module of this
package but ``base`` is one, found by name, in alphabetical order) and its emulator dialect
(``flight_md/emulator/dialects/<id>.py``).

Any other ccxt exchange still works through :func:`venue`, which describes it with ccxt's
generic methods (no emulator, no URL redirection, default limits).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from types import MappingProxyType

from flight_md.venues.base import GENERIC_CHANNELS, ChannelMethods, Venue, has_key, ws_bases

__all__ = ["GENERIC_CHANNELS", "VENUES", "ChannelMethods", "Venue", "channels_markdown", "emulated", "has_key",
           "venue", "venues_markdown", "ws_bases"]

def _load() -> Mapping[str, Venue]:
    found: dict[str, Venue] = {}
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base")
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        registered: Venue = module.VENUE
        if registered.id != name:
            raise RuntimeError(f"venue module {name!r} registers {registered.id!r}")
        found[name] = registered
    return MappingProxyType(found)


VENUES: Mapping[str, Venue] = _load()
"""Every registered venue by ccxt id, in registration order."""


def venue(exchange_id: str) -> Venue:
    """The registered venue of ``exchange_id``, or a generic description of any other ccxt id."""
    found = VENUES.get(exchange_id)
    return found if found is not None else Venue(id=exchange_id, title=exchange_id)


def emulated() -> tuple[str, ...]:
    """Ids of the venues the emulator speaks."""
    return tuple(name for name, item in VENUES.items() if item.dialect is not None)


def venues_markdown() -> str:
    """The README's venue table, from the registry (``tests/test_readme_truth.py`` checks it)."""
    from flight_md.normalize import Channel

    lines = ["| venue | `--exchange` | `ticker` | `bidask` | unsubscribe | symbols per subscribe | what to know |",
             "|---|---|---|---|---|---|---|"]
    def method(item: Venue, channel: Channel) -> str:
        found = item.channels.get(channel)
        if found is None:
            return "none"
        return f"`{found.watch}`" + (" (per symbol)" if found.per_symbol else "")

    for item in VENUES.values():
        # The table's columns are the tick channels; trades and book have their own table
        # (issue 12), so their unsubscribe support does not change this one's.
        ticks = {c: m for c, m in item.channels.items() if c in (Channel.TICKER, Channel.BIDASK)}
        unsubscribes = [c for c, m in ticks.items() if m.unwatch is not None]
        unsub = ("yes" if len(unsubscribes) == len(ticks) else
                 "no (session restart)" if not unsubscribes else
                 ", ".join(str(c) for c in unsubscribes) + " only")
        lines.append(f"| {item.title} | `{item.id}` | {method(item, Channel.TICKER)} | "
                     f"{method(item, Channel.BIDASK)} | {unsub} | {item.symbols_per_message} | "
                     f"{'; '.join(item.quirks)} |")
    return "\n".join(lines)


def channels_markdown() -> str:
    """A table of each venue's trades and book channels, from the registry (for the README)."""
    from flight_md.normalize import Channel

    lines = [("| venue | `trades` | sequential ids (gaps, backfill) | `book` | book depths subscribed |"
              " unsubscribe |"),
             "|---|---|---|---|---|---|"]
    for item in VENUES.values():
        trades, book = item.channels.get(Channel.TRADES), item.channels.get(Channel.BOOK)
        if trades is None or book is None:
            continue
        depths = ", ".join(map(str, item.book_depths)) if item.book_depths else "the whole book"
        unsub = ", ".join(str(c) for c, m in ((Channel.TRADES, trades), (Channel.BOOK, book))
                          if m.unwatch is not None) or "no (session restart)"
        lines.append(f"| {item.title} | `{trades.watch}` | {'yes' if item.sequential_trade_ids else 'no'} | "
                     f"`{book.watch}` | {depths} | {unsub} |")
    return "\n".join(lines)

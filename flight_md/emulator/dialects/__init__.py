"""One module per exchange protocol the emulator speaks.

A dialect (a :class:`~flight_md.emulator.dialect.Dialect` subclass) is found through its
venue's ``dialect`` attribute (``flight_md.venues``): :func:`dialect_class` loads it.
"""

from __future__ import annotations

import importlib

from flight_md.emulator.dialect import Dialect
from flight_md.venues import VENUES, emulated

__all__ = ["dialect_class", "emulated"]


def dialect_class(exchange_id: str) -> type[Dialect]:
    """The dialect class of a registered venue.

    Raises:
        ValueError: If the venue is unknown or not emulated.
    """
    found = VENUES.get(exchange_id)
    if found is None or found.dialect is None:
        raise ValueError(f"unknown exchange {exchange_id!r}; the emulator speaks: {', '.join(emulated())}")
    module_name, _, class_name = found.dialect.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Dialect)):
        raise TypeError(f"{found.dialect} is not a Dialect")
    return cls

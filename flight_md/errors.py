"""One exception tree for flight_md.

Every error that crosses a public boundary is a :class:`FlightMdError`. The Flight
service maps each branch to exactly one Flight status code, in one place
(:func:`flight_md.service.map_errors`)::

    FlightMdError
    ├── InvalidArgument ........... INVALID_ARGUMENT
    │   ├── InvalidTicket
    │   ├── InvalidDescriptor
    │   ├── InvalidActionBody
    │   ├── InvalidCriteria
    │   ├── AmbiguousExchange
    │   └── RequestTooLarge
    ├── NotFound .................. NOT_FOUND
    │   ├── UnknownSymbol
    │   └── UnknownExchange
    ├── UnknownAction ............. UNIMPLEMENTED
    ├── Unavailable ............... UNAVAILABLE
    │   └── ShuttingDown .......... UNAVAILABLE (extra_info b"server_shutdown")
    ├── SlowConsumer .............. CANCELLED (extra_info b"slow_consumer")
    ├── Unauthenticated ........... UNAUTHENTICATED
    ├── PermissionDenied .......... PERMISSION_DENIED
    ├── ConfigError ............... (command line and config files; never on the wire)
    ├── StartupError .............. (the server cannot start, e.g. its port is taken; exit 1)
    └── ExchangeDataError ......... (a bad exchange frame; counted and dropped by ingestion)

Messages are short, lowercase, name the bad value with ``!r`` and say what is allowed.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousExchange",
    "ConfigError",
    "ExchangeDataError",
    "FlightMdError",
    "InvalidActionBody",
    "InvalidArgument",
    "InvalidCriteria",
    "InvalidDescriptor",
    "InvalidTicket",
    "NotFound",
    "PermissionDenied",
    "RequestTooLarge",
    "ShuttingDown",
    "SlowConsumer",
    "StartupError",
    "Unauthenticated",
    "Unavailable",
    "UnknownAction",
    "UnknownExchange",
    "UnknownSymbol",
]


class FlightMdError(Exception):
    """Base class of every error raised by flight_md."""


class InvalidArgument(FlightMdError):
    """The request is malformed: a ticket, descriptor or action body."""


class InvalidTicket(InvalidArgument):
    """A ticket does not follow the grammar in :mod:`flight_md.tickets`."""


class InvalidDescriptor(InvalidArgument):
    """A flight descriptor is neither a valid path nor a valid command."""


class InvalidActionBody(InvalidArgument):
    """An action body is not the JSON object the action expects."""


class InvalidCriteria(InvalidArgument):
    """``ListFlights`` criteria are neither an exchange id nor a symbol glob."""


class AmbiguousExchange(InvalidArgument):
    """A symbol is buffered on several exchanges and none was chosen."""


class RequestTooLarge(InvalidArgument):
    """A ticket, command or action body exceeds the size limit."""


class NotFound(FlightMdError):
    """The request names something that does not exist."""


class UnknownSymbol(NotFound):
    """No buffer holds the symbol."""


class UnknownExchange(NotFound):
    """No buffer or stream belongs to the exchange."""


class UnknownAction(FlightMdError):
    """The action type is not one the server implements."""


class Unavailable(FlightMdError):
    """The request is valid but cannot be served now (no ingestion, exchange down)."""


class ShuttingDown(Unavailable):
    """The server is stopping: no new live tails, and open ones end with this error."""


class SlowConsumer(FlightMdError):
    """A live tail fell further behind than its bounded queue allows."""


class Unauthenticated(FlightMdError):
    """The call carries no valid credentials."""


class PermissionDenied(FlightMdError):
    """The credentials are valid but do not allow this call."""


class ConfigError(FlightMdError):
    """A command-line option or configuration file is invalid."""


class StartupError(FlightMdError):
    """The server cannot start where it was asked to (its port is in use, its host is not
    an address of this machine, a file it needs cannot be read); ``serve`` exits 1."""


class ExchangeDataError(FlightMdError):
    """An exchange sent data that cannot become a tick (counted, then dropped)."""

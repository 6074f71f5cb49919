"""The flight_md protocol with nothing but ``pyarrow.flight``: a guide for other languages.

Every step below is one Flight RPC that any Arrow Flight client (C++, Java, Go, Rust, C#, JS,
R) can make the same way. There is no flight_md import here on purpose.

* **ListFlights** lists every buffered (exchange, symbol): path descriptor
  ``[exchange, symbol]``, record count, and a ticket that reads it.
* **DoGet** takes a UTF-8 *ticket*: ``SYMBOL[?key=value&...]`` with keys ``latest``,
  ``start``, ``end`` (Unix ms or ISO-8601, percent-encoded), ``exchange``, ``columns``,
  ``follow=true`` (a live tail); ``*`` is the market snapshot and ``@events`` the event log.
* **DoAction** takes ``subscribe``, ``unsubscribe``, ``clear`` and ``status`` with JSON bodies
  and answers one JSON result.
* Errors are gRPC status codes: INVALID_ARGUMENT (bad ticket), NOT_FOUND (unknown symbol),
  UNIMPLEMENTED (unknown action), UNAVAILABLE, UNAUTHENTICATED, PERMISSION_DENIED,
  CANCELLED with extra_info b"slow_consumer" (a live tail fell behind), UNAVAILABLE with
  extra_info b"server_shutdown" (a live tail ended because the server is stopping: a tail never
  ends like a finished stream). With a token, send the header
  ``authorization: Bearer <token>`` on every call.

Run it against a server (``flight-md serve --demo``)::

    python clients/examples/raw_flight.py --symbol BTC/USDT --tail-seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pyarrow as pa
from pyarrow import flight


def section(title: str) -> None:
    print(f"\n== {title}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="flight_md over plain pyarrow.flight")
    parser.add_argument("--location",
                        default=os.environ.get("FLIGHT_MD_LOCATION", "grpc://127.0.0.1:8815"))
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--token", default=os.environ.get("FLIGHT_MD_TOKEN"))
    parser.add_argument("--tail-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)

    client = flight.FlightClient(args.location)
    headers = [(b"authorization", f"Bearer {args.token}".encode())] if args.token else []
    # A deadline for ordinary calls; the live tail below runs without one.
    options = flight.FlightCallOptions(timeout=10.0, headers=headers)

    def get(ticket: str):  # DoGet: ticket text in, Arrow table out
        print(f"DoGet {ticket!r}")
        return client.do_get(flight.Ticket(ticket.encode()), options).read_all()

    def action(name: str, body: dict | None = None):  # DoAction: JSON in, JSON out
        payload = json.dumps(body).encode() if body is not None else b""
        print(f"DoAction {name!r} {payload.decode()!r}")
        results = list(client.do_action(flight.Action(name, payload), options))
        return json.loads(results[0].body.to_pybytes())

    section("ListFlights: what is buffered")
    for info in client.list_flights(b"", options):
        path = ([p.decode() for p in info.descriptor.path] if info.descriptor.path
                else info.descriptor.command.decode())  # @markets is a command descriptor
        print(f"  {path}  records={info.total_records}  "
              f"ticket={info.endpoints[0].ticket.ticket.decode()!r}")

    section("ListActions")
    for act in client.list_actions(options):
        print(f"  {act.type}: {act.description}")

    section("the newest 5 ticks")
    for row in get(f"{args.symbol}?latest=5&columns=timestamp,price,bid,ask").to_pylist():
        print(f"  {row}")

    section("a range with ISO-8601 times (the last 60 s; '+' is percent-encoded as %2B)")
    end = datetime.now(UTC)
    start = end - timedelta(seconds=60)
    ticket = (f"{args.symbol}?start={quote(start.isoformat(), safe=':')}"
              f"&end={quote(end.isoformat(), safe=':')}&columns=timestamp,price")
    table = get(ticket)
    print(f"  {table.num_rows} rows, schema: {table.schema}")

    section("the market snapshot: one row per symbol")
    snapshot = get("*?columns=exchange,symbol,timestamp,price")
    for row in snapshot.to_pylist():
        print(f"  {row}")

    section("the event log")
    for row in get("@events?latest=5").to_pylist():
        print(f"  {row}")

    section("status")
    status = action("status")
    print(json.dumps({"server": status["server"], "exchanges": status["exchanges"]},
                     indent=2))
    for sym in status["symbols"]:
        print(f"  {sym['exchange']} {sym['symbol']}: stored={sym['ticks_stored']} "
              f"age_ms={sym['age_ms']}")

    section("subscribe (idempotent for a symbol already streaming)")
    try:
        print(f"  {action('subscribe', {'symbols': [args.symbol]})}")
    except flight.FlightUnavailableError as exc:
        print(f"  UNAVAILABLE: {str(exc).split('. Detail:')[0]}")

    section("errors are status codes with a readable message")
    for bad in (f"{args.symbol}?latest=ten", "NOPE/USDT"):
        try:
            get(bad)
        # pyarrow raises INVALID_ARGUMENT as ArrowInvalid, NOT_FOUND as ArrowKeyError,
        # UNAVAILABLE as FlightUnavailableError, ...: all of them are ArrowException.
        except pa.ArrowException as exc:
            print(f"  {type(exc).__name__}: {str(exc).split('. Detail:')[0]}")

    section(f"a live tail for {args.tail_seconds:g} s (follow=true, cancelled by the client)")
    reader = client.do_get(flight.Ticket(f"{args.symbol}?latest=0&follow=true".encode()),
                           flight.FlightCallOptions(headers=headers))
    timer = threading.Timer(args.tail_seconds, reader.cancel)
    timer.start()
    rows = 0
    started = time.monotonic()
    try:
        for chunk in reader:  # each chunk is a record batch of new ticks
            for tick in chunk.data.to_pylist():
                rows += 1
                print(f"  {tick['timestamp']} {tick['symbol']} {tick['price']}")
    except flight.FlightCancelledError:
        pass  # our own cancel: the normal way to stop a tail
    except flight.FlightUnavailableError as exc:
        if exc.extra_info != b"server_shutdown":
            raise
        print("  the server is shutting down: the tail ended (UNAVAILABLE, server_shutdown)")
    finally:
        timer.cancel()
    print(f"  {rows} live ticks in {time.monotonic() - started:.1f} s")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

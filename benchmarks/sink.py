"""A websocket client that subscribes to the emulator and throws away what it reads.

It makes the emulator do all the work of an ingest run (render each frame, frame it, write
it to a socket at the configured rate) while costing the machine next to nothing itself:
no websocket parsing, one ``recv_into`` per up to 1 MiB. A measurement that must run with
the emulator competing for the CPU as it does in the ingest runs (ccxt's parse ceiling)
starts one of these beside the emulator.

The sink sends an unsolicited pong every few seconds (allowed by RFC 6455) so that the
emulator, which closes connections that miss pongs, keeps it.

Run as a child: ``python -m benchmarks.sink --url URL --symbols N --stream bookTicker``
(Binance's ``SUBSCRIBE`` on ``/ws``), or with ``--path P --send JSON`` for any venue: the
websocket path (with its query) and the list of control messages to send after the handshake.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from benchmarks import ticks
from benchmarks.process import Child, serve

__all__ = ["sink"]

PONG_INTERVAL_S = 5.0
_TEXT, _PONG = 0x1, 0xA


def _frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (clients must mask, RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _connect(url: str, path: str, messages: Sequence[str]) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), 10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the emulator closed the connection during the handshake")
        head += chunk
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise ConnectionError(f"websocket handshake refused: {status!r}")
    for message in messages:
        sock.sendall(_frame(_TEXT, message.encode()))
    sock.settimeout(None)
    return sock


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sink")
    parser.add_argument("--url", required=True)
    parser.add_argument("--symbols", type=int, required=True)
    parser.add_argument("--stream", default="bookTicker")
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--send", help="JSON list of control messages (default: Binance's "
                        "SUBSCRIBE of --symbols x --stream)")
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args(argv)
    if args.send is None:
        streams = [f"{s.replace('/', '').lower()}@{args.stream}" for s in ticks.symbols(args.symbols)]
        messages = [json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1})]
    else:
        messages = json.loads(args.send)
    sock = _connect(args.url, args.path, messages)
    received = [0]
    done = threading.Event()
    lock = threading.Lock()

    def read() -> None:
        buffer = bytearray(1 << 20)
        while not done.is_set():
            try:
                n = sock.recv_into(buffer)
            except OSError:
                break
            if n == 0:
                break
            received[0] += n

    def pong() -> None:
        while not done.wait(PONG_INTERVAL_S):
            try:
                with lock:
                    sock.sendall(_frame(_PONG, b""))
            except OSError:
                break

    for target in (read, pong):
        threading.Thread(target=target, daemon=True, name=f"sink-{target.__name__}").start()

    def count() -> dict[str, float]:
        return {"bytes": received[0], "time": time.perf_counter()}

    def close() -> None:
        done.set()
        sock.close()

    serve({"messages": len(messages)}, {"count": count}, args.max_seconds, on_exit=close)


def sink(url: str, symbols: int, stream: str = "bookTicker", max_seconds: float = 900, *,
         path: str = "/ws", messages: Sequence[str] | None = None) -> Child:
    """A sink child (not started: use it in a ``with``) subscribed to ``symbols`` streams
    (Binance), or opening ``path`` and sending ``messages`` (any venue)."""
    extra = [] if messages is None else ["--path", path, "--send", json.dumps(list(messages))]
    return Child("benchmarks.sink", "--url", url, "--symbols", str(symbols), "--stream", stream,
                 *extra, name=f"sink-{symbols}", max_seconds=max_seconds)


if __name__ == "__main__":
    _main()

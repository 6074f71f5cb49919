"""Which nodes are on the bus, and which serving node holds which ring: the node registry.

Every node (ingestion and serving) keeps one record in the JetStream key-value bucket
:data:`BUCKET` (``flight_md_nodes``), under its node name::

    {"node": "s1", "role": "serve" | "ingest",
     "location": "grpc://host:port" | null,     # where Flight clients reach it (serving nodes)
     "subjects": ["md.*.binance.>"],            # the subject filters it consumes (serving nodes)
     "exchanges": ["binance"],                  # the exchanges it streams (ingestion nodes)
     "host": "...", "pid": 123, "started_ms": ..., "seen_ms": ...}

A node puts its record every :data:`PUT_INTERVAL_S` seconds (``seen_ms`` is the put's wall
clock) and deletes it when it stops. A node that died without deleting it counts as gone
once its record was not refreshed for :data:`NODE_TTL_S` seconds: the bucket's ``max_age``
drops such a record from the stream (so a node starting later never sees it), and each
:class:`Registry` forgets it by itself (a watch gets no word of an expiry): a record is live
until :data:`NODE_TTL_S` after it arrived, less its age by the server's timestamp for the
records a new watch replays.

Threads: the registry runs on the bus's asyncio loop (its put and watch tasks); the live
records are kept in a dict replaced whole under a lock, so that :meth:`Registry.nodes` and
:meth:`Registry.holders`, which Flight handlers call from gRPC threads, read them without a
network call and without waiting for the loop.

Subject filters match as NATS matches them (:func:`subject_matches`): ``*`` is one token,
``>`` the rest (at least one token).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api
from nats.js.kv import KeyValue

from flight_md.bus.connection import BUS_ERRORS, BusUnavailable
from flight_md.bus.consumer import validate_node_name
from flight_md.bus.subjects import subject_for
from flight_md.schema import now_ms

__all__ = [
    "BUCKET",
    "NODE_TTL_S",
    "PUT_INTERVAL_S",
    "Registry",
    "node_record",
    "subject_matches",
]

logger = logging.getLogger(__name__)

BUCKET: Final = "flight_md_nodes"
"""The key-value bucket of node records (one key per node name)."""
PUT_INTERVAL_S: Final = 2.0
"""A node puts its record this often."""
NODE_TTL_S: Final = 10.0
"""A record not refreshed for this long is a node that is gone."""
STOP_TIMEOUT_S: Final = 2.0
""":meth:`Registry.stop` waits at most this long to delete the node's record."""
ROLES: Final = ("ingest", "serve")


def subject_matches(subject_filter: str, subject: str) -> bool:
    """Whether ``subject`` matches ``subject_filter`` as NATS matches them: ``*`` stands for
    exactly one token, ``>`` (the last token) for one or more tokens, anything else for itself.
    """
    want = subject_filter.split(".")
    have = subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return index == len(want) - 1 and len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(have) == len(want)


def node_record(role: str, *, location: str | None = None, subjects: Sequence[str] = (),
                exchanges: Sequence[str] = ()) -> dict[str, Any]:
    """The caller's part of a node's record: its role, Flight location (serving nodes), the
    subject filters it consumes (serving nodes) and the exchanges it streams (ingestion
    nodes). :class:`Registry` adds ``node``, ``host``, ``pid``, ``started_ms``, ``seen_ms``.

    Raises:
        ValueError: ``role`` is not ``"ingest"`` or ``"serve"``.
    """
    if role not in ROLES:
        raise ValueError(f"unknown node role {role!r}; expected one of: {', '.join(ROLES)}")
    return {"role": role, "location": location, "subjects": list(subjects),
            "exchanges": list(exchanges)}


@dataclass(frozen=True, slots=True)
class _Live:
    """A record as this node last received it, and until when it counts as live."""

    record: dict[str, Any]
    expires: float  # time.monotonic()


def _valid(record: object) -> dict[str, Any] | None:
    """``record`` if it has the shape routing relies on, else ``None`` (another program's
    or a newer version's key in the bucket is ignored, not trusted)."""
    if not isinstance(record, dict) or not isinstance(record.get("node"), str):
        return None
    if record.get("role") not in ROLES:
        return None
    for key in ("subjects", "exchanges"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
    location = record.get("location")
    if location is not None and not isinstance(location, str):
        return None
    return record


class Registry:
    """This node's record in the bucket, and every live node's record, watched.

    Args:
        client: The bus connection (the node's one nats connection; the registry runs on
            its loop).
        node: This node's name (:func:`~flight_md.bus.consumer.validate_node_name`): its key.
        record: Its role, location, subjects, exchanges (:func:`node_record`).
        bucket: The bucket's name (tests give their own).
        interval_s: How often the record is put.
        ttl_s: How long a record counts as live without a refresh.
    """

    def __init__(self, client: Client, node: str, record: Mapping[str, Any], *,
                 bucket: str = BUCKET, interval_s: float = PUT_INTERVAL_S,
                 ttl_s: float = NODE_TTL_S) -> None:
        self.client = client
        self.node = validate_node_name(node)
        self.bucket = bucket
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self._record: dict[str, Any] = {
            **node_record(str(record.get("role", "serve"))), **dict(record), "node": self.node,
            "host": socket.gethostname(), "pid": os.getpid(), "started_ms": now_ms(),
            "seen_ms": None}
        if _valid(self._record) is None:
            raise ValueError(f"node record of {self.node!r} is not valid: {self._record!r}")
        self._kv: KeyValue | None = None
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._counts = {"puts": 0, "put_failures": 0, "watch_restarts": 0, "invalid": 0}
        self._last_error: str | None = None

    def __repr__(self) -> str:
        return f"Registry(node={self.node!r}, bucket={self.bucket!r}, live={len(self._live)})"

    # -- lifecycle (on the bus loop) ---------------------------------------------------------

    async def start(self) -> Self:
        """Open (or create) the bucket, put this node's record, and start the put and watch
        tasks. Returns once the watch has replayed the records already in the bucket, so
        :meth:`nodes` is complete from then on.

        Raises:
            BusUnavailable: the bus is away or has no JetStream.
        """
        try:
            self._kv = await self._open()
            await self._put()
        except BUS_ERRORS as exc:
            raise _unavailable(f"cannot open the node registry (bucket {self.bucket!r})",
                               exc) from None
        self._stopping = False
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        self._tasks = [loop.create_task(self._put_loop(), name=f"registry-put-{self.node}"),
                       loop.create_task(self._watch_loop(ready), name=f"registry-watch-{self.node}")]
        done, _ = await asyncio.wait({ready, self._tasks[1]}, timeout=self.ttl_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            logger.warning("registry %s: the watch replayed no records within %.0f s; routing "
                           "sees nodes as they put their records", self.node, self.ttl_s)
        return self

    async def stop(self) -> None:
        """Stop putting and watching, and delete this node's record (bounded: a bus that is
        away leaves the record to expire)."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        # Python 3.11's wait_for (in nats-py's calls and the watch) can swallow a cancel that
        # arrives as its awaitable completes: the loops also check _stopping, and the cancel
        # is repeated until they end (each round bounded).
        while tasks:
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S / 4)
            tasks = list(pending)
        kv = self._kv
        if kv is not None:
            try:
                await asyncio.wait_for(kv.delete(self.node), STOP_TIMEOUT_S)
            except BUS_ERRORS as exc:
                logger.info("registry %s: record not deleted (%s); it expires in %.0f s",
                            self.node, type(exc).__name__, self.ttl_s)
        with self._lock:
            self._live = {}

    async def _open(self) -> KeyValue:
        js = self.client.jetstream()
        try:
            return await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            pass
        config = api.KeyValueConfig(bucket=self.bucket, history=1, ttl=self.ttl_s,
                                    storage=api.StorageType.FILE,
                                    description="flight_md nodes (issue 16)")
        try:
            return await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            # Another node created it meanwhile (or with other settings): use it as it is.
            return await js.key_value(self.bucket)

    def update(self, **fields: Any) -> None:
        """Change fields of this node's record (e.g. the exchanges an ingestion node streams
        after a subscribe); the next put carries them. Thread-safe."""
        with self._lock:
            record = {**self._record, **fields, "node": self.node}
            if _valid(record) is None:
                raise ValueError(f"node record of {self.node!r} is not valid: {record!r}")
            self._record = record

    async def _put(self) -> None:
        assert self._kv is not None
        with self._lock:
            record = {**self._record, "seen_ms": now_ms()}
        await self._kv.put(self.node, json.dumps(record, separators=(",", ":")).encode())
        self._counts["puts"] += 1

    async def _put_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval_s)
            self._expire()
            try:
                await self._put()
                self._last_error = None
            except BUS_ERRORS as exc:
                self._counts["put_failures"] += 1
                self._last_error = f"put: {type(exc).__name__}"
                logger.debug("registry %s: put failed: %s", self.node, type(exc).__name__)
                if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.js.errors.NotFoundError):
                    # The bucket is gone (deleted, or a server that lost its store): again.
                    with contextlib.suppress(*BUS_ERRORS):
                        self._kv = await self._open()

    async def _watch_loop(self, ready: asyncio.Future[None]) -> None:
        """Keep the live records from a watch of the whole bucket. This node's own puts come
        through it every interval: a watch silent for three intervals (a server that
        restarted and lost the watch's consumer) is started again."""
        while not self._stopping:
            kv = self._kv
            try:
                assert kv is not None
                # nats-py's watcher is untyped.
                watcher: Any = await kv.watchall()
            except BUS_ERRORS as exc:
                self._last_error = f"watch: {type(exc).__name__}"
                await asyncio.sleep(self.interval_s)
                continue
            replaying = True
            try:
                while not self._stopping:
                    try:
                        entry = await watcher.updates(timeout=3 * self.interval_s)
                    except nats.errors.TimeoutError:
                        break
                    if entry is None:  # the replay of what the bucket held is over
                        replaying = False
                        if not ready.done():
                            ready.set_result(None)
                        continue
                    self._apply(entry, replaying)
            finally:
                with contextlib.suppress(*BUS_ERRORS):
                    await watcher.stop()
            self._counts["watch_restarts"] += 1
            self._expire()

    def _apply(self, entry: KeyValue.Entry, replayed: bool) -> None:
        now = time.monotonic()
        if entry.operation is not None or entry.value is None:  # deleted, purged, expired
            with self._lock:
                self._live = {k: v for k, v in self._live.items() if k != entry.key}
            return
        try:
            record = _valid(json.loads(entry.value))
        except (ValueError, UnicodeDecodeError):
            record = None
        if record is None or record["node"] != entry.key:
            self._counts["invalid"] += 1
            return
        life = self.ttl_s
        created = entry.created
        if replayed and isinstance(created, datetime.datetime):
            # Put before this watch began: it lives as long as it has left by the server's
            # clock (a record of a node that died 8 s ago is not given another 10 s).
            age = (datetime.datetime.now(datetime.UTC) - created).total_seconds()
            life -= min(max(age, 0.0), self.ttl_s)
        with self._lock:
            self._live = {**self._live, entry.key: _Live(record, now + life)}

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            if any(live.expires <= now for live in self._live.values()):
                self._live = {k: v for k, v in self._live.items() if v.expires > now}

    # -- reads (any thread, no network) ------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """Every live node's record (this node's included), sorted by node name."""
        now = time.monotonic()
        with self._lock:
            live = self._live
        return [dict(live[name].record) for name in sorted(live) if live[name].expires > now]

    def holders(self, channel: str, exchange: str, symbol: str) -> list[dict[str, Any]]:
        """The live serving nodes other than this one, with a location, whose subject filters
        match the ring ``(channel, exchange, symbol)``: where a client that asked this node
        for the ring can read it. Sorted by node name.

        Raises:
            InvalidSubject: an unknown channel or an empty exchange or symbol.
        """
        subject = subject_for(channel, exchange, symbol)
        return [record for record in self.nodes()
                if record["role"] == "serve" and record["node"] != self.node
                and record.get("location")
                and any(subject_matches(f, subject) for f in record.get("subjects", []))]

    def status(self) -> dict[str, Any]:
        """The registry's part of the bus status: bucket, live nodes, put and watch counts."""
        return {"bucket": self.bucket, "nodes": [r["node"] for r in self.nodes()],
                **self._counts, "last_error": self._last_error}


def _unavailable(what: str, exc: BaseException) -> BusUnavailable:
    """``exc`` as :class:`BusUnavailable`: its class and, for a JetStream API error, the
    server's description (neither names a URL or a credential)."""
    detail = type(exc).__name__
    description = getattr(exc, "description", None)
    if isinstance(exc, nats.js.errors.APIError) and description:
        detail += f": {description}"
    return BusUnavailable(f"{what}: {detail}")

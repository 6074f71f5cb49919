"""What a serving node's Flight service knows of the bus: which rings it holds, where the
others are, and the cluster's status.

:class:`BusView` is the interface :class:`~flight_md.service.FlightMarketDataServer` takes as
``bus=`` (the service imports it only for type checking, so that a server without a bus never
imports nats-py); :class:`ClusterView` implements it from this node's subject filters and
advertised location, the :class:`~flight_md.bus.registry.Registry` (the other nodes' records),
the serving node's bus status (``ServeBus.status``) and, for :meth:`ClusterView.cluster`, the
control protocol's ``mdctl.cluster`` gather (``BusControl.cluster``) and the stream's own view.

Threads: every method but :meth:`ClusterView.cluster` reads memory only (the registry's cached
records, the status callable's cache) and is called on gRPC threads on the request path;
``cluster`` waits for the bus, at most its ``timeout``, and is called only by the ``status``
action.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from nats.js.client import JetStreamContext

from flight_md.bus.connection import BUS_ERRORS
from flight_md.bus.registry import Registry, subject_matches
from flight_md.bus.subjects import InvalidSubject, decode_token, subject_for, validate_filter
from flight_md.errors import FlightMdError

__all__ = ["CLUSTER_TIMEOUT_S", "BusView", "ClusterSource", "ClusterView"]

CLUSTER_TIMEOUT_S: Final = 0.5
"""How long the ``status`` action waits for the cluster's answers (every node's and the
stream's, gathered at the same time)."""
_CONSUMERS_SHOWN: Final = 64


class BusView(Protocol):
    """The bus as a serving node's Flight service sees it (``FlightMarketDataServer(bus=)``).

    ``holds``, ``locations``, ``exchanges``, ``subjects`` and ``status`` answer from memory
    (they run on the request path of every routed call); ``cluster`` may wait for the bus, at
    most ``timeout`` seconds.
    """

    @property
    def subjects(self) -> tuple[str, ...]:
        """The subject filters this node consumes (``--bus-subjects``)."""
        ...

    def holds(self, channel: str, exchange: str, symbol: str) -> bool:
        """Whether this node's filters take the ring's subject (it holds it, or will)."""
        ...

    def locations(self, channel: str, exchange: str, symbol: str) -> list[str]:
        """The Flight locations of the other live serving nodes that hold the ring."""
        ...

    def exchanges(self) -> list[str]:
        """The exchanges the bus knows of: those ingestion nodes stream, and those a serving
        node's filters name (for a ticket that gives no exchange)."""
        ...

    def status(self) -> dict[str, Any]:
        """This node's bus status (the consumer's counts and lag, the registry)."""
        ...

    def cluster(self, timeout: float) -> dict[str, Any]:
        """``{"nodes": [every node's status], "stream": {the stream's view}}``, gathered
        within about ``timeout`` seconds."""
        ...


class ClusterSource(Protocol):
    """Who gathers every node's answer on ``mdctl.cluster`` (``BusControl``)."""

    def cluster(self, timeout: float) -> list[dict[str, Any]]: ...


class ClusterView:
    """:class:`BusView` from this node's filters, its location and the registry.

    Args:
        registry: The started :class:`~flight_md.bus.registry.Registry` of this node.
        subjects: The subject filters this node consumes.
        location: The Flight location other nodes route clients to (``--advertise``), or
            ``None``.
        status: This node's bus status (``ServeBus.status``: cached, never waits).
        control: Gathers every node's status on ``mdctl.cluster``; without it
            :meth:`cluster` lists the registry's records (each node's role, location,
            filters, last put) instead of their answers.
        loop: The bus loop the registry's connection runs on, for the stream's view.
        stream: The JetStream stream of market data (``BusOptions.stream``).
    """

    def __init__(self, registry: Registry, *, subjects: Sequence[str], location: str | None,
                 status: Callable[[], dict[str, Any]] | None = None,
                 control: ClusterSource | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, stream: str = "MD") -> None:
        self.registry = registry
        self._subjects = tuple(validate_filter(s) for s in subjects)
        self.location = location
        self._status = status
        self.control = control
        self.loop = loop
        self.stream = stream

    def __repr__(self) -> str:
        return (f"ClusterView(node={self.registry.node!r}, subjects={self._subjects!r}, "
                f"location={self.location!r})")

    @property
    def subjects(self) -> tuple[str, ...]:
        return self._subjects

    def holds(self, channel: str, exchange: str, symbol: str) -> bool:
        try:
            subject = subject_for(channel, exchange, symbol)
        except InvalidSubject:
            return False
        return any(subject_matches(f, subject) for f in self._subjects)

    def locations(self, channel: str, exchange: str, symbol: str) -> list[str]:
        try:
            holders = self.registry.holders(channel, exchange, symbol)
        except InvalidSubject:
            return []
        found = dict.fromkeys(str(h["location"]) for h in holders
                              if h["location"] != self.location)
        return list(found)

    def exchanges(self) -> list[str]:
        found: set[str] = set()
        filters = list(self._subjects)
        for record in self.registry.nodes():
            found.update(record.get("exchanges", []))
            filters += record.get("subjects", [])
        for subject_filter in filters:
            tokens = subject_filter.split(".")
            if len(tokens) > 2 and tokens[2] not in ("*", ">"):
                with contextlib.suppress(InvalidSubject):
                    found.add(decode_token(tokens[2]))
        return sorted(found)

    def status(self) -> dict[str, Any]:
        own: dict[str, Any] = {}
        if self._status is not None:
            try:
                own = dict(self._status())
            except FlightMdError as exc:
                own = {"error": str(exc)}
        return {**own, "node": self.registry.node, "advertise": self.location,
                "subjects": list(self._subjects), "registry": self.registry.status()}

    def cluster(self, timeout: float = CLUSTER_TIMEOUT_S) -> dict[str, Any]:
        """Every node's status and the stream's view, asked for at the same time and gathered
        for at most about ``timeout`` seconds: a node that did not answer in time is listed
        from its registry record with ``"answered": false``."""
        deadline = time.monotonic() + timeout
        stream: concurrent.futures.Future[dict[str, Any]] | None = None
        if self.loop is not None and not self.loop.is_closed():
            stream = asyncio.run_coroutine_threadsafe(self._stream_view(), self.loop)
        records = {r["node"]: r for r in self.registry.nodes()}
        nodes: list[dict[str, Any]] = []
        error: str | None = None
        if self.control is not None:
            try:
                nodes = [{**answer, "answered": True} for answer in self.control.cluster(timeout)]
            except FlightMdError as exc:
                error = str(exc)
        else:
            own = records.get(self.registry.node)
            if own is not None:
                nodes.append({**own, "answered": True, "status": self.status()})
        answered = {n.get("node") for n in nodes}
        nodes += [{**_summary(record), "answered": False}
                  for name, record in records.items() if name not in answered]
        nodes.sort(key=lambda n: str(n.get("node")))
        result: dict[str, Any] = {"nodes": nodes, "source": "mdctl.cluster"
                                  if self.control is not None else "registry"}
        if error is not None:
            result["error"] = error
        result["stream"] = self._stream_result(stream, deadline)
        return result

    def _stream_result(self, future: concurrent.futures.Future[dict[str, Any]] | None,
                       deadline: float) -> dict[str, Any]:
        if future is None:
            return {"name": self.stream, "error": "no bus loop to ask the stream on"}
        try:
            return future.result(max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            future.cancel()
            return {"name": self.stream, "error": "the bus did not answer in time"}
        except BUS_ERRORS as exc:
            return {"name": self.stream, "error": f"cannot read the stream: {type(exc).__name__}"}

    async def _stream_view(self) -> dict[str, Any]:
        js: JetStreamContext = self.registry.client.jetstream()
        info = await js.stream_info(self.stream)
        consumers = await js.consumers_info(self.stream)
        state = info.state
        shown = sorted(consumers, key=lambda c: c.name or "")[:_CONSUMERS_SHOWN]
        return {
            "name": self.stream, "messages": state.messages, "bytes": state.bytes,
            "first_seq": state.first_seq, "last_seq": state.last_seq,
            "consumer_count": state.consumer_count,
            "consumers": [{
                "name": c.name,
                "filter": (c.config.filter_subjects or [c.config.filter_subject])
                if c.config is not None else None,
                "num_pending": c.num_pending, "num_ack_pending": c.num_ack_pending,
                "num_redelivered": c.num_redelivered,
                "delivered_stream_seq": c.delivered.stream_seq if c.delivered else None,
                "ack_floor_stream_seq": c.ack_floor.stream_seq if c.ack_floor else None,
            } for c in shown],
        }


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """A registry record as the cluster lists a node that gave no answer."""
    keep = ("node", "role", "location", "subjects", "exchanges", "host", "pid", "started_ms",
            "seen_ms")
    return {key: record.get(key) for key in keep}

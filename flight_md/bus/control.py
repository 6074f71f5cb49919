"""Control over the bus: subscribe, unsubscribe, markets and status reach the ingestion node
that streams an exchange, and every node answers for the cluster.

Core NATS request/reply (not JetStream: a control call is answered now or not at all).
Subjects::

    mdctl.<exchange token>.<verb>   verb: subscribe | unsubscribe | markets | status
                                    answered by ONE ingestion node that streams the exchange
                                    (a queue group: the first protocol, kept for old askers)
    mdctl.<exchange token>.<verb>.all
                                    answered by EVERY ingestion node that streams it
    mdctl.<exchange token>.<verb>.to.<node>
                                    answered by that ingestion node alone
    mdctl.cluster                   answered by every node, ingestion and serving: its own
                                    status; the asker gathers the replies for a bounded time

(the exchange token as in :mod:`flight_md.bus.subjects`). Requests and replies are JSON
objects::

    subscribe, unsubscribe   {"symbols": ["BTC/USDT", ...], "channels": [...] (optional)}
                         ->  the ingestion control's answer ({"exchange", "subscribed" |
                             "unsubscribed", "channels"?}) plus "node": the node that acted
    markets                  {"pattern": "BTC/*" | null}
                         ->  {"node", "markets": [MarketInfo as an object, ...]}
    status                   {}
                         ->  the node's status, its "ingestion" cut to the exchange
    cluster                  {}
                         ->  {"node", "role": "ingest" | "serve", ...its status...}; an
                             ingestion node's holds "exchanges" and "ingestion"
                             ({"exchanges": [ExchangeStatus], "symbols": [SymbolStatus]})

A serving node with the node registry (:mod:`flight_md.bus.registry`) learns from it which
exchanges are streamed (an ingestion node's record lists them), asks each exchange's
``status`` for the merged ingestion status, and stops a cluster round once every live node
answered; without one it asks ``mdctl.cluster`` and waits the round out.

Several ingestion nodes may stream one exchange (symbol shards). :class:`BusControl` never
relies on the queue group, which would hand a request to one of them at random: ``status``
and ``markets`` ask every node of the exchange (``.all``) and merge the answers; a
``subscribe`` or ``unsubscribe`` first asks each node's ``status`` (``.all``) to learn which
node streams which symbol, then sends each node its part (``.to.<node>``): an unsubscribe
reaches every node streaming one of its symbols (a symbol no node streams goes, with the whole
request, to one node, which refuses it as a lone node does), a subscribe of a symbol some node
streams goes to that node and new symbols to exactly one node (:func:`subscribe_target`: the
fewest symbols, ties by name). The answer of one node is that node's; of several, the merged
symbols, ``"node"`` the acting nodes' names joined by ``", "`` and ``"nodes"`` each node's own
answer (or error). A round of ``.all`` waits :data:`CLUSTER_TIMEOUT_S`, or until as many nodes
answered as the registry lists for the exchange.

A failed call answers ``{"error": <class name of a flight_md.errors class>, "message": ...}``
(never a traceback; anything that is not a flight_md error answers ``Unavailable`` naming
only its type, so no exchange message, which could quote a credential, crosses), and a body
that is not such an object answers ``InvalidActionBody``.

:class:`ControlResponder` answers on a node's loop; :class:`BusControl` is the serving node's
:class:`~flight_md.control.IngestionControl`, called from gRPC threads, which hands each
request to the bus loop (``asyncio.run_coroutine_threadsafe(...).result(timeout)``): the one
point where those threads meet the bus loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, fields, replace
from typing import Any, Final, Self, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from flight_md import errors
from flight_md.bus.connection import BUS_ERRORS
from flight_md.bus.subjects import InvalidSubject, decode_token, encode_token
from flight_md.control import (
    ClockSkew,
    ExchangeStatus,
    IngestionControl,
    IngestionStatus,
    MarketInfo,
    SymbolStatus,
    submit_to_loop,
)
from flight_md.errors import FlightMdError, InvalidActionBody, InvalidArgument, Unavailable, UnknownExchange

__all__ = [
    "CLUSTER_SUBJECT",
    "CLUSTER_TIMEOUT_S",
    "CONTROL_PREFIX",
    "VERBS",
    "BusControl",
    "ControlResponder",
    "control_subject",
    "error_reply",
    "fleet_subject",
    "markets_from_json",
    "markets_to_json",
    "node_subject",
    "status_from_json",
    "status_to_json",
    "subscribe_target",
]

logger = logging.getLogger(__name__)

CONTROL_PREFIX: Final = "mdctl"
CLUSTER_SUBJECT: Final = f"{CONTROL_PREFIX}.cluster"
VERBS: Final = ("subscribe", "unsubscribe", "markets", "status")
CLUSTER_TIMEOUT_S: Final = 0.5
"""How long a cluster status gathers replies (unless every node it expects answered first)."""
DEFAULT_TIMEOUT_S: Final = 12.0
"""How long a control call waits for the ingestion node: a little longer than the node waits
for its own ingestion loop (10 s, :data:`flight_md.ingest.manager.DEFAULT_CONTROL_TIMEOUT`; a
subscribe waits for the exchange), so that its answer, even a timeout, arrives."""
STATUS_CACHE_S: Final = 1.0
"""A serving node's merged ingestion status is reused this long: the service asks for it on
paths that must not wait a cluster round each time (which exchanges are known)."""
QUEUE_GROUP: Final = "flight-md-ingest"
FLEET_TOKEN: Final = "all"
"""The last token of a request every ingestion node of the exchange answers."""
NODE_TOKEN: Final = "to"
"""The token before a node name: a request that node alone answers."""

T = TypeVar("T")
StatusSource = Callable[[], Awaitable[dict[str, Any]]] | Callable[[], dict[str, Any]]


def control_subject(exchange: str, verb: str) -> str:
    """``mdctl.<exchange token>.<verb>``.

    Raises:
        InvalidSubject: an empty exchange.
    """
    return f"{CONTROL_PREFIX}.{encode_token(exchange)}.{verb}"


def fleet_subject(exchange: str, verb: str) -> str:
    """``mdctl.<exchange token>.<verb>.all``: every ingestion node of ``exchange`` answers."""
    return f"{control_subject(exchange, verb)}.{FLEET_TOKEN}"


def node_subject(exchange: str, verb: str, node: str) -> str:
    """``mdctl.<exchange token>.<verb>.to.<node>``: ingestion node ``node`` alone answers."""
    return f"{control_subject(exchange, verb)}.{NODE_TOKEN}.{encode_token(node)}"


def subscribe_target(streamed: dict[str, dict[str, set[str]]]) -> str:
    """The node a symbol no node streams is subscribed on: the one streaming the fewest
    symbols, ties by name (deterministic, so two askers at once choose the same node).

    Args:
        streamed: node -> {symbol: its channels} (not empty).
    """
    return min(streamed, key=lambda node: (len(streamed[node]), node))


# -- JSON forms -------------------------------------------------------------------------------


def status_to_json(status: IngestionStatus) -> dict[str, Any]:
    """``status`` as JSON-ready data (each dataclass an object, tuples lists)."""
    return {"exchanges": [asdict(e) for e in status.exchanges],
            "symbols": [asdict(s) for s in status.symbols]}


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data``'s keys that ``cls`` has (a newer node may send more)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def status_from_json(data: dict[str, Any]) -> IngestionStatus:
    """The :class:`IngestionStatus` :func:`status_to_json` made ``data`` of.

    Raises:
        InvalidArgument: ``data`` is not such a status.
    """
    try:
        exchanges = []
        for item in data.get("exchanges", ()):
            values = _known(ExchangeStatus, item)
            values["symbols"] = tuple(values.get("symbols", ()))
            values["clock_skew"] = ClockSkew(**_known(ClockSkew, values.get("clock_skew") or {}))
            exchanges.append(ExchangeStatus(**values))
        symbols = [SymbolStatus(**_known(SymbolStatus, item)) for item in data.get("symbols", ())]
    except (TypeError, AttributeError) as exc:
        raise InvalidArgument(f"an ingestion status on the bus is malformed: {exc}") from None
    return IngestionStatus(tuple(exchanges), tuple(symbols))


def markets_to_json(markets: Sequence[MarketInfo]) -> list[dict[str, Any]]:
    return [asdict(m) for m in markets]


def markets_from_json(data: Sequence[dict[str, Any]]) -> tuple[MarketInfo, ...]:
    """The markets :func:`markets_to_json` made ``data`` of.

    Raises:
        InvalidArgument: ``data`` is not such a list.
    """
    try:
        return tuple(MarketInfo(**_known(MarketInfo, item)) for item in data)
    except (TypeError, AttributeError) as exc:
        raise InvalidArgument(f"a market list on the bus is malformed: {exc}") from None


def error_reply(error: BaseException, what: str) -> dict[str, str]:
    """The reply of a failed call: a flight_md error as itself, anything else as
    ``Unavailable`` naming only its type (see the module docstring)."""
    if isinstance(error, FlightMdError):
        return {"error": type(error).__name__, "message": str(error)}
    return {"error": "Unavailable", "message": f"{what} failed: {type(error).__name__}"}


def _raise_reply(reply: Any, what: str) -> dict[str, Any]:
    """``reply`` if it is a success, else raise the flight_md error it names."""
    if not isinstance(reply, dict):
        raise Unavailable(f"{what}: the node's reply is not a JSON object")
    name = reply.get("error")
    if name is None:
        return reply
    cls = getattr(errors, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, FlightMdError)):
        cls = Unavailable
    raise cls(str(reply.get("message", "")))


def _body(data: bytes) -> dict[str, Any]:
    """A request body: a JSON object (empty: ``{}``).

    Raises:
        InvalidActionBody: it is not.
    """
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidActionBody(f"a control request must be a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidActionBody(f"a control request must be a JSON object, got "
                                f"{type(body).__name__}")
    return body


def _symbols(body: dict[str, Any]) -> list[str]:
    symbols = body.get("symbols")
    if isinstance(symbols, str):
        symbols = [symbols]
    if not isinstance(symbols, list) or not symbols or \
            not all(isinstance(s, str) and s for s in symbols):
        raise InvalidActionBody(f"'symbols' must be a non-empty list of symbols, got {symbols!r}")
    return symbols


def _channels(body: dict[str, Any]) -> list[str] | None:
    channels = body.get("channels")
    if channels is None:
        return None
    if not isinstance(channels, list) or not channels or \
            not all(isinstance(c, str) for c in channels):
        raise InvalidActionBody(f"'channels' must be a non-empty list of channel names, got "
                                f"{channels!r}")
    return channels


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


# -- the answering side -----------------------------------------------------------------------


class ControlResponder:
    """Answers a node's control subjects on the loop its ``client`` runs on.

    Args:
        client: The node's NATS connection.
        node: The node's name (every answer names it).
        role: ``"ingest"`` or ``"serve"``.
        status: The node's status (a dict, JSON-ready), for ``mdctl.cluster`` and ``status``;
            a coroutine function runs on the loop (it must not block), a plain function in
            the loop's default executor.
        control: An ingestion node's control; it may block (``ThreadedControl`` waits for
            the ingestion loop), so it is called in the loop's default executor, never on
            the loop itself.
        exchanges: The exchanges whose ``mdctl.<exchange>.*`` subjects this node answers
            (an ingestion node's streams).
    """

    def __init__(self, client: Client, node: str, role: str, *, status: StatusSource,
                 control: IngestionControl | None = None, exchanges: Sequence[str] = ()) -> None:
        if role not in ("ingest", "serve"):
            raise ValueError(f"role must be 'ingest' or 'serve', got {role!r}")
        if exchanges and control is None:
            raise ValueError("answering an exchange's control subjects needs a control")
        self.client = client
        self.node = node
        self.role = role
        self.exchanges = tuple(dict.fromkeys(exchanges))
        self._status = status
        self._control = control
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.answered = 0
        """Requests answered so far (errors included)."""

    def __repr__(self) -> str:
        return f"ControlResponder(node={self.node!r}, role={self.role!r}, exchanges={self.exchanges!r})"

    async def start(self) -> Self:
        """Subscribe (and make sure the server has the subscriptions before returning)."""
        self._subs.append(await self.client.subscribe(CLUSTER_SUBJECT, cb=self._on_message))
        for exchange in self.exchanges:
            base = f"{CONTROL_PREFIX}.{encode_token(exchange)}.*"
            self._subs.append(await self.client.subscribe(base, queue=QUEUE_GROUP,
                                                          cb=self._on_message))
            self._subs.append(await self.client.subscribe(f"{base}.{FLEET_TOKEN}",
                                                          cb=self._on_message))
            self._subs.append(await self.client.subscribe(
                f"{base}.{NODE_TOKEN}.{encode_token(self.node)}", cb=self._on_message))
        with contextlib.suppress(*BUS_ERRORS):
            await self.client.flush(2)
        return self

    async def stop(self) -> None:
        """Stop answering (the requests being answered are cancelled)."""
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(*BUS_ERRORS):
                await sub.unsubscribe()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_message(self, msg: Msg) -> None:
        # One task a request: a subscribe waiting for its exchange holds up no status.
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        what = msg.subject
        try:
            reply: Any = await self._handle(msg.subject, _body(msg.data))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - answered, never raised into nats-py
            if not isinstance(error, FlightMdError):
                logger.warning("control %s failed: %s", what, type(error).__name__)
            reply = error_reply(error, what)
        self.answered += 1
        if not msg.reply:
            return
        try:
            payload = _dumps(reply)
        except (TypeError, ValueError) as error:
            payload = _dumps(error_reply(error, what))
        limit = self.client.max_payload
        if limit and len(payload) > limit:
            # Unsent, the asker would only time out: say why (a markets list without a pattern).
            payload = _dumps(error_reply(errors.RequestTooLarge(
                f"the answer to {what} is {len(payload)} bytes, more than the bus takes "
                f"({limit}); narrow it (a symbol pattern)"), what))
        with contextlib.suppress(*BUS_ERRORS):
            await msg.respond(payload)

    async def node_status(self) -> dict[str, Any]:
        """This node's status with its ``node`` and ``role``."""
        source = self._status
        if inspect.iscoroutinefunction(source):
            found = await source()
        else:
            found = await asyncio.get_running_loop().run_in_executor(None, source)
        return {**found, "node": self.node, "role": self.role}

    async def _handle(self, subject: str, body: dict[str, Any]) -> Any:
        if subject == CLUSTER_SUBJECT:
            return await self.node_status()
        parts = subject.split(".")
        if not (len(parts) == 3 or (len(parts) == 4 and parts[3] == FLEET_TOKEN)
                or (len(parts) == 5 and parts[3] == NODE_TOKEN)):
            raise InvalidArgument(f"control subject {subject!r} is not mdctl.<exchange>.<verb>"
                                  f"[.{FLEET_TOKEN} | .{NODE_TOKEN}.<node>]")
        token, verb = parts[1], parts[2]
        try:
            exchange = decode_token(token)
        except InvalidSubject:
            raise InvalidArgument(f"control subject {subject!r} names no exchange") from None
        if exchange not in self.exchanges:
            raise UnknownExchange(f"node {self.node!r} does not stream {exchange!r}; it streams "
                                  f"{', '.join(self.exchanges) or 'nothing'}")
        control = self._control
        assert control is not None
        loop = asyncio.get_running_loop()
        if verb in ("subscribe", "unsubscribe"):
            symbols, channels = _symbols(body), _channels(body)
            method = control.subscribe if verb == "subscribe" else control.unsubscribe
            if channels is None:
                result = await loop.run_in_executor(None, method, exchange, symbols)
            else:  # ThreadedControl's optional argument (not in the protocol)
                result = await loop.run_in_executor(
                    None, lambda: method(exchange, symbols, channels))  # type: ignore[call-arg]
            return {**result, "node": self.node}
        if verb == "markets":
            pattern = body.get("pattern")
            if pattern is not None and not isinstance(pattern, str):
                raise InvalidActionBody(f"'pattern' must be a symbol glob, got {pattern!r}")
            markets = await loop.run_in_executor(None, control.markets, exchange, pattern)
            return {"node": self.node, "markets": markets_to_json(markets)}
        if verb == "status":
            found = await self.node_status()
            ingestion = found.get("ingestion")
            if isinstance(ingestion, dict):
                found["ingestion"] = {
                    "exchanges": [e for e in ingestion.get("exchanges", ())
                                  if e.get("exchange") == exchange],
                    "symbols": [s for s in ingestion.get("symbols", ())
                                if s.get("exchange") == exchange]}
            return found
        raise errors.UnknownAction(f"unknown control verb {verb!r}; expected one of: "
                                   f"{', '.join(VERBS)}")


# -- several ingestion nodes of one exchange ---------------------------------------------------


def _plan(verb: str, streamed: dict[str, dict[str, set[str]]], names: list[str],
          channels: Sequence[str] | None) -> list[tuple[str, list[str]]]:
    """Which node gets which of ``names`` (see the module docstring), in node order."""
    wanted = set(channels) if channels is not None else None
    parts: dict[str, list[str]] = {}
    if verb == "unsubscribe":
        def owners(symbol: str) -> list[str]:
            return [node for node in sorted(streamed) if symbol in streamed[node]
                    and (wanted is None or wanted & streamed[node][symbol])]
        if not names or any(not owners(s) for s in names):
            # Refused as a lone node refuses it (nothing is unsubscribed anywhere).
            return [(subscribe_target(streamed), names)]
        for symbol in names:
            for node in owners(symbol):
                parts.setdefault(node, []).append(symbol)
    else:
        new = subscribe_target(streamed)
        for symbol in names:
            holders = [node for node in sorted(streamed) if symbol in streamed[node]]
            parts.setdefault(holders[0] if holders else new, []).append(symbol)
    return sorted(parts.items())


def _merge(verb: str, exchange: str, names: Sequence[str], nodes: Sequence[str],
           answers: Sequence[Any]) -> dict[str, Any]:
    """One answer of the nodes' answers to their parts of a subscribe or unsubscribe: a lone
    node's as it is; else the symbols any node took, ``"node"`` the acting nodes joined and
    ``"nodes"`` each node's answer (or its error). Every node failed: the first's error."""
    key = "subscribed" if verb == "subscribe" else "unsubscribed"
    done = [(node, a) for node, a in zip(nodes, answers) if isinstance(a, dict)]
    failed = [(node, a) for node, a in zip(nodes, answers) if not isinstance(a, dict)]
    if not done:
        error = failed[0][1]
        raise error if isinstance(error, Exception) else Unavailable(f"{verb} was cancelled")
    if len(done) == 1 and not failed:
        answer: dict[str, Any] = done[0][1]
        return answer
    took = {s for _, a in done for s in a.get(key) or ()}
    merged: dict[str, Any] = {"exchange": exchange,
                              key: [s for s in dict.fromkeys(names) if s in took]}
    channels = [c for _, a in done for c in a.get("channels") or ()]
    if channels:
        merged["channels"] = list(dict.fromkeys(channels))
    merged["node"] = ", ".join(node for node, _ in done)
    merged["nodes"] = [{**a, "node": node} for node, a in done] + \
        [{"node": node, **error_reply(e, verb)} for node, e in failed]
    return merged


# -- the asking side --------------------------------------------------------------------------


class BusControl:
    """:class:`~flight_md.control.IngestionControl` of a serving node: every call goes over
    the bus to the ingestion node that streams the exchange.

    Thread-safe: call it from any thread but the bus loop's (each call hands its request to
    ``loop`` and blocks for at most ``timeout`` seconds).

    Args:
        loop: The running loop ``client`` belongs to.
        client: The node's NATS connection.
        node: This node's name (for messages).
        timeout: Seconds a call waits for the ingestion node.
        cluster_timeout: Seconds a cluster status gathers replies.
        registry: Optional; an object with ``nodes() -> list[dict]`` (the node registry, D):
            the cluster status stops gathering once every node it lists answered.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Client, node: str, *,
                 timeout: float = DEFAULT_TIMEOUT_S, cluster_timeout: float = CLUSTER_TIMEOUT_S,
                 registry: Any = None) -> None:
        self.loop = loop
        self.client = client
        self.node = node
        self.timeout = timeout
        self.cluster_timeout = cluster_timeout
        self.registry = registry
        self._status: tuple[float, IngestionStatus] | None = None

    def __repr__(self) -> str:
        return f"BusControl(node={self.node!r})"

    # -- IngestionControl -------------------------------------------------------------------

    def subscribe(self, exchange: str | None, symbols: Sequence[str],
                  channels: Sequence[str] | None = None) -> dict[str, Any]:
        """Start streaming ``symbols`` on the ingestion node of ``exchange`` (``None``: the
        only exchange on the bus); returns its answer, ``"node"`` naming it."""
        return self._call(self._change("subscribe", exchange, symbols, channels), "subscribe")

    def unsubscribe(self, exchange: str | None, symbols: Sequence[str],
                    channels: Sequence[str] | None = None) -> dict[str, Any]:
        """Stop streaming ``symbols``; as :meth:`subscribe`."""
        return self._call(self._change("unsubscribe", exchange, symbols, channels),
                          "unsubscribe")

    def status(self) -> IngestionStatus:
        """Every ingestion node's streams merged into one status (from the cluster status;
        reused for :data:`STATUS_CACHE_S`)."""
        cached = self._status
        if cached is not None and time.monotonic() - cached[0] < STATUS_CACHE_S:
            return cached[1]
        status = self._call(self._merged_status(), "status")
        self._status = (time.monotonic(), status)
        return status

    def markets(self, exchange: str | None, pattern: str | None = None,
                ) -> tuple[MarketInfo, ...]:
        """The markets of ``exchange``'s ingestion node (``None``: of every exchange on the
        bus, concatenated)."""
        return self._call(self._markets(exchange, pattern), "markets")

    def cluster(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every node's own status (``mdctl.cluster``), gathered for at most ``timeout``
        seconds (:attr:`cluster_timeout` by default), sorted by node name."""
        wait = self.cluster_timeout if timeout is None else timeout
        return self._call(self.gather(wait), "cluster status", wait + 2.0)

    # -- on the loop ------------------------------------------------------------------------

    async def request(self, exchange: str, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        """One control request to one ingestion node of ``exchange`` (the queue group's
        choice; on the bus loop). With several nodes of an exchange use
        :meth:`request_node` or :meth:`fleet`.

        Raises:
            UnknownExchange: no ingestion node on the bus streams ``exchange``.
            Unavailable: the bus is away, or the node did not answer in time.
            FlightMdError: what the node answered.
        """
        return await self._ask(control_subject(exchange, verb), exchange, verb, body,
                               f"the ingestion node of {exchange!r}")

    async def request_node(self, exchange: str, node: str, verb: str,
                           body: dict[str, Any]) -> dict[str, Any]:
        """One control request to ingestion node ``node`` about ``exchange`` (on the bus
        loop); raises as :meth:`request` (a node gone meanwhile: ``Unavailable``)."""
        try:
            return await self._ask(node_subject(exchange, verb, node), exchange, verb, body,
                                   f"ingestion node {node!r} of {exchange!r}")
        except UnknownExchange as exc:
            if "no ingestion node on the bus" not in str(exc):
                raise
            raise Unavailable(f"ingestion node {node!r} of {exchange!r} left the bus; cannot "
                              f"{verb} there") from None

    async def _ask(self, subject: str, exchange: str, verb: str, body: dict[str, Any],
                   who: str) -> dict[str, Any]:
        what = f"{verb} on {exchange!r}"
        try:
            msg = await self.client.request(subject, _dumps(body), timeout=self.timeout)
        except nats.errors.NoRespondersError:
            raise UnknownExchange(f"no ingestion node on the bus streams {exchange!r}; "
                                  f"cannot {verb}") from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise Unavailable(f"{who} did not answer {verb} within {self.timeout:g} s") from None
        except BUS_ERRORS as exc:
            raise Unavailable(f"cannot {what}: the bus is unreachable "
                              f"({type(exc).__name__})") from None
        try:
            reply = json.loads(msg.data)
        except (ValueError, UnicodeDecodeError):
            raise Unavailable(f"{what}: the node's reply is not JSON") from None
        return _raise_reply(reply, what)

    async def fleet(self, exchange: str, verb: str, body: dict[str, Any],
                    timeout: float | None = None) -> list[dict[str, Any]]:
        """Every ingestion node of ``exchange``'s answer to ``verb`` (``.all``; on the bus
        loop), gathered for at most ``timeout`` seconds (:attr:`cluster_timeout`), sooner
        once as many answered as the registry lists for ``exchange``; sorted by node name,
        error answers included (``{"error", "message"}``, no ``"node"``: last)."""
        wait = self.cluster_timeout if timeout is None else timeout
        nodes = self._registered()
        expected = None
        if nodes is not None:
            expected = sum(1 for r in nodes if r.get("role") == "ingest"
                           and exchange in (r.get("exchanges") or ())) or None
        return await self._collect(fleet_subject(exchange, verb), body, wait, expected,
                                   errors_too=True)

    async def gather(self, timeout: float) -> list[dict[str, Any]]:
        """Every node's answer on ``mdctl.cluster`` within ``timeout`` seconds (sooner if the
        registry lists that many nodes and all answered), sorted by node name."""
        return await self._collect(CLUSTER_SUBJECT, {}, timeout, self._expected())

    async def _collect(self, subject: str, body: dict[str, Any], timeout: float,
                       expected: int | None, *, errors_too: bool = False,
                       ) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def take(msg: Msg) -> None:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                found = json.loads(msg.data)
                if isinstance(found, dict) and (errors_too or "error" not in found):
                    replies.append(found)
            if expected is not None and len(replies) >= expected:
                done.set()

        inbox = self.client.new_inbox()
        try:
            sub = await self.client.subscribe(inbox, cb=take)
        except BUS_ERRORS as exc:
            raise Unavailable(f"cannot ask the cluster: the bus is unreachable "
                              f"({type(exc).__name__})") from None
        try:
            await self.client.publish(subject, _dumps(body), reply=inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
        except BUS_ERRORS as exc:
            raise Unavailable(f"cannot ask the cluster: the bus is unreachable "
                              f"({type(exc).__name__})") from None
        finally:
            with contextlib.suppress(*BUS_ERRORS):
                await sub.unsubscribe()
        return sorted(replies, key=lambda r: ("node" not in r, str(r.get("node", ""))))

    def _expected(self) -> int | None:
        nodes = self._registered()
        return len(nodes) or None if nodes is not None else None

    def _registered(self) -> list[dict[str, Any]] | None:
        """The live nodes' records, or ``None`` without a registry (or one that cannot say)."""
        if self.registry is None:
            return None
        try:
            nodes: list[dict[str, Any]] = self.registry.nodes()
        except Exception:  # noqa: BLE001 - a registry that cannot say: ask the cluster
            return None
        return nodes

    async def exchanges(self) -> dict[str, list[str]]:
        """The exchanges the ingestion nodes stream, each with the nodes streaming it: from
        the registry's records if there is one, else from a cluster status round."""
        nodes = self._registered()
        if nodes is None:
            nodes = await self.gather(self.cluster_timeout)
        found: dict[str, list[str]] = {}
        for record in nodes:
            if record.get("role") != "ingest":
                continue
            for exchange in record.get("exchanges") or ():
                found.setdefault(str(exchange), []).append(str(record.get("node")))
        return found

    async def _pick(self, exchange: str | None) -> str:
        if exchange is not None:
            return exchange
        streamed = await self.exchanges()
        if len(streamed) == 1:
            return next(iter(streamed))
        if not streamed:
            raise Unavailable("no ingestion node on the bus answered; name the exchange, or "
                              "start one with flight-md ingest --bus ...")
        raise InvalidArgument(f"several exchanges are streamed on the bus; name one of: "
                              f"{', '.join(sorted(streamed))}")

    async def streamed(self, exchange: str, what: str) -> dict[str, dict[str, set[str]]]:
        """Which ingestion node of ``exchange`` streams which symbols: node -> {symbol: its
        channels}, from every node's ``status`` (one :meth:`fleet` round).

        Raises:
            UnknownExchange: no ingestion node answered for ``exchange`` (``what``: the
                verb the message names).
        """
        found: dict[str, dict[str, set[str]]] = {}
        for reply in await self.fleet(exchange, "status", {}):
            if "error" in reply or reply.get("role") != "ingest" or "node" not in reply:
                continue
            symbols = found.setdefault(str(reply["node"]), {})
            ingestion = reply.get("ingestion")
            for item in (ingestion.get("exchanges") or ()) if isinstance(ingestion, dict) else ():
                if isinstance(item, dict) and item.get("exchange") == exchange:
                    for symbol in item.get("symbols") or ():
                        symbols.setdefault(str(symbol), set()).add(str(item.get("channel")))
        if not found:
            raise UnknownExchange(f"no ingestion node on the bus streams {exchange!r}; "
                                  f"cannot {what}")
        return found

    async def _change(self, verb: str, exchange: str | None, symbols: Sequence[str],
                      channels: Sequence[str] | None) -> dict[str, Any]:
        target = await self._pick(exchange)
        names = [symbols] if isinstance(symbols, str) else list(symbols)
        extra: dict[str, Any] = {} if channels is None else {"channels": list(channels)}
        self._status = None  # the next status shows the change
        streamed = await self.streamed(target, verb)
        if len(streamed) == 1:
            [node] = streamed
            return await self.request_node(target, node, verb, {"symbols": names, **extra})
        plan = _plan(verb, streamed, list(dict.fromkeys(names)), channels)
        answers = await asyncio.gather(
            *(self.request_node(target, node, verb, {"symbols": part, **extra})
              for node, part in plan), return_exceptions=True)
        return _merge(verb, target, names, [node for node, _ in plan], answers)

    async def _merged_status(self) -> IngestionStatus:
        """With a registry: each streamed exchange's ``status`` from every ingestion node of
        it (a node that went away meanwhile is left out); without: a cluster status round.
        Never the cluster round when the registry can say: a serving node's own answer to it
        includes this status, and would ask again."""
        exchanges: list[ExchangeStatus] = []
        symbols: list[SymbolStatus] = []
        replies: list[Any] = []
        if self._registered() is not None:
            streamed = sorted(await self.exchanges())
            for found in await asyncio.gather(*(self.fleet(e, "status", {}) for e in streamed),
                                              return_exceptions=True):
                if isinstance(found, list):
                    replies += found
        else:
            replies = await self.gather(self.cluster_timeout)
        for reply in replies:
            if not isinstance(reply, dict):
                continue  # that node went away or failed: the others still answer
            ingestion = reply.get("ingestion")
            if reply.get("role") != "ingest" or not isinstance(ingestion, dict):
                continue
            status = status_from_json(ingestion)
            exchanges += status.exchanges
            symbols += status.symbols
        return IngestionStatus(tuple(exchanges), tuple(symbols))

    async def _markets(self, exchange: str | None, pattern: str | None) -> tuple[MarketInfo, ...]:
        """Each exchange's markets from every ingestion node of it, merged: a market once,
        subscribed if any node streams it."""
        targets = [exchange] if exchange is not None else sorted(await self.exchanges())
        found: list[MarketInfo] = []
        for target in targets:
            replies = await self.fleet(target, "markets", {"pattern": pattern})
            answered = [r for r in replies if "error" not in r]
            if not replies:
                raise UnknownExchange(f"no ingestion node on the bus streams {target!r}; "
                                      f"cannot list its markets")
            if not answered:
                _raise_reply(replies[0], f"markets on {target!r}")
            merged: dict[str, MarketInfo] = {}
            for reply in answered:
                for market in markets_from_json(reply.get("markets") or []):
                    seen = merged.get(market.symbol)
                    if seen is None or (market.subscribed and not seen.subscribed):
                        merged[market.symbol] = market if seen is None else \
                            replace(seen, subscribed=True)
            found += merged.values()
        return tuple(found)

    # -- the bridge -------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], what: str, timeout: float | None = None) -> T:
        future = submit_to_loop(
            self.loop, coro, closed=f"the bus connection is closed; cannot {what}",
            on_loop="BusControl must not be called from the bus loop itself (it would wait for "
                    "itself); await request() or gather() instead")
        # The request's own timeout answers first; this bounds a cluster round and the hop.
        wait = timeout if timeout is not None else self.timeout + self.cluster_timeout + 2.0
        try:
            return future.result(wait)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Unavailable(f"the bus did not answer within {wait:g} s ({what})") from None
        except concurrent.futures.CancelledError:
            raise Unavailable(f"the bus connection closed before answering ({what})") from None

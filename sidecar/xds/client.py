"""One xDS gRPC stream: State of the World or Delta, aggregated (ADS) or for one type.

This module owns the protocol (what to request, when to ACK or NACK, what to
resend after a reconnect); what the resources mean is the handler's business
(sidecar/xds/dynamic.py).  Rules followed (Envoy's xds_protocol document):

- exactly one ACK or NACK per response: the next request for that type carries
  the response's nonce; an ACK carries the response's version, a NACK the
  last accepted version and ``error_detail``;
- LDS and CDS are wildcard subscriptions, RDS and EDS name their resources,
  and the names follow the handler (``set_names``) as listeners and clusters
  come and go;
- the node goes on the first request of a stream (on every request unless
  set_node_on_first_message_only);
- removal: SotW LDS/CDS responses are complete sets (a name missing is
  removed), SotW RDS/EDS responses are not; Delta names removals;
- a broken stream is retried with jittered exponential backoff, forever; the
  handler keeps serving what it has.  A new SotW stream asks again with the
  last accepted versions, a new Delta stream sends initial_resource_versions.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from google.protobuf import any_pb2

log = logging.getLogger(__name__)

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
WILDCARD_TYPES = (CLUSTER, LISTENER)     # subscribed first, in Envoy's order: CDS then LDS

# Larger responses are refused by grpc (RESOURCE_EXHAUSTED) and the stream retried.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# The stub and its (SotW, Delta) methods: the aggregated service, or one type's own.
AGGREGATED = (ads_pb2_grpc.AggregatedDiscoveryServiceStub,
              "StreamAggregatedResources", "DeltaAggregatedResources")
PER_TYPE = {
    CLUSTER: (cds_pb2_grpc.ClusterDiscoveryServiceStub, "StreamClusters", "DeltaClusters"),
    LISTENER: (lds_pb2_grpc.ListenerDiscoveryServiceStub, "StreamListeners", "DeltaListeners"),
    ROUTE: (rds_pb2_grpc.RouteDiscoveryServiceStub, "StreamRoutes", "DeltaRoutes"),
    ENDPOINT: (eds_pb2_grpc.EndpointDiscoveryServiceStub, "StreamEndpoints", "DeltaEndpoints"),
}


class Handler(Protocol):
    async def apply(self, type_url: str, updated: dict[str, tuple[str, Any]],
                    removed: set[str]) -> str | None:
        """Apply resources (name -> (version, Any)) and removals; an error message rejects them all."""


@dataclass
class TypeState:
    """What one resource type's subscription stands at."""
    type_url: str
    names: set[str] | None                      # None: wildcard
    version: str = ""                           # last accepted (SotW)
    nonce: str = ""                             # last response seen on this stream
    known: dict[str, str] = field(default_factory=dict)    # name -> version we hold
    sent_names: set[str] | None = None          # what the stream was last told (Delta diffs)


class Backoff:
    """Envoy's jittered exponential backoff: a uniform draw up to base * 2^n, capped."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        delay = random.uniform(0, min(self.cap, self.base * 2 ** self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class Background:
    """A config source that runs one task for its life: ``start()``, then ``stop()`` cancels it."""

    _task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"xds:{self!r}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class XdsClient(Background):
    """A stream for every type it is given (ADS), or for the one type of ``per_type``."""

    def __init__(self, target: str, node: Any, delta: bool, handler: Handler,
                 wildcard_types: tuple[str, ...] = WILDCARD_TYPES,
                 set_node_on_first_message_only: bool = False,
                 per_type: str | None = None, stats: Any = None) -> None:
        self.target = target
        self.service = AGGREGATED if per_type is None else PER_TYPE[per_type]
        self.node = node
        self.delta = delta
        self.handler = handler
        self.node_first_only = set_node_on_first_message_only
        self.types: dict[str, TypeState] = {t: TypeState(t, None) for t in wildcard_types}
        self.queue: asyncio.Queue[Any] | None = None     # requests of the live stream
        self.backoff = Backoff()
        self.connected = False
        self.stats = stats                  # control_plane.connected_state, for the ADS stream
        self._node_sent = False
        # While a response is being applied: the types whose subscription changed.
        # Their requests go after the response's ACK or NACK, so the server sees the
        # verdict first (a request carrying the new nonce would read as an ACK).
        self._deferred: set[str] | None = None

    # --- what the handler drives ---------------------------------------------------

    def subscribe(self, type_url: str, names: set[str] | None) -> None:
        """Start (or change) the subscription of a type: names, or None for a wildcard."""
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = TypeState(type_url, names)
        elif state.names == names:
            return
        state.names = names
        if state.names is not None:
            # Forget what is no longer subscribed: a later re-subscription asks afresh.
            for name in list(state.known):
                if name not in state.names:
                    del state.known[name]
        if self._deferred is not None:
            self._deferred.add(type_url)        # sent after the ACK/NACK being decided
        elif self.queue is not None:
            self.queue.put_nowait(self._request(state))

    def __repr__(self) -> str:
        return f"{self.target}"

    # --- the stream ------------------------------------------------------------------

    async def run(self) -> None:
        """Keep one ADS stream open, forever; returns only when cancelled."""
        while True:
            try:
                await self._stream_once()
                reason = "stream closed by the server"
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                reason = f"{e.code().name}: {e.details()}"
            except Exception as e:      # a bug or garbage must not end the xDS client
                log.exception("xDS stream failed")
                reason = f"{type(e).__name__}: {e}"
            self._set_connected(False)
            self.queue = None
            delay = self.backoff.next()
            log.warning("xDS stream to %s ended (%s); reconnecting in %.2fs", self.target, reason, delay)
            await asyncio.sleep(delay)

    async def _stream_once(self) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        async with grpc.aio.insecure_channel(self.target, options=options) as channel:
            stub_class, sotw_method, delta_method = self.service
            stub = stub_class(channel)
            queue: asyncio.Queue[Any] = asyncio.Queue()
            self._node_sent = False
            for state in self.types.values():
                state.nonce = ""
                state.sent_names = None
                if state.names is None or state.names:
                    queue.put_nowait(self._request(state, initial=True))
            open_stream: Callable[..., Any] = getattr(stub, delta_method if self.delta else sotw_method)
            call = open_stream(_drain(queue))
            self.queue = queue
            try:
                async for response in call:
                    self._set_connected(True)
                    self.backoff.reset()
                    for request in await self._on_response(response):
                        queue.put_nowait(request)
            finally:
                self.queue = None
                call.cancel()

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        if self.stats is not None:
            self.stats.connected_state = int(connected)

    # --- requests and responses ------------------------------------------------------

    def _with_node(self, request: Any) -> Any:
        if not self._node_sent or not self.node_first_only:
            request.node.CopyFrom(self.node)
            self._node_sent = True
        return request

    def _request(self, state: TypeState, initial: bool = False, error: str | None = None) -> Any:
        """The next request for a type: a (re)subscription, an ACK or a NACK."""
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=state.type_url,
                                                      response_nonce=state.nonce)
            wanted = state.names if state.names is not None else set()
            if initial:
                req.resource_names_subscribe.extend(sorted(wanted))
                req.initial_resource_versions.update(state.known)
            else:
                before = state.sent_names if state.sent_names is not None else set()
                req.resource_names_subscribe.extend(sorted(wanted - before))
                req.resource_names_unsubscribe.extend(sorted(before - wanted))
            state.sent_names = set(wanted)
        else:
            req = discovery_pb2.DiscoveryRequest(type_url=state.type_url, version_info=state.version,
                                                 response_nonce=state.nonce)
            if state.names is not None:
                req.resource_names.extend(sorted(state.names))
        if error is not None:
            req.error_detail.code = 3          # INVALID_ARGUMENT, as Envoy sends
            req.error_detail.message = error
        return self._with_node(req)

    async def _on_response(self, response: Any) -> list[Any]:
        """The requests a response calls for: its ACK or NACK, then changed subscriptions."""
        state = self.types.get(response.type_url)
        if state is None:
            log.warning("xDS: ignoring a response for unsubscribed type %s", response.type_url)
            return []
        state.nonce = response.nonce
        self._deferred = set()
        try:
            verdict = await self._decide(state, response)
        finally:
            changed, self._deferred = self._deferred, None
        return [verdict] + [self._request(self.types[t]) for t in sorted(changed)
                            if t != state.type_url]      # the verdict carries its own type's names

    async def _decide(self, state: TypeState, response: Any) -> Any:
        try:
            updated, removed = (self._delta_changes(state, response) if self.delta
                                else self._sotw_changes(state, response))
            error = await self.handler.apply(state.type_url, updated, removed)
        except Exception as e:          # garbage in a resource: NACK it, keep the old config
            log.exception("xDS: cannot apply %s", _short(state.type_url))
            error = f"{type(e).__name__}: {e}"
        if error is None:
            if not self.delta:
                state.version = response.version_info
            for name in removed:
                state.known.pop(name, None)
            for name, (version, _) in updated.items():
                state.known[name] = version
            version = response.system_version_info if self.delta else response.version_info
            log.info("xDS: accepted %s version %s (%d updated, %d removed)", _short(state.type_url),
                     version, len(updated), len(removed))
            return self._request(state)
        log.warning("xDS: rejected %s: %s", _short(state.type_url), error)
        return self._request(state, error=error)

    def _sotw_changes(self, state: TypeState, response: Any
                      ) -> tuple[dict[str, tuple[str, Any]], set[str]]:
        updated: dict[str, tuple[str, Any]] = {}
        for any_msg in response.resources:
            if any_msg.type_url != state.type_url:
                raise ValueError(f"resource of type {any_msg.type_url!r} in a {state.type_url} response")
            name = resource_name(any_msg)
            if name in updated:
                raise ValueError(f"duplicate resource name {name!r}")
            updated[name] = (response.version_info, any_msg)
        if state.names is None:         # complete set: what is missing is gone
            removed = set(state.known) - set(updated)
        else:
            removed = set()
            updated = {n: r for n, r in updated.items() if n in state.names}
        return updated, removed

    def _delta_changes(self, state: TypeState, response: Any
                       ) -> tuple[dict[str, tuple[str, Any]], set[str]]:
        updated: dict[str, tuple[str, Any]] = {}
        for resource in response.resources:
            any_msg = resource.resource
            if any_msg.type_url != state.type_url:
                raise ValueError(f"resource {resource.name!r} of type {any_msg.type_url!r} "
                                 f"in a {state.type_url} response")
            if resource.name in updated:
                raise ValueError(f"duplicate resource name {resource.name!r}")
            updated[resource.name] = (resource.version, any_msg)
        removed = {name for name in response.removed_resources if name in state.known}
        return updated, removed


def resource_name(any_msg: any_pb2.Any) -> str:
    """The name of a SotW resource, read without knowing its message class in full."""
    from sidecar.xds.resources import unpack
    msg = unpack(any_msg)
    return str(getattr(msg, "cluster_name", "") or msg.name)


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


async def _drain(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while True:
        yield await queue.get()


"""A real gRPC ADS server for client tests, scripted by the test: it records every
request and sends exactly the responses the test gives it (also malformed ones).

Serves both StreamAggregatedResources (SotW) and DeltaAggregatedResources on
127.0.0.1 from a thread pool; each stream is a ``Stream`` the test drives.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, symbol_database

from config.bootstrap import ensure_type_imported, parse_message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_CLOSE = object()
# Per-type discovery services (full gRPC service name -> SotW and Delta method names).
PER_TYPE_METHODS = {
    "envoy.service.cluster.v3.ClusterDiscoveryService": ("StreamClusters", "DeltaClusters"),
    "envoy.service.listener.v3.ListenerDiscoveryService": ("StreamListeners", "DeltaListeners"),
    "envoy.service.route.v3.RouteDiscoveryService": ("StreamRoutes", "DeltaRoutes"),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": ("StreamEndpoints", "DeltaEndpoints"),
}


def pack(type_url: str, resource: dict[str, Any]) -> any_pb2.Any:
    """An Envoy resource given as its YAML/JSON dict, packed in an Any."""
    ensure_type_imported(type_url)
    cls = symbol_database.Default().GetSymbol(type_url.rsplit("/", 1)[-1])
    out = any_pb2.Any()
    out.Pack(parse_message(resource, cls))
    return out


class Stream:
    """One ADS stream: the requests received, and a queue of responses to send."""

    def __init__(self, delta: bool, service: str = "AggregatedDiscoveryService") -> None:
        self.delta = delta
        self.service = service
        self.requests: queue.Queue[Any] = queue.Queue()
        self.held: list[Any] = []          # received, not yet taken by the test
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.nonce = 0
        self.ended = threading.Event()

    def next_request(self, type_url: str | None = None, timeout: float = 10.0) -> Any:
        """The oldest request not taken yet (of ``type_url``, if given) received on this stream."""
        deadline = time.monotonic() + timeout
        while True:
            for i, req in enumerate(self.held):
                if type_url is None or req.type_url == type_url:
                    return self.held.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {type_url or 'request'} within {timeout}s; "
                                     f"holding {[r.type_url for r in self.held]}")
            try:
                self.held.append(self.requests.get(timeout=remaining))
            except queue.Empty:
                pass

    def no_request(self, wait: float = 0.5) -> bool:
        """True when nothing more arrives within ``wait`` seconds (else the assertion says what did)."""
        try:
            self.held.append(self.requests.get(timeout=wait))
        except queue.Empty:
            return not self.held
        raise AssertionError(f"unexpected request: {self.held[-1]}")

    def send_sotw(self, type_url: str, version: str, resources: list[Any],
                  packed: list[any_pb2.Any] | None = None) -> str:
        self.nonce += 1
        nonce = f"n{self.nonce}"
        resp = discovery_pb2.DiscoveryResponse(type_url=type_url, version_info=version, nonce=nonce)
        resp.resources.extend(packed if packed is not None else [pack(type_url, r) for r in resources])
        self.outbox.put(resp)
        return nonce

    def send_delta(self, type_url: str, resources: dict[str, tuple[str, Any]],
                   removed: list[str] = (), packed: dict[str, tuple[str, any_pb2.Any]] | None = None,
                   system_version: str = "") -> str:
        self.nonce += 1
        nonce = f"n{self.nonce}"
        resp = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce,
                                                    system_version_info=system_version)
        items = packed or {name: (v, pack(type_url, r)) for name, (v, r) in resources.items()}
        for name, (version, any_msg) in items.items():
            resp.resources.add(name=name, version=version, resource=any_msg)
        resp.removed_resources.extend(removed)
        self.outbox.put(resp)
        return nonce

    def reset(self) -> None:
        """End the stream with UNAVAILABLE (the server dropped it mid-conversation)."""
        self.outbox.put(_CLOSE)

    def serve(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        def pump() -> None:
            try:
                for req in request_iterator:
                    self.requests.put(req)
            except Exception:
                pass
            self.ended.set()
            self.outbox.put(None)
        threading.Thread(target=pump, daemon=True).start()
        while True:
            item = self.outbox.get()
            if item is None:
                return
            if item is _CLOSE:
                context.abort(grpc.StatusCode.UNAVAILABLE, "test reset the stream")
            yield item


class ScriptedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Serves ADS and, for per-type subscriptions (api_config_source), CDS/LDS/RDS/EDS too:
    every stream of any service lands in ``streams`` with its ``service`` name."""

    def __init__(self) -> None:
        self.streams: queue.Queue[Stream] = queue.Queue()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self.server)
        for service, (sotw, delta) in PER_TYPE_METHODS.items():
            handlers = {sotw: self._handler(service, delta=False), delta: self._handler(service, delta=True)}
            self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _handler(self, service: str, delta: bool) -> grpc.RpcMethodHandler:
        request_class = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest

        def serve(request_iterator: Any, context: Any) -> Any:
            stream = Stream(delta=delta, service=service)
            self.streams.put(stream)
            yield from stream.serve(request_iterator, context)
        return grpc.stream_stream_rpc_method_handler(
            serve, request_deserializer=request_class.FromString,
            response_serializer=lambda m: m.SerializeToString())

    def __enter__(self) -> ScriptedAds:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)

    def next_stream(self, timeout: float = 10.0) -> Stream:
        return self.streams.get(timeout=timeout)

    def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> Any:
        stream = Stream(delta=False)
        self.streams.put(stream)
        yield from stream.serve(request_iterator, context)

    def DeltaAggregatedResources(self, request_iterator: Any, context: Any) -> Any:
        stream = Stream(delta=True)
        self.streams.put(stream)
        yield from stream.serve(request_iterator, context)

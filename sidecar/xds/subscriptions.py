"""Every xDS source of the proxy, and which one each resource type is asked from.

A ConfigSource says where a type comes from: the ADS stream (one for all
types), a per-type gRPC stream (``api_config_source``), or, for LDS and CDS,
a file.  The handler (sidecar/xds/dynamic.py) only says what it wants:
wildcard LDS/CDS at start-up, and the RDS/EDS names of each source as
listeners and clusters come and go; this module starts the streams and files
that serve them, once each.
"""

from __future__ import annotations

from typing import Any, Protocol

from config import model
from sidecar.stats import ControlPlaneStats, StatsStore
from sidecar.xds.client import Handler, XdsClient
from sidecar.xds.files import FileSubscription


class Source(Protocol):
    def subscribe(self, type_url: str, names: set[str] | None) -> None: ...
    def start(self) -> None: ...
    async def stop(self) -> None: ...


class Subscriptions:
    def __init__(self, node: Any, handler: Handler, snapshot: model.Snapshot,
                 stats: StatsStore) -> None:
        self.node = node
        self.stats = stats
        self.handler = handler
        self.snapshot = snapshot
        self.ads_service = snapshot.dynamic.ads if snapshot.dynamic is not None else None
        self.ads: XdsClient | None = None
        self.per_type: dict[tuple[str, model.GrpcService], XdsClient] = {}
        self.files: list[FileSubscription] = []

    def wildcard(self, type_url: str, source: model.ConfigSource) -> None:
        """LDS or CDS: everything the source has."""
        if source.path:
            subscription = FileSubscription(type_url, source.path, self.handler)
            self.files.append(subscription)
            subscription.start()
        else:
            self.client(type_url, source).subscribe(type_url, None)

    def names(self, type_url: str, wanted: dict[model.ConfigSource, set[str]]) -> None:
        """RDS or EDS: the names each source should send; sources no longer named get none."""
        by_client: dict[int, tuple[XdsClient, set[str]]] = {}
        for client in self.clients_of(type_url):
            by_client[id(client)] = (client, set())
        for source, names in wanted.items():
            client = self.client(type_url, source)
            by_client.setdefault(id(client), (client, set()))[1].update(names)
        for client, names in by_client.values():
            client.subscribe(type_url, names)

    def clients_of(self, type_url: str) -> list[XdsClient]:
        clients = [c for (t, _), c in self.per_type.items() if t == type_url]
        if self.ads is not None and type_url in self.ads.types:
            clients.append(self.ads)
        return clients

    def client(self, type_url: str, source: model.ConfigSource) -> XdsClient:
        """The stream serving ``type_url`` from ``source``, started on first use."""
        if source.ads:
            if self.ads_service is None:
                raise ValueError("an 'ads: {}' config source needs dynamic_resources.ads_config")
            if self.ads is None:
                self.ads = self._start(self.ads_service, None)
            return self.ads
        if source.grpc is None:
            raise ValueError("only ads and api_config_source can serve RDS and EDS")
        key = (type_url, source.grpc)
        if key not in self.per_type:
            self.per_type[key] = self._start(source.grpc, type_url)
        return self.per_type[key]

    def _start(self, service: model.GrpcService, per_type: str | None) -> XdsClient:
        client = XdsClient(self.target(service), self.node, service.delta, self.handler,
                           wildcard_types=(), per_type=per_type,
                           set_node_on_first_message_only=service.set_node_on_first_message_only,
                           stats=self.stats.root_scope(ControlPlaneStats) if per_type is None else None)
        client.start()
        return client

    def target(self, service: model.GrpcService) -> str:
        """google_grpc's target_uri, or the first endpoint of the envoy_grpc static cluster."""
        if service.target_uri:
            return service.target_uri
        cluster = self.snapshot.cluster(service.cluster_name)
        if cluster is None or not cluster.endpoints:
            raise ValueError(f"gRPC service cluster {service.cluster_name!r} is not a static "
                             "cluster with an endpoint")
        address = cluster.endpoints[0].address
        host = f"[{address.address}]" if address.is_ipv6 else address.address
        # An explicit scheme: gRPC would read a bare "xds:18000" (a compose service named xds)
        # as the target URI of its own xds: resolver and never connect.
        return f"dns:///{host}:{address.port}"

    def sources(self) -> list[Source]:
        return [*self.files, *self.per_type.values(), *([self.ads] if self.ads else [])]

    async def stop(self) -> None:
        for source in self.sources():
            await source.stop()

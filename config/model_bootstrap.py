"""The bootstrap model: node, admin, dynamic resources, and the Snapshot of a whole config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config.model_clusters import Cluster
from config.model_core import ConfigSource, GrpcService, SocketAddress
from config.model_listeners import Listener


@dataclass(frozen=True, slots=True)
class DynamicResources:
    ads: GrpcService | None                     # ads_config
    lds: ConfigSource | None
    cds: ConfigSource | None
    # How long start-up waits for the first LDS and CDS answers (the larger of the
    # two sources' initial_fetch_timeout; Envoy's default 15 s; 0 waits forever).
    initial_fetch_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class Node:
    id: str = ""
    cluster: str = ""
    zone: str = ""
    region: str = ""
    sub_zone: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class Admin:
    address: SocketAddress


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A whole, validated config: what the runtime swaps atomically."""

    node: Node
    admin: Admin | None
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    dynamic: DynamicResources | None = None

    def cluster(self, name: str) -> Cluster | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None

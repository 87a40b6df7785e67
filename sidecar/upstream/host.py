"""One upstream endpoint as the runtime tracks it: address, weight, health, load, its pool."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.upstream.pool import Http1Pool


class Host:
    __slots__ = ("address", "port", "weight", "health_status", "hostname", "priority",
                 "active_requests", "pool", "label")

    def __init__(self, address: str, port: int, weight: int = 1, health_status: str = "UNKNOWN",
                 hostname: str = "", priority: int = 0) -> None:
        self.address = address
        self.port = port
        self.weight = weight
        self.health_status = health_status
        self.hostname = hostname
        self.priority = priority
        self.active_requests = 0          # for LEAST_REQUEST
        self.pool: Http1Pool | None = None
        # "10.0.0.1:80" / "[::1]:80", as Envoy prints %UPSTREAM_HOST%
        self.label = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    @property
    def healthy(self) -> bool:
        """UNKNOWN and HEALTHY hosts take traffic first; DEGRADED ones only the spill-over."""
        return self.health_status in ("UNKNOWN", "HEALTHY")

    @property
    def degraded(self) -> bool:
        return self.health_status == "DEGRADED"

    def __repr__(self) -> str:
        return f"Host({self.label} w={self.weight} {self.health_status} active={self.active_requests})"

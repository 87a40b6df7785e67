"""One upstream endpoint as the runtime tracks it: address, weight, health, load, its pool.

A host's health has several sources, as Envoy's Host::HealthFlag: the status the
config or EDS gave (``health_status``), and failure flags set at run time by the
active health checker and by outlier detection (``failed``).  It takes traffic
first only when the status is UNKNOWN or HEALTHY and no failure flag is set.
Whoever changes a flag tells the cluster (ClusterRuntime.health_changed), which
rebuilds its load balancers: a host's health is never looked at per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.upstream.pool import Http1Pool
    from sidecar.upstream.pool_dual import DualPool
    from sidecar.upstream.pool_h2 import Http2Pool

# Failure flags (Envoy's Host::HealthFlag names)
FAILED_ACTIVE_HC = 1        # the active health checker found it unhealthy (or has not checked yet)
FAILED_OUTLIER_CHECK = 2    # ejected by outlier detection
DEGRADED_ACTIVE_HC = 4      # the health check answered with x-envoy-degraded
# Set with FAILED_ACTIVE_HC by the active health checker: an x-envoy-immediate-health-check-fail
# answer (excluded from the level size, as EDS DRAINING), and a timed-out check (admin only).
EXCLUDED_VIA_IMMEDIATE_HC_FAIL = 8
ACTIVE_HC_TIMEOUT = 16


class Host:
    __slots__ = ("address", "port", "weight", "health_status", "hostname", "priority",
                 "locality", "active_requests", "pool", "label", "failed", "outlier",
                 "health_checker", "hash_key")

    def __init__(self, address: str, port: int, weight: int = 1, health_status: str = "UNKNOWN",
                 hostname: str = "", priority: int = 0, locality: Any = None,
                 hash_key: str = "") -> None:
        self.address = address
        self.port = port
        self.weight = weight
        self.health_status = health_status
        self.hostname = hostname
        self.priority = priority
        self.locality = locality          # the LocalityLbEndpoints it came in (EDS / load_assignment)
        self.hash_key = hash_key          # envoy.lb metadata hash_key (RING_HASH / MAGLEV), or ""
        self.active_requests = 0          # for LEAST_REQUEST
        self.pool: Http1Pool | Http2Pool | DualPool | None = None
        # "10.0.0.1:80" / "[::1]:80", as Envoy prints %UPSTREAM_HOST%
        self.label = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.failed = 0                   # failure flags, above
        # Per-host state of the cluster's outlier detector and active health checker, when
        # configured.  The router reports each upstream outcome to ``outlier``
        # (put_http_status / put_local_failure) and an x-envoy-immediate-health-check-fail
        # response header to ``health_checker`` (fail_immediately).
        self.outlier: Any = None
        self.health_checker: Any = None

    @property
    def healthy(self) -> bool:
        """UNKNOWN and HEALTHY hosts take traffic first; DEGRADED ones only the spill-over."""
        return (self.health_status in ("UNKNOWN", "HEALTHY")
                and not self.failed & (FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK | DEGRADED_ACTIVE_HC))

    @property
    def degraded(self) -> bool:
        status = self.health_status
        return (status in ("UNKNOWN", "HEALTHY", "DEGRADED")
                and not self.failed & (FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK)
                and (status == "DEGRADED" or bool(self.failed & DEGRADED_ACTIVE_HC)))

    def __repr__(self) -> str:
        return (f"Host({self.label} w={self.weight} {self.health_status} failed={self.failed} "
                f"active={self.active_requests})")

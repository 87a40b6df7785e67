"""Clusters at runtime: host sets (STATIC, or STRICT_DNS re-resolved), load balancing, pools.

The ClusterManager owns every cluster and every task they run (DNS refresh);
``close()`` cancels them all.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from config import model
from sidecar.stats import CircuitBreakerStats, ClusterStats, OutlierDetectionStats, StatsStore
from sidecar.upstream.health_check import HealthChecker, update_hosts
from sidecar.upstream.host import Host
from sidecar.upstream.hash_lb_stats import hash_lb_stats
from sidecar.upstream.lb import ClusterProvided, LoadBalancer, build_lb
from sidecar.upstream.original_dst import OriginalDstHosts
from sidecar.upstream.outlier import OutlierDetector
from sidecar.upstream import priority
from sidecar.upstream.pool import Http1Pool
from sidecar.upstream.pool_dual import DualPool
from sidecar.upstream.pool_h2 import Http2Pool

log = logging.getLogger(__name__)

_FAMILIES = {"V4_ONLY": socket.AF_INET, "V6_ONLY": socket.AF_INET6}


class ClusterRuntime:
    def __init__(self, config: model.Cluster, stats: ClusterStats,
                 parser_factory: Callable[[], Any],
                 pools: dict[tuple[str, int], Http1Pool | Http2Pool | DualPool] | None = None) -> None:
        self.config = config
        self.name = config.name
        self.stats = stats
        self.parser_factory = parser_factory
        self.hosts: list[Host] = []
        # Picks a host across priorities and localities (sidecar/upstream/priority.py).
        self.lb: LoadBalancer = build_lb(config, [])
        # What the load assignment says beyond its hosts: the cluster's own (STATIC,
        # STRICT_DNS) or the latest EDS one's (set_endpoints).
        self.assignment_policy = (config.endpoints[0].policy if config.endpoints
                                  else model.DEFAULT_ASSIGNMENT_POLICY)
        self.locality_weights = priority.locality_weights(config.endpoints)
        # An updated cluster takes over its predecessor's pools (set_hosts keeps those
        # to addresses that remain): warm connections survive a CDS update.
        self.pools: dict[tuple[str, int], Http1Pool | Http2Pool | DualPool] = pools or {}
        self.task: asyncio.Task[None] | None = None
        self.initialized = asyncio.Event()
        self.added_via_api = False        # CDS (ClusterManager.put), as admin /clusters says
        # Circuit breakers (priority DEFAULT), checked against the counts the stats keep
        # anyway: upstream_rq_active, upstream_rq_pending_active, upstream_cx_active.
        self.max_connections = config.max_connections
        self.max_pending_requests = config.max_pending_requests
        self.max_requests = config.max_requests
        self.retries_active = 0           # retries in flight (the max_retries circuit breaker)
        self.connecting = 0               # connections being opened (count against max_connections)
        stats.circuit_breakers = CircuitBreakerStats(self.name, self.breaker_gauges)
        stats.hash_lb = hash_lb_stats(config)     # RING_HASH / MAGLEV gauges, else None
        for pool in self.pools.values():
            pool.breaker = self
        # Outlier detection: host monitors come with set_hosts; its counters outlive a CDS update.
        self.outlier: OutlierDetector | None = None
        if config.outlier_detection is not None:
            stats.outlier_detection = stats.outlier_detection or OutlierDetectionStats(self.name)
            self.outlier = OutlierDetector(config.outlier_detection, self, stats.outlier_detection)
        else:
            stats.outlier_detection = None
        # Active health checks: a session per host comes with set_hosts, checks begin with
        # start(); ``initialized`` waits for the first round (health_check.py).
        self.health_checker: HealthChecker | None = None
        if config.health_check is not None:
            self.health_checker = HealthChecker(self, config.health_check)
        else:
            stats.health_check = None
        # ORIGINAL_DST: hosts come from connections' original destinations (original_dst.py).
        self.original_dst = (OriginalDstHosts(self, config.original_dst)
                             if config.original_dst is not None else None)
        if config.type in ("STATIC", "ORIGINAL_DST"):
            self.set_endpoints(config.endpoints)

    def retry_limit(self) -> int:
        """Retries allowed in flight: max_retries, or with a retry_budget budget_percent of
        the active and pending requests, at least min_retry_concurrency (as Envoy)."""
        c = self.config
        if c.retry_budget_percent is None:
            return c.max_retries
        s = self.stats
        return max(c.retry_budget_min_concurrency,
                   int(c.retry_budget_percent * (s.upstream_rq_active + s.upstream_rq_pending_active)
                       / 100))

    def connections(self) -> int:
        return self.stats.upstream_cx_active + self.connecting

    def breaker_gauges(self) -> list[tuple[str, int]]:
        """circuit_breakers.default.* as Envoy's /stats shows them."""
        s = self.stats
        c = self.config
        retry_limit = self.retry_limit()
        cx, pending, rq = self.connections(), s.upstream_rq_pending_active, s.upstream_rq_active
        # Envoy sets an open gauge when its count moves: a limit of 0 never taken stays closed.
        out = [("cx_open", int(0 < cx >= c.max_connections)), ("cx_pool_open", 0),
               ("rq_open", int(0 < rq >= c.max_requests)),
               ("rq_pending_open", int(0 < pending >= c.max_pending_requests)),
               ("rq_retry_open", int(0 < self.retries_active >= retry_limit))]
        if c.track_remaining:
            out += [("remaining_cx", max(c.max_connections - cx, 0)),
                    ("remaining_pending", max(c.max_pending_requests - pending, 0)),
                    ("remaining_retries", max(retry_limit - self.retries_active, 0)),
                    ("remaining_rq", max(c.max_requests - rq, 0))]
        return out

    def set_endpoints(self, endpoints: tuple[model.Endpoint, ...]) -> None:
        """STATIC endpoints, or an EDS ClusterLoadAssignment's."""
        self.assignment_policy = endpoints[0].policy if endpoints else model.DEFAULT_ASSIGNMENT_POLICY
        self.locality_weights = priority.locality_weights(endpoints)
        self.set_hosts([Host(e.address.address, e.address.port, e.weight, e.health_status,
                             e.hostname, e.priority, e.locality, e.hash_key) for e in endpoints])

    def __repr__(self) -> str:
        return f"<Cluster {self.name} hosts={self.hosts}>"

    def set_hosts(self, hosts: list[Host]) -> None:
        """Replace the host set; pools to addresses that remain are kept (warm connections survive)."""
        pools: dict[tuple[str, int], Http1Pool | Http2Pool | DualPool] = {}
        for h in hosts:
            key = (h.address, h.port)
            pool = pools.get(key) or self.pools.get(key)
            if pool is None or type(pool) is not self.pool_type():
                pool = self.new_pool(h)
            pools[key] = pool
            h.pool = pool
        for key, pool in self.pools.items():
            if pools.get(key) is not pool:
                pool.close()
        self.pools = pools
        if self.outlier is not None:
            self.outlier.set_hosts(hosts)
        self.hosts = hosts
        update_hosts(self.health_checker, hosts)
        self.health_changed()
        if self.health_checker is None:     # else after its first round of checks
            self.initialized.set()

    def pool_type(self) -> type:
        """The kind of pool this cluster's hosts get (a CDS update may change it)."""
        c = self.config
        return DualPool if c.downstream_protocol else Http2Pool if c.http2 else Http1Pool

    def new_pool(self, host: Host) -> Http1Pool | Http2Pool | DualPool:
        """The connection pool to a new host: HTTP/2 when the cluster's protocol options say
        so, both kinds (made on first use) when they follow the downstream protocol."""
        c = self.config
        if c.downstream_protocol:
            return DualPool(host.address, host.port, self)
        if c.http2:
            return self.http2_pool(host.address, host.port)
        return self.http1_pool(host.address, host.port)

    def http1_pool(self, address: str, port: int) -> Http1Pool:
        """An HTTP/1.1 pool to one host (the cluster's own, or a DualPool's)."""
        c = self.config
        pool = Http1Pool(address, port, self.stats, self.parser_factory, c.connect_timeout,
                         c.idle_timeout, c.max_requests_per_connection,
                         c.per_connection_buffer_limit_bytes, self)
        if c.upstream_bind_address is not None:
            pool.local_addr = (c.upstream_bind_address, 0)      # upstream_bind_config
        return pool

    def http2_pool(self, address: str, port: int) -> Http2Pool:
        """An HTTP/2 pool to one host (the cluster's own, or a DualPool's)."""
        c = self.config
        h2 = c.http2_options
        assert h2 is not None
        pool = Http2Pool(address, port, self.stats, c.connect_timeout, c.idle_timeout,
                         c.max_requests_per_connection, c.per_connection_buffer_limit_bytes,
                         self, h2.max_concurrent_streams, h2.initial_stream_window_size,
                         h2.initial_connection_window_size, h2.keepalive)
        if c.upstream_bind_address is not None:
            pool.local_addr = (c.upstream_bind_address, 0)      # upstream_bind_config
        return pool

    def health_changed(self) -> None:
        """A host's health changed (host set, active health check, outlier ejection):
        update the membership gauges and rebuild the load balancers."""
        hosts = self.hosts
        self.stats.membership_total = len(hosts)
        self.stats.membership_healthy = sum(1 for h in hosts if h.healthy)
        self.stats.membership_degraded = sum(1 for h in hosts if h.degraded)
        self.stats.membership_excluded = sum(1 for h in hosts if priority.excluded(h))
        self._build_lbs(hosts)

    def _build_lbs(self, hosts: list[Host]) -> None:
        """Precompute Envoy's host selection (priority load, panic, locality weights): see
        sidecar/upstream/priority.py."""
        if self.original_dst is not None:
            self.lb = ClusterProvided(self.original_dst.pick)
            return
        self.lb = priority.build(self.config, hosts, self.assignment_policy,
                                 self.locality_weights, self.stats)

    def choose_host(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        """A host for one request (``hash_key``: the route's hash_policy result, if any;
        ``attempt``: the re-selection number of a retry avoiding previous hosts)."""
        return self.lb.pick(hash_key, attempt)

    # --- STRICT_DNS ---------------------------------------------------------------

    def start(self) -> None:
        if self.health_checker is not None:
            self.health_checker.start()
        if self.original_dst is not None:
            self.original_dst.start()       # the cleanup_interval timer
        if self.outlier is not None:
            self.outlier.start()            # the interval timer
        if self.config.type == "STRICT_DNS":
            self.task = asyncio.get_running_loop().create_task(self._dns_loop(),
                                                               name=f"dns:{self.name}")

    async def _dns_loop(self) -> None:
        while True:
            await self.resolve()
            await asyncio.sleep(self.config.dns_refresh_rate)

    async def resolve(self) -> None:
        """Resolve every endpoint name; each address becomes a host (as Envoy's STRICT_DNS)."""
        loop = asyncio.get_running_loop()
        family = _FAMILIES.get(self.config.dns_lookup_family, socket.AF_UNSPEC)
        self.stats.update_attempt += 1
        hosts: list[Host] = []
        failed = False
        for e in self.config.endpoints:
            try:
                infos = await loop.getaddrinfo(e.address.address, e.address.port, family=family,
                                               type=socket.SOCK_STREAM)
            except OSError as err:
                log.warning("cluster %s: cannot resolve %s: %s", self.name, e.address.address, err)
                failed = True
                continue
            addresses = _pick_family([str(info[4][0]) for info in infos], self.config.dns_lookup_family)
            for address in addresses:
                hosts.append(Host(address, e.address.port, e.weight, e.health_status,
                                  e.hostname or e.address.address, e.priority, e.locality,
                                  e.hash_key))
        if failed and not hosts and self.hosts:
            self.stats.update_failure += 1
            return        # keep the last good host set, as Envoy does on resolution failure
        self.stats.update_success += 1
        if [(h.address, h.port) for h in hosts] != [(h.address, h.port) for h in self.hosts]:
            log.info("cluster %s: hosts %s", self.name, [h.label for h in hosts])
            self.set_hosts(hosts)
        else:
            self.initialized.set()

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.original_dst is not None:
            self.original_dst.close()
        if self.outlier is not None:
            self.outlier.close()
        if self.health_checker is not None:
            self.health_checker.close()
        for pool in self.pools.values():
            pool.close()


def _pick_family(addresses: list[str], family: str) -> list[str]:
    unique = list(dict.fromkeys(addresses))
    v4 = [a for a in unique if ":" not in a]
    v6 = [a for a in unique if ":" in a]
    if family == "V4_PREFERRED":
        return v4 or v6
    if family == "AUTO":      # Envoy's AUTO: IPv6 if any, else IPv4
        return v6 or v4
    return unique


class ClusterManager:
    def __init__(self, stats: StatsStore, parser_factory: Callable[[], Any]) -> None:
        self.stats = stats
        self.parser_factory = parser_factory
        self.clusters: dict[str, ClusterRuntime] = {}

    def get(self, name: str) -> ClusterRuntime | None:
        return self.clusters.get(name)

    async def start(self, clusters: tuple[model.Cluster, ...], init_timeout: float = 15.0) -> None:
        """Create every cluster and wait (bounded) for the first DNS answers, as Envoy's init."""
        for c in clusters:
            if c.type == "EDS":
                continue        # warms in sidecar/xds/dynamic.py until its endpoints arrive
            runtime = ClusterRuntime(c, self.stats.cluster_scope(c.name), self.parser_factory)
            self.clusters[c.name] = runtime
            runtime.start()
        waits = [c.initialized.wait() for c in self.clusters.values() if not c.initialized.is_set()]
        if waits:
            try:
                async with asyncio.timeout(init_timeout):
                    await asyncio.gather(*waits)
            except TimeoutError:
                log.warning("clusters still resolving after %.0fs; serving anyway", init_timeout)

    def close(self) -> None:
        for c in self.clusters.values():
            c.close()

    # --- CDS ---------------------------------------------------------------------------

    def put(self, config: model.Cluster, endpoints: tuple[model.Endpoint, ...] | None = None) -> None:
        """Add or replace a cluster, at once (EDS clusters come with their endpoints).

        The replaced cluster's pools pass to the new one for the addresses that
        remain, so pooled connections survive; requests already routed keep
        the runtime they picked.
        """
        old = self.clusters.get(config.name)
        if old is not None and old.task is not None:
            old.task.cancel()
        if old is not None and old.outlier is not None:
            old.outlier.close()     # a new detector starts afresh, as Envoy's new cluster
        if old is not None and old.original_dst is not None:
            old.original_dst.close()
        if old is not None and old.health_checker is not None:
            old.health_checker.close()
        runtime = ClusterRuntime(config, self.stats.cluster_scope(config.name), self.parser_factory,
                                 pools=old.pools if old is not None else None)
        if endpoints is not None:
            runtime.set_endpoints(endpoints)
        elif old is not None and config.type == "EDS":
            runtime.assignment_policy = old.assignment_policy
            runtime.locality_weights = old.locality_weights
            runtime.set_hosts(old.hosts)
        if old is not None and runtime.health_checker is not None:
            runtime.health_checker.inherit(old.hosts)     # Envoy would warm it first instead
        runtime.added_via_api = True
        self.clusters[config.name] = runtime
        runtime.start()

    def remove(self, name: str) -> None:
        runtime = self.clusters.pop(name, None)
        if runtime is not None:
            runtime.close()

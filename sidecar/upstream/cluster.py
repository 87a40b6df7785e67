"""Clusters at runtime: host sets (STATIC, or STRICT_DNS re-resolved), load balancing, pools.

The ClusterManager owns every cluster and every task they run (DNS refresh);
``close()`` cancels them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

from config import model
from sidecar.stats import CircuitBreakerStats, ClusterStats, StatsStore
from sidecar.upstream.host import Host
from sidecar.upstream.lb import LoadBalancer, build_lb
from sidecar.upstream.pool import Http1Pool

log = logging.getLogger(__name__)

_FAMILIES = {"V4_ONLY": socket.AF_INET, "V6_ONLY": socket.AF_INET6}


class ClusterRuntime:
    def __init__(self, config: model.Cluster, stats: ClusterStats,
                 parser_factory: Callable[[], Any],
                 pools: dict[tuple[str, int], Http1Pool] | None = None) -> None:
        self.config = config
        self.name = config.name
        self.stats = stats
        self.parser_factory = parser_factory
        self.hosts: list[Host] = []
        self.lb: LoadBalancer = build_lb(config, [])
        self.degraded_lb: LoadBalancer | None = None
        self.healthy_share = 1.0          # the rest goes to degraded hosts
        # An updated cluster takes over its predecessor's pools (set_hosts keeps those
        # to addresses that remain): warm connections survive a CDS update.
        self.pools: dict[tuple[str, int], Http1Pool] = pools or {}
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
        for pool in self.pools.values():
            pool.breaker = self
        if config.type == "STATIC":
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
        self.set_hosts([Host(e.address.address, e.address.port, e.weight, e.health_status,
                             e.hostname, e.priority) for e in endpoints])

    def __repr__(self) -> str:
        return f"<Cluster {self.name} hosts={self.hosts}>"

    def set_hosts(self, hosts: list[Host]) -> None:
        """Replace the host set; pools to addresses that remain are kept (warm connections survive)."""
        pools: dict[tuple[str, int], Http1Pool] = {}
        for h in hosts:
            key = (h.address, h.port)
            pool = self.pools.get(key) or pools.get(key)
            if pool is None:
                c = self.config
                pool = Http1Pool(h.address, h.port, self.stats, self.parser_factory,
                                 c.connect_timeout, c.idle_timeout,
                                 c.max_requests_per_connection,
                                 c.per_connection_buffer_limit_bytes, self)
            pools[key] = pool
            h.pool = pool
        for key, pool in self.pools.items():
            if key not in pools:
                pool.close()
        self.pools = pools
        self.hosts = hosts
        self.health_changed()
        self.initialized.set()

    def health_changed(self) -> None:
        """A host's health changed (host set, active health check, outlier ejection):
        update the membership gauges and rebuild the load balancers."""
        hosts = self.hosts
        self.stats.membership_total = len(hosts)
        self.stats.membership_healthy = sum(1 for h in hosts if h.healthy)
        self.stats.membership_degraded = sum(1 for h in hosts if h.degraded)
        self._build_lbs(hosts)

    def _build_lbs(self, hosts: list[Host]) -> None:
        """Envoy's health-aware load split for one priority level.

        With the overprovisioning factor 1.4, healthy hosts take
        min(100%, 1.4 x healthy share) of the traffic and degraded hosts the
        rest; when healthy + degraded fall below healthy_panic_threshold
        (default 50%), Envoy gives up on health and balances over every host.
        Priorities beyond the best level with usable hosts come later (issue 4):
        only that level is used.
        """
        config = self.config
        usable = [h for h in hosts if h.healthy or h.degraded]
        top = min((h.priority for h in usable), default=min((h.priority for h in hosts), default=0))
        level = [h for h in hosts if h.priority == top]
        healthy = [h for h in level if h.healthy]
        degraded = [h for h in level if h.degraded]
        total = len(level)
        healthy_pct = min(100.0, 140.0 * len(healthy) / total) if total else 0.0
        degraded_pct = min(100.0 - healthy_pct, 140.0 * len(degraded) / total) if total else 0.0
        self.degraded_lb = None
        self.healthy_share = 1.0
        if total and healthy_pct + degraded_pct < self.config.healthy_panic_threshold:
            self.lb = build_lb(config, level)          # panic: every host
        elif degraded_pct > 0 and healthy:
            self.lb = build_lb(config, healthy)
            self.degraded_lb = build_lb(config, degraded)
            self.healthy_share = healthy_pct / (healthy_pct + degraded_pct)
        else:
            self.lb = build_lb(config, healthy or degraded)

    def choose_host(self, hash_key: int | None = None) -> Host | None:
        """A host for one request (``hash_key``: the route's hash_policy result, if any)."""
        if self.degraded_lb is not None and random.random() >= self.healthy_share:
            return self.degraded_lb.pick(hash_key)
        return self.lb.pick(hash_key)

    # --- STRICT_DNS ---------------------------------------------------------------

    def start(self) -> None:
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
                                  e.hostname or e.address.address, e.priority))
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
            if c.http2:
                log.info("cluster %s speaks HTTP/2: used for gRPC services (xDS) only; "
                         "HTTP routed to it gets 503 until HTTP/2 upstreams land", c.name)
                continue
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
        if config.http2:
            self.remove(config.name)
            log.warning("cluster %s speaks HTTP/2: not routable until HTTP/2 upstreams land",
                        config.name)
            return
        old = self.clusters.get(config.name)
        if old is not None and old.task is not None:
            old.task.cancel()
        runtime = ClusterRuntime(config, self.stats.cluster_scope(config.name), self.parser_factory,
                                 pools=old.pools if old is not None else None)
        if endpoints is not None:
            runtime.set_endpoints(endpoints)
        elif old is not None and config.type == "EDS":
            runtime.set_hosts(old.hosts)
        runtime.added_via_api = True
        self.clusters[config.name] = runtime
        runtime.start()

    def remove(self, name: str) -> None:
        runtime = self.clusters.pop(name, None)
        if runtime is not None:
            runtime.close()

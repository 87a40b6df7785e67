"""ORIGINAL_DST clusters: a host per original destination, made on first use and dropped
after a cleanup_interval without use (Envoy's OriginalDstCluster, lb_policy CLUSTER_PROVIDED).

The destination is the downstream connection's original destination (its local address as
the original_dst listener filter restored it) or, with original_dst_lb_config.use_http_header,
the request's x-envoy-original-dst-host header (http_header_name).  The router passes it as
the cluster's "hash key": ``key_for_request`` returns a small int naming the host, and the
cluster's load balancer (this object) ``pick``s it, so retries pick the same host again.

A destination that is one of our own listening addresses gets no host (503 / closed
connection instead of a connection to ourselves: sidecar/listener/own_addresses.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from config import model
from sidecar.listener import own_addresses
from sidecar.upstream.host import Host

log = logging.getLogger(__name__)


def parse_host_port(text: str) -> tuple[str, int] | None:
    """"10.0.0.1:80" / "[fd00::1]:80" -> (ip, port); None for anything else (names too)."""
    text = text.strip()
    if text.startswith("["):
        ip, sep, port = text[1:].partition("]:")
    else:
        ip, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    try:
        return str(ipaddress.ip_address(ip)), int(port)
    except ValueError:
        return None


class OriginalDstHosts:
    """The host set of one ORIGINAL_DST cluster, and its load balancer."""

    def __init__(self, cluster: Any, config: model.OriginalDst) -> None:
        self.cluster = cluster
        self.config = config
        self.header_str = config.http_header_name.lower() if config.use_http_header else ""
        self.by_address: dict[tuple[str, int], Host] = {}
        self.by_key: dict[int, Host] = {}
        self.key_of: dict[int, int] = {}          # id(host) -> key
        self.used: set[int] = set()               # keys used since the last cleanup
        self.next_key = 1
        self.task: asyncio.Task[None] | None = None

    # --- the load balancer interface (ClusterRuntime.lb) ----------------------------

    def pick(self, hash_key: int | None = None, attempt: int = 0) -> Host | None:
        if hash_key is None:
            return None
        host = self.by_key.get(hash_key)
        if host is not None:
            self.used.add(hash_key)
        return host

    # --- finding the destination ----------------------------------------------------

    def key_for_request(self, request: Any) -> int | None:
        """The host key for an HTTP request (the router's hook), or None: no destination.

        With use_http_header, a valid header names the host; else (as Envoy) the
        connection's original destination.  A local address the original_dst listener
        filter did not restore is our own listener's, which ``key_for`` refuses.
        """
        if self.header_str:
            for name, value in request.headers:
                if name == self.header_str:
                    dest = parse_host_port(value)
                    if dest is not None:
                        return self.key_for(dest)
                    break            # only the first value counts
        local = request.info.downstream_local_address
        return self.key_for((local[0], local[1])) if local else None

    def host_for(self, address: tuple[str, int] | None) -> Host | None:
        """The host for a TCP connection's original destination."""
        return self.pick(self.key_for(address)) if address else None

    def key_for(self, address: tuple[str, int] | None) -> int | None:
        if address is None:
            return None
        ip, port = address[0], address[1]
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]          # a dual-stack socket's IPv4 client: connect over IPv4
        key = (ip, port)
        host = self.by_address.get(key)
        if host is None:
            if own_addresses.is_own(ip, port):
                log.debug("cluster %s: original destination %s:%s is our own listener; refused",
                          self.cluster.name, ip, port)
                return None
            host = self.add_host(ip, port)
        k = self.key_of[id(host)]
        self.used.add(k)
        return k

    def add_host(self, ip: str, port: int) -> Host:
        cluster = self.cluster
        host = Host(ip, port, 1, "HEALTHY")
        host.pool = pool = cluster.new_pool(host)
        cluster.pools[(ip, port)] = pool
        k = self.next_key
        self.next_key += 1
        self.by_address[(ip, port)] = host
        self.by_key[k] = host
        self.key_of[id(host)] = k
        cluster.hosts.append(host)
        self._gauges()
        return host

    def _gauges(self) -> None:
        stats = self.cluster.stats
        stats.membership_total = stats.membership_healthy = len(self.by_key)

    # --- cleanup ------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._cleanup_loop(),
                                                           name=f"original_dst:{self.cluster.name}")

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.cleanup_interval)
            self.cleanup()

    def cleanup(self) -> None:
        """Drop the hosts not picked since the last cleanup whose pools hold no connection
        (Envoy 1.40, original_dst_rely_on_idle_timeout: pooled connections keep a host)."""
        stale = [k for k, h in self.by_key.items()
                 if k not in self.used and not (h.pool is not None and (h.pool.busy or h.pool.idle))]
        self.used.clear()
        if not stale:
            return
        for k in stale:
            host = self.by_key.pop(k)
            self.key_of.pop(id(host), None)
            self.by_address.pop((host.address, host.port), None)
            pool = self.cluster.pools.pop((host.address, host.port), None)
            if pool is not None:
                pool.close()
        self.cluster.hosts = list(self.by_key.values())
        self._gauges()

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
